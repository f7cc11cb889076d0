"""Prunable groups: sets of coupled layers whose output channels must be pruned together.

Groups come from Torch-Pruning's ``DependencyGraph``, which follows residual
adds, depthwise convolutions and concatenations. A layer that produces the model
output (the classifier) forms its own group that can never be channel-pruned;
the input is never pruned (it belongs to no group).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch_pruning as tp
from torch import nn

from autoprune.pruning.plan import STRUCTURES, parse_nm

PRUNABLE_TYPES = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)
NM_BLOCK = 4  # "nm" is listed in ``allowed`` when every member's input channels are a multiple of 4


@dataclass(frozen=True)
class PrunableGroup:
    """One set of coupled output channels.

    Attributes:
        name: Stable id: the name of the group's first member in module order.
        kind: ``conv``, ``depthwise`` (a member is a depthwise conv) or ``linear``.
        channels: Dense number of prunable output channels.
        members: Conv/linear modules whose output channels belong to the group.
        allowed: Structures the group can take (subset of ``STRUCTURES``): never
            ``channel`` for a group holding an output layer; ``nm`` only when every
            member's input channels per conv group are a multiple of 4 (the 2:4
            pattern); :meth:`allows_nm` checks other ``M``.
        reduction_channels: Each member's input channels per conv group (the
            dimension N:M blocks run along), in ``members`` order.
    """

    name: str
    kind: str
    channels: int
    members: tuple[str, ...]
    allowed: tuple[str, ...]
    reduction_channels: tuple[int, ...]

    def allows_nm(self, nm: str) -> bool:
        """Whether every member's input channels are a multiple of ``M``."""
        if "nm" not in self.allowed:
            return False
        _, m = parse_nm(nm)
        return all(c % m == 0 for c in self.reduction_channels)


def _is_depthwise(m: nn.Module) -> bool:
    return (
        isinstance(m, nn.modules.conv._ConvNd)
        and m.groups > 1
        and m.groups == m.in_channels == m.out_channels
    )


def _reduction_channels(m: nn.Module) -> int:
    if isinstance(m, nn.Linear):
        return m.in_features
    return m.in_channels // m.groups


def _output_layers(dg: tp.DependencyGraph) -> set[nn.Module]:
    """Conv/linear modules whose output channels reach the model output unchanged.

    Starting at each module's node, follow the graph forward through every node
    that is not itself a conv/linear (those consume channels as inputs); if a
    node with no successors (a graph output) is reached, the module is an output
    layer.
    """
    result = set()
    for module, node in dg.module2node.items():
        if not isinstance(module, PRUNABLE_TYPES):
            continue
        stack, seen = [node], {id(node)}
        while stack:
            cur = stack.pop()
            if not cur.outputs:
                result.add(module)
                break
            for nxt in cur.outputs:
                if id(nxt) in seen or isinstance(nxt.module, PRUNABLE_TYPES):
                    continue
                seen.add(id(nxt))
                stack.append(nxt)
    return result


@dataclass
class GroupIndex:
    """Internal: the groups plus the live Torch-Pruning objects needed to prune them."""

    groups: list[PrunableGroup]
    dg: tp.DependencyGraph
    roots: dict[str, nn.Module]  # group name -> the tp root module
    handlers: dict[str, object]  # group name -> the root's out-channel pruning function
    modules: dict[str, nn.Module]  # member name -> module

    def tp_group(self, name: str, idxs=None):
        """A Torch-Pruning group of ``name`` over ``idxs`` (all current channels if None)."""
        root = self.roots[name]
        if idxs is None:
            idxs = list(range(self.dg.get_out_channels(root)))
        return self.dg.get_pruning_group(root, self.handlers[name], idxs)

    def current_channels(self, name: str) -> int:
        """The group's current (possibly pruned) channel count."""
        return int(self.dg.get_out_channels(self.roots[name]))


def build_index(model: nn.Module, example_input: torch.Tensor) -> GroupIndex:
    """Trace ``model`` and return its groups with the live dependency graph."""
    was_training = model.training
    model.eval()
    try:
        dg = tp.DependencyGraph().build_dependency(model, example_inputs=example_input)
    finally:
        model.train(was_training)
    order = {m: i for i, (_, m) in enumerate(model.named_modules())}
    names = {m: n for n, m in model.named_modules()}
    outputs = _output_layers(dg)
    entries = []
    for g in dg.get_all_groups(root_module_types=list(PRUNABLE_TYPES)):
        root = g[0].dep.target.module
        members = []
        for dep, _ in g:
            mod = dep.target.module
            if (
                isinstance(mod, PRUNABLE_TYPES)
                and dg.is_out_channel_pruning_fn(dep.handler)
                and mod not in members
            ):
                members.append(mod)
        if root not in members:
            members.insert(0, root)
        members.sort(key=lambda m: order[m])
        entries.append((root, g[0].dep.handler, members))
    entries.sort(key=lambda e: order[e[2][0]])
    groups, roots, handlers, modules = [], {}, {}, {}
    for root, handler, members in entries:
        name = names[members[0]]
        if any(_is_depthwise(m) for m in members):
            kind = "depthwise"
        elif all(isinstance(m, nn.Linear) for m in members):
            kind = "linear"
        else:
            kind = "conv"
        red = tuple(_reduction_channels(m) for m in members)
        allowed = [
            s
            for s in STRUCTURES
            if not (s == "channel" and any(m in outputs for m in members))
            and not (s == "nm" and any(c % NM_BLOCK for c in red))
        ]
        groups.append(
            PrunableGroup(
                name=name,
                kind=kind,
                channels=int(dg.get_out_channels(root)),
                members=tuple(names[m] for m in members),
                allowed=tuple(allowed),
                reduction_channels=red,
            )
        )
        roots[name], handlers[name] = root, handler
        modules.update({names[m]: m for m in members})
    return GroupIndex(groups, dg, roots, handlers, modules)


def discover_groups(model: nn.Module, example_input: torch.Tensor) -> list[PrunableGroup]:
    """List the prunable groups of ``model`` in a deterministic order.

    Args:
        model: The dense model (not modified).
        example_input: A tensor of the model's input shape, used for tracing.

    Returns:
        The groups, ordered by the position of their first member in
        ``model.named_modules()``.
    """
    return build_index(model, example_input).groups
