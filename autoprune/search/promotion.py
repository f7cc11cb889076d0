"""Promotion by latency band: which screened candidates go on to the next rung (pure functions).

The speed range is cut into log-spaced predicted-latency bands (:func:`band_edges`); within a band the
candidates are ranked by Pareto layer of (accuracy, latency), then by accuracy (:func:`rank`); the best few of
every band are promoted, round-robin over the bands (:func:`promote`), so the next rung covers the whole
speed range the way a sweep does. The same scores always give the same promotion.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from autoprune.search.pareto import pareto_mask


@dataclass(frozen=True)
class Scored:
    """A candidate's score at one rung (what promotion reads).

    Attributes:
        index: The candidate's index in its round.
        accuracy: Validation accuracy (a fraction) on the screening subset.
        latency_ms: PREDICTED latency on the target.
        plan_key: A digest of the snapped plan (two parameter sets that snap to one plan share it).
    """

    index: int
    accuracy: float
    latency_ms: float
    plan_key: str = ""


def plan_digest(plan: Mapping[str, Any]) -> str:
    """A short digest of a snapped plan's JSON form."""
    return hashlib.sha1(json.dumps(plan, sort_keys=True, default=str).encode()).hexdigest()[:12]


# -------------------------------------------------------------------------------------------- pure logic
def band_edges(fastest_ms: float, dense_ms: float, bands: int) -> tuple[float, ...]:
    """``bands + 1`` log-spaced edges from ``fastest_ms`` to ``dense_ms`` (one band if they do not differ)."""
    lo, hi = float(fastest_ms), float(dense_ms)
    if not (math.isfinite(lo) and math.isfinite(hi)) or lo <= 0 or hi <= lo * 1.0001:
        return (min(lo, hi), max(lo, hi))
    return tuple(float(x) for x in np.geomspace(lo, hi, bands + 1))


def band_of(latency_ms: float, edges: Sequence[float]) -> int:
    """The band of a latency: 0 is the fastest; outside the edges, the nearest band."""
    inner = list(edges[1:-1])
    return int(sum(latency_ms >= e for e in inner))


def rank(scored: Sequence[Scored]) -> list[Scored]:
    """``scored`` best first: by Pareto layer of (accuracy up, latency down), then accuracy, latency, index."""
    left = sorted(scored, key=lambda s: s.index)
    layer: dict[int, int] = {}
    depth = 0
    while left:
        mask = pareto_mask(np.array([[s.accuracy, s.latency_ms] for s in left]), ["maximize", "minimize"])
        for s, top in zip(left, mask):
            if top:
                layer[s.index] = depth
        left = [s for s, top in zip(left, mask) if not top]
        depth += 1
    return sorted(scored, key=lambda s: (layer[s.index], -s.accuracy, s.latency_ms, s.index))


def promote(scored: Sequence[Scored], edges: Sequence[float], per_band: int, *,
            skip_plans: Sequence[str] = (), limit: int | None = None) -> list[int]:
    """Indices of the candidates to promote: the best ``per_band`` of each band (:func:`rank`), one plan once.

    Returned round-robin over the bands, fastest band first (the best of every band, then the second
    best of every band, ...), cut to ``limit``. A pure function: the same scores give the same indices.

    Args:
        scored: The rung's scores.
        edges: The bands' edges (:func:`band_edges`).
        per_band: Candidates taken from each band.
        skip_plans: Plan digests never promoted (already promoted, or already a trial).
        limit: At most this many in all.
    """
    by_band: dict[int, list[Scored]] = {}
    for s in scored:
        by_band.setdefault(band_of(s.latency_ms, edges), []).append(s)
    seen = set(skip_plans)
    picks: dict[int, list[int]] = {}
    for band in sorted(by_band):
        chosen = picks.setdefault(band, [])
        for s in rank(by_band[band]):
            if len(chosen) >= per_band:
                break
            if s.plan_key and s.plan_key in seen:
                continue
            seen.add(s.plan_key)
            chosen.append(s.index)
    out = [picks[b][k] for k in range(per_band) for b in sorted(picks) if k < len(picks[b])]
    return out[:limit] if limit is not None else out


__all__ = ["Scored", "band_edges", "band_of", "plan_digest", "promote", "rank"]
