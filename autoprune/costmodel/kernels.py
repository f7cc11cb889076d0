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

from autoprune.errors import ConfigError
from autoprune.registry import lazy_import

from .features import KernelFeatures
from .kernel_rules import RULES, FusionGraph, KernelDraft, elementwise, features, nm_pattern_of, weight_density_of

__all__ = ["Kernel", "detect_kernels", "module_name_from_node", "nm_pattern_of", "weight_density_of"]

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


def _load(model: Any) -> Any:
    """``model`` (a path, bytes or ``ModelProto``) as a ``ModelProto``."""
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


def _inferred(model: Any) -> Any:
    """The model as a ``ModelProto`` with inferred shapes.

    Raises:
        ConfigError: If the model cannot be read or shapes cannot be inferred.
    """
    onnx = lazy_import("onnx")
    proto = _load(model)
    try:
        return onnx.shape_inference.infer_shapes(proto)
    except Exception as exc:  # noqa: BLE001 - onnx raises several types
        raise ConfigError(f"ONNX shape inference failed ({exc}); export with static input shapes") from None


def detect_kernels(model: Any, *, bytes_per_element: int = 4, with_weights: bool = True) -> tuple[Kernel, ...]:
    """Detect the fused kernels of an ONNX graph.

    Each node not yet fused starts a kernel; the rule registered for its op type in
    :data:`~autoprune.costmodel.kernel_rules.RULES` (an ``elementwise`` kernel for op types without
    one) fuses its followers and fills in its features.

    Args:
        model: An ONNX file path, serialised bytes, or ``onnx.ModelProto``.
        bytes_per_element: Element size for ``bytes_moved`` (4 fp32, 2 fp16).
        with_weights: Also read weights for density / N:M features.

    Returns:
        The kernels in graph order.

    Raises:
        ConfigError: If the model cannot be read or shapes cannot be inferred.
    """
    graph = FusionGraph.of(_inferred(model), with_weights)
    kernels: list[Kernel] = []
    producer_kernel: dict[str, int] = {}
    for node in graph.nodes:
        if id(node) in graph.consumed or node.op_type in _SKIP:
            continue
        if node.op_type == "Identity" and node.input[0] in graph.consts:
            continue
        k = KernelDraft(node, node, [i for i in node.input if i and i not in graph.consts])
        RULES.get(node.op_type, elementwise)(graph, k)
        srcs = tuple(sorted({producer_kernel[i] for i in k.data_inputs if i in producer_kernel}))
        kernels.append(Kernel(node.name, module_name_from_node(node.name), features(graph, k, bytes_per_element),
                              srcs))
        for n in (node, k.last):
            for o in n.output:
                producer_kernel[o] = len(kernels) - 1
    return tuple(kernels)
