"""Structural faults of a pruned model: what no plan may leave, checked the same way everywhere.

:func:`~autoprune.pruning.check_groups` refuses a test plan with one, and the zoo's tests and survey
(``tests/pruning/test_zoo.py``, ``benchmarks/zoo_survey.py``) look for them in every random plan;
:func:`emptying_line` says how much of a group can go where removing more would empty a layer, and
:func:`partial_layers` / :func:`spare_units` choose the channels to remove so that none is emptied.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from torch import nn


def depthwise_names(model: nn.Module) -> frozenset[str]:
    """The names of ``model``'s depthwise convs (one group per channel, as many outputs as inputs)."""
    return frozenset(n for n, m in model.named_modules()
                     if isinstance(m, nn.modules.conv._ConvNd) and m.groups > 1
                     and m.groups == m.in_channels == m.out_channels)


def layer_faults(module: nn.Module, depthwise: frozenset[str] | set[str] = frozenset()) -> list[str]:
    """Every structural fault of ``module``, one line each, in module order.

    Args:
        module: A pruned model (after ``make_permanent``).
        depthwise: The names of the dense model's depthwise convs (:func:`depthwise_names`); each must still
            be depthwise.

    Returns:
        ``"<layer>: <fault>"`` for a zero-width conv or linear weight, a grouped conv whose channels do not
        split into its groups, and a depthwise conv that no longer is; empty when there is none.
    """
    faults = []
    for name, m in module.named_modules():
        is_conv = isinstance(m, nn.modules.conv._ConvNd)
        w = getattr(m, "weight", None)
        if (is_conv or isinstance(m, nn.Linear)) and w is not None and 0 in w.shape:
            faults.append(f"{name}: zero-width weight {tuple(w.shape)}")
        if is_conv and (m.in_channels % m.groups or m.out_channels % m.groups):
            faults.append(f"{name}: {m.in_channels}->{m.out_channels} channels, not divisible by groups={m.groups}")
        if name in depthwise and not (is_conv and m.groups == m.in_channels == m.out_channels):
            faults.append(f"{name}: no longer depthwise ({getattr(m, 'in_channels', '?')}->"
                          f"{getattr(m, 'out_channels', '?')}, groups={getattr(m, 'groups', '?')})")
    return faults



def emptying_line(accepts: Callable[[list[int]], bool], name: str, order: Sequence[int],
                  units: Sequence[Sequence[int]], dense: int, current: int) -> str:
    """The one line for a removal that would empty a layer that sees only some of a group's channels.

    It says how many channels can go: the most units, taken in the same ``order``, that ``accepts`` (Torch-Pruning's
    ``check_pruning_group`` of the group on those channel indices) allows, found by bisection (a longer prefix of
    ``order`` removes a superset, so acceptance only turns off once); or that none can, so the group must be kept.

    Args:
        accepts: Whether removing these channel indices leaves every layer non-empty.
        name: The group's name.
        order: The units in removal order (lowest score first); the refused removal was ``order[:len(order)]``'s
            prefix of the asked length.
        units: Each unit's channel indices (a grouped layer's unit holds one channel per group).
        dense: The group's channels in the dense model.
        current: Its channels now.
    """
    per = len(units[0])
    lo, hi = 0, len(order)  # accepts(nothing); the asked prefix was refused
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if accepts(sorted(i for u in order[:mid] for i in units[u])):
            lo = mid
        else:
            hi = mid
    can = lo * per
    head = f"group {name!r}: removing {len(order) * per} of {current} channels would empty a layer that sees only some"
    if not can and current == dense:
        return f"{head} of them; none can go: keep it whole (structure 'keep')"
    return f"{head} of them; at most {can} can go, so lower its ratio to {(dense - current + can) / dense:.2f} or less"


def partial_layers(dg, tp_group) -> list[frozenset[int]]:
    """The root channels of each layer that holds only some of a group's channels and nothing else.

    Removing all of one such set empties that layer (Torch-Pruning refuses it): timm's MixNet concatenates a
    group's channels into a split whose chunks each go to their own conv, and removing the 8 lowest-scored of a
    12-channel group emptied a 6-channel chunk.

    Args:
        dg: The live Torch-Pruning dependency graph.
        tp_group: A Torch-Pruning group over all current channels of its root.
    """
    n = len(tp_group[0].idxs)
    out = set()
    for item in tp_group:
        module, handler = item.dep.target.module, item.dep.handler
        if not isinstance(module, nn.Module) or item.root_idxs is None:
            continue
        roots = frozenset(int(r) for r in item.root_idxs if r is not None)
        width = (dg.get_out_channels(module) if dg.is_out_channel_pruning_fn(handler)
                 else dg.get_in_channels(module) if dg.is_in_channel_pruning_fn(handler) else None)
        if roots and len(roots) < n and width is not None and len(set(item.idxs)) >= int(width):
            out.add(roots)
    return sorted(out, key=min)


def spare_units(order: Sequence[int], units: Sequence[Sequence[int]], count: int,
                partial: Sequence[frozenset[int]]) -> list[int]:
    """The first ``count`` units of ``order`` (lowest score first) whose removal leaves a channel in every
    :func:`partial_layers` set, skipping a unit that would take a set's last one (fewer when no more can go)."""
    left = [len(s) for s in partial]
    picked = []
    for k in order:
        if len(picked) >= count:
            break
        unit = set(units[k])
        hits = [(j, len(unit & s)) for j, s in enumerate(partial) if unit & s]
        if any(left[j] - h < 1 for j, h in hits):
            continue
        for j, h in hits:
            left[j] -= h
        picked.append(k)
    return picked


__all__ = ["depthwise_names", "emptying_line", "layer_faults", "partial_layers", "spare_units"]
