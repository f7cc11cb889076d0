"""Promotion by contribution to the front: which screened candidates a study should fine-tune next (pure functions).

Once a study has fine-tuned a few plans, it knows how its fine-tuned accuracy falls with speed. A screened
candidate's **expected** fine-tuned accuracy is then that curve at the candidate's predicted speedup, moved
by how much better than its neighbours it screened (:func:`expected_accuracy`: the move is the slope of
fine-tuned residuals on screening residuals over the study's own promoted trials, shrunk towards 0, so a
screen that ranks badly moves nothing). Candidates are promoted greedily by the hypervolume their expected
point adds to the front of (validation accuracy, predicted speedup), each pick added to the front before
the next is chosen (:func:`promote_by_contribution`), so the picks fill the front's widest gaps and extend
its fast end rather than crowd one band. The gain is counted per expected second of fine-tuning (a line
through the study's timed trials), since the budget a user gives is wall time.

Why hypervolume and not one pick per latency band: on Fashion-MNIST VGG-11 (docs/benchmarks.md, 2026-12-03)
the front's hypervolume sat almost wholly at 4-7x predicted speedup, where accuracy falls off; four of ten
band-promoted slots went to the two mildest bands (1.0-1.5x), which a faster plan of the same accuracy
covers, and which were also the slowest to fine-tune.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from autoprune.search.pareto import hypervolume

#: Accuracy (a fraction) below the dense model's at which the front's hypervolume starts counting.
FRONT_MARGIN = 0.10
#: Promoted trials a screening residual needs before it moves an expected accuracy (the shrinkage's prior).
SHRINK = 4


@dataclass(frozen=True)
class Finished:
    """A fully fine-tuned trial, as promotion reads it.

    Attributes:
        accuracy: Its validation accuracy (a fraction).
        latency_ms: Its PREDICTED latency on the target.
        screen_accuracy: Its rung-0 accuracy when it was screened (``None``: it was not, e.g. the dense anchor).
        seconds: Its fine-tune's wall time (``None``: unknown, or not fine-tuned, as the dense anchor).
    """

    accuracy: float
    latency_ms: float
    screen_accuracy: float | None = None
    seconds: float | None = None


def expected_seconds(finished: Sequence[Finished], latency_ms: Sequence[float]) -> np.ndarray | None:
    """Each candidate's expected fine-tune seconds: a straight line of seconds on predicted latency through the
    study's timed trials (a smaller plan fine-tunes faster), at least a tenth of their fastest; ``None`` with
    fewer than 3 timed trials."""
    timed = [(f.latency_ms, f.seconds) for f in finished if f.seconds is not None and f.seconds > 0]
    if len(timed) < 3 or len({x for x, _ in timed}) < 2:
        return None
    b, a = np.polyfit([x for x, _ in timed], [y for _, y in timed], 1)
    return np.maximum(a + b * np.asarray(latency_ms, dtype=float), 0.1 * min(y for _, y in timed))


def isotonic_decreasing(x: Sequence[float], y: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    """The least-squares non-increasing fit of ``y`` on ``x`` (pool-adjacent-violators): ``(xs, fitted)``, one
    value per distinct ``x``, ascending."""
    order = np.argsort(np.asarray(x, dtype=float), kind="stable")
    xs_all, ys_all = np.asarray(x, dtype=float)[order], np.asarray(y, dtype=float)[order]
    xs, sums, counts = [], [], []
    for xv, yv in zip(xs_all, ys_all):  # one block per distinct x first
        if xs and xv == xs[-1]:
            sums[-1] += yv
            counts[-1] += 1
        else:
            xs.append(xv), sums.append(yv), counts.append(1)
    blocks: list[list[float]] = []  # [sum, count, first x index, last x index]
    for k, (s, c) in enumerate(zip(sums, counts)):
        blocks.append([s, c, k, k])
        while len(blocks) > 1 and blocks[-2][0] / blocks[-2][1] < blocks[-1][0] / blocks[-1][1]:
            s2, c2, _, hi = blocks.pop()
            blocks[-1][0] += s2
            blocks[-1][1] += c2
            blocks[-1][3] = hi
    fitted = np.empty(len(xs))
    for s, c, lo, hi in blocks:
        fitted[int(lo):int(hi) + 1] = s / c
    return np.asarray(xs), fitted


def _curve(xs: np.ndarray, fitted: np.ndarray, at: np.ndarray, slope: float) -> np.ndarray:
    """The fitted curve at ``at``: interpolated inside, flat below, falling ``slope`` per unit beyond the top."""
    out = np.interp(at, xs, fitted)
    beyond = at > xs[-1]
    out[beyond] = fitted[-1] - slope * (at[beyond] - xs[-1])
    return out


def _fit(u: np.ndarray, acc: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """The non-increasing fit of accuracy on log speedup, and the rate it keeps falling at beyond its end."""
    xs, fit = isotonic_decreasing(u, acc)
    slope = max(0.0, -float(np.polyfit(u, acc, 1)[0])) if len(xs) > 1 else 0.0
    return xs, fit, slope


def _left_out(u: np.ndarray, acc: np.ndarray, at: np.ndarray) -> np.ndarray:
    """Each point of ``at`` (log speedups of trials among ``u``) predicted by the curve fitted without it:
    in-sample, a non-increasing fit through a handful of monotone points leaves no residual to learn from."""
    out = np.empty(len(at))
    for k, x in enumerate(at):
        keep = np.flatnonzero(~np.isclose(u, x))
        if len(keep) == 0:
            out[k] = float(acc.mean())
            continue
        xs, fit, slope = _fit(u[keep], acc[keep])
        out[k] = _curve(xs, fit, np.array([x]), slope)[0]
    return out


def expected_accuracy(finished: Sequence[Finished], screened: Sequence[tuple[float, float]], dense_ms: float
                      ) -> np.ndarray:
    """Each screened candidate's expected fine-tuned accuracy.

    The study's fine-tuned accuracy as a non-increasing function of log speedup (:func:`isotonic_decreasing`
    over ``finished``; beyond the fastest finished plan it keeps falling at the fit's average rate), plus
    ``beta`` times the candidate's screening residual (its rung-0 accuracy minus the non-increasing fit of
    every rung-0 accuracy at its speed). ``beta`` is the least-squares slope of the finished trials'
    residuals (each from the curve fitted without it) on their screening residuals, at least 0, times
    ``n / (n + SHRINK)``; 0 with fewer than 3.

    No cap at the score plus the largest gain seen (the early stopper's rule): tried on Fashion-MNIST VGG-11
    (docs/benchmarks.md, 2026-12-04), it rejected the plan that decides the front's fast end. Global L1 at 90 %
    scored 0.094 right after pruning and 0.494 after a short fine-tune, and fine-tuned to 0.848: a gain of 0.35
    where the milder plans before it had gained at most 0.13. The early stopper, inside the fine-tune, is what
    ends a broken plan (at 0-50 % of its steps there).

    Args:
        finished: The study's fully fine-tuned trials (the dense anchor among them).
        screened: ``(rung-0 accuracy, predicted latency ms)`` of each candidate.
        dense_ms: The dense model's predicted latency.
    """
    if not finished:
        raise ValueError("expected_accuracy needs at least one fine-tuned trial")
    u = np.array([math.log(dense_ms / f.latency_ms) for f in finished])
    acc = np.array([f.accuracy for f in finished])
    xs, fit, slope = _fit(u, acc)
    cu = np.array([math.log(dense_ms / lat) for _, lat in screened]) if screened else np.zeros(0)
    base = _curve(xs, fit, cu, slope) if len(cu) else np.zeros(0)
    with_screen = [(math.log(dense_ms / f.latency_ms), f.screen_accuracy, a)
                   for f, a in zip(finished, acc) if f.screen_accuracy is not None]
    pool_u = np.concatenate([cu, [w[0] for w in with_screen]])
    pool_s = np.concatenate([[s for s, _ in screened], [w[1] for w in with_screen]])
    if len(with_screen) < 3 or len(pool_u) < 2:
        return base
    sx, sfit = isotonic_decreasing(pool_u, pool_s)
    e_cand = np.asarray([s for s, _ in screened], dtype=float) - np.interp(cu, sx, sfit)
    wu = np.array([w[0] for w in with_screen])
    e = np.array([w[1] for w in with_screen]) - np.interp(wu, sx, sfit)
    d = np.array([w[2] for w in with_screen]) - _left_out(u, acc, wu)
    ee = float(e @ e)
    beta = max(0.0, float(e @ d) / ee) * len(e) / (len(e) + SHRINK) if ee > 1e-12 else 0.0
    return base + beta * e_cand


def front_gain(front: Sequence[tuple[float, float]], point: tuple[float, float], reference: tuple[float, float]
               ) -> float:
    """The hypervolume ``point`` adds to ``front`` (``(accuracy, speedup)`` pairs, both maximised) above
    ``reference``."""
    dirs = ["maximize", "maximize"]
    before = hypervolume(np.array(front, dtype=float).reshape(-1, 2), reference, dirs) if front else 0.0
    return hypervolume(np.array([*front, point], dtype=float), reference, dirs) - before


def promote_by_contribution(finished: Sequence[Finished], candidates: Sequence[tuple[int, float, float, str]],
                            dense_ms: float, reference_accuracy: float, limit: int,
                            skip_plans: Sequence[str] = ()) -> list[int]:
    """Candidates to fine-tune next, greedily by the hypervolume their expected points add to the front, per
    expected second of fine-tuning where the study has timed trials (:func:`expected_seconds`).

    The front is the finished trials' (validation accuracy, predicted speedup); each pick's expected point
    (:func:`expected_accuracy`) joins it before the next pick. Stops at ``limit`` or when no candidate adds
    anything. A pure function: the same inputs give the same indices (ties go to the lower index).

    Args:
        finished: The study's fully fine-tuned trials.
        candidates: ``(index, rung-0 accuracy, predicted latency ms, plan digest)`` of each screened candidate.
        dense_ms: The dense model's predicted latency.
        reference_accuracy: The accuracy at which the hypervolume starts counting.
        limit: At most this many.
        skip_plans: Plan digests never promoted (already promoted, or already a trial).
    """
    seen = set(skip_plans)
    pool, keys = [], set()
    for c in sorted(candidates, key=lambda c: c[0]):
        if (c[3] and (c[3] in seen or c[3] in keys)) or not (c[2] > 0 and math.isfinite(c[1])):
            continue
        keys.add(c[3])
        pool.append(c)
    if not pool or limit <= 0:
        return []
    expect = expected_accuracy(finished, [(c[1], c[2]) for c in pool], dense_ms)
    points = [(float(a), dense_ms / c[2]) for a, c in zip(expect, pool)]
    front = [(f.accuracy, dense_ms / f.latency_ms) for f in finished]
    ref = (float(reference_accuracy), 1.0)
    cost = expected_seconds(finished, [c[2] for c in pool])
    out: list[int] = []
    left = list(range(len(pool)))
    while left and len(out) < limit:
        gains = [front_gain(front, points[k], ref) for k in left]
        per_s = gains if cost is None else [g / cost[k] for g, k in zip(gains, left)]
        best = int(np.argmax(per_s))
        if gains[best] <= 1e-12:
            break
        k = left.pop(best)
        out.append(pool[k][0])
        front.append(points[k])
    return out


__all__ = ["FRONT_MARGIN", "SHRINK", "Finished", "expected_accuracy", "expected_seconds", "front_gain",
           "isotonic_decreasing", "promote_by_contribution"]
