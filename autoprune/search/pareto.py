"""Pareto dominance, fronts and hypervolume as pure numpy functions.

Every function takes an ``(n, k)`` array of objective values and a sequence of
``k`` directions (``"maximize"`` / ``"minimize"``); internally everything is
turned into minimisation by negating maximised columns.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def to_minimization(values: np.ndarray, directions: Sequence[str]) -> np.ndarray:
    """Return a copy of ``values`` where every column is to be minimised."""
    values = np.asarray(values, dtype=float)
    if values.ndim != 2 or values.shape[1] != len(directions):
        raise ValueError(f"values must be (n, {len(directions)}), got {values.shape}")
    signs = np.array([-1.0 if d == "maximize" else 1.0 for d in directions])
    bad = [d for d in directions if d not in ("maximize", "minimize")]
    if bad:
        raise ValueError(f"unknown direction {bad[0]!r}; valid: maximize, minimize")
    return values * signs


def dominates(a: np.ndarray, b: np.ndarray) -> bool:
    """True if minimisation vector ``a`` Pareto-dominates ``b``."""
    return bool(np.all(a <= b) and np.any(a < b))


def pareto_mask(values: np.ndarray, directions: Sequence[str]) -> np.ndarray:
    """Boolean mask of the non-dominated rows. Rows with NaN are never on the front.

    Duplicate non-dominated points are all kept.
    """
    m = to_minimization(values, directions)
    n = len(m)
    finite = np.all(np.isfinite(m), axis=1)
    mask = finite.copy()
    for i in np.flatnonzero(finite):
        others = m[finite]
        dom = np.all(others <= m[i], axis=1) & np.any(others < m[i], axis=1)
        if dom.any():
            mask[i] = False
    return mask if n else np.zeros(0, dtype=bool)


def hypervolume(values: np.ndarray, reference: Sequence[float], directions: Sequence[str]) -> float:
    """The hypervolume dominated by ``values`` and bounded by ``reference``.

    Exact for any number of objectives (recursive slicing; fine for the few
    hundred points of a pruning study). Points that do not strictly dominate the
    reference contribute nothing.

    Args:
        values: ``(n, k)`` objective values.
        reference: ``k`` reference values in the same (raw) units and directions.
        directions: ``k`` directions.
    """
    m = to_minimization(values, directions)
    ref = to_minimization(np.asarray(reference, dtype=float)[None, :], directions)[0]
    m = m[np.all(np.isfinite(m), axis=1)]
    m = m[np.all(m < ref, axis=1)]
    if len(m) == 0:
        return 0.0
    m = m[pareto_mask(m, ["minimize"] * m.shape[1])]
    return float(_hv(np.unique(m, axis=0), ref))


def _hv(points: np.ndarray, ref: np.ndarray) -> float:
    k = points.shape[1]
    if k == 1:
        return float(ref[0] - points[:, 0].min())
    if k == 2:
        order = np.argsort(points[:, 0])
        p = points[order]
        volume, best_y = 0.0, ref[1]
        for x, y in p:
            if y < best_y:
                volume += (ref[0] - x) * (best_y - y)
                best_y = y
        return volume
    # Slice along the last objective: between consecutive levels the dominated
    # region's cross-section is the (k-1)-D hypervolume of the points below.
    order = np.argsort(points[:, -1])
    p = points[order]
    levels = np.append(p[:, -1], ref[-1])
    volume = 0.0
    for i in range(len(p)):
        depth = levels[i + 1] - levels[i]
        if depth > 0:
            volume += depth * _hv(p[: i + 1, :-1], ref[:-1])
    return volume


def reference_point(values: np.ndarray, directions: Sequence[str], margin: float = 0.1) -> np.ndarray:
    """A reference point slightly worse than the worst value of each objective."""
    m = to_minimization(values, directions)
    m = m[np.all(np.isfinite(m), axis=1)]
    worst = m.max(axis=0)
    span = np.maximum(m.max(axis=0) - m.min(axis=0), 1e-12)
    ref = worst + margin * span
    signs = np.array([-1.0 if d == "maximize" else 1.0 for d in directions])
    return ref * signs


def best_within_drop(accuracy: np.ndarray, gain: np.ndarray, reference_accuracy: float, max_drop: float) -> float:
    """The largest ``gain`` (e.g. speedup over dense) among points whose accuracy is at most
    ``max_drop`` below ``reference_accuracy`` (absolute, 0.01 = one point); NaN when none is.

    Args:
        accuracy: ``(n,)`` accuracies (fractions).
        gain: ``(n,)`` figures to maximise, e.g. ``dense_ms / latency_ms``.
        reference_accuracy: The dense model's accuracy.
        max_drop: The allowed drop, e.g. ``0.01``.
    """
    acc = np.asarray(accuracy, dtype=float)
    g = np.asarray(gain, dtype=float)
    ok = np.isfinite(acc) & np.isfinite(g) & (acc >= reference_accuracy - max_drop - 1e-12)
    return float(g[ok].max()) if ok.any() else float("nan")
