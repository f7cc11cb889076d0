"""Promotion by latency band: which screened candidates go on to the next rung (pure functions).

The speed range is cut into predicted-latency bands evenly spaced in speedup (:func:`band_edges`); within a band the
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
    """``bands + 1`` latency edges from ``fastest_ms`` to ``dense_ms``, evenly spaced in speedup (``dense_ms /
    latency``), ascending; one band if they do not differ.

    Equal in speedup, each band is an equal share of the width of the front's hypervolume over (accuracy,
    speedup). Log-spaced bands (before 2026-12-04) gave the two mildest of five bands 1.0-2.1x of a 6.7x range,
    where a faster plan of the same accuracy covers the area (docs/benchmarks.md, Screening).
    """
    lo, hi = float(fastest_ms), float(dense_ms)
    if not (math.isfinite(lo) and math.isfinite(hi)) or lo <= 0 or hi <= lo * 1.0001:
        return (min(lo, hi), max(lo, hi))
    edges = [hi / float(x) for x in np.linspace(hi / lo, 1.0, bands + 1)]
    edges[0], edges[-1] = lo, hi
    return tuple(edges)


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
    best of every band, ...), cut to ``limit``; where the limit cuts a pass over the bands, that pass takes
    evenly spaced bands (:func:`spread`: both ends of the speed range first), not only the fastest ones. A
    pure function: the same scores give the same indices.

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
    out: list[int] = []
    for k in range(per_band):  # the k-th best of every band that has one, fastest band first
        rows = [picks[b][k] for b in sorted(picks) if k < len(picks[b])]
        room = len(rows) if limit is None else limit - len(out)
        if room <= 0:
            break
        out += rows if room >= len(rows) else [rows[j] for j in spread(len(rows), room)]
    return out


def spread(n: int, k: int) -> list[int]:
    """``k`` of the indices ``0 .. n-1``, evenly spaced and including both ends (the middle one for ``k == 1``)."""
    if k >= n:
        return list(range(n))
    if k == 1:
        return [(n - 1) // 2]
    return sorted({int(j * (n - 1) / (k - 1) + 0.5) for j in range(k)})


@dataclass(frozen=True)
class RoundBudget:
    """What one screening round may spend, so that screening stays a fixed share of the round's time.

    Attributes:
        slots: Candidates the round promotes to a full fine-tune.
        rung0_s: Seconds of rung-0 scoring (explore and refine); ``None``: no limit.
        rung1_plans: Candidates given a short fine-tune (rung 1); ``None``: the space's ``rung1_per_band``
            per band; 0: rung 1 skipped (it could not pick among more candidates than there are slots).
        finetune_s: The estimated seconds of one full fine-tune the budget was sized with (``None``: unknown).
    """

    slots: int
    rung0_s: float | None = None
    rung1_plans: int | None = None
    finetune_s: float | None = None


#: The share of a round's screening time given to rung 1 (when it can pick among more than the slots).
RUNG1_SHARE = 0.4


def round_budget(*, slots_left: int, per_round: int, share: float, finetune_s: float | None,
                 rung1_plan_s: float | None, time_left_s: float | None = None) -> RoundBudget:
    """Size a screening round so that screening is ``share`` of its wall time (a pure function).

    The round promotes ``slots`` candidates (at most ``per_round``, the space's bands x ``promote_per_band``;
    with a time limit, at most as many full fine-tunes as ``1 - share`` of it holds, and at least one), and its
    screening may spend ``share / (1 - share)`` of their fine-tuning time: :data:`RUNG1_SHARE` of it on rung 1
    when that buys short fine-tunes of more candidates than there are slots, the rest on rung 0.

    Args:
        slots_left: Fully fine-tuned trials the study still needs.
        per_round: The most a round promotes.
        share: The share of the round's time screening may take (0: no limit, as before budgets).
        finetune_s: Estimated seconds of one full fine-tune (``None``: unknown, no limit).
        rung1_plan_s: Estimated seconds of one rung-1 candidate (``None``: no rung 1).
        time_left_s: Seconds left to the study's time limit (``None``: none).
    """
    slots = max(0, min(int(slots_left), int(per_round)))
    if not share or not finetune_s or finetune_s <= 0 or not 0 < share < 1:
        return RoundBudget(slots, finetune_s=finetune_s)
    if time_left_s is not None:
        slots = min(slots, max(1, int(max(0.0, time_left_s) * (1 - share) // finetune_s)))
    screen_s = share / (1 - share) * slots * finetune_s
    n1 = int(RUNG1_SHARE * screen_s // rung1_plan_s) if rung1_plan_s and rung1_plan_s > 0 else 0
    if n1 <= slots:
        n1 = 0
    return RoundBudget(slots, screen_s - n1 * float(rung1_plan_s or 0.0), n1, float(finetune_s))


__all__ = ["RUNG1_SHARE", "RoundBudget", "Scored", "band_edges", "band_of", "plan_digest", "promote", "rank",
           "round_budget", "spread"]
