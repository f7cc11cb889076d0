"""The greedy solver behind :func:`autoprune.search.knapsack.knapsack_plan`.

The allocation problem is a :class:`Ladders`: per allocated group, the kept counts it may take (from
dense down) and the importance lost at each, plus the predicted latency of any combination of rungs.
A state ``j`` holds one rung index per group (0: dense). :func:`descend` steps groups down until the
latency target is met; :func:`fill_back` then steps groups back up while the target still holds.

Nothing here knows about models or plans: :mod:`autoprune.search.knapsack` builds the ladders and
turns the chosen rungs into a plan.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

__all__ = ["LOOKAHEAD", "Ladders", "descend", "fill_back", "lost_importance", "price", "reachable"]

LOOKAHEAD = 4  # levels tried at once when one level saves no latency (LUT plateaus)


@dataclass(frozen=True)
class Ladders:
    """The knapsack's groups, each a ladder of allowed kept counts.

    Attributes:
        levels: Per allocated group, its ``(kept, ratio)`` rungs from dense down.
        lost: Per allocated group, the importance lost at each rung (0 at rung 0).
        near: Per allocated group, the allocated groups (itself included) sharing a kernel with it: a
            step of any of them can change its saving.
        latency: Predicted latency (ms) of a state (one rung index per group).
    """

    levels: list[list[tuple[int, float]]]
    lost: list[np.ndarray]
    near: list[list[int]]
    latency: Callable[[list[int]], float]

    def smallest(self) -> list[int]:
        """The state with every group on its last rung (the smallest allowed model)."""
        return [len(lv) - 1 for lv in self.levels]


def lost_importance(scores: np.ndarray, units: list[list[int]], kept: list[int], thinning: float) -> np.ndarray:
    """Importance lost at each kept count: whole units, lowest mean score first (as the pruner does),
    the unit that leaves ``r`` of ``n`` channels weighted by ``(n / r)^thinning``."""
    means = np.array([scores[u].mean() for u in units])
    order = np.argsort(means, kind="stable")
    size = len(units[0])
    total = len(units) * size
    left = np.maximum(total - size * np.arange(1, len(units) + 1), 1)  # channels left after each removal
    step = np.array([scores[units[i]].sum() for i in order]) * (total / left) ** thinning
    cum = np.concatenate([[0.0], np.cumsum(step)])
    return np.array([cum[(total - k) // size] for k in kept])


def reachable(budget: float, floor: float, budget_range: tuple[float, float, bool]) -> float:
    """``budget`` drawn from ``[low, high]``, mapped onto ``[floor, high]`` where ``floor > low``."""
    low, high, log = budget_range
    if floor <= low or high <= low:
        return budget
    if floor >= high:
        return floor
    t = (math.log(budget / low) / math.log(high / low)) if log else (budget - low) / (high - low)
    t = min(max(t, 0.0), 1.0)
    return floor * (high / floor) ** t if log else floor + t * (high - floor)


def price(importance: float, ms: float, channels: int, latency_weight: float) -> float:
    """Importance per ``ms^w × channels^(1-w)``: per millisecond at ``w = 1`` (HALP), per channel at
    ``w = 0`` (global magnitude pruning's order, whatever a group's unit size)."""
    return importance / (ms ** latency_weight * channels ** (1.0 - latency_weight))


def _move(a: int, j: list[int], lv: list, lost: np.ndarray, cur: float, latency: Callable[[list[int]], float],
          latency_weight: float = 1.0) -> tuple[float, int, float]:
    """``(price, levels, ms saved)`` of group ``a``'s next step down.

    One level, or up to :data:`LOOKAHEAD` levels where one saves nothing (a table's plateau). The
    price is :func:`price` of the importance the step loses.
    """
    out = (math.inf, 1, 0.0)
    for d in range(1, min(LOOKAHEAD, len(lv) - 1 - j[a]) + 1):
        nxt = list(j)
        nxt[a] += d
        saved = cur - latency(nxt)
        if saved > 0:
            return price(lost[j[a] + d] - lost[j[a]], saved, lv[j[a]][0] - lv[j[a] + d][0], latency_weight), d, saved
    return out


def _cheapest_step_down(ladders: Ladders, j: list[int], cur: float, latency_weight: float,
                        cache: dict[int, tuple[tuple[int, ...], float, int, float]]) -> tuple[float, int, int] | None:
    """The step down that loses least importance per latency saved, or None if none saves time.

    Args:
        ladders: The problem.
        j: The current state.
        cur: Its latency.
        latency_weight: ``w`` of :func:`price`.
        cache: Group → ``(its neighbours' rungs, price, levels, ms saved)`` of its last evaluated step,
            reused while no neighbour has moved; updated in place.

    Returns:
        ``(price, group, levels)`` of the best step, or None.
    """
    best = None
    for a in range(len(ladders.levels)):
        if j[a] + 1 >= len(ladders.levels[a]):
            continue
        stamp = tuple(j[b] for b in ladders.near[a])
        if a not in cache or cache[a][0] != stamp:
            cache[a] = (stamp, *_move(a, j, ladders.levels[a], ladders.lost[a], cur, ladders.latency,
                                      latency_weight))
        _, ratio, d, saved = cache[a]
        if saved > 0 and (best is None or ratio < best[0]):
            best = (ratio, a, d)
    return best


def descend(ladders: Ladders, target: float, latency_weight: float) -> tuple[list[int], float]:
    """Greedy pass: from dense, take the cheapest step down (re-evaluated on the current state, as a
    group's step changes its neighbours' kernels too) until the latency is within ``target``.

    Returns:
        ``(state, latency)``; the smallest allowed model when no step saves time any more.
    """
    j = [0] * len(ladders.levels)
    cur = ladders.latency(j)
    cache: dict[int, tuple[tuple[int, ...], float, int, float]] = {}
    while cur > target:
        best = _cheapest_step_down(ladders, j, cur, latency_weight, cache)
        if best is None:  # nothing left that saves time: the smallest allowed model
            j = ladders.smallest()
            cur = ladders.latency(j)
            break
        j[best[1]] += best[2]
        cur = ladders.latency(j)
    return j, cur


def _best_step_up(ladders: Ladders, j: list[int], cur: float, target: float,
                  latency_weight: float) -> tuple[float, int, float] | None:
    """The one-rung step up that still fits ``target`` and regains most importance per ms spent.

    Returns:
        ``(score, group, new latency)`` (score ``inf`` for a step that costs no time), or None.
    """
    best = None
    for a in range(len(ladders.levels)):
        if j[a] == 0:
            continue
        up = list(j)
        up[a] -= 1
        new = ladders.latency(up)
        if new <= target:
            lost, lv = ladders.lost[a], ladders.levels[a]
            gain = lost[j[a]] - lost[j[a] - 1]
            score = math.inf if new <= cur else price(gain, new - cur, lv[j[a] - 1][0] - lv[j[a]][0], latency_weight)
            if best is None or score > best[0]:
                best = (score, a, new)
    return best


def fill_back(ladders: Ladders, j: list[int], cur: float, target: float,
              latency_weight: float) -> tuple[list[int], float]:
    """Fill-back pass: re-add the steps (best importance per ms) that still fit the budget.

    Args:
        ladders: The problem.
        j: The state :func:`descend` reached (updated in place).
        cur: Its latency.
        target: The latency allowed (ms).
        latency_weight: ``w`` of :func:`price`.

    Returns:
        ``(state, latency)`` after the last step that fits.
    """
    while True:
        best = _best_step_up(ladders, j, cur, target, latency_weight)
        if best is None:
            break
        j[best[1]] -= 1
        cur = best[2]
    return j, cur
