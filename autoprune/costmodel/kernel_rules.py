"""The fusion rules of :func:`~autoprune.costmodel.kernels.detect_kernels`, one per ONNX op type.

:data:`RULES` maps an op type to the rule that starts a kernel at a node of that type: it fuses the
node's followers (BN, a residual or bias ``Add``, an activation) and fills in a :class:`KernelDraft`;
op types without a rule are :func:`elementwise` kernels. A rule reads the graph through a
:class:`FusionGraph` (shapes, constants, consumers, and the nodes already fused).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from autoprune.registry import lazy_import

from .features import KernelFeatures, kernel_cost

__all__ = ["RULES", "FusionGraph", "KernelDraft", "elementwise", "features", "nm_pattern_of", "rule",
           "weight_density_of"]

_ACTIVATIONS = {"Relu": "relu", "Clip": "clip", "LeakyRelu": "leakyrelu", "HardSwish": "hardswish"}
_RESHAPES = {"Flatten", "Reshape", "Squeeze", "Unsqueeze", "Identity", "Dropout"}
_POOLS = {"MaxPool": "maxpool", "AveragePool": "avgpool", "GlobalAveragePool": "globalpool",
          "GlobalMaxPool": "globalpool"}


def weight_density_of(w: np.ndarray) -> float:
    """Return the fraction of non-zero entries of ``w``."""
    return float(np.count_nonzero(w)) / max(w.size, 1)


def nm_pattern_of(w: np.ndarray, n: int = 2, m: int = 4) -> str:
    """Return ``"n:m"`` if every group of ``m`` consecutive reduction weights has ≤ ``n`` non-zeros.

    Both the flattened ``(cin, kh, kw)`` order and the channel-last order (NVIDIA's
    sparse-tensor-core layout) are accepted.
    """
    if w.ndim < 2 or w.size == 0:
        return ""
    cout = w.shape[0]
    layouts = [w.reshape(cout, -1)]
    if w.ndim == 4:
        layouts.append(np.transpose(w, (0, 2, 3, 1)).reshape(cout, -1))
    for flat in layouts:
        if flat.shape[1] % m:
            continue
        groups = np.count_nonzero(flat.reshape(cout, -1, m), axis=2)
        if groups.max(initial=0) <= n and np.count_nonzero(flat) < flat.size:
            return f"{n}:{m}"
    return ""


def _shape(vi) -> tuple[int, ...] | None:
    """The static shape of a value info (symbolic dimensions read as 1), or None if it has none."""
    dims = vi.type.tensor_type.shape.dim
    if not dims:
        return None
    out = []
    for d in dims:
        if d.HasField("dim_value"):
            out.append(int(d.dim_value))
        else:
            out.append(1)  # symbolic (batch) dimension: batch 1
    return tuple(out)


def _attrs(node) -> dict[str, Any]:
    """The node's attributes by name."""
    onnx = lazy_import("onnx")
    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def _hw(shape: tuple[int, ...] | None) -> tuple[int, int]:
    """``(H, W)`` of an NCHW ``shape``; ``(1, 1)`` when unknown or rank < 4."""
    if shape is None or len(shape) < 4:
        return (1, 1)
    return (int(shape[2]), int(shape[3]))


def _channels(shape: tuple[int, ...] | None) -> int:
    """The channel dimension of an NCHW-like ``shape`` (1 when unknown or rank < 2)."""
    return int(shape[1]) if shape and len(shape) > 1 else 1


@dataclass
class FusionGraph:
    """An ONNX graph after shape inference, indexed for fusion.

    Attributes:
        nodes: The graph's nodes in order.
        shapes: Tensor name → its shape (``None`` when unknown); initializers included.
        consts: Tensor name → its initializer, or the ``Constant`` node producing it (``Identity``
            aliases of initializers included).
        consumers: Tensor name → the nodes reading it.
        outputs: The graph's output names.
        with_weights: Whether weights are read (for density / N:M features).
        consumed: ``id()`` of the nodes already fused into a kernel.
    """

    nodes: list[Any]
    shapes: dict[str, tuple[int, ...] | None]
    consts: dict[str, Any]
    consumers: dict[str, list[Any]]
    outputs: set[str]
    with_weights: bool
    consumed: set[int] = field(default_factory=set)

    @classmethod
    def of(cls, proto: Any, with_weights: bool) -> FusionGraph:
        """Index the graph of ``proto`` (shapes inferred)."""
        g = proto.graph
        shapes: dict[str, tuple[int, ...] | None] = {}
        for vi in list(g.input) + list(g.value_info) + list(g.output):
            shapes[vi.name] = _shape(vi)
        consts: dict[str, Any] = {t.name: t for t in g.initializer}
        for node in g.node:  # constant aliases
            if node.op_type == "Identity" and node.input[0] in consts:
                consts[node.output[0]] = consts[node.input[0]]
            elif node.op_type == "Constant":
                consts[node.output[0]] = node
        for t in g.initializer:
            shapes[t.name] = tuple(t.dims)
        consumers: dict[str, list[Any]] = {}
        for node in g.node:
            for i in node.input:
                consumers.setdefault(i, []).append(node)
        return cls(list(g.node), shapes, consts, consumers, {o.name for o in g.output}, with_weights)

    def sole_consumer(self, tensor: str, op_types: set[str]) -> Any | None:
        """The one node reading ``tensor`` if it is of ``op_types``, not yet fused and ``tensor`` is no
        graph output; else None."""
        users = self.consumers.get(tensor, [])
        if (len(users) == 1 and tensor not in self.outputs and users[0].op_type in op_types
                and id(users[0]) not in self.consumed):
            return users[0]
        return None

    def fuse_activation(self, tail: Any, fused: list[str]) -> Any:
        """Fold a sole-consumer activation into the kernel ending at ``tail``; return the new tail."""
        act = self.sole_consumer(tail.output[0], set(_ACTIVATIONS))
        if act is None:
            return tail
        self.consumed.add(id(act))
        fused.append(_ACTIVATIONS[act.op_type])
        return act

    def weight(self, name: str) -> np.ndarray | None:
        """The initializer ``name`` as an array (None without weights, or for a non-initializer)."""
        from onnx import numpy_helper

        t = self.consts.get(name)
        if t is None or not self.with_weights or hasattr(t, "op_type"):
            return None
        return numpy_helper.to_array(t)


@dataclass
class KernelDraft:
    """A kernel being built from its main node; the op type's rule fills it in.

    Attributes:
        node: The kernel's main node.
        last: The last node fused into it (its output is the kernel's).
        data_inputs: Non-constant inputs (a fused residual's other input appended).
        fused: Post-ops fused so far.
        op, cin, kernel_size, stride, groups, density, nm: As in
            :class:`~autoprune.costmodel.features.KernelFeatures`.
    """

    node: Any
    last: Any
    data_inputs: list[str]
    fused: list[str] = field(default_factory=list)
    op: str = "elementwise"
    cin: int = 1
    kernel_size: int = 1
    stride: int = 1
    groups: int = 1
    density: float = 1.0
    nm: str = ""


Rule = Callable[[FusionGraph, KernelDraft], None]
#: ONNX op type → the rule that fuses and describes a kernel starting there (others: :func:`elementwise`).
RULES: dict[str, Rule] = {}


def rule(*op_types: str) -> Callable[[Rule], Rule]:
    """Register the decorated function as the rule of ``op_types``."""
    def register(fn: Rule) -> Rule:
        for op in op_types:
            RULES[op] = fn
        return fn
    return register


def _fuse_residual_and_activation(graph: FusionGraph, k: KernelDraft) -> None:
    """Fold a sole-consumer ``Add`` (a bias, or a residual whose other input becomes a data input)
    and then an activation into ``k``."""
    add = graph.sole_consumer(k.last.output[0], {"Add"})
    if add is not None:
        other = [i for i in add.input if i != k.last.output[0]]
        graph.consumed.add(id(add))
        if other and other[0] not in graph.consts:
            k.fused.append("add")
            k.data_inputs.append(other[0])
        k.last = add
    k.last = graph.fuse_activation(k.last, k.fused)


def _read_weight(graph: FusionGraph, k: KernelDraft) -> tuple[int, ...] | None:
    """Set ``k``'s weight density and N:M pattern from its weight (input 1); return the weight's shape."""
    node = k.node
    w = graph.weight(node.input[1]) if len(node.input) > 1 else None
    wshape = graph.shapes.get(node.input[1]) if len(node.input) > 1 else None
    if w is not None:
        k.density, k.nm = weight_density_of(w), nm_pattern_of(w)
    return wshape


@rule("Conv")
def _conv(graph: FusionGraph, k: KernelDraft) -> None:
    """``Conv`` [+ ``BatchNormalization``] [+ ``Add``] [+ activation]."""
    bn = graph.sole_consumer(k.last.output[0], {"BatchNormalization"})
    if bn is not None:
        graph.consumed.add(id(bn))
        k.last = bn
    _fuse_residual_and_activation(graph, k)
    wshape = _read_weight(graph, k)
    a = _attrs(k.node)
    k.op = "conv"
    k.groups = int(a.get("group", 1))
    k.kernel_size = int(a.get("kernel_shape", wshape[2:] if wshape else [1])[0])
    k.stride = int(a.get("strides", [1])[0])
    xs = graph.shapes.get(k.node.input[0])
    k.cin = int(xs[1]) if xs else int(wshape[1]) * k.groups


@rule("Gemm", "MatMul")
def _gemm(graph: FusionGraph, k: KernelDraft) -> None:
    """``Gemm``/``MatMul`` [+ bias ``Add``] [+ activation]; ``cin`` is the input's last dimension."""
    _fuse_residual_and_activation(graph, k)
    _read_weight(graph, k)
    k.op = "gemm"
    xs = graph.shapes.get(k.node.input[0])
    k.cin = int(xs[-1]) if xs else 0


@rule("Add", "Sum")
def _add(graph: FusionGraph, k: KernelDraft) -> None:
    """An ``Add`` not fused into a conv: an ``add`` kernel, with a following activation fused."""
    k.op = "add"
    k.last = graph.fuse_activation(k.last, k.fused)
    k.cin = _channels(graph.shapes.get(k.data_inputs[0]) if k.data_inputs else None)


@rule(*_POOLS)
def _pool(graph: FusionGraph, k: KernelDraft) -> None:
    """Pooling; a global pool's kernel size is its input's height."""
    k.op = _POOLS[k.node.op_type]
    a = _attrs(k.node)
    k.kernel_size = int(a.get("kernel_shape", [1])[0])
    k.stride = int(a.get("strides", [1])[0])
    xs = graph.shapes.get(k.node.input[0])
    k.cin = _channels(xs)
    if k.op == "globalpool":
        k.kernel_size = _hw(xs)[0]


@rule(*_RESHAPES)
def _reshape(graph: FusionGraph, k: KernelDraft) -> None:
    """A (near free) ``reshape`` kernel."""
    k.op = "reshape"
    k.cin = _channels(graph.shapes.get(k.node.input[0]))


@rule("Concat")
def _concat(graph: FusionGraph, k: KernelDraft) -> None:
    """``Concat``: ``cin`` is the sum of its data inputs' channels (1 for an input of rank < 2: a ViT's
    concatenated shape vectors, a class token)."""
    k.op = "concat"
    k.cin = sum(_channels(graph.shapes.get(i)) for i in k.data_inputs)


def elementwise(graph: FusionGraph, k: KernelDraft) -> None:
    """Any other op: an ``elementwise`` kernel named after it, with a following activation fused
    (e.g. a standalone BN followed by ReLU: one scale+act kernel) unless it is one itself."""
    op = k.node.op_type
    k.op = "elementwise"
    k.fused.append(op.lower())
    if op not in _ACTIVATIONS:
        k.last = graph.fuse_activation(k.last, k.fused)
    k.cin = _channels(graph.shapes.get(k.data_inputs[0]) if k.data_inputs else None)


def features(graph: FusionGraph, k: KernelDraft, bytes_per_element: int) -> KernelFeatures:
    """The finished kernel's features: output channels and sizes read at its last node, and its cost."""
    ys = graph.shapes.get(k.last.output[0])
    gemm = k.op == "gemm"
    cout = (int(ys[-1]) if ys else 0) if gemm else int(ys[1]) if ys and len(ys) > 1 else k.cin
    in_hw = _hw(graph.shapes.get(k.node.input[0])) if not gemm else (1, 1)
    out_hw = _hw(ys) if not gemm else (1, 1)
    fused = tuple(k.fused)
    macs, nbytes = kernel_cost(k.op, fused, k.cin, cout, k.kernel_size, k.groups, in_hw, out_hw, bytes_per_element)
    return KernelFeatures(
        op=k.op, fused=fused, cin=k.cin, cout=cout, kernel_size=k.kernel_size, stride=k.stride,
        groups=k.groups, in_hw=in_hw, out_hw=out_hw, macs=macs, bytes_moved=nbytes,
        bytes_per_element=bytes_per_element, cin_mod8=k.cin % 8, cout_mod8=cout % 8,
        weight_density=k.density, nm_pattern=k.nm,
    )
