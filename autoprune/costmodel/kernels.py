"""Kernel detection: the fused kernels of an exported ONNX graph (as nn-Meter does).

Fusion rules follow what ONNX Runtime and TensorRT do at batch 1:

* ``Conv`` [+ ``BatchNormalization``] [+ ``Add`` of another tensor (residual)]
  [+ ``Relu``/``Clip``/``LeakyRelu``] is one kernel (torch's exporter already folds
  BN into the conv in eval mode);
* ``Gemm``/``MatMul`` [+ bias ``Add``] [+ ``Relu``] is one kernel;
* an ``Add`` that was not fused into a conv is an ``add`` kernel, with a following
  ``Relu`` fused;
* ``MaxPool``/``AveragePool``/``GlobalAveragePool`` are pooling kernels;
* ``Flatten``/``Reshape``/``Squeeze``/``Unsqueeze`` are ``reshape`` kernels (near free);
* anything else is an ``elementwise`` kernel.

Each kernel records the torch module it came from, parsed from the exporter's
node names (``/layers/layers.0/conv1/Conv`` → ``layers.0.conv1``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import numpy as np

from autoprune.errors import ConfigError
from autoprune.registry import lazy_import

from .features import KernelFeatures, kernel_cost

__all__ = ["Kernel", "detect_kernels", "module_name_from_node", "nm_pattern_of", "weight_density_of"]

_ACTIVATIONS = {"Relu": "relu", "Clip": "clip", "LeakyRelu": "leakyrelu", "HardSwish": "hardswish"}
_RESHAPES = {"Flatten", "Reshape", "Squeeze", "Unsqueeze", "Identity", "Dropout"}
_POOLS = {"MaxPool": "maxpool", "AveragePool": "avgpool", "GlobalAveragePool": "globalpool",
          "GlobalMaxPool": "globalpool"}
_SKIP = {"Constant", "Shape", "Gather", "ConstantOfShape", "Cast"}


@dataclass(frozen=True)
class Kernel:
    """One fused kernel of a graph.

    Attributes:
        name: The ONNX node name of the kernel's main node.
        module: The torch module it came from (``""`` when unknown).
        features: Its :class:`~autoprune.costmodel.features.KernelFeatures`.
        inputs_from: Indices (in the kernel list) of the kernels producing its inputs.
    """

    name: str
    module: str
    features: KernelFeatures
    inputs_from: tuple[int, ...] = ()


def module_name_from_node(node_name: str) -> str:
    """Return the torch module path encoded in a torch.onnx node name.

    ``/features/features.1/conv/conv.0/conv.0.0/Conv`` → ``features.1.conv.0.0``.
    """
    segs = [s for s in node_name.split("/") if s][:-1]
    parts: list[str] = []
    prev = ""
    for seg in segs:
        if prev and seg.startswith(prev + "."):
            parts.append(seg[len(prev) + 1:])
        else:
            parts.append(seg)
        prev = seg
    return ".".join(parts)


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


def _load(model: Any):
    onnx = lazy_import("onnx")
    if isinstance(model, onnx.ModelProto):
        return model
    if isinstance(model, (bytes, bytearray)):
        return onnx.load_from_string(bytes(model))
    if isinstance(model, (str, os.PathLike)):
        if not os.path.isfile(model):
            raise ConfigError(f"ONNX file not found: {model}; export the model first")
        return onnx.load(os.fspath(model))
    raise ConfigError(f"cannot read an ONNX model from {type(model).__name__}; pass a path, bytes or ModelProto")


def _shape(vi) -> tuple[int, ...] | None:
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
    onnx = lazy_import("onnx")
    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def _hw(shape: tuple[int, ...] | None) -> tuple[int, int]:
    if shape is None or len(shape) < 4:
        return (1, 1)
    return (int(shape[2]), int(shape[3]))


def detect_kernels(model: Any, *, bytes_per_element: int = 4, with_weights: bool = True) -> tuple[Kernel, ...]:
    """Detect the fused kernels of an ONNX graph.

    Args:
        model: An ONNX file path, serialised bytes, or ``onnx.ModelProto``.
        bytes_per_element: Element size for ``bytes_moved`` (4 fp32, 2 fp16).
        with_weights: Also read weights for density / N:M features.

    Returns:
        The kernels in graph order.

    Raises:
        ConfigError: If the model cannot be read or shapes cannot be inferred.
    """
    onnx = lazy_import("onnx")
    from onnx import numpy_helper

    proto = _load(model)
    try:
        proto = onnx.shape_inference.infer_shapes(proto)
    except Exception as exc:  # noqa: BLE001 - onnx raises several types
        raise ConfigError(f"ONNX shape inference failed ({exc}); export with static input shapes") from None
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
    graph_outputs = {o.name for o in g.output}

    def sole_consumer(tensor: str, op_types: set[str]):
        users = consumers.get(tensor, [])
        if (len(users) == 1 and tensor not in graph_outputs and users[0].op_type in op_types
                and id(users[0]) not in consumed):
            return users[0]
        return None

    def fuse_activation(tail: Any, fused: list[str]) -> Any:
        """Fold a sole-consumer activation into the kernel ending at ``tail``; return the new tail."""
        act = sole_consumer(tail.output[0], set(_ACTIVATIONS))
        if act is None:
            return tail
        consumed.add(id(act))
        fused.append(_ACTIVATIONS[act.op_type])
        return act

    def weight(name: str) -> np.ndarray | None:
        t = consts.get(name)
        if t is None or not with_weights or hasattr(t, "op_type"):
            return None
        return numpy_helper.to_array(t)

    consumed: set[int] = set()
    kernels: list[Kernel] = []
    producer_kernel: dict[str, int] = {}

    for node in g.node:
        if id(node) in consumed or node.op_type in _SKIP:
            continue
        if node.op_type == "Identity" and node.input[0] in consts:
            continue
        fused: list[str] = []
        last = node
        data_inputs = [i for i in node.input if i and i not in consts]
        op = node.op_type
        kernel_size, stride, groups, density, nm = 1, 1, 1, 1.0, ""
        if op in ("Conv", "Gemm", "MatMul"):
            if op == "Conv":
                bn = sole_consumer(last.output[0], {"BatchNormalization"})
                if bn is not None:
                    consumed.add(id(bn))
                    last = bn
            add = sole_consumer(last.output[0], {"Add"})
            if add is not None:
                other = [i for i in add.input if i != last.output[0]]
                consumed.add(id(add))
                if other and other[0] not in consts:
                    fused.append("add")
                    data_inputs.append(other[0])
                last = add
            last = fuse_activation(last, fused)
            w = weight(node.input[1]) if len(node.input) > 1 else None
            wshape = shapes.get(node.input[1]) if len(node.input) > 1 else None
            if w is not None:
                density, nm = weight_density_of(w), nm_pattern_of(w)
            if op == "Conv":
                a = _attrs(node)
                groups = int(a.get("group", 1))
                kernel_size = int(a.get("kernel_shape", wshape[2:] if wshape else [1])[0])
                stride = int(a.get("strides", [1])[0])
                xs = shapes.get(node.input[0])
                cin = int(xs[1]) if xs else int(wshape[1]) * groups
                kop = "conv"
            else:
                a = _attrs(node)
                kop = "gemm"
                xs = shapes.get(node.input[0])
                cin = int(xs[-1]) if xs else 0
                if w is not None and op == "Gemm" and a.get("transB", 0):
                    w = w.T
                stride = 1
        elif op == "Add" or op == "Sum":
            kop = "add"
            last = fuse_activation(last, fused)
            xs = shapes.get(data_inputs[0]) if data_inputs else None
            cin = int(xs[1]) if xs and len(xs) > 1 else 1
        elif op in _POOLS:
            kop = _POOLS[op]
            a = _attrs(node)
            kernel_size = int(a.get("kernel_shape", [1])[0])
            stride = int(a.get("strides", [1])[0])
            xs = shapes.get(node.input[0])
            cin = int(xs[1]) if xs and len(xs) > 1 else 1
            if kop == "globalpool":
                kernel_size = _hw(xs)[0]
        elif op in _RESHAPES:
            kop = "reshape"
            xs = shapes.get(node.input[0])
            cin = int(xs[1]) if xs and len(xs) > 1 else 1
        elif op == "Concat":
            kop = "concat"
            xs = shapes.get(node.input[0])
            cin = sum(int((shapes.get(i) or (1, 1))[1]) for i in data_inputs)
        else:
            kop = "elementwise"
            fused.append(op.lower())
            if op not in _ACTIVATIONS:  # e.g. a standalone BN followed by ReLU: one scale+act kernel
                last = fuse_activation(last, fused)
            xs = shapes.get(data_inputs[0]) if data_inputs else None
            cin = int(xs[1]) if xs and len(xs) > 1 else 1
        ys = shapes.get(last.output[0])
        cout = (int(ys[-1]) if ys else 0) if kop == "gemm" else int(ys[1]) if ys and len(ys) > 1 else cin
        in_hw = _hw(shapes.get(node.input[0])) if kop != "gemm" else (1, 1)
        out_hw = _hw(ys) if kop != "gemm" else (1, 1)
        macs, nbytes = kernel_cost(kop, tuple(fused), cin, cout, kernel_size, groups, in_hw, out_hw,
                                   bytes_per_element)
        feats = KernelFeatures(
            op=kop, fused=tuple(fused), cin=cin, cout=cout, kernel_size=kernel_size, stride=stride,
            groups=groups, in_hw=in_hw, out_hw=out_hw, macs=macs, bytes_moved=nbytes,
            bytes_per_element=bytes_per_element, cin_mod8=cin % 8, cout_mod8=cout % 8,
            weight_density=density, nm_pattern=nm,
        )
        srcs = tuple(sorted({producer_kernel[i] for i in data_inputs if i in producer_kernel}))
        idx = len(kernels)
        kernels.append(Kernel(node.name, module_name_from_node(node.name), feats, srcs))
        for n in (node, last):
            for o in n.output:
                producer_kernel[o] = idx
    return tuple(kernels)

