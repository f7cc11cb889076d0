"""Candidates for screening: the one-line baselines, random plans of a space, and refinements of a plan.

Each :class:`Candidate` is a parameter set the study's trial would be enqueued with (within the space), plus
the parameters that override them when it runs (an anchor's ``anchor_params``: a global-L1 plan in a space
without the global allocation). Generation is seeded (a ``numpy`` generator), so a round regenerates the same
candidates on a resume.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from autoprune.search.space import SearchSpace

#: The baselines' ratios screened in the first round (uniform-L1 and global-L1 each).
SWEEP_RATIOS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
#: Standard deviation of the per-layer ratios around a random plan's overall ratio.
RANDOM_SPREAD = 0.15


@dataclass(frozen=True)
class Candidate:
    """One plan to screen, as the trial that would run it is enqueued.

    Attributes:
        index: Its index in the round (candidates are generated in a fixed order).
        source: ``uniform-l1-0.5``, ``global-l1-0.5``, ``random`` or ``refine:<parent>``.
        params: Parameters within the space (what the trial is enqueued with).
        fixed: Parameters that override them when the trial runs (``anchor_params``, as an anchor's: a
            global-L1 plan in a space without the global allocation); empty for a plan of the space.
    """

    index: int
    source: str
    params: Mapping[str, Any]
    fixed: Mapping[str, Any] = field(default_factory=dict)

    def merged(self) -> dict[str, Any]:
        """The parameters the trial runs with."""
        return {**self.params, **self.fixed}



# -------------------------------------------------------------------------------------------- candidates
def _ratio_params(space: SearchSpace, groups, ratios: Mapping[str, float], criterion: str | None) -> dict[str, Any]:
    """In-space parameters of a local plan with a ratio per group (snapped to each group's range)."""
    params = dict(space._anchor(groups, 0.5, "local"))
    for g in groups:
        structs = space.structures_for(g)
        rr = space.range_for(g)
        r = rr.snap(min(max(float(ratios.get(g.name, 0.0)), rr.low), rr.high))
        if f"r:{g.name}" in params:
            params[f"r:{g.name}"] = r
        if len(structs) > 1:
            cut = [s for s in structs if s != "keep"]
            params[f"s:{g.name}"] = "keep" if r == 0 and "keep" in structs else (
                "channel" if "channel" in cut else (cut or list(structs))[0])
    if criterion is not None and "criterion" in params:
        params["criterion"] = criterion
    return params


def sweep_candidates(space: SearchSpace, groups, start: int = 0) -> list[Candidate]:
    """Uniform-L1 and global-L1 channel plans at :data:`SWEEP_RATIOS` (the one-line baselines)."""
    out: list[Candidate] = []
    local = "local" in space.allocation
    for ratio in SWEEP_RATIOS:
        uniform = _ratio_params(space, groups, {g.name: ratio for g in groups}, "l1") if local else None
        in_space = uniform if uniform is not None else space._anchor(groups, ratio, space.allocation[0],
                                                                     budget=space.budget.snap((1 - ratio) ** 2)
                                                                     if "knapsack" in space.allocation else None)
        fixed_common = {"criterion": "l1", **space.channel_params(groups, ratio)}
        if uniform is not None and uniform.get("criterion", space.criteria[0]) == "l1":  # in-space only if L1
            out.append(Candidate(start + len(out), f"uniform-l1-{ratio:g}", uniform))
        else:
            out.append(Candidate(start + len(out), f"uniform-l1-{ratio:g}", in_space,
                                 {**fixed_common, "allocation": "local"}))
        out.append(Candidate(start + len(out), f"global-l1-{ratio:g}", in_space,
                             {**fixed_common, "allocation": "global", "global_ratio": ratio}))
    return out


def random_candidates(space: SearchSpace, groups, rng: np.random.Generator, n: int, start: int = 0) -> list[Candidate]:
    """``n`` random plans of the space: an overall ratio, with per-layer deviations of :data:`RANDOM_SPREAD`
    (a knapsack-only space: a random latency budget and priorities)."""
    out: list[Candidate] = []
    for _ in range(n):
        if "local" in space.allocation:
            level = rng.uniform(max(space.ratio.low, 0.05), min(space.ratio.high, 0.9))
            ratios = {g.name: level + rng.normal(0.0, RANDOM_SPREAD) for g in groups}
            params = _ratio_params(space, groups, ratios, str(rng.choice(list(space.criteria))))
        elif "knapsack" in space.allocation:
            params = dict(space._anchor(groups, 0.5, "knapsack", budget=space.budget.snap(
                float(rng.uniform(space.budget.low, space.budget.high)))))
            lo, hi = math.log(space.priorities.low), math.log(space.priorities.high)
            for key in [k for k in params if k.startswith("p:")]:
                params[key] = float(math.exp(rng.uniform(lo, hi)))
            if "criterion" in params:
                params["criterion"] = str(rng.choice(list(space.criteria)))
        else:
            params = dict(space._anchor(groups, float(rng.uniform(space.ratio.low, space.ratio.high)), "global"))
        out.append(Candidate(start + len(out), "random", params))
    return out


def refine_candidates(space: SearchSpace, groups, parent: Mapping[str, Any], rng: np.random.Generator, n: int,
                      sigma: float, source: str, start: int = 0) -> list[Candidate]:
    """``n`` per-layer deviations of ``parent`` (merged parameters): each group's ratio moved by a normal step
    of ``sigma``, the criterion kept three times in four (a knapsack parent: its budget and priorities moved).
    A parent of another allocation (a global threshold) is not refined: ``[]``."""
    allocation = parent.get("allocation", space.allocation[0])
    if allocation not in space.allocation or allocation == "global":
        return []
    out: list[Candidate] = []
    for _ in range(n):
        criterion = parent.get("criterion")
        if criterion is not None and rng.random() < 0.25:
            criterion = str(rng.choice(list(space.criteria)))
        if allocation == "local":
            ratios = {g.name: float(parent.get(f"r:{g.name}", 0.0)) + rng.normal(0.0, sigma) for g in groups}
            params = _ratio_params(space, groups, ratios, criterion)
            if "kd" in parent:
                params["kd"] = parent["kd"]
        else:  # knapsack
            params = dict(parent)
            params["budget"] = space.budget.snap(min(max(float(parent["budget"]) * math.exp(rng.normal(0.0, sigma)),
                                                         space.budget.low), space.budget.high))
            for key in [k for k in params if k.startswith("p:")]:
                params[key] = float(min(max(float(params[key]) * math.exp(rng.normal(0.0, 2 * sigma)),
                                            space.priorities.low), space.priorities.high))
            if criterion is not None:
                params["criterion"] = criterion
        out.append(Candidate(start + len(out), source, params))
    return out


__all__ = ["RANDOM_SPREAD", "SWEEP_RATIOS", "Candidate", "random_candidates", "refine_candidates", "sweep_candidates"]
