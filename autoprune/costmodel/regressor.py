"""``regressor``: a kernel-level roofline regressor over named features.

Every kernel of op class ``c`` (conv, dwconv, linear, elementwise, pooling) costs

    t = o_c + a_c · MACs + b_c · bytes_moved          (ms)

with non-negative coefficients: a per-kernel launch overhead, a MAC-bound term and
a memory-bound term (a roofline that does not assume compute and memory overlap).
``reshape`` kernels are free. Coefficients come either from a datasheet roofline
with per-class efficiency factors (:meth:`Regressor.from_roofline`), from a fit to
isolated kernel measurements (:meth:`Regressor.fit`, non-negative least squares on
relative error, one fit per class), or from a fit of efficiency factors to
published whole-model latencies (:func:`fit_efficiencies`). Because it only uses
MACs and bytes it generalises to shapes it never saw.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from scipy.optimize import nnls

from .base import COST_MODELS, CostModel, FitSample
from .features import OP_CLASSES
from .targets import TargetSpec
from .template import KernelArrays, ModelTemplate

__all__ = ["DEFAULT_EFFICIENCY", "Regressor", "fit_efficiencies", "roofline_design"]

#: Datasheet-prior efficiencies (fraction of peak FLOPs / bandwidth reached) per class.
DEFAULT_EFFICIENCY: dict[str, float] = {
    "conv": 0.5, "dwconv": 0.1, "linear": 0.3, "elementwise": 0.5, "pooling": 0.5,
}
DEFAULT_OVERHEAD_MS = 0.02
_FITTED = ("conv", "dwconv", "linear", "elementwise", "pooling")


class Regressor(CostModel):
    """Per-op-class linear roofline (see the module docstring)."""

    name = "regressor"

    def __init__(self, target: TargetSpec, template: ModelTemplate | None = None) -> None:
        super().__init__(target, template)
        n = len(OP_CLASSES)
        self.o = np.zeros(n)
        self.a = np.zeros(n)
        self.b = np.zeros(n)
        self.set_roofline(DEFAULT_EFFICIENCY, DEFAULT_OVERHEAD_MS)

    def set_roofline(self, efficiency: Mapping[str, float], overhead_ms: float,
                     classes: Sequence[str] = _FITTED) -> None:
        """Set classes' coefficients from efficiency factors of the target's roofline."""
        for c in classes:
            i = OP_CLASSES.index(c)
            eff = max(float(efficiency[c]), 1e-6)
            self.a[i] = 2.0 / (self.target.peak_gflops * 1e9 * eff) * 1e3
            self.b[i] = 1.0 / (self.target.bandwidth_gbps * 1e9 * eff) * 1e3
            self.o[i] = overhead_ms

    @classmethod
    def from_roofline(cls, target: TargetSpec, efficiency: Mapping[str, float] | None = None,
                      overhead_ms: float = DEFAULT_OVERHEAD_MS, template: ModelTemplate | None = None
                      ) -> Regressor:
        """A regressor from the target's datasheet roofline and efficiency factors."""
        r = cls(target, template)
        r.set_roofline({**DEFAULT_EFFICIENCY, **(efficiency or {})}, overhead_ms)
        return r

    def fit(self, samples: Sequence[FitSample]) -> None:
        """Fit each class's ``(o, a, b)`` on isolated-kernel samples (≥ 3 per class).

        Classes with fewer samples keep their current (prior) coefficients.
        """
        rows: dict[int, list[tuple[float, float, float]]] = {}
        for s in samples:
            if s.kind != "kernel" or len(s.features) != 1:
                continue
            f = s.features[0]
            c = OP_CLASSES.index(f.op_class)
            rows.setdefault(c, []).append((float(f.macs), float(f.bytes_moved), float(s.latency_ms)))
        for c, data in rows.items():
            if OP_CLASSES[c] == "free" or len(data) < 3:
                continue
            d = np.array(data)
            y = d[:, 2]
            # scale columns for conditioning, weight rows by 1/y (relative error)
            scale = np.array([1.0, max(d[:, 0].max(), 1.0), max(d[:, 1].max(), 1.0)])
            x = np.stack([np.ones(len(y)), d[:, 0], d[:, 1]], axis=1) / scale
            coef, _ = nnls(x / y[:, None], np.ones_like(y))
            coef = coef / scale
            self.o[c], self.a[c], self.b[c] = coef

    def dense_kernel_ms(self, arrays: KernelArrays, cin: np.ndarray, cout: np.ndarray,
                        keys: Sequence[str] | None) -> np.ndarray:
        macs, act_b, w_b = arrays.costs(cin, cout)
        return self.shares(arrays, macs, act_b, w_b)[2]

    def shares(self, arrays: KernelArrays, macs: np.ndarray, act_b: np.ndarray,
               w_b: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        c = arrays.cls
        comp = self.a[c] * macs
        mem_w = self.b[c] * w_b
        total = self.o[c] + comp + self.b[c] * act_b + mem_w
        return comp, mem_w, total

    def params(self) -> dict[str, Any]:
        return {
            "form": "t_ms = o + a*macs + b*bytes per op class",
            "classes": {c: {"overhead_ms": float(self.o[i]), "ms_per_mac": float(self.a[i]),
                            "ms_per_byte": float(self.b[i])} for i, c in enumerate(OP_CLASSES)},
            "alpha": self.alpha, "overhead_ms": self.overhead_ms, "power": self.power,
        }

    def load_params(self, params: dict[str, Any]) -> None:
        for i, c in enumerate(OP_CLASSES):
            p = params["classes"][c]
            self.o[i], self.a[i], self.b[i] = p["overhead_ms"], p["ms_per_mac"], p["ms_per_byte"]
        self.alpha = float(params.get("alpha", 1.0))
        self.overhead_ms = float(params.get("overhead_ms", 0.0))
        self.power = float(params.get("power", 1.0))


COST_MODELS.register("regressor", Regressor)


def roofline_design(target: TargetSpec, arrays: KernelArrays, cin: np.ndarray, cout: np.ndarray) -> np.ndarray:
    """Per-class roofline times at 100 % efficiency, plus the kernel count.

    Returns a vector ``[t_conv, t_dwconv, t_linear, t_elementwise, t_pooling, n_kernels]``
    (ms, ms, ..., count) such that the model latency is ``Σ_c t_c / eff_c + n × o``.
    """
    macs, act_b, w_b = arrays.costs(cin, cout)
    t = 2 * macs / (target.peak_gflops * 1e9) * 1e3 + (act_b + w_b) / (target.bandwidth_gbps * 1e9) * 1e3
    row = [float(t[arrays.cls == OP_CLASSES.index(c)].sum()) for c in _FITTED]
    row.append(float(np.sum(arrays.cls != OP_CLASSES.index("free"))))
    return np.array(row)


def fit_efficiencies(design: np.ndarray, latency_ms: np.ndarray,
                     prior: Mapping[str, float] | None = None, prior_overhead_ms: float = DEFAULT_OVERHEAD_MS,
                     prior_weight: float = 0.1) -> tuple[dict[str, float], float]:
    """Fit per-class efficiencies and a per-kernel overhead to whole-model latencies.

    Solves, by non-negative least squares on relative error, ``latency ≈ Σ_c
    design_c · x_c + n · o`` with ``x_c = 1/eff_c``, plus ridge rows pulling every
    parameter toward its prior (weight ``prior_weight``; this is what keeps a
    class seen in one model only from being fitted to noise).

    Args:
        design: ``(models, 6)`` rows from :func:`roofline_design`.
        latency_ms: Published or measured latencies.
        prior: Prior efficiencies per class (defaults: :data:`DEFAULT_EFFICIENCY`).
        prior_overhead_ms: Prior per-kernel overhead.
        prior_weight: Strength of the pull toward the prior.

    Returns:
        ``(efficiency per class, overhead_ms)``.
    """
    prior = {**DEFAULT_EFFICIENCY, **(prior or {})}
    x0 = np.array([1.0 / prior[c] for c in _FITTED] + [prior_overhead_ms])
    y = np.asarray(latency_ms, dtype=float)
    a_data = design / y[:, None]
    b_data = np.ones_like(y)
    a_prior = np.sqrt(prior_weight) * np.diag(1.0 / x0)
    b_prior = np.sqrt(prior_weight) * np.ones(len(x0))
    x, _ = nnls(np.vstack([a_data, a_prior]), np.concatenate([b_data, b_prior]))
    eff = {c: float(1.0 / max(x[i], 1e-9)) for i, c in enumerate(_FITTED)}
    return eff, float(x[-1])
