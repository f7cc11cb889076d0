"""The cost-model plug-in point: :class:`CostModel`, its registry and its outputs.

Contract of every implementation:

* :meth:`CostModel.fit` (calibration) is separate from :meth:`CostModel.predict`;
  ``predict`` never measures anything and is deterministic.
* Latencies are milliseconds at batch 1, energies millijoules, sizes bytes.
* A model predicts *dense* kernel times; the base class then applies what the
  target can exploit: the MAC-bound share of a kernel shrinks for 2:4 weights only
  when the target lists ``nm-2:4`` in ``sparsity_support``, for unstructured zeros
  only when it lists ``unstructured``; otherwise zeros change nothing (they are
  still stored and multiplied). The whole-model total is ``alpha × Σ kernels +
  overhead_ms`` (fitted on end-to-end measurements).
* Estimates are immutable and say where their figures come from (:class:`Provenance`).
"""

from __future__ import annotations

import math
import os
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from autoprune.errors import CalibrationError, ConfigError
from autoprune.registry import Registry
from autoprune.structures import STRUCTURES

from .features import OP_CLASSES, KernelFeatures
from .targets import TargetSpec, energy_mj
from .template import CandidateShape, KernelArrays, ModelTemplate
from .uncertainty import Uncertainty

__all__ = ["COST_MODELS", "CostEstimate", "CostModel", "FitSample", "Provenance", "finite_latencies",
           "get_cost_model_class"]

#: Unstructured sparse kernels spend ~1.5x the time per non-zero of a dense kernel
#: (index decoding, irregular access), so they break even at ~67 % density.
UNSTRUCTURED_OVERHEAD = 1.5


@dataclass(frozen=True)
class Provenance:
    """Where a predicted figure comes from.

    Attributes:
        method: Always ``"predicted"`` for cost-model output.
        cost_model: Implementation name (``lut``, ``regressor``).
        target: Target the calibration describes.
        runtime: Runtime the calibration describes (e.g. ``onnxruntime-1.31.1/CPUExecutionProvider,
            threads=1`` or ``TensorRT 8.2 FP16, batch 1, MAXN``).
        status: ``measured`` (profiled here), ``published`` (fitted to published
            figures) or ``prior`` (datasheet roofline, never checked).
        calibration_id: Identifier of the calibration.
        calibration_path: File it was loaded from (``""`` if built in memory).
        calibration_sha256: Its checksum.
        heldout_mape: Measured MAPE of this calibration on held-out plans (or
            leave-one-out models); ``None`` when never checked.
        heldout_spearman: Spearman ρ on the same held-out set (``None`` if unknown).
        n_heldout: Size of the held-out set.
        note: One line on how the error was measured.
        energy: Whether ``energy_mj`` is ``measured`` (fitted to a sensor's readings, naming it) or
            ``modelled`` (the profile's power figures); see :mod:`autoprune.costmodel.energy`.
        band_basis: How the latency band of each estimate (``CostEstimate.band_ms``) was obtained
            (:attr:`~autoprune.costmodel.uncertainty.Uncertainty.basis`); ``""`` where there is no band.
    """

    method: str = "predicted"
    cost_model: str = ""
    target: str = ""
    runtime: str = ""
    status: str = "prior"
    calibration_id: str = ""
    calibration_path: str = ""
    calibration_sha256: str = ""
    heldout_mape: float | None = None
    heldout_spearman: float | None = None
    n_heldout: int = 0
    note: str = ""
    energy: str = "modelled: the profile's active power x predicted latency (no sensor was read)"
    band_basis: str = ""


@dataclass(frozen=True)
class CostEstimate:
    """Predicted latency and energy of one candidate at batch 1.

    Attributes:
        latency_ms: Predicted latency (``sum(per_kernel_ms) + overhead_ms``).
        energy_mj: Modelled energy (see :mod:`autoprune.costmodel.targets`).
        per_kernel_ms: ``(module name, ms)`` per kernel, in graph order.
        overhead_ms: Per-inference runtime overhead not attributed to a kernel.
        macs: Multiply-accumulates of the dense-equivalent kernels.
        dram_bytes: Bytes moved (compressed weights only where the target reads them).
        provenance: Where the figures come from.
        band_ms: Half-width of the latency's uncertainty band (``latency_ms ± band_ms``), from the
            calibration's error (:mod:`autoprune.costmodel.uncertainty`); ``None`` where it was never
            checked (a prior, or a calibration held in memory).
        outside_range: One line saying why the prediction lies outside what the calibration covers
            (its band is widened), else ``None``.
    """

    latency_ms: float
    energy_mj: float
    per_kernel_ms: tuple[tuple[str, float], ...]
    overhead_ms: float
    macs: int
    dram_bytes: int
    provenance: Provenance = field(default_factory=Provenance)
    band_ms: float | None = None
    outside_range: str | None = None


@dataclass(frozen=True)
class FitSample:
    """One measurement to fit on: a set of kernels and their measured total.

    Attributes:
        features: The kernels measured together (one for an isolated kernel).
        keys: Dense config keys of those kernels (LUT entries), same order.
        latency_ms: Measured latency (kernel: minus the runtime's empty-call overhead).
        kind: ``"kernel"`` (isolated) or ``"model"`` (end to end).

    Raises:
        ConfigError: If ``latency_ms`` is not a positive finite number (NaN and ±inf are never fitted).
    """

    features: tuple[KernelFeatures, ...]
    keys: tuple[str, ...]
    latency_ms: float
    kind: str = "kernel"

    def __post_init__(self) -> None:
        finite_latencies([self.latency_ms], "a fit sample")


def finite_latencies(values: Sequence[float], what: str) -> np.ndarray:
    """``values`` as a float array, after checking that every one is a positive finite number of ms.

    Raises:
        ConfigError: Naming ``what`` and the first bad value (NaN, ±inf, zero or negative).
    """
    try:
        y = np.asarray(values, dtype=float).reshape(-1)
    except (TypeError, ValueError):
        raise ConfigError(f"{what}: latencies must be numbers of milliseconds, got {values!r}") from None
    bad = np.flatnonzero(~(np.isfinite(y) & (y > 0)))
    if bad.size:
        raise ConfigError(f"{what}: latency #{int(bad[0])} is {y[bad[0]]!r} ms; only positive finite "
                          "measurements are fitted (measure it again)")
    return y


#: Cost-model name → class; filled by :mod:`autoprune.costmodel` importing :mod:`.lut` and :mod:`.regressor`.
COST_MODELS: Registry[type[CostModel]] = Registry("cost model")


def get_cost_model_class(name: str) -> type[CostModel]:
    """Return the cost-model class called ``name`` (``lut`` or ``regressor``).

    The implementations register themselves when :mod:`autoprune.costmodel` imports them (any import
    of this module imports the package first), so this base never imports its subclasses.

    Raises:
        UnknownNameError: If there is no such cost model (the message lists the valid names).
    """
    return COST_MODELS.get(name)


def _nm_kept(pattern: str) -> float:
    """N/M of an ``"N:M"`` pattern."""
    n, m = (int(v) for v in pattern.split(":"))
    return n / m


class CostModel(ABC):
    """Predicts latency and energy of candidates of one model on one target.

    Args:
        target: Device facts.
        template: The model's template (needed to predict from modules or shapes).
    """

    name: ClassVar[str] = ""

    def __init__(self, target: TargetSpec, template: ModelTemplate | None = None) -> None:
        self.target = target
        self.template = template
        self.alpha = 1.0
        self.overhead_ms = 0.0
        #: Exponent of the whole-model correction ``alpha × Σ^power + overhead`` (1 = linear).
        self.power = 1.0
        self.provenance = Provenance(cost_model=self.name, target=target.name)
        #: How far its predictions may be off (set from a calibration file's error; ``None``: never checked).
        self.uncertainty: Uncertainty | None = None
        self._split: Any = None  # a Regressor used for the compute/memory split

    # -- to implement -------------------------------------------------------------------
    @abstractmethod
    def fit(self, samples: Sequence[FitSample]) -> None:
        """Fit kernel-level parameters on measurements (``kind == "kernel"`` samples)."""

    @abstractmethod
    def dense_kernel_ms(self, arrays: KernelArrays, cin: np.ndarray, cout: np.ndarray,
                        keys: Sequence[str] | None) -> np.ndarray:
        """Return the dense latency of every kernel (ms) for these channel counts."""

    @abstractmethod
    def params(self) -> dict[str, Any]:
        """Return the fitted parameters as JSON-serialisable data."""

    @abstractmethod
    def load_params(self, params: dict[str, Any]) -> None:
        """Restore parameters written by :meth:`params`."""

    # -- shared -------------------------------------------------------------------------
    def split_model(self):
        """The regressor that splits kernel time into compute / memory shares."""
        return self._split if self._split is not None else self

    def fit_correction(self, shapes: Sequence[CandidateShape], measured_ms: Sequence[float]) -> None:
        """Fit ``latency = alpha × (Σ kernels)^power + overhead_ms`` on end-to-end measurements.

        Fewer than six measurements fit only the scale: ``alpha`` is the median ratio of
        measured to summed time (``power = 1``, no overhead term, ``alpha`` in [0.3, 3]).
        Isolated kernels each carry the runtime's per-call cost, so their sum usually
        overshoots the whole graph; an additive overhead alone cannot take that back.

        More fit ``alpha`` and ``power`` by least squares in log space (relative error), ``power``
        bounded to [0.7, 1.5] and ``alpha`` to [0.3, 3]: isolated kernels run faster than in the
        whole graph for big layers and slower for tiny ones, so the whole graph's time grows faster
        than their sum. A linear fit with a free offset goes negative and predicts ~0 ms for heavily
        pruned candidates.

        Raises:
            ConfigError: If a measured latency is NaN, ±inf or not positive, or the counts differ.
        """
        if not shapes:
            return
        y = finite_latencies(measured_ms, "fit_correction")
        if len(y) != len(shapes):
            raise ConfigError(f"fit_correction: {len(shapes)} shapes but {len(y)} measured latencies")
        sums = np.array([self._kernel_ms(s)[0].sum() for s in shapes])
        ok = (sums > 0) & (y > 0)
        self.power = 1.0
        if ok.sum() < 6:  # too few points to separate scale from shape robustly
            self.alpha = float(np.clip(np.median(y[ok] / sums[ok]), 0.3, 3.0)) if ok.any() else 1.0
            self.overhead_ms = 0.0
            return
        from scipy.optimize import lsq_linear

        a_mat = np.stack([np.ones(ok.sum()), np.log(sums[ok])], axis=1)
        res = lsq_linear(a_mat, np.log(y[ok]), bounds=([np.log(0.3), 0.7], [np.log(3.0), 1.5]))
        self.alpha, self.power, self.overhead_ms = float(np.exp(res.x[0])), float(res.x[1]), 0.0

    def _arrays_for(self, candidate: Any) -> tuple[KernelArrays, CandidateShape, tuple[str, ...],
                                                    tuple[str, ...] | None]:
        if isinstance(candidate, CandidateShape):
            if self.template is None:
                raise ConfigError("this cost model has no model template; predict from an ONNX file instead")
            return self.template.arrays, candidate, self.template.modules, self.template.keys
        if isinstance(candidate, (str, os.PathLike, bytes, bytearray)) or type(candidate).__name__ == "ModelProto":
            from .kernels import detect_kernels

            ks = detect_kernels(candidate)
            feats = [k.features for k in ks]
            shape = CandidateShape(tuple(f.cin for f in feats), tuple(f.cout for f in feats),
                                   tuple(f.weight_density for f in feats), tuple(f.nm_pattern for f in feats))
            modules = tuple(k.module for k in ks)
            keys = None
            t = self.template
            if t is not None and len(ks) == len(t.kernels) and all(
                a.features.op == b.features.op for a, b in zip(ks, t.kernels)
            ):
                keys = t.keys
                modules = t.modules
            return KernelArrays(feats, 4), shape, modules, keys
        if hasattr(candidate, "named_modules"):
            if self.template is None:
                raise ConfigError("this cost model has no model template; build it with load_cost_model(...)")
            # Zero counting only matters where the target's kernels exploit sparsity (else latency and
            # bytes moved do not depend on it); it costs ~5 ms on a 9 M-weight model.
            exploits = bool(set(self.target.sparsity_support) - {"none"})
            return self.template.arrays, self.template.describe(candidate, sparsity=exploits), \
                self.template.modules, self.template.keys
        raise ConfigError(f"cannot predict the cost of a {type(candidate).__name__}; pass a pruned nn.Module, "
                          "a CandidateShape or an ONNX file")

    def _kernel_ms(self, shape: CandidateShape, arrays: KernelArrays | None = None,
                   keys: Sequence[str] | None = None) -> tuple[np.ndarray, np.ndarray]:
        if arrays is None:
            arrays, keys = self.template.arrays, self.template.keys  # type: ignore[union-attr]
        cin = np.asarray(shape.cin, dtype=float)
        cout = np.asarray(shape.cout, dtype=float)
        density = np.asarray(shape.weight_density, dtype=float)
        if not (np.isfinite(cin).all() and np.isfinite(cout).all() and np.isfinite(density).all()
                and (cin >= 0).all() and (cout >= 0).all()):
            raise ConfigError("cannot predict a candidate whose channel counts or weight densities are not "
                              f"finite non-negative numbers (cin={shape.cin}, cout={shape.cout}, "
                              f"density={shape.weight_density})")
        dense = self.dense_kernel_ms(arrays, cin, cout, keys)
        macs, act_b, w_b = arrays.costs(cin, cout)
        split = self.split_model()
        comp, mem_w, total = split.shares(arrays, macs, act_b, w_b)
        frac_c = np.divide(comp, total, out=np.zeros_like(comp), where=total > 0)
        frac_w = np.divide(mem_w, total, out=np.zeros_like(comp), where=total > 0)
        support = set(self.target.sparsity_support)
        structures = STRUCTURES  # what each structure needs from a target to run faster: autoprune.structures
        # N:M kernels the target's kernels exploit: N/M of the compute, N/M of the values plus their indices.
        kept = np.array([_nm_kept(p) if p and structures.get("nm").speeds_up_on(support, p) else 1.0
                         for p in shape.nm_pattern])
        index_bits = np.array([math.ceil(math.log2(int(p.split(":")[1]))) if p else 0 for p in shape.nm_pattern])
        nm = kept < 1.0
        bpe = float(self.target.bytes_per_element)
        compute_scale = kept.copy()
        weight_scale = kept * (1.0 + index_bits / (8 * bpe))
        weight_scale = np.where(nm, weight_scale, 1.0)
        if structures.get("unstructured").speeds_up_on(support):
            uns = (density < 1.0) & ~nm
            compute_scale = np.where(uns, np.minimum(1.0, UNSTRUCTURED_OVERHEAD * density), compute_scale)
            weight_scale = np.where(uns, np.minimum(1.0, density * (1.0 + 4.0 / bpe)), weight_scale)  # CSR
        factor = 1.0 - frac_c * (1.0 - compute_scale) - frac_w * (1.0 - weight_scale)
        ms = dense * np.clip(factor, 0.05, 1.0)
        moved = act_b + w_b * weight_scale
        return ms, np.stack([macs, moved])

    def predict(self, candidate: Any) -> CostEstimate:
        """Predict the latency and energy of a candidate.

        Args:
            candidate: A pruned ``nn.Module`` of the template's model, a
                :class:`CandidateShape`, or an exported ONNX file (path, bytes, proto).

        Raises:
            ConfigError: If the candidate cannot be described, or its shape holds NaN or ±inf.
            CalibrationError: If the fitted parameters give a non-finite latency (never returned).

        The estimate carries the latency's band (``band_ms``, ``outside_range``) where the model has an
        :attr:`uncertainty`, at the template's input size.
        """
        arrays, shape, modules, keys = self._arrays_for(candidate)
        ms, extra = self._kernel_ms(shape, arrays, keys)
        total = float(ms.sum())
        scale = self.alpha * (total ** (self.power - 1.0) if total > 0 and self.power != 1.0 else 1.0)
        per = ms * scale if math.isfinite(scale) else ms + scale  # per-kernel shares of the corrected total
        latency = float(per.sum() + self.overhead_ms)
        if not math.isfinite(latency):  # a corrupt or hand-edited calibration: never a NaN estimate
            raise CalibrationError(f"the {self.name} cost model of {self.target.name} predicts {latency} ms: its "
                                   "parameters are not finite; profile the model again")
        latency = max(latency, 1e-6)
        dram = float(extra[1].sum())
        band = None
        if self.uncertainty is not None:
            band = self.uncertainty.band(latency, input_size_px=self.template.input_size
                                         if self.template is not None else None)
        return CostEstimate(
            latency_ms=latency,
            energy_mj=energy_mj(self.target, latency, dram),
            per_kernel_ms=tuple(zip(modules, (float(x) for x in per))),
            overhead_ms=float(self.overhead_ms),
            macs=int(extra[0].sum()),
            dram_bytes=int(dram),
            provenance=self.provenance,
            band_ms=band.half_width_ms if band is not None else None,
            outside_range=band.outside if band is not None else None,
        )

    def predict_onnx(self, path: Any) -> CostEstimate:
        """Predict from an exported ONNX model (path, bytes or proto)."""
        return self.predict(path if not isinstance(path, os.PathLike) else os.fspath(path))

    def shares(self, arrays: KernelArrays, macs: np.ndarray, act_b: np.ndarray,
               w_b: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Return (compute ms, weight-read ms, total ms) per kernel; regressors override this."""
        raise NotImplementedError


def class_index(name: str) -> int:
    """Index of an op class in :data:`~autoprune.costmodel.features.OP_CLASSES`."""
    return OP_CLASSES.index(name)
