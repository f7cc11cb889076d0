"""The record of an export, :class:`ExportReport`, and its parts: what ``autoprune export`` writes as
``report.json`` and what ``autoprune export`` (its summary), ``autoprune verify`` and the dashboard read back.

Every figure is a field (units in the names, as in the file: ``latency_ms``, ``energy_mj``, ``size_bytes``),
read by attribute, never by a key spelled again as a string. :meth:`ExportReport.to_dict` writes the JSON
object, key for key and in the order the file has always had; :meth:`ExportReport.from_dict` reads one back,
exports written by earlier versions of the same format included.

``from_dict`` reads what is there (:class:`~autoprune.deploy.ReportPart`): a key a report lacks (a
hand-made or damaged report) is read as ``None``, so that ``autoprune verify`` can name what is missing; a
part that is not a JSON object raises :class:`~autoprune.errors.ConfigError`. A part written only when it
applies (``measured``, ``tvm``, ``device``) is ``None`` where it does not. The parts that one step makes
live beside it: :class:`~autoprune.deploy.tvm.TvmModule` and :class:`~autoprune.deploy.tvm.DeviceCommands`
in :mod:`autoprune.deploy.tvm`, :class:`~autoprune.deploy.speed.Measured` and
:class:`~autoprune.deploy.speed.RuntimeSpeed` in :mod:`autoprune.deploy.speed`.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, fields
from typing import Any

from autoprune.deploy import ReportPart
from autoprune.deploy.speed import Measured
from autoprune.deploy.tvm import DeviceCommands, TvmModule

__all__ = [
    "CalibrationSummary", "DataRef", "DenseOnnx", "ExportReport", "OnnxFile", "Predicted", "ReferenceBatch",
    "Repeats", "TestFigures",
]


@dataclass(frozen=True)
class DataRef(ReportPart):
    """The data the export was tested on, enough for ``verify`` to load the same test split.

    Attributes:
        ref: The data reference (``digits``, or a folder's absolute path).
        input_size: The square input side in pixels.
        input_shape: ``(C, H, W)``.
        seed: The split seed.
        key: The data's identity (:attr:`autoprune.data.Dataset.key`): ``verify`` refuses other data.
        num_classes: Classes.
        test_samples: Samples in the test split.
        max_train_samples, max_eval_samples: The stratified subset the study used (``--max-train-samples``,
            ``--max-eval-samples``), written only where one was: ``verify`` loads the same subset.
    """

    ref: str
    input_size: int
    input_shape: tuple[int, ...]
    seed: int
    key: str
    num_classes: int
    test_samples: int
    max_train_samples: int | None = None
    max_eval_samples: int | None = None

    def _written(self) -> Iterator[str]:
        return self._present("ref", "input_size", "input_shape", "seed", "key", "num_classes", "test_samples")


@dataclass(frozen=True)
class TestFigures(ReportPart):
    """Test-split figures of the exported model (fractions in [0, 1]).

    Attributes:
        accuracy: Top-1 accuracy of the fine-tuned PyTorch model.
        precision_macro, recall_macro, f1_macro: Macro-averaged metrics.
        onnx_accuracy: Top-1 accuracy of ``model.onnx`` itself with ONNX Runtime (what ``verify`` re-checks).
        samples: Test samples.
    """

    __test__ = False  # not a pytest class

    accuracy: float
    precision_macro: float | None
    recall_macro: float | None
    f1_macro: float | None
    onnx_accuracy: float
    samples: int


@dataclass(frozen=True)
class Repeats(ReportPart):
    """The test accuracy over ``k`` fine-tunings with seeds ``seed, seed + 1, ...``.

    Attributes:
        k: Fine-tunings.
        seeds: Their seeds.
        accuracies: Their test accuracies.
        mean: The mean accuracy.
        sd: Its sample standard deviation (``None`` for one).
        exported_seed: The seed of the exported model (the first).
    """

    k: int
    seeds: tuple[int, ...]
    accuracies: tuple[float, ...]
    mean: float
    sd: float | None
    exported_seed: int


@dataclass(frozen=True)
class CalibrationSummary(ReportPart):
    """What the prediction's calibration is worth: the provenance's figures of the calibration.

    Attributes:
        status: ``measured``, ``published``, ``prior``...
        calibration_id: Its identity.
        runtime: The runtime it describes.
        heldout_mape: Its held-out mean absolute percentage error (``None`` where never measured).
        heldout_spearman: Its held-out rank correlation.
        n_heldout: Held-out points.
        note: How the error was measured.
    """

    status: str | None
    calibration_id: str | None
    runtime: str | None
    heldout_mape: float | None
    heldout_spearman: float | None
    n_heldout: int | None
    note: str | None

    @classmethod
    def of(cls, provenance: Mapping[str, Any]) -> CalibrationSummary:
        """The summary of a cost model's provenance (its fields, ``None`` where it has none)."""
        return cls(**{f.name: provenance.get(f.name) for f in fields(cls)})


@dataclass(frozen=True)
class Predicted(ReportPart):
    """What the cost model predicts on the target.

    Attributes:
        latency_ms: The pruned model's latency.
        energy_mj: Its energy.
        dense_latency_ms: The dense model's latency.
        speedup: ``dense_latency_ms / latency_ms``.
        provenance: The cost model's provenance (:class:`~autoprune.costmodel.base.CostProvenance` as a dict).
        energy: How the energy figure was obtained.
        calibration: The calibration's figures, from ``provenance``.
        band_ms: Half-width of ``latency_ms``'s uncertainty band (``CostEstimate.band_ms``; how it was
            obtained: ``provenance["band_basis"]``); ``None`` where there is none (a prior, or a report
            written before bands).
        outside_range: Why the prediction lies outside what its calibration covers (its band widened),
            else ``None``.
    """

    latency_ms: float
    energy_mj: float
    dense_latency_ms: float
    speedup: float
    provenance: Mapping[str, Any]
    energy: str
    calibration: CalibrationSummary
    band_ms: float | None = None
    outside_range: str | None = None


@dataclass(frozen=True)
class OnnxFile(ReportPart):
    """``model.onnx``: the pruned model, parity-checked against PyTorch.

    Attributes:
        path: Where it was written.
        file_bytes: Its size.
        opset: ONNX opset.
        max_abs_diff: Largest difference from PyTorch's outputs on the parity inputs.
        atol: The parity tolerance.
        sha256: Its checksum.
    """

    path: str
    file_bytes: int
    opset: int
    max_abs_diff: float
    atol: float
    sha256: str


@dataclass(frozen=True)
class DenseOnnx(ReportPart):
    """``dense.onnx``, the speed reference: its export record, or (``path`` ``None``) why it failed.

    Attributes:
        path: Where it was written (``None``: not exported).
        file_bytes, max_abs_diff, atol: Its size and parity, as for :class:`OnnxFile`.
        reason: Why it was not exported.
    """

    path: str | None
    file_bytes: int | None = None
    max_abs_diff: float | None = None
    atol: float | None = None
    reason: str | None = None

    def _written(self) -> Iterator[str]:
        return self._present("path")


@dataclass(frozen=True)
class ReferenceBatch(ReportPart):
    """``reference.npz``: test inputs and ``model.onnx``'s outputs on them, which ``verify`` re-checks.

    Attributes:
        file: Its file name.
        samples: Inputs in it.
        split: The split they come from.
        runtime: What computed the outputs.
    """

    file: str
    samples: int
    split: str
    runtime: str


@dataclass(frozen=True)
class ExportReport(ReportPart):
    """``report.json`` of an export: what was measured, predicted and checked, with the files' checksums.

    Attributes:
        format: ``autoprune-export`` (:data:`~autoprune.deploy.reference.REPORT_FORMAT`).
        version: The format's version (:data:`~autoprune.deploy.reference.REPORT_VERSION`).
        study: The study's name.
        trial: The exported trial's number.
        target: The target's name.
        model: The model reference.
        seed: The fine-tuning seed of the exported model.
        data: The data it was tested on.
        plan_summary: The plan in one line.
        plan: The pruning plan (:meth:`~autoprune.pruning.PruningPlan.to_dict`).
        finetune_epochs: Fine-tuning epochs.
        test: Test-split figures.
        repeats: Test accuracy over the fine-tuning seeds.
        dense_test_accuracy: The dense model's test accuracy.
        predicted: The cost model's prediction on the target.
        measured: The speedup measured here (``local`` targets), else ``None``.
        params: Parameters of the pruned model.
        macs: Its multiply-accumulates per sample.
        size_bytes: Its dense-storage size.
        sparse_size_bytes: Its size with exact zeros not stored.
        onnx: ``model.onnx``.
        dense_onnx: ``dense.onnx``.
        reference: ``reference.npz``.
        tvm: The TVM module.
        device: The command lines to time it on the device (Jetson targets), else ``None``.
        notes: One line per part that could not be done here.
        checksums: File name → sha256 of each file but ``report.json``.
        files: The folder's files.
        seconds: Wall time of the export.
    """

    format: str
    version: int
    study: str
    trial: int
    target: str
    model: str
    seed: int
    data: DataRef
    plan_summary: str
    plan: Mapping[str, Any]
    finetune_epochs: int
    test: TestFigures
    repeats: Repeats
    dense_test_accuracy: float
    predicted: Predicted | None
    measured: Measured | None
    params: int
    macs: float
    size_bytes: int
    sparse_size_bytes: int
    onnx: OnnxFile
    dense_onnx: DenseOnnx
    reference: ReferenceBatch
    tvm: TvmModule | None
    device: DeviceCommands | None
    notes: tuple[str, ...]
    checksums: Mapping[str, str]
    files: tuple[str, ...]
    seconds: float
