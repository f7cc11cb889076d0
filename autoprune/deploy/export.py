"""Pick a Pareto point and export it for deployment.

Rebuild the plan from the dense checkpoint, fine-tune longer (``repeats`` seeds), report
test-set metrics, and write to ``results/<study>/export-<trial>/`` (or ``out_dir``):

* ``model.onnx`` (parity-checked against PyTorch) and ``dense.onnx`` (the speed reference);
* ``reference.npz``: a fixed batch of test inputs and ``model.onnx``'s outputs on it, so that
  ``autoprune verify`` can re-check the file later (:mod:`autoprune.deploy.verify`);
* a TVM module for the target's own TVM target (``runtimes.tvm.target`` of its profile):
  ``model_tvm.so`` when it can be linked here (natively, or with a cross compiler), loaded
  back and run on the reference batch against ONNX Runtime's outputs where it is native;
  ``model_tvm.tar`` (the target's object files, linked on the board by
  ``tvm.runtime.load_module``) when no cross linker is installed; nothing, with the reason,
  for a CUDA target without NVIDIA's toolchain. Untuned unless ``tvm_tune_trials`` is given: then
  tuned with MetaSchedule on this machine (``results/tvm-tuning/<target>/<model>``, reused by the
  next export), with the dense model tuned alike as ``dense_tvm.so``;
* on ``local``, the pruned and dense models timed against each other in one interleaved run
  per runtime (ONNX Runtime, and a tuned TVM module against the tuned dense; an untuned one
  against ONNX Runtime instead: how much slower it is);
* for a CUDA (Jetson) target, the ``trtexec`` command lines to time both files on the device;
* ``latency_per_layer.png`` and ``report.json`` (with sha256 checksums of the files).

Only the ONNX export and the reference outputs are required: every other part that fails
(TVM build or run, a measurement, the chart) becomes a one-line ``notes`` entry and a field
in the report, and the export still lands.
"""

from __future__ import annotations

import io
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from autoprune.deploy import optional_step
from autoprune.deploy.reference import (
    REFERENCE_SAMPLES,
    REPORT_FORMAT,
    REPORT_VERSION,
    mean_sd,
    onnx_accuracy,
    onnx_outputs,
    reference_batch,
    save_reference,
)
from autoprune.deploy.report import (
    CalibrationSummary,
    DataRef,
    DenseOnnx,
    ExportReport,
    OnnxFile,
    Predicted,
    ReferenceBatch,
    Repeats,
    TestFigures,
)
from autoprune.deploy.speed import Measured, measure_local
from autoprune.deploy.tvm import (
    DENSE_TVM,
    TUNE_TIMEOUT_S,
    TVM_SKIPPED,
    TvmModule,
    build_tvm_module,
    device_commands,
    export_tuning,
)
from autoprune.errors import AutopruneError, ConfigError
from autoprune.io import atomic_write_bytes, file_sha256, read_json, study_dir, write_json
from autoprune.records import TrialRecord
from autoprune.search.config import SearchConfig
from autoprune.search.context import StudyContext
from autoprune.search.report import front_rows, plan_summary

if TYPE_CHECKING:
    import optuna

    from autoprune.pipeline import CandidateResult, Pipeline
    from autoprune.pruning import PruningPlan

#: Files an export writes that a re-export to the same folder must not leave stale.
_ARTIFACTS = ("model_tvm.so", "model_tvm.tar", DENSE_TVM, "dense.onnx", "reference.npz", "latency_per_layer.png",
              "report.json")
#: Every file an export writes: only these are checksummed and listed in its report.
EXPORT_FILES = ("model.onnx", *_ARTIFACTS)


@dataclass(frozen=True)
class ExportResult:
    """What :func:`export_point` made.

    Attributes:
        folder: The export folder.
        report: Its report (also written there as ``report.json``).
    """

    folder: Path
    report: ExportReport


def pick_trial(study: optuna.Study, config: SearchConfig, *, trial: int | None = None,
               max_latency_ms: float | None = None, min_accuracy: float | None = None) -> TrialRecord:
    """Choose the trial to export (its :class:`~autoprune.records.TrialRecord`).

    With ``trial`` that trial (it must be COMPLETE); with ``max_latency_ms`` the most
    accurate front point under it; with ``min_accuracy`` the fastest front point
    above it; with both, the fastest point satisfying both.

    Raises:
        ConfigError: No such trial, no condition given, or no front point satisfies it.
    """
    rows, front, _ = front_rows(study, config)
    if trial is not None:
        match = [r for r in rows if r.number == trial]
        if not match:
            done = ", ".join(str(r.number) for r in rows[:20])
            raise ConfigError(f"trial {trial} is not a completed trial of {study.study_name!r} (completed: {done})")
        return match[0]
    if max_latency_ms is None and min_accuracy is None:
        raise ConfigError("say which point to export: --trial N, --max-latency-ms X or --min-accuracy A")
    ok = [r for r in front if (max_latency_ms is None or r.latency_ms <= max_latency_ms)
          and (min_accuracy is None or r.accuracy >= min_accuracy)]
    if not ok:
        raise ConfigError(
            f"no Pareto point of {study.study_name!r} has latency <= {max_latency_ms} ms and accuracy >= "
            f"{min_accuracy}; see `autoprune pareto --study {study.study_name}` for what is reachable")
    if min_accuracy is not None or max_latency_ms is None:
        return min(ok, key=lambda r: (r.latency_ms, -r.accuracy))
    return max(ok, key=lambda r: (r.accuracy, -r.latency_ms))


def export_point(study: optuna.Study, config: SearchConfig | StudyContext, row: TrialRecord, *,
                 epochs: int | None = None, out_dir: Path | None = None, storage_url: str | None = None,
                 progress: bool = True, tvm: bool = True, repeats: int = 1, force: bool = False,
                 say: Callable[[str], None] | None = None, tvm_tune_trials: int = 0,
                 tvm_tune_timeout_s: float = TUNE_TIMEOUT_S) -> ExportResult:
    """Rebuild, fine-tune longer, evaluate on the test split and export one trial's plan.

    Args:
        study: The Optuna study.
        config: Its resolved :class:`~autoprune.search.context.StudyContext` (or its search configuration,
            resolved here).
        row: The picked trial (from :func:`pick_trial`).
        epochs: Fine-tuning epochs (default: three times the search's).
        out_dir: Export folder (default ``results/<study>/export-<trial>``).
        storage_url: Attach ``model.onnx`` to the study as an Optuna artifact when given (the caller then
            updates the study's dashboard note: the deployment sits below the dashboard).
        progress: Progress bars while the dense model is loaded.
        tvm: Build the TVM module.
        repeats: Fine-tune the plan with this many seeds (``seed``, ``seed + 1``, ...) and report the
            test accuracy as mean ± sd; the exported model is the first seed's.
        force: Export into ``out_dir`` even when it holds files that are not an earlier export of this
            trial (the export's own files are replaced; the others are left alone and not listed).
        say: Progress messages (one line each).
        tvm_tune_trials: Tune the TVM module (and the dense one, its speed reference) with MetaSchedule, about
            this many trials per model (0: untuned); only on a target that is this machine.
        tvm_tune_timeout_s: Bound on each model's tuning, s.

    Returns:
        The folder and its report (also written as ``report.json``).

    Raises:
        AutopruneError: The plan cannot be rebuilt, fine-tuned, evaluated or exported to ONNX.
    """
    if repeats < 1:
        raise ConfigError(f"--repeats must be at least 1, got {repeats}")
    if tvm_tune_trials and not tvm:
        raise ConfigError("--tvm-tune-trials tunes the TVM module, which --no-tvm skips: give one of them")
    t0 = time.perf_counter()
    context = config if isinstance(config, StudyContext) else StudyContext.resolve(config)
    tuning = export_tuning(context.profile, context.config.model, tvm_tune_trials, tvm_tune_timeout_s, progress)
    run = _prepare(study, context, row, epochs, out_dir, progress, say or (lambda _msg: None), force)
    result, repeated = _fine_tune(run, repeats)
    files = _onnx_files(run)
    tvm_rec = _tvm_module(run, files, tuning) if tvm else TvmModule(built=False, reason=TVM_SKIPPED)
    predicted = _predicted(run, result)
    measured = _measure(run, predicted, files.dense, tvm_rec)
    optional_step(run.notes, "per-layer chart", lambda: _layer_chart(
        run.pipeline.cost_model.predict(run.pipeline.dense).per_kernel_ms, result.per_layer_ms,
        run.folder / "latency_per_layer.png", context.config.target))
    report = _report(run, result, repeated, files, predicted, measured, tvm_rec, round(time.perf_counter() - t0, 1))
    write_json(run.folder / "report.json", report.to_dict())
    if storage_url is not None:
        _attach_onnx(run, storage_url)
    return ExportResult(run.folder, report)


@dataclass(frozen=True)
class _ExportRun:
    """What every step of one export shares: the trial, its rebuilt pipeline and the folder."""

    study: optuna.Study
    context: StudyContext
    row: TrialRecord
    pipeline: Pipeline
    dense_test_accuracy: float
    plan: PruningPlan
    kd: bool
    epochs: int
    folder: Path
    say: Callable[[str], None]
    notes: list[str] = field(default_factory=list)  # one line per optional step that failed

    @property
    def onnx_path(self) -> Path:
        """The exported model, ``model.onnx``."""
        return self.folder / "model.onnx"


@dataclass(frozen=True)
class _OnnxFiles:
    """The ONNX side of an export: ``dense.onnx`` and the reference batch with ``model.onnx``'s outputs."""

    dense: DenseOnnx
    x: np.ndarray
    outputs: np.ndarray
    onnx_accuracy: float
    test_samples: int


def check_export_folder(folder: Path, study_name: str, trial: int) -> None:
    """Refuse a folder the user named (``--out``) that holds files but is not an earlier export of the same
    trial: an export there would overwrite a user's ``model.onnx``, ``report.json`` or ``reference.npz``.

    Raises:
        ConfigError: Naming the folder, what is in it, and the two ways on (another folder, ``--force``).
    """
    if not folder.is_dir():
        return
    present = sorted(p.name for p in folder.iterdir() if not p.name.startswith("."))
    if not present:
        return
    try:
        earlier = read_json(folder / "report.json", what="export report")
    except AutopruneError:
        earlier = None
    if isinstance(earlier, dict) and (earlier.get("study"), earlier.get("trial")) == (study_name, trial):
        return
    shown = ", ".join(present[:3]) + (f" and {len(present) - 3} more" if len(present) > 3 else "")
    raise ConfigError(f"--out {folder} is not empty ({shown}) and is not an earlier export of trial {trial} of "
                      f"{study_name!r}; export to an empty or new folder, or pass --force to write the export's "
                      "files there (files of the same names are replaced)")


def _prepare(study: optuna.Study, context: StudyContext, row: TrialRecord, epochs: int | None,
             out_dir: Path | None, progress: bool, say: Callable[[str], None], force: bool = False) -> _ExportRun:
    """Rebuild the study's pipeline for the trial and empty its export folder of an earlier export's files.

    A folder the user named is checked first (:func:`check_export_folder`) unless ``force``.
    """
    from autoprune.pruning import PruningPlan
    from autoprune.search.objective import build_pipeline
    from autoprune.search.study import study_space

    if out_dir is not None and not force:
        check_export_folder(Path(out_dir), study.study_name, row.number)
    space = study_space(study, context.config)
    # measure=False: the candidate is timed later, against the dense model in one interleaved run
    pipeline, dense_rec = build_pipeline(context, space, progress, measure=False)
    trial = next(t for t in study.get_trials(deepcopy=False) if t.number == row.number)
    folder = Path(out_dir or study_dir(study.study_name) / f"export-{row.number}")
    folder.mkdir(parents=True, exist_ok=True)
    for name in _ARTIFACTS:
        (folder / name).unlink(missing_ok=True)
    return _ExportRun(study=study, context=context, row=row, pipeline=pipeline,
                      dense_test_accuracy=dense_rec.test_accuracy, plan=PruningPlan.from_dict(dict(row.plan)),
                      kd=bool(trial.params.get("kd", space.distillation[0])),
                      epochs=epochs if epochs is not None else 3 * pipeline.finetune_epochs, folder=folder, say=say)


def _fine_tune(run: _ExportRun, repeats: int) -> tuple[CandidateResult, Repeats]:
    """Fine-tune the plan, evaluate it on the test split and export ``model.onnx``; then ``repeats - 1``
    more fine-tunings with the next seeds, for the accuracy's spread."""
    pipeline, base_seed = run.pipeline, run.pipeline.seed
    run.say(f"fine-tuning trial {run.row.number} for {run.epochs} epoch(s), seed {base_seed}, "
            "and exporting model.onnx")
    result = pipeline.run(run.plan, kd=run.kd, split="test", epochs=run.epochs, onnx_path=run.onnx_path)
    seeds, accs = [base_seed], [result.accuracy]
    for i in range(1, repeats):
        seeds.append(base_seed + i)
        run.say(f"repeat {i + 1}/{repeats}: fine-tuning with seed {seeds[-1]}")
        accs.append(pipeline.reseeded(seeds[-1]).run(run.plan, kd=run.kd, split="test", epochs=run.epochs).accuracy)
    mean, sd = mean_sd(accs)
    return result, Repeats(k=repeats, seeds=tuple(seeds), accuracies=tuple(accs), mean=mean, sd=sd,
                           exported_seed=base_seed)


def _onnx_files(run: _ExportRun) -> _OnnxFiles:
    """Export ``dense.onnx`` (optional), save ``reference.npz`` and evaluate ``model.onnx`` itself."""
    from autoprune.pruning import export_onnx

    pipeline, path = run.pipeline, run.folder / "dense.onnx"
    exp, reason = optional_step(run.notes, "dense.onnx", lambda: export_onnx(pipeline.dense, path, pipeline.example))
    dense = DenseOnnx(path=None, reason=reason) if exp is None else DenseOnnx(
        path=str(path), file_bytes=exp.file_bytes, max_abs_diff=exp.max_abs_diff, atol=exp.atol)
    x, y = reference_batch(pipeline.data, REFERENCE_SAMPLES)
    outputs = onnx_outputs(run.onnx_path, x)
    save_reference(run.folder / "reference.npz", x, y, outputs)
    acc, n_test = onnx_accuracy(run.onnx_path, pipeline.data)
    return _OnnxFiles(dense=dense, x=x, outputs=outputs, onnx_accuracy=acc, test_samples=n_test)


def _tvm_module(run: _ExportRun, files: _OnnxFiles, tuning: Any) -> TvmModule:
    """Build the TVM module for the target (checked against the reference outputs where it runs here), tuned
    with ``tuning`` (and the dense model alike) when given."""
    how = f"tuning ({tuning.trials} trials per model, into {tuning.work_dir}) and " if tuning is not None else ""
    run.say(f"{how}building the TVM module for {run.context.config.target}")
    dense = Path(files.dense.path) if files.dense.path else None
    rec = build_tvm_module(run.onnx_path, run.context.profile, run.folder, reference=(files.x, files.outputs),
                           tuning=tuning, dense_onnx=dense)
    if rec.reason:
        run.notes.append(f"TVM: {rec.reason}")
    return rec


def _predicted(run: _ExportRun, result: CandidateResult) -> Predicted:
    """The cost model's prediction of the pruned model on the target, against the dense model's."""
    dense_ms = run.pipeline.cost_model.predict(run.pipeline.dense).latency_ms
    provenance = asdict(result.cost.provenance)
    return Predicted(latency_ms=result.latency_ms, energy_mj=result.energy_mj, dense_latency_ms=dense_ms,
                     speedup=dense_ms / result.latency_ms, provenance=provenance,
                     energy=result.cost.provenance.energy, calibration=CalibrationSummary.of(provenance),
                     band_ms=result.cost.band_ms, outside_range=result.cost.outside_range)


def _measure(run: _ExportRun, predicted: Predicted, dense: DenseOnnx, tvm: TvmModule) -> Measured | None:
    """Pruned against dense, timed here where the target is this machine's CPU (else ``None``)."""
    profile = run.context.profile
    if profile.here != "cpu":
        return None
    if dense.path is None:
        return Measured(runtimes={}, reason=f"not measured: dense.onnx: {dense.reason}")
    run.say("timing pruned vs dense here (interleaved)")
    return measure_local(run.folder, profile, predicted.provenance, predicted.latency_ms, predicted.speedup,
                         tuple(run.pipeline.example.shape), tvm, run.notes)


def _data_ref(config: SearchConfig, data: Any, test_samples: int) -> DataRef:
    """The data reference ``verify`` reloads the test split from (a folder by its absolute path)."""
    ref = str(config.data)
    path = Path(ref)
    if ref != "digits" and path.exists():
        ref = str(path.resolve())
    return DataRef(ref=ref, input_size=int(data.input_shape[-1]), input_shape=tuple(data.input_shape),
                   seed=int(config.data_seed), key=data.key, num_classes=int(data.num_classes),
                   test_samples=test_samples, max_train_samples=config.max_train_samples,
                   max_eval_samples=config.max_eval_samples)


def _report(run: _ExportRun, result: CandidateResult, repeated: Repeats, files: _OnnxFiles, predicted: Predicted,
            measured: Measured | None, tvm: TvmModule, seconds: float) -> ExportReport:
    """The report of the export, with the checksums of the files written so far."""
    config, ev, folder = run.context.config, result.evaluation, run.folder
    written = sorted(folder / name for name in EXPORT_FILES if (folder / name).is_file())
    checksums = {p.name: file_sha256(p) for p in written if p.is_file() and p.name != "report.json"}
    return ExportReport(
        format=REPORT_FORMAT, version=REPORT_VERSION, study=run.study.study_name, trial=run.row.number,
        target=config.target, model=config.model, seed=repeated.exported_seed,
        data=_data_ref(config, run.pipeline.data, files.test_samples), plan_summary=plan_summary(run.row.plan),
        plan=run.row.plan, finetune_epochs=run.epochs,
        test=TestFigures(accuracy=ev.accuracy, precision_macro=ev.precision_macro, recall_macro=ev.recall_macro,
                         f1_macro=ev.f1_macro, onnx_accuracy=files.onnx_accuracy, samples=files.test_samples),
        repeats=repeated, dense_test_accuracy=run.dense_test_accuracy, predicted=predicted, measured=measured,
        params=ev.params, macs=ev.macs, size_bytes=ev.size_bytes, sparse_size_bytes=ev.sparse_size_bytes,
        onnx=replace(OnnxFile.from_dict(result.onnx or {}), path=str(run.onnx_path), sha256=checksums["model.onnx"]),
        dense_onnx=files.dense,
        reference=ReferenceBatch(file="reference.npz", samples=len(files.x), split="test",
                                 runtime="onnxruntime CPUExecutionProvider, 1 thread"),
        tvm=tvm, device=device_commands(run.context.profile, predicted.provenance), notes=tuple(run.notes),
        checksums=checksums, files=(*(p.name for p in written), "report.json"), seconds=seconds,
    )


def _attach_onnx(run: _ExportRun, storage_url: str) -> None:
    """Attach ``model.onnx`` to the study as an Optuna artifact and record the export on the study."""
    from optuna.artifacts import upload_artifact

    from autoprune.search.storage import get_storage

    art = upload_artifact(artifact_store=get_storage(storage_url).artifacts, file_path=str(run.onnx_path),
                          study_or_trial=run.study, mimetype="application/octet-stream")
    run.study.set_user_attr(f"autoprune.export.{run.row.number}", {"onnx_artifact_id": art, "dir": str(run.folder)})


def _layer_chart(dense: tuple, pruned: tuple, path: Path, target: str) -> None:
    """Bar chart of the predicted per-kernel latency, dense against pruned, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [n for n, _ in dense]
    d = np.array([v for _, v in dense])
    pm = dict(pruned)
    p = np.array([pm.get(n, 0.0) for n in names])
    fig, ax = plt.subplots(figsize=(max(7, 0.28 * len(names)), 4.5), dpi=110)
    x = np.arange(len(names))
    ax.bar(x - 0.2, d, 0.4, label=f"dense ({d.sum():.3g} ms)")
    ax.bar(x + 0.2, p, 0.4, label=f"pruned ({p.sum():.3g} ms)")
    ax.set_xticks(x, [n or "(graph)" for n in names], rotation=90, fontsize=6)
    ax.set_ylabel(f"predicted latency on {target} (ms)")
    ax.set_title("where the time goes: per-kernel latency, dense vs pruned (predicted)")
    ax.legend()
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())
