"""Latency-budgeted channel allocation: a HALP-style knapsack with SPDY-style layer priorities.

:func:`knapsack_plan` chooses how many channels each channel-prunable group keeps so that the summed
importance of the kept channels is as large as possible while the cost model's predicted latency stays
within ``budget ×`` the dense model's (HALP, Shen et al., NeurIPS 2022). Importances are the pruning
criterion's scores on the dense model, normalised per group (divided by the group's mean score) and
scaled by a per-group priority: the search explores the priorities and the budget, not the ratios
(SPDY, Frantar & Alistarh, ICML 2022).

Two knobs shape the allocation. ``thinning`` makes a group dearer the thinner it gets: the unit that
leaves ``r`` of a group's ``n`` channels costs its importance times ``(n / r)^thinning``. Without it
(HALP's plain sum) the per-group scores are nearly flat, and on VGG-11 the knapsack cut alternate layers
to 4-13 channels and left their neighbours dense (fine-tuned accuracy 95 % where global L1 kept 99 %).
``latency_weight`` ``w`` ranks a step by importance lost per ``(ms saved)^w × (channels removed)^(1-w)``:
1 is HALP's ratio, 0 ranks channels by importance alone as global magnitude pruning does (the budget
alone is latency's).

Latency comes from the calibrated cost model through a linear map from per-group removed channels to
the template's per-kernel channel counts (:class:`ChannelMap`), found once per pipeline by removing one
unit of channels of one group at a time and reading the template (so concatenations, residual adds,
depthwise and grouped convolutions are all accounted for as the pruner really cuts them).

The result is a *local* :class:`~autoprune.pruning.PruningPlan` whose per-group ratios reproduce the
chosen kept counts exactly (:func:`~autoprune.pruning.kept_count`), so a trial stores an ordinary plan
and ``export`` rebuilds the same model from it.
"""

from __future__ import annotations

import math
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from autoprune.errors import ConfigError, PlanError

from .knapsack_greedy import Ladders, descend, fill_back, lost_importance, reachable

__all__ = ["ChannelMap", "channel_map", "group_importance", "knapsack_from_params", "knapsack_plan"]

#: Pipeline → {"map": ChannelMap, ("scores", criterion): {group: scores}}; dropped with the pipeline.
_CACHE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


@dataclass(frozen=True)
class ChannelMap:
    """Linear map from channels removed per group to the cost model's :class:`CandidateShape`.

    Attributes:
        groups: Channel-prunable group names, in pipeline order.
        dense_cin, dense_cout: The dense template's per-kernel channels.
        dcin, dcout: ``[group, kernel]``: channels a kernel loses per channel removed from the group.
        units: Group name → its channel units (root-channel indices removed together).
    """

    groups: tuple[str, ...]
    dense_cin: np.ndarray
    dense_cout: np.ndarray
    dcin: np.ndarray
    dcout: np.ndarray
    units: dict[str, list[list[int]]]

    def shape(self, removed: np.ndarray):
        """The :class:`~autoprune.costmodel.CandidateShape` with ``removed[i]`` channels gone from group ``i``."""
        from autoprune.costmodel import CandidateShape

        cin = np.rint(self.dense_cin - removed @ self.dcin).astype(int).tolist()
        cout = np.rint(self.dense_cout - removed @ self.dcout).astype(int).tolist()
        n = len(cin)
        return CandidateShape(tuple(cin), tuple(cout), (1.0,) * n, ("",) * n)

    def neighbours(self) -> list[set[int]]:
        """Per group, the groups (itself included) that share a kernel with it."""
        touched = (self.dcin != 0) | (self.dcout != 0)
        share = (touched.astype(int) @ touched.T.astype(int)) > 0
        return [set(np.flatnonzero(row).tolist()) | {i} for i, row in enumerate(share)]


def channel_map(pipeline) -> ChannelMap:
    """The pipeline's :class:`ChannelMap` (probed once, then cached with the pipeline)."""
    entry = _CACHE.setdefault(pipeline, {})
    if "map" not in entry:
        entry["map"] = _probe(pipeline)
    return entry["map"]


def _probe(pipeline) -> ChannelMap:
    from autoprune.pruning import safe_deepcopy
    from autoprune.pruning.groups import build_index

    template = pipeline.cost_model.template
    if template is None:
        raise ConfigError("the knapsack allocation needs a cost model with a model template")
    work = safe_deepcopy(pipeline.dense).eval()
    index = build_index(work, pipeline.example)
    live = {g.name for g in index.groups}
    units = {}
    for g in pipeline.groups:
        if "channel" in g.allowed and g.name in live:
            u = index.units(g.name)
            if not isinstance(u, str) and len(u) > 1:
                units[g.name] = u
    names = tuple(units)
    base = template.describe(work, sparsity=False)
    dense_cin, dense_cout = np.array(base.cin, float), np.array(base.cout, float)
    dcin, dcout = np.zeros((len(names), len(base.cin))), np.zeros((len(names), len(base.cout)))
    for i, name in enumerate(names):
        idxs = units[name][0]
        group = index.tp_group(name, idxs)
        if not index.dg.check_pruning_group(group):
            raise PlanError(f"group {name!r}: removing one unit of its channels breaks a layer; keep it")
        group.prune()
        now = template.describe(work, sparsity=False)
        dcin[i] = (np.array(base.cin, float) - np.array(now.cin, float)) / len(idxs)
        dcout[i] = (np.array(base.cout, float) - np.array(now.cout, float)) / len(idxs)
        base = now
    return ChannelMap(names, dense_cin, dense_cout, dcin, dcout, units)


def group_importance(pipeline, criterion: str, seed: int = 0) -> dict[str, np.ndarray]:
    """Per-channel scores of ``criterion`` on the dense model, per channel-prunable group (cached).

    Data-driven criteria (``taylor``...) read the pipeline's training loader as :meth:`Pipeline.prune`
    does.
    """
    entry = _CACHE.setdefault(pipeline, {})
    key = ("scores", criterion, seed)
    if key not in entry:
        from autoprune.pruning import channel_importance

        names = channel_map(pipeline).groups
        loader = pipeline.data.loader("train", pipeline.batch_size, seed=pipeline.seed,
                                      pin_memory=pipeline.compute.pin_memory)
        scores = channel_importance(pipeline.dense, pipeline.example, criterion, names, calib_loader=loader,
                                    compute=pipeline.compute, seed=seed)
        entry[key] = {n: np.nan_to_num(s.numpy().astype(float), nan=0.0) for n, s in scores.items()}
    return entry[key]


def knapsack_plan(pipeline, budget: float, *, criterion: str = "l1", priorities: dict[str, float] | None = None,
                  structures: dict[str, str] | None = None, seed: int = 0, space: Any = None,
                  settings: Any = None, latency_weight: float = 1.0, thinning: float = 1.0,
                  budget_range: tuple[float, float, bool] | None = None) -> tuple[Any, dict[str, Any]]:
    """Allocate kept channels per group to maximise summed importance within a latency budget.

    Greedy on the marginal cost (normalised importance lost per millisecond saved), re-evaluated on the
    current state (a group's step changes its neighbours' kernels too), then a fill-back pass that
    re-adds the steps the budget still has room for.

    Args:
        pipeline: The study's :class:`~autoprune.pipeline.Pipeline` (dense model, checked groups, cost model).
        budget: Predicted latency allowed, as a fraction of the dense model's, in (0, 1].
        criterion: Importance criterion (also written into the plan).
        priorities: Group name → weight on its normalised importances (default 1).
        structures: Group name → ``keep`` (stays dense), ``channel`` (allocated, the default where
            allowed) or another structure (not allocated; written as ``keep`` for the caller to fill).
        seed: Seed stored in the plan (and for the ``random`` criterion).
        space: The search space, for ``round_to``, ``min_channels`` and per-kind ratio caps.
        settings: Base :class:`~autoprune.pruning.PlanSettings` (schedule...); made local.
        latency_weight: ``w`` in [0, 1]: a step is ranked by importance lost per ``(ms saved)^w ×
            (channels removed)^(1-w)``. 1 is HALP's knapsack; 0 ranks channels by importance alone, as
            global magnitude pruning does, and only the budget is latency's; values between trade the two.
        thinning: ``a >= 0``: the unit that leaves ``r`` of ``n`` channels costs its importance times
            ``(n / r)^a`` (0: HALP's plain sum).
        budget_range: ``(low, high, log)`` the budget was drawn from (a search space's). Where even the
            smallest allowed model is slower than ``low`` (a launch-bound target), the range is mapped
            onto ``[that floor, high]`` (geometrically when ``log``), so every draw is a different
            reachable budget instead of many draws collapsing onto the smallest model.

    Returns:
        ``(plan, info)``: a local, snapped plan, and ``{"budget", "effective_budget", "floor", "dense_ms",
        "predicted_ms", "kept", "priorities", "criterion", "latency_weight", "thinning", "met", "seconds"}``.
        ``floor`` is the smallest allowed model's share of the dense latency; ``met`` is False when even
        that model is over budget, and it is then returned.

    Raises:
        ConfigError: A budget outside (0, 1] or a priority that is not a positive number.
    """
    _check_knobs(budget, latency_weight, thinning)
    priorities, structures = dict(priorities or {}), dict(structures or {})
    _check_priorities(priorities)
    t0 = time.perf_counter()
    settings = _local_settings(settings, space, seed)
    cmap = channel_map(pipeline)
    active, ladders = _ladders(pipeline, cmap, settings, space, criterion, priorities, structures, thinning)
    dense_ms = pipeline.cost_model.predict(cmap.shape(np.zeros(len(cmap.groups)))).latency_ms
    floor = ladders.latency(ladders.smallest()) / dense_ms
    effective = reachable(budget, floor, budget_range) if budget_range else budget
    target = effective * dense_ms
    j, cur = descend(ladders, target, latency_weight)
    j, cur = fill_back(ladders, j, cur, target, latency_weight)
    chosen = {cmap.groups[i]: ladders.levels[a][j[a]] for a, i in enumerate(active)}
    plan, kept = _exact_plan(pipeline, chosen, criterion, settings)
    info = {"budget": float(budget), "effective_budget": float(effective), "floor": float(floor),
            "dense_ms": float(dense_ms), "predicted_ms": float(cur), "kept": kept,
            "priorities": {cmap.groups[i]: float(priorities.get(cmap.groups[i], 1.0)) for i in active},
            "criterion": criterion, "latency_weight": float(latency_weight),
            "thinning": float(thinning), "met": bool(cur <= target * (1 + 1e-9)),
            "seconds": round(time.perf_counter() - t0, 4)}
    return plan, info


def _is_number(x: Any) -> bool:
    """True for an int or float that is not a bool."""
    return not isinstance(x, bool) and isinstance(x, (int, float))


def _check_knobs(budget: Any, latency_weight: Any, thinning: Any) -> None:
    """Check :func:`knapsack_plan`'s numeric knobs.

    Raises:
        ConfigError: A budget outside (0, 1], a latency weight outside [0, 1] or a thinning that is
            not a finite number >= 0.
    """
    if not _is_number(budget) or not 0 < budget <= 1:
        raise ConfigError(f"knapsack budget must be a fraction of the dense latency in (0, 1], got {budget!r}")
    if not _is_number(latency_weight) or not 0 <= latency_weight <= 1:
        raise ConfigError(f"knapsack latency_weight must be a number in [0, 1], got {latency_weight!r}")
    if not _is_number(thinning) or not 0 <= thinning < math.inf:
        raise ConfigError(f"knapsack thinning must be a number >= 0, got {thinning!r}")


def _check_priorities(priorities: dict[str, float]) -> None:
    """Check every group priority.

    Raises:
        ConfigError: A priority that is not a positive finite number.
    """
    for name, p in priorities.items():
        if not _is_number(p) or not (math.isfinite(p) and p > 0):
            raise ConfigError(f"knapsack priority of {name!r} must be a positive number, got {p!r}")


def _local_settings(settings: Any, space: Any, seed: int) -> Any:
    """The plan's :class:`~autoprune.pruning.PlanSettings`: ``settings`` (default ones for None) made
    local, with the space's ``round_to`` and ``min_channels`` where a space is given, and ``seed``."""
    from dataclasses import replace

    from autoprune.pruning import PlanSettings

    base = settings or PlanSettings()
    round_to = space.round_to if space is not None else base.round_to
    min_ch = space.min_channels if space is not None else base.min_channels
    return replace(base, allocation="local", global_ratio=0.0, round_to=round_to, min_channels=min_ch, seed=seed)


def _levels(g, unit: int, settings: Any, space: Any) -> list[tuple[int, float]]:
    """Group ``g``'s allowed ``(kept, ratio)`` levels, from dense down: under its ratio caps (the group's
    and the space's), reproduced exactly by a local plan, and removing whole units of ``unit`` channels."""
    from autoprune.pruning import kept_count

    caps = [c for c in (g.max_ratio, space.range_for(g).high if space is not None else None) if c is not None]
    cap = min(caps) if caps else 0.999999
    out = [(g.channels, 0.0)]
    for k in range(g.channels - 1, 0, -1):
        r = round(1.0 - k / g.channels, 6)
        if r > cap:
            break
        if kept_count(g.channels, r, settings.round_to, settings.min_channels, g.channel_multiple) == k:
            out.append((k, r))
    return [(k, r) for k, r in out if (g.channels - k) % unit == 0]


def _ladders(pipeline, cmap: ChannelMap, settings: Any, space: Any, criterion: str, priorities: dict[str, float],
             structures: dict[str, str], thinning: float) -> tuple[list[int], Ladders]:
    """The allocation problem: the groups to allocate and, per group, its levels and importance lost.

    A group is allocated where its structure is ``channel`` (the default) and it has a level below
    dense; its scores (read once, for the first such group) are normalised by their mean and scaled by
    its priority.

    Returns:
        ``(active, ladders)``: the allocated groups' indices in ``cmap.groups``, and their
        :class:`~autoprune.search.knapsack_greedy.Ladders` with the cost model's latency of a state.
    """
    by_name = {g.name: g for g in pipeline.groups}
    active, levels, lost = [], [], []
    scores = None
    for i, name in enumerate(cmap.groups):
        g = by_name[name]
        if structures.get(name, "channel") != "channel":
            continue
        lv = _levels(g, len(cmap.units[name][0]), settings, space)
        if len(lv) < 2:
            continue
        scores = scores if scores is not None else group_importance(pipeline, criterion, settings.seed)
        s = scores[name]
        mean = float(s.mean())
        s = s / mean if mean > 0 and math.isfinite(mean) else np.ones_like(s)
        active.append(i)
        levels.append(lv)
        lost.append(lost_importance(s * float(priorities.get(name, 1.0)), cmap.units[name], [k for k, _ in lv],
                                    thinning))
    near = cmap.neighbours()
    pos = {i: a for a, i in enumerate(active)}
    near_a = [[pos[i] for i in near[active[a]] if i in pos] for a in range(len(active))]
    dense = [by_name[cmap.groups[i]].channels for i in active]
    return active, Ladders(levels, lost, near_a, _latency_of(pipeline.cost_model, cmap, active, dense, levels))


def _latency_of(cm, cmap: ChannelMap, active: list[int], dense: list[int],
                levels: list[list[tuple[int, float]]]) -> Callable[[list[int]], float]:
    """The cost model's predicted latency of a state (one level index per allocated group), memoised.

    Args:
        cm: The cost model.
        cmap: The channel map.
        active: The allocated groups' indices in ``cmap.groups``.
        dense: Their dense channel counts.
        levels: Their ``(kept, ratio)`` levels.
    """
    memo: dict[tuple[int, ...], float] = {}
    removed = np.zeros(len(cmap.groups))

    def latency(j: list[int]) -> float:
        key = tuple(j)
        if key not in memo:
            for a, i in enumerate(active):
                removed[i] = dense[a] - levels[a][j[a]][0]
            memo[key] = cm.predict(cmap.shape(removed)).latency_ms
        return memo[key]

    return latency


def _exact_plan(pipeline, chosen: dict[str, tuple[int, float]], criterion: str,
                settings: Any) -> tuple[Any, dict[str, int]]:
    """The snapped local plan of the chosen ``(kept, ratio)`` per group (others kept dense), checked to
    rebuild exactly those counts.

    Returns:
        ``(plan, kept)``: the plan, and the kept channels of every channel-prunable group.

    Raises:
        PlanError: The snapped plan would keep other counts than chosen.
    """
    from autoprune.pruning import GroupPlan, PruningPlan, kept_count, snap_plan

    entries, kept = [], {}
    for g in pipeline.groups:
        k, r = chosen.get(g.name, (g.channels, 0.0))
        entries.append((g.name, GroupPlan("channel", r, criterion) if r > 0 else GroupPlan("keep", 0.0, criterion)))
        if "channel" in g.allowed:
            kept[g.name] = int(k)
    plan = snap_plan(PruningPlan(tuple(entries), settings), pipeline.groups)
    by_name = {g.name: g for g in pipeline.groups}
    for name, gp in plan.groups:  # the stored plan must rebuild exactly these counts
        g = by_name[name]
        got = g.channels if gp.structure != "channel" else kept_count(g.channels, gp.ratio, settings.round_to,
                                                                     settings.min_channels, g.channel_multiple)
        if name in chosen and got != chosen[name][0]:
            raise PlanError(f"knapsack: group {name!r} would keep {got} channels, not {chosen[name][0]}")
    return plan, kept


def knapsack_from_params(pipeline, space, params: dict[str, Any], seed: int = 0) -> tuple[Any, dict[str, Any]]:
    """Resolve a trial's knapsack parameters (``budget``, ``p:{group}``, ``criterion``, ``s:{group}``)
    into a plan with :func:`knapsack_plan`; groups given ``unstructured`` or ``nm`` get their own ratio
    (``r:{group}``) or pattern as in a local plan."""
    from dataclasses import replace

    from autoprune.pruning import GroupPlan, PlanSettings, PruningPlan, snap_plan

    criterion = params.get("criterion", space.criteria[0])
    nm = params.get("nm", space.nm_patterns[0])
    structures, priorities = {}, {}
    for g in pipeline.groups:
        structures[g.name] = params.get(f"s:{g.name}", space.structures_for(g)[0])
        if structures[g.name] not in space.structures_for(g):
            raise PlanError(f"group {g.name!r} cannot take structure {structures[g.name]!r}; "
                            f"allowed here: {', '.join(space.structures_for(g))}")
        if f"p:{g.name}" in params:
            priorities[g.name] = float(params[f"p:{g.name}"])
    budget = float(params.get("budget", space.budget.high))
    latency_weight = float(params.get("latency_weight", space.latency_weight.high))
    settings = PlanSettings(schedule=params.get("schedule", space.schedule[0]), iterative_steps=space.iterative_steps)
    plan, info = knapsack_plan(pipeline, budget, criterion=criterion, priorities=priorities,
                               structures=structures, seed=seed, space=space, settings=settings,
                               latency_weight=latency_weight, thinning=space.thinning,
                               budget_range=(space.budget.low, space.budget.high, space.budget.log))
    entries = []
    for name, gp in plan.groups:
        s = structures.get(name, "keep")
        if s == "unstructured":
            ratio = float(params.get(f"r:{name}", 0.0))
            gp = GroupPlan("unstructured", ratio, criterion, nm) if ratio > 0 else gp
        elif s == "nm":
            n, m = (int(v) for v in nm.split(":"))
            gp = GroupPlan("nm", 1 - n / m, criterion, nm)
        entries.append((name, replace(gp, nm=nm)))
    return snap_plan(PruningPlan(tuple(entries), plan.settings), pipeline.groups), info
