"""``lut``: per-layer latency lookup tables (NetAdapt-style) over kept channels.

Each distinct kernel configuration (op, fused post-ops, dense channels, kernel
size, stride, spatial sizes) gets a table of isolated measurements over a grid of
kept ``(cin, cout)`` counts; identical layers share one table. A candidate's
kernel time is the bilinear interpolation of its table (linear extrapolation
below the smallest grid point, clamped above the largest). Depthwise convolutions
and weightless kernels (pools, adds) have 1-D tables over their channel count.
Kernels without a table fall back to a :class:`~autoprune.costmodel.regressor.Regressor`
fitted on the same isolated measurements, which also provides the compute /
memory split used for sparsity.

Isolated kernels run with their own layout conversions and, timed over and over,
with their weights cache-hot, so their times differ from the same kernels inside
the whole graph: by a factor that depends on where a kernel sits, and by the time
to stream the weights that do not stay cached between inferences.
:meth:`LutCostModel.fit_kernel_scales` (what ``autoprune profile`` uses) fits one
such factor per kernel, the streaming cost and a per-model overhead on whole pruned
models measured end to end: ``latency = c + Σ_k (a_k × table_k + β × weight_MB_k ×
miss)``, ``miss = max(0, 1 - C / total weight MB)``. Fewer end-to-end measurements fall back to the global correction of
:meth:`~autoprune.costmodel.base.CostModel.fit_correction`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from autoprune.errors import ConfigError

from .base import COST_MODELS, CostModel, FitSample, finite_latencies
from .regressor import Regressor
from .targets import TargetSpec
from .template import KernelArrays, ModelTemplate

__all__ = ["LutCostModel", "one_dimensional"]


#: Cache sizes (MB of weights that stay cached between inferences) the weight-streaming fit tries;
#: the last is "everything stays cached" (no streaming term).
CACHE_GRID_MB: tuple[float, ...] = (0.0, 0.5, 1.0, 2.0, 3.0, 4.0, 6.0, 8.0, 12.0, 16.0, 24.0, 32.0, 48.0, 64.0, 1e9)


def _miss(total_mb: np.ndarray, cache_mb: float) -> np.ndarray:
    """Share of a model's weights that streams from memory each inference: ``max(0, 1 - C / total)``."""
    return np.clip(1.0 - cache_mb / np.maximum(total_mb, 1e-12), 0.0, 1.0)


def _weight_mb(arrays: KernelArrays, cin: np.ndarray, cout: np.ndarray) -> np.ndarray:
    """Weight MB of every kernel at these channel counts (what streams from memory when not cached)."""
    return arrays.costs(np.asarray(cin, float), np.asarray(cout, float))[2] / 1e6


def one_dimensional(key: str) -> bool:
    """Whether a config key's table is 1-D (depthwise conv, or a weightless kernel)."""
    return not key.startswith(("conv", "gemm")) or "gdw|" in key


class LutCostModel(CostModel):
    """Lookup tables with a regressor fallback (see the module docstring)."""

    name = "lut"

    def __init__(self, target: TargetSpec, template: ModelTemplate | None = None) -> None:
        super().__init__(target, template)
        self.regressor = Regressor(target, template)
        self._split = self.regressor
        self.tables: dict[str, dict[str, list]] = {}
        self._index_cache: dict[int, tuple] = {}
        #: Per template kernel ``(unused, unused, unused, table scale)``: the scales fitted on whole
        #: models (:meth:`fit_kernel_scales`), or None. The first three columns are NaN (calibration files
        #: keep four columns per kernel).
        self.kernel_fit: np.ndarray | None = None
        self.kernel_fit_keys: tuple[str, ...] | None = None
        #: The weight-streaming term fitted with the scales: ``{"ms_per_mb", "cache_mb"}``, or None.
        self.memory_fit: dict[str, float] | None = None
        self._scale_cache: tuple[np.ndarray, np.ndarray] | None = None

    def fit(self, samples: Sequence[FitSample]) -> None:
        """Build tables from isolated-kernel samples and fit the fallback regressor."""
        self.regressor.fit(samples)
        points: dict[str, dict[tuple[int, int], list[float]]] = {}
        for s in samples:
            if s.kind != "kernel" or len(s.features) != 1:
                continue
            f = s.features[0]
            points.setdefault(s.keys[0], {}).setdefault((f.cin, f.cout), []).append(s.latency_ms)
        tables = {}
        for key, pts in points.items():
            med = {k: float(np.median(v)) for k, v in pts.items()}
            if one_dimensional(key):
                by_c = {}
                for (_, co), v in med.items():
                    by_c.setdefault(co, []).append(v)
                cs = sorted(by_c)
                vals = [float(np.median(by_c[c])) for c in cs]
                tables[key] = {"cin": [max(c for c, _ in med)] * len(cs), "cout": cs,
                               "ms": [vals for _ in cs], "dims": 1}
                continue
            cins = sorted({c for c, _ in med})
            couts = sorted({d for _, d in med})
            grid = np.full((len(cins), len(couts)), np.nan)
            for (c, d), v in med.items():
                grid[cins.index(c), couts.index(d)] = v
            if np.isnan(grid).any():  # incomplete grid (a failed measurement): fill with the mean
                grid[np.isnan(grid)] = np.nanmean(grid)
            tables[key] = {"cin": cins, "cout": couts, "ms": grid.tolist(), "dims": 2}
        self.tables = tables
        self._index_cache.clear()

    def _index(self, keys: Sequence[str]) -> tuple:
        cached = self._index_cache.get(id(keys))
        if cached is not None and cached[0] is keys:
            return cached[1]
        n = len(keys)
        g = max([max(len(t["cin"]), len(t["cout"])) for t in self.tables.values()] + [2])
        gx = np.zeros((n, g))
        gy = np.zeros((n, g))
        v = np.zeros((n, g, g))
        has = np.zeros(n, dtype=bool)
        for i, key in enumerate(keys):
            t = self.tables.get(key)
            if t is None:
                continue
            has[i] = True
            cx, cy, m = np.asarray(t["cin"], float), np.asarray(t["cout"], float), np.asarray(t["ms"], float)
            px, py = g - len(cx), g - len(cy)
            gx[i] = np.pad(cx, (0, px), mode="edge")
            gy[i] = np.pad(cy, (0, py), mode="edge")
            v[i] = np.pad(m, ((0, px), (0, py)), mode="edge")
        out = (gx, gy, v, has)
        self._index_cache[id(keys)] = (keys, out)
        return out

    @staticmethod
    def _locate(grid: np.ndarray, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        g = grid.shape[1]
        j = np.clip(np.sum(grid[:, 1:g - 1] <= x[:, None], axis=1), 0, g - 2)
        rows = np.arange(len(x))
        lo, hi = grid[rows, j], grid[rows, j + 1]
        den = hi - lo
        w = np.divide(x - lo, den, out=np.zeros_like(x), where=den > 0)
        return j, np.clip(w, -1.0, 1.0)

    def fit_kernel_scales(self, shapes: Sequence[Any], measured_ms: Sequence[float],
                          ridge: float = 0.1) -> dict[str, Any]:
        """Fit each kernel's in-context scale, and the weight-streaming term, on whole-model measurements.

        ``latency = c + Σ_k (a_k × table_k + β × weight_MB_k × miss)``, least squares on relative
        error, where ``miss = max(0, 1 - C / total weight MB)`` is the share of the weights that does
        not stay in the cache between inferences. An isolated kernel is timed over and over with its
        weights cache-hot; inside a model whose weights exceed the cache they stream from DRAM
        every inference (measured here: VGG-11's 512→512 3×3 conv at 2×2 takes 0.19 ms alone and
        0.9 ms in the 37 MB model), and a model pruned below the cache size gets that time back.
        ``C`` (MB) is chosen on a grid by the class-level fit; ``β >= 0`` (ms per MB) and ``c``
        (free: isolated tables keep some per-call cost a whole graph does not pay) are fitted.
        The ``a_k >= 0`` are shrunk towards one scale per op class, with a penalty ``ridge ×
        (a_k - a_class)²`` weighted by the kernel's mean share of the latency, so kernels the fit
        plans barely vary stay at their class's scale. Deterministic: no random state.
        Replaces the global correction (``alpha = power = 1``, ``overhead_ms = c``).

        Args:
            shapes: :class:`~autoprune.costmodel.template.CandidateShape` of each measured model.
            measured_ms: Their end-to-end latencies (ms).
            ridge: Shrinkage strength towards the op-class scales.

        Returns:
            Fit statistics: the class scales, the overhead, the memory term and the in-sample MAPE.

        Raises:
            ConfigError: If a measured latency is NaN, ±inf or not positive, or the counts differ.
        """
        from scipy.optimize import lsq_linear

        if self.template is None:
            raise ValueError("fit_kernel_scales needs the model's template")
        self.kernel_fit = self.kernel_fit_keys = None
        self.memory_fit = None
        y = finite_latencies(measured_ms, "fit_kernel_scales")
        if len(y) != len(shapes):
            raise ConfigError(f"fit_kernel_scales: {len(shapes)} shapes but {len(y)} measured latencies")
        self.alpha, self.power, self.overhead_ms = 1.0, 1.0, 0.0
        tab = np.stack([self._kernel_ms(s)[0] for s in shapes])  # (models, kernels): isolated tables
        wmb = np.stack([_weight_mb(self.template.arrays, s.cin, s.cout) for s in shapes])  # (models, kernels)
        ok = np.isfinite(y) & (y > 0)
        tab, wmb, y = tab[ok], wmb[ok], y[ok]
        n, k = tab.shape
        if n < 2:
            raise ValueError("fit_kernel_scales needs at least two measured models")
        classes = [f.op_class for f in self.template.features]
        names = sorted(set(classes))
        member = np.array([[c == name for c in classes] for name in names], dtype=float)  # (classes, kernels)
        ones = np.ones((n, 1))
        c_low = -0.5 * float(y.min())  # the intercept may take back per-call costs, never the whole time
        total_mb = wmb.sum(axis=1)
        best = None
        for cache_mb in CACHE_GRID_MB:
            stream = (total_mb * _miss(total_mb, cache_mb))[:, None]
            a_mat = np.hstack([ones, tab @ member.T, stream]) / y[:, None]
            lo = np.r_[c_low, np.zeros(len(names) + 1)]
            sol = lsq_linear(a_mat, np.ones(n), bounds=(lo, np.inf))
            err = float(np.mean(np.abs(a_mat @ sol.x - 1.0)))
            if best is None or err < best[0] - 1e-9:  # ties keep the smaller cache: deterministic
                best = (err, cache_mb, sol.x)
        _, cache_mb, coarse = best
        stream_k = wmb * _miss(total_mb, cache_mb)[:, None]  # (models, kernels): MB that stream
        stream = stream_k.sum(axis=1)[:, None]
        prior = np.concatenate([[coarse[0]], coarse[1:-1] @ member])
        share = tab.mean(axis=0) / y.mean()
        weight = np.sqrt(ridge) * np.sqrt(np.concatenate([[0.0], share, [0.0]]))
        a_mat = np.vstack([np.hstack([ones, tab, stream]) / y[:, None], np.diag(weight)])
        target = np.concatenate([np.ones(n), weight * np.r_[prior, 0.0]])
        x = lsq_linear(a_mat, target, bounds=(np.r_[c_low, np.zeros(k + 1)], np.inf)).x
        beta = float(x[-1])
        scales = np.where(share > 0, x[1:-1], 1.0)
        fit = np.full((k, 4), np.nan)
        fit[:, 3] = scales
        self.kernel_fit, self.kernel_fit_keys = fit, tuple(self.template.keys)
        self.memory_fit = {"ms_per_mb": beta, "cache_mb": float(cache_mb)} if beta > 0 else None
        self.overhead_ms = float(x[0])
        self._index_cache.clear()
        pred = tab @ scales + x[0] + stream[:, 0] * beta
        timed = (tab @ member.T).mean(axis=0) > 0  # classes with a table time (not reshapes)
        return {"class_scales": {c: float(v) for c, v, t in zip(names, coarse[1:-1], timed) if t},
                "overhead_ms": float(x[0]), "weight_stream_ms_per_mb": beta, "cache_mb": float(cache_mb),
                "kernel_scale_range": [float(scales.min()), float(scales.max())], "fit_points": int(n),
                "fit_mape": float(np.mean(np.abs(pred / y - 1.0)))}

    def dense_kernel_ms(self, arrays: KernelArrays, cin: np.ndarray, cout: np.ndarray,
                        keys: Sequence[str] | None) -> np.ndarray:
        ms = self._table_ms(arrays, cin, cout, keys)
        fit = self.kernel_fit
        if fit is None or keys is None or len(keys) != len(fit) or tuple(keys) != self.kernel_fit_keys:
            return ms
        ms = ms * self._scales(fit)
        mem = self.memory_fit
        if mem:
            wmb = _weight_mb(arrays, cin, cout)
            ms = ms + mem["ms_per_mb"] * wmb * _miss(wmb.sum(), mem["cache_mb"])
        return ms

    def _scales(self, fit: np.ndarray) -> np.ndarray:
        cached = self._scale_cache
        if cached is None or cached[0] is not fit:
            cached = self._scale_cache = (fit, np.where(np.isfinite(fit[:, 3]), fit[:, 3], 1.0))
        return cached[1]

    def _table_ms(self, arrays: KernelArrays, cin: np.ndarray, cout: np.ndarray,
                  keys: Sequence[str] | None) -> np.ndarray:
        reg = self.regressor.dense_kernel_ms(arrays, cin, cout, keys)
        if not keys or not self.tables:
            return reg
        gx, gy, v, has = self._index(keys)
        if not has.any():
            return reg
        jx, wx = self._locate(gx, cin)
        jy, wy = self._locate(gy, cout)
        r = np.arange(len(cin))
        val = ((1 - wx) * (1 - wy) * v[r, jx, jy] + wx * (1 - wy) * v[r, jx + 1, jy]
               + (1 - wx) * wy * v[r, jx, jy + 1] + wx * wy * v[r, jx + 1, jy + 1])
        floor = 0.25 * v[:, 0, 0]
        return np.where(has, np.maximum(val, floor), reg)

    def params(self) -> dict[str, Any]:
        out = {"tables": self.tables, "regressor": self.regressor.params(),
               "alpha": self.alpha, "overhead_ms": self.overhead_ms, "power": self.power}
        if self.kernel_fit is not None:
            out["kernel_fit"] = [[None if not np.isfinite(v) else float(v) for v in row] for row in self.kernel_fit]
            out["kernel_fit_keys"] = list(self.kernel_fit_keys or ())
        if self.memory_fit:
            out["memory_fit"] = dict(self.memory_fit)
        return out

    def load_params(self, params: dict[str, Any]) -> None:
        self.tables = {k: dict(v) for k, v in params["tables"].items()}
        self.regressor.load_params(params["regressor"])
        self.alpha = float(params.get("alpha", 1.0))
        self.overhead_ms = float(params.get("overhead_ms", 0.0))
        self.power = float(params.get("power", 1.0))
        fit = params.get("kernel_fit")
        self.kernel_fit = None if fit is None else np.array(
            [[np.nan if v is None else v for v in row] for row in fit], dtype=float).reshape(-1, 4)
        if self.kernel_fit is not None and np.isfinite(self.kernel_fit[:, :3]).any():
            raise ValueError("per-kernel in-context lines (a removed experiment) are no longer read; "
                             "profile the model again")
        self.kernel_fit_keys = None if fit is None else tuple(params.get("kernel_fit_keys", ()))
        mem = params.get("memory_fit")
        self.memory_fit = None if not mem else {"ms_per_mb": float(mem["ms_per_mb"]),
                                                 "cache_mb": float(mem["cache_mb"])}
        self._index_cache.clear()


COST_MODELS.register("lut", LutCostModel)
