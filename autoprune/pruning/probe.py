"""The permutation probe: does Torch-Pruning map a group's channels to the right positions?

Torch-Pruning's dependency graph treats every operation it does not know (a ``transpose``,
a ``view`` that splits the channel dimension, ...) as element-wise. A channel shuffle
(``view`` into groups, ``transpose``, ``reshape`` back) thus moves channel ``c`` to another
position while the graph tells the next layer to drop its input ``c``: the pruned model
runs, but computes something else, and no forward pass or export notices.

The probe permutes a group's channels consistently: every layer the graph couples reads
and writes them at the positions the graph names (forward hooks un-permute a layer's
input and permute its output; a bare parameter is permuted in place), and the model's
output is compared with the unpermuted one. Correctly mapped channels leave the output
bit-identical (up to rounding) whatever the operations between the layers do with them;
a wrong mapping changes it. Channels are only permuted among those every coupled layer
holds alike (a slice that sees only some of them keeps its own), and as the units pruning removes
together: GhostNet's concatenation links a primary conv's channel to its depthwise copy, and
Torch-Pruning gives the two different root indices, so moving one without the other would flag a
mapping that prunes correctly.
"""

from __future__ import annotations

import torch
import torch_pruning as tp
from torch import nn

from autoprune.pruning.groups import GroupIndex

PROBE_RTOL = 1e-5  # a correct mapping leaves the output bit-identical (or within rounding); a wrong one moves it >1e-3
_PASS_THROUGH = (
    nn.modules.batchnorm._BatchNorm,
    nn.modules.instancenorm._InstanceNorm,
    nn.LayerNorm,
    nn.GroupNorm,
    nn.PReLU,
    nn.MultiheadAttention,
)
_LAST_DIM = (nn.Linear, nn.LayerNorm, nn.MultiheadAttention, nn.Embedding)
# Operations that move channels, which Torch-Pruning follows as if element-wise (named in reasons).
_MOVERS = ("ReshapeOp", "Transpose", "Permute", "View", "Unsafe", "Index", "Gather", "Flip", "Roll", "Pixel",
           "Unknown")


def first_tensor(out) -> torch.Tensor:
    """The first tensor of a model output (a tensor, a tuple/list, or a dict)."""
    while isinstance(out, (tuple, list)):
        out = out[0]
    if isinstance(out, dict):
        out = next(iter(out.values()))
    return out


def mapping_faults(model: nn.Module, index: GroupIndex, names: list[str], x: torch.Tensor) -> dict[str, str]:
    """Groups whose channels Torch-Pruning maps to the wrong positions (see the module docstring)."""
    if not names:
        return {}
    probe_x = torch.randn(x.shape, generator=torch.Generator().manual_seed(0)) if x.is_floating_point() else x
    specs = {}
    for i, name in enumerate(names):
        spec = _PermutationSpec.build(model, index, name, seed=i)
        if spec is not None:
            specs[name] = spec
    if not specs:
        return {}
    with torch.no_grad():
        ref = first_tensor(model(probe_x)).detach().clone()

    def faulty(which: list[str]) -> bool:
        handles = []
        try:
            for n in which:
                handles += specs[n].install()
            with torch.no_grad():
                out = first_tensor(model(probe_x))
        finally:
            for h in handles:
                h.remove()
        scale = float(ref.abs().max()) + 1e-12
        return not bool(torch.isfinite(out).all()) or float((out - ref).abs().max()) > PROBE_RTOL * scale

    if not faulty(list(specs)):
        return {}
    return {n: specs[n].reason() for n in specs if faulty([n])}


class _PermutationSpec:
    """Where one group's channels live in each coupled layer, and a permutation of them."""

    def __init__(self, entries, perm: torch.Tensor, ops: list[str]) -> None:
        self.entries = entries  # (target, role, dim, {root channel: [positions]})
        self.perm = perm  # new root channel at c = old root channel perm[c]
        self.inv = torch.argsort(perm)
        self.ops = ops

    @classmethod
    def build(cls, model: nn.Module, index: GroupIndex, name: str, seed: int) -> _PermutationSpec | None:
        """The spec of group ``name``, or None when a coupled layer is of a kind the probe cannot follow."""
        dg = index.dg
        group = index.tp_group(name)
        n = len(group[0].idxs)
        modules = {id(m) for m in model.modules()}
        unwrapped = {id(u.parameters): u.pruning_dim for u in dg.unwrapped_parameters}
        entries, ops, seen = [], [], set()
        for item in group:
            target, handler = item.dep.target.module, item.dep.handler
            if isinstance(target, nn.Parameter):
                if id(target) not in unwrapped:
                    return None
                role, dim = "param", unwrapped[id(target)]
            elif isinstance(target, nn.Module) and id(target) in modules:
                role, dim = _role(dg, target, handler)
                if role is None:
                    return None
            else:
                op = str(getattr(target, "_grad_fn", None) or type(target).__name__.strip("_"))
                if op.startswith(_MOVERS):
                    ops.append(op)
                continue
            roots = item.root_idxs or []
            if len(roots) != len(item.idxs) or any(r is None for r in roots):
                return None
            key = (id(target), role)
            if key in seen:  # one module reached twice with the same role: its hooks run once
                continue
            seen.add(key)
            pos: dict[int, list[int]] = {}
            for p, r in zip(item.idxs, roots, strict=True):
                pos.setdefault(int(r), []).append(int(p))
            entries.append((target, role, dim, pos))
        if not entries:
            return None
        # Permute whole units (the root channels pruning removes together), and only among units that every
        # layer holds alike (same number of positions per member).
        units = index.units(name)
        if isinstance(units, str) or sum(len(u) for u in units) != n:
            units = [[c] for c in range(n)]
        classes: dict[tuple, list[list[int]]] = {}
        for u in units:
            classes.setdefault(tuple(tuple(len(e[3].get(c, ())) for e in entries) for c in u), []).append(u)
        perm = torch.arange(n)
        gen = torch.Generator().manual_seed(seed)
        for members in classes.values():
            if len(members) > 1:
                order = torch.randperm(len(members), generator=gen)
                if torch.equal(order, torch.arange(len(members))):
                    order = order.roll(1)
                for k, j in enumerate(order.tolist()):
                    perm[torch.tensor(members[k])] = torch.tensor(members[j])
        if torch.equal(perm, torch.arange(n)):
            return None
        return cls(entries, perm, list(dict.fromkeys(ops)))

    def reason(self) -> str:
        via = f" (through {', '.join(self.ops[:4])})" if self.ops else ""
        return ("permuting its channels where Torch-Pruning maps them changes the output" + via +
                ": an operation moves or mixes them in a way it cannot follow (e.g. a channel shuffle), "
                "so pruning would scramble them")

    def _index(self, pos: dict[int, list[int]], size: int, mapping: torch.Tensor) -> torch.Tensor:
        """``idx`` with ``new[p_k(c)] = old[p_k(mapping[c])]``."""
        idx = torch.arange(size)
        for c, plist in pos.items():
            src = pos.get(int(mapping[c]))
            if src is None or len(src) != len(plist):
                continue
            for p, q in zip(plist, src, strict=True):
                if p < size and q < size:
                    idx[p] = q
        return idx

    def _apply(self, t, dim: int, pos, mapping):
        if not isinstance(t, torch.Tensor) or t.dim() == 0:
            return t
        d = dim % t.dim()
        return t.index_select(d, self._index(pos, t.shape[d], mapping))

    def install(self) -> list:
        """Register the hooks (and permute bare parameters); returns handles with ``remove()``."""
        handles = []
        for target, role, dim, pos in self.entries:
            if role == "param":
                handles.append(_ParamSwap(target, self._apply(target.detach(), dim, pos, self.perm)))
                continue
            if role in ("in", "through"):
                handles.append(target.register_forward_pre_hook(self._pre(target, dim, pos), with_kwargs=True))
            if role in ("out", "through"):
                handles.append(target.register_forward_hook(self._post(dim, pos)))
        return handles

    def _pre(self, target, dim, pos):
        n_args = 3 if isinstance(target, nn.MultiheadAttention) else 1

        def hook(module, args, kwargs):
            args = tuple(self._apply(a, dim, pos, self.inv) if i < n_args else a for i, a in enumerate(args))
            for key in ("query", "key", "value", "input"):
                if key in kwargs:
                    kwargs[key] = self._apply(kwargs[key], dim, pos, self.inv)
            return args, kwargs

        return hook

    def _post(self, dim, pos):
        def hook(module, args, out):
            if isinstance(out, tuple):
                return (self._apply(out[0], dim, pos, self.perm), *out[1:])
            return self._apply(out, dim, pos, self.perm)

        return hook


class _ParamSwap:
    """Holds a parameter's data permuted until ``remove()``."""

    def __init__(self, param: nn.Parameter, data: torch.Tensor) -> None:
        self.param, self.saved = param, param.detach().clone()
        with torch.no_grad():
            param.copy_(data)

    def remove(self) -> None:
        with torch.no_grad():
            self.param.copy_(self.saved)


def _channels_first(module: nn.Module) -> bool:
    """A ``nn.LayerNorm`` subclass that normalises an NCHW tensor over its channels (dim 1).

    torchvision's ``LayerNorm2d`` (ConvNeXt) and timm's ``LayerNorm2d`` (ConvNeXtV2, EdgeNeXt...) subclass
    ``nn.LayerNorm`` but permute an NCHW input around it; some custom norms say so with
    ``data_format="channels_first"``.
    """
    if not isinstance(module, nn.LayerNorm):
        return False
    name = type(module).__name__.lower()
    return "2d" in name or "channelsfirst" in name or getattr(module, "data_format", "") == "channels_first"


def _role(dg: tp.DependencyGraph, module: nn.Module, handler) -> tuple[str | None, int]:
    """How a coupled module holds the group's channels: read (in), written (out) or both (through)."""
    if isinstance(module, nn.modules.conv._ConvNd) and tp.ops.module2type(module) == tp.ops.OPTYPE.DEPTHWISE_CONV:
        return "through", 1
    if isinstance(module, _PASS_THROUGH):
        return "through", -1 if isinstance(module, _LAST_DIM) and not _channels_first(module) else 1
    if isinstance(module, nn.Embedding):
        return "out", -1
    if isinstance(module, (nn.modules.conv._ConvNd, nn.Linear)):
        role = "out" if dg.is_out_channel_pruning_fn(handler) else "in"
        return role, -1 if isinstance(module, nn.Linear) else 1
    return None, 0


__all__ = ["PROBE_RTOL", "first_tensor", "mapping_faults"]
