"""Prunable groups: sets of coupled layers whose output channels must be pruned together.

Groups come from Torch-Pruning's ``DependencyGraph``, which follows residual
adds, depthwise convolutions and concatenations. A layer that produces the model
output (the classifier) forms its own group that can never be channel-pruned;
the input is never pruned (it belongs to no group).

Grouped layers (a convolution with ``groups > 1`` that is not depthwise, a
``GroupNorm``, an ``nn.MultiheadAttention``'s heads) split their channels into equal
blocks that must keep equal sizes. :func:`channel_units` reads, from Torch-Pruning's
own index mapping, which of a group's channels sit at the same offset of every block
of such a layer: those channels form one *unit* and are removed together, so every
block keeps the same channels at the same offsets (what Torch-Pruning's grouped-conv
pruning functions assume) and the kept count is a multiple of the unit size
(``PrunableGroup.channel_multiple``); channels that Torch-Pruning removes together (GhostNet's
cheap copies) are one unit too. A group covering only part of such a layer's blocks cannot be
channel-pruned.
"""

from __future__ import annotations

from dataclasses import dataclass, field

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
        channel_multiple: Channels are removed in units of this many (1, or the
            block count of a grouped layer the group feeds or is); the kept count is
            always a multiple of it.
        max_ratio: The largest ``channel``/``unstructured`` ratio known to be safe
            (the ratio :func:`~autoprune.pruning.check.check_groups` tested), or None
            when unchecked.
    """

    name: str
    kind: str
    channels: int
    members: tuple[str, ...]
    allowed: tuple[str, ...]
    reduction_channels: tuple[int, ...]
    channel_multiple: int = 1
    max_ratio: float | None = None

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


def _blocks(dg: tp.DependencyGraph, module: object, handler) -> tuple[int, int]:
    """``(blocks, channels)`` of ``module`` on the side ``handler`` prunes (blocks 1: not grouped)."""
    if isinstance(module, nn.modules.conv._ConvNd):
        if tp.ops.module2type(module) == tp.ops.OPTYPE.DEPTHWISE_CONV or module.groups <= 1:
            return 1, 0
        out = dg.is_out_channel_pruning_fn(handler)
        return module.groups, (module.out_channels if out else module.in_channels)
    if isinstance(module, nn.GroupNorm) and module.num_groups > 1:
        return module.num_groups, module.num_channels
    if isinstance(module, nn.MultiheadAttention) and module.num_heads > 1:
        return module.num_heads, module.embed_dim
    return 1, 0


def _is_bad_depthwise(module: object) -> bool:
    """A conv with ``groups == out_channels`` but other input channels (a channel multiplier
    on the input side): Torch-Pruning's depthwise function would shrink both sides alike."""
    return (
        isinstance(module, nn.modules.conv._ConvNd)
        and tp.ops.module2type(module) == tp.ops.OPTYPE.DEPTHWISE_CONV
        and module.in_channels != module.out_channels
    )


def channel_units(dg: tp.DependencyGraph, tp_group, names: dict | None = None) -> list[list[int]] | str:
    """The units a Torch-Pruning group's channels are removed in, or why it cannot be pruned.

    Args:
        dg: The live dependency graph.
        tp_group: A group over all current channels of its root.
        names: Module → name, for the reason.

    Returns:
        The root-channel indices of each unit (ordered by their first channel; all of one
        size), or a one-line reason why no channel of the group can be removed safely.
    """
    names = names or {}
    n = len(tp_group[0].idxs)
    links: list[tuple[int, int]] = []
    for item in tp_group:
        dep, mod = item.dep, item.dep.target.module
        label = names.get(mod, type(mod).__name__)
        if _is_bad_depthwise(mod):
            return (f"{label} has groups == out_channels but {mod.in_channels} input channels; "
                    "Torch-Pruning cannot prune it")
        blocks, size = _blocks(dg, mod, dep.handler)
        if blocks <= 1:
            continue
        if size % blocks:
            return f"{label}: {size} channels do not split into {blocks} groups"
        width = size // blocks
        pos2root: dict[int, list[int]] = {}
        for pos, root in zip(item.idxs, item.root_idxs or [None] * len(item.idxs), strict=True):
            if root is None:
                return f"Torch-Pruning cannot map this group's channels onto grouped layer {label}"
            pos2root.setdefault(int(pos), []).append(int(root))
        for pos, roots in pos2root.items():
            orbit = [pos % width + b * width for b in range(blocks)]
            if any(q not in pos2root for q in orbit):
                return (f"its channels fill only part of the {blocks} groups of {label}; "
                        "removing some would leave that layer's groups unequal")
            links += [(roots[0], r) for q in orbit for r in pos2root[q]]
    out = _components(n, links)
    if len({len(u) for u in out}) > 1:
        return "its grouped layers split the channels into units of unequal sizes"
    if len(out) == 1 and n > 1:
        return f"its {n} channels form one indivisible unit of a grouped layer (e.g. a GroupNorm of 1-channel groups)"
    return out


def _components(n: int, links) -> list[list[int]]:
    """The sets ``0 .. n-1`` fall into when each ``(a, b)`` of ``links`` joins a and b (union-find), each sorted,
    ordered by their first member."""
    parent = list(range(n))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for a, b in links:
        if 0 <= a < n and 0 <= b < n:
            parent[find(b)] = find(a)
    sets: dict[int, list[int]] = {}
    for i in range(n):
        sets.setdefault(find(i), []).append(i)
    return sorted(sets.values(), key=lambda u: u[0])


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
    unsafe: dict[str, str] = field(default_factory=dict)  # group name -> why it cannot be channel-pruned

    def units(self, name: str) -> list[list[int]] | str:
        """Group ``name``'s current channel units (:func:`channel_units`, then :meth:`_linked`)."""
        out = channel_units(self.dg, self.tp_group(name), self.dg._module2name)
        return out if isinstance(out, str) else self._linked(name, out)

    def _linked(self, name: str, units: list[list[int]]) -> list[list[int]] | str:
        """Merge units Torch-Pruning removes together (GhostNet's root concatenates a primary conv's channels
        and their depthwise copies: removing channel ``i`` removes ``i + n`` too, so 25 % asked removed 50 %)."""
        root = self.roots[name]

        def taken(unit: list[int]) -> set[int]:
            for item in self.tp_group(name, unit):
                if item.dep.target.module is root and "out" in getattr(item.dep.handler, "__name__", ""):
                    return {int(i) for i in item.idxs}
            return set(unit)

        first = taken(units[0])
        if len(units) < 2 or (first == set(units[0]) and taken(units[-1]) == set(units[-1])):
            return units
        n = sum(len(u) for u in units)

        def merge(linked) -> list[list[int]]:  # linked(unit) -> the channels it takes along
            return _components(n, [(u[0], c) for u in units for c in (*u, *linked(u))])

        # the first unit's links as offsets for every unit, checked on three (each unit tried only if wrong)
        offsets = {c - units[0][0] for c in first}
        out = merge(lambda u: {c + d for c in u for d in offsets})
        by_channel = {c: set(u) for u in out for c in u}
        if any(taken(units[k]) | set(units[k]) != by_channel[units[k][0]] for k in (0, len(units) // 2, -1)):
            out = merge(taken)
        if len({len(u) for u in out}) > 1:
            return "Torch-Pruning removes its channels in linked sets of unequal sizes"
        if len(out) == 1 and len(units) > 1:
            return "Torch-Pruning removes all of its channels together (one linked set)"
        return out

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
    """Trace ``model`` and return its groups with the live dependency graph.

    Raises:
        PlanError: If Torch-Pruning cannot trace the model at all (one line: its error and the fix).
    """
    from autoprune.errors import PlanError
    from autoprune.pruning import tp_compat

    tp_compat.install()

    was_training = model.training
    model.eval()
    try:
        dg = tp.DependencyGraph().build_dependency(model, example_inputs=example_input, verbose=False)
    except Exception as exc:  # noqa: BLE001 - Torch-Pruning's errors on a model it cannot trace vary
        text = (str(exc).strip().splitlines() or [""])[0][:200]
        raise PlanError(f"Torch-Pruning cannot trace this model's channel dependencies "
                        f"({type(exc).__name__}: {text}); check that the model runs on the example input, "
                        "or report the architecture") from None
    finally:
        model.train(was_training)
    faults = tp_compat.faults_of(dg)
    order = {m: i for i, (_, m) in enumerate(model.named_modules())}
    names = {m: n for n, m in model.named_modules()}
    outputs = _output_layers(dg)
    entries = []
    lone: dict[nn.Module, str] = {}
    for g in _all_groups(dg):
        if isinstance(g, tuple):
            root, why = g
            lone[root] = why
            entries.append((root, None, [root], None))
            continue
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
        entries.append((root, g[0].dep.handler, members, g))
    entries.sort(key=lambda e: order[e[2][0]])
    groups, roots, handlers, modules, unsafe = [], {}, {}, {}, {}
    taken: dict[str, int] = {}
    for root, handler, members, tp_group in entries:
        name = _unique_name(names[members[0]], names[root], taken)
        if root in lone:
            units: list[list[int]] | str = lone[root]
        else:  # the group _all_groups built: over all of the root's channels, with its out-channel handler
            units = channel_units(dg, tp_group, names)
            fault = faults.reason_for(tp_group)
            if fault and not isinstance(units, str):
                units = fault
        if any(_is_depthwise(m) for m in members):
            kind = "depthwise"
        elif all(isinstance(m, nn.Linear) for m in members):
            kind = "linear"
        else:
            kind = "conv"
        red = tuple(_reduction_channels(m) for m in members)
        if isinstance(units, str) and not any(m in outputs for m in members):
            unsafe[name] = units
        allowed = [
            s
            for s in STRUCTURES
            if not (s == "channel" and (any(m in outputs for m in members) or isinstance(units, str)))
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
                channel_multiple=1 if isinstance(units, str) else len(units[0]),
            )
        )
        roots[name], handlers[name] = root, handler
        modules.update({names[m]: m for m in members})
    return GroupIndex(groups, dg, roots, handlers, modules, unsafe)


def _all_groups(dg: tp.DependencyGraph):
    """``dg.get_all_groups`` over conv/linear roots, going on past a root whose group Torch-Pruning cannot build.

    Torch-Pruning's generator stops at the first group whose index mapping crashes (ShuffleNetV2's channel
    shuffle). Here such a root is skipped; a later group that includes it covers it, and one that none
    covers is yielded last as ``(module, reason)``: a group of its own that is never channel-pruned.
    """
    visited: set[int] = set()
    failed: list[tuple[nn.Module, str]] = []
    for m in list(dg.module2node.keys()):
        if not isinstance(m, PRUNABLE_TYPES) or id(m) in visited:
            continue
        pruner = dg.get_pruner_of_module(m)
        if pruner is None or pruner.get_out_channels(m) is None:
            continue
        try:
            group = dg.get_pruning_group(m, pruner.prune_out_channels, list(range(pruner.get_out_channels(m))))
        except Exception as exc:  # noqa: BLE001 - Torch-Pruning's mapping errors vary
            text = (str(exc).strip().splitlines() or [""])[0][:80]
            failed.append((m, f"Torch-Pruning cannot build its dependency group ({type(exc).__name__}: {text})"))
            continue
        for dep, _ in group:
            if dg.is_out_channel_pruning_fn(dep.handler):
                visited.add(id(dep.target.module))
        yield group
    # A root whose group cannot be built, and that no other group covers, stays a group of its own (its
    # weights can still be sparsified); its channels are never pruned.
    for m, why in failed:
        if id(m) not in visited:
            visited.add(id(m))
            yield m, why


def _unique_name(first_member: str, root: str, taken: dict[str, int]) -> str:
    """A group's name: its first member's, made unique when two groups share that member.

    A layer can root two groups: a CSP stage's ``conv_exp`` output is split in halves that go to different
    layers, so Torch-Pruning returns one group per half, both starting at ``conv_exp``. The second is named
    after its own root, or numbered (``name#2``).
    """
    name = first_member
    if name in taken:
        name = root if root not in taken else f"{first_member}#{taken[first_member] + 1}"
    taken[first_member] = taken.get(first_member, 0) + 1
    taken.setdefault(name, 1)
    return name


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
