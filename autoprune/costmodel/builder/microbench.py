"""Single-kernel ONNX graphs, for measuring one kernel in isolation.

:func:`kernel_graph` builds the ONNX subgraph of one detected kernel (e.g.
``Conv → Add(residual) → Relu`` with BN already folded, exactly what the whole
model contains) at any kept channel count, so the runtime applies the same fusion
as in the full model. Weights are random: latency does not depend on their values
for dense kernels.
"""

from __future__ import annotations

import numpy as np

from autoprune.registry import lazy_import

from ..features import KernelFeatures

__all__ = ["kernel_graph", "overhead_graph"]


def _pad_for(size_in: int, size_out: int, k: int, s: int) -> int:
    for p in range(k):
        if (size_in + 2 * p - k) // s + 1 == size_out:
            return p
    return (k - 1) // 2


def overhead_graph() -> bytes:
    """A graph doing almost nothing (one ReLU on 8 floats): the runtime's per-call cost."""
    onnx = lazy_import("onnx")
    h = onnx.helper
    x = h.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 8])
    y = h.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 8])
    g = h.make_graph([h.make_node("Relu", ["x"], ["y"])], "overhead", [x], [y])
    return h.make_model(g, opset_imports=[h.make_opsetid("", 17)], ir_version=8).SerializeToString()


def kernel_graph(f: KernelFeatures, seed: int = 0) -> bytes | None:
    """Return the serialised single-kernel ONNX graph of ``f`` (``None`` for free kernels)."""
    onnx = lazy_import("onnx")
    from onnx import numpy_helper

    h = onnx.helper
    float_t = onnx.TensorProto.FLOAT
    rng = np.random.default_rng(seed)
    nodes, inits, inputs = [], [], []
    hin, win = f.in_hw
    hout, wout = f.out_hw

    def init(name: str, arr: np.ndarray) -> str:
        inits.append(numpy_helper.from_array(arr.astype(np.float32), name))
        return name

    def post_ops(cur: str, shape: list[int], fused: tuple[str, ...]) -> str:
        for i, op in enumerate(fused):
            out = f"p{i}"
            if op == "add":
                inputs.append(h.make_tensor_value_info("r", float_t, shape))
                nodes.append(h.make_node("Add", [cur, "r"], [out]))
            elif op == "relu":
                nodes.append(h.make_node("Relu", [cur], [out]))
            elif op == "clip":
                nodes.append(h.make_node("Clip", [cur, init("lo", np.array(0.0)), init("hi", np.array(6.0))],
                                         [out]))
            elif op == "leakyrelu":
                nodes.append(h.make_node("LeakyRelu", [cur], [out]))
            else:
                nodes.append(h.make_node("Relu", [cur], [out]))
            cur = out
        return cur

    if f.op == "conv":
        groups = f.cin if f.op_class == "dwconv" else f.groups
        k, s = f.kernel_size, f.stride
        inputs.append(h.make_tensor_value_info("x", float_t, [1, f.cin, hin, win]))
        w = rng.standard_normal((f.cout, f.cin // groups, k, k)) * 0.1
        p = _pad_for(hin, hout, k, s)
        nodes.append(h.make_node("Conv", ["x", init("w", w), init("b", rng.standard_normal(f.cout))], ["c"],
                                 kernel_shape=[k, k], strides=[s, s], pads=[p, p, p, p], group=groups))
        post_ops("c", [1, f.cout, hout, wout], f.fused)
        out_shape = [1, f.cout, hout, wout]
    elif f.op == "gemm":
        inputs.append(h.make_tensor_value_info("x", float_t, [1, f.cin]))
        w = rng.standard_normal((f.cout, f.cin)) * 0.1
        nodes.append(h.make_node("Gemm", ["x", init("w", w), init("b", rng.standard_normal(f.cout))], ["c"],
                                 transB=1))
        post_ops("c", [1, f.cout], f.fused)
        out_shape = [1, f.cout]
    elif f.op == "add":
        inputs.append(h.make_tensor_value_info("x", float_t, [1, f.cin, hin, win]))
        inputs.append(h.make_tensor_value_info("x2", float_t, [1, f.cin, hin, win]))
        nodes.append(h.make_node("Add", ["x", "x2"], ["c"]))
        post_ops("c", [1, f.cout, hout, wout], f.fused)
        out_shape = [1, f.cout, hout, wout]
    elif f.op in ("maxpool", "avgpool"):
        inputs.append(h.make_tensor_value_info("x", float_t, [1, f.cin, hin, win]))
        k, s = f.kernel_size, f.stride
        p = _pad_for(hin, hout, k, s)
        nodes.append(h.make_node("MaxPool" if f.op == "maxpool" else "AveragePool", ["x"], ["c"],
                                 kernel_shape=[k, k], strides=[s, s], pads=[p, p, p, p]))
        out_shape = [1, f.cout, hout, wout]
    elif f.op == "globalpool":
        inputs.append(h.make_tensor_value_info("x", float_t, [1, f.cin, hin, win]))
        nodes.append(h.make_node("GlobalAveragePool", ["x"], ["c"]))
        out_shape = [1, f.cout, 1, 1]
    elif f.op == "concat":
        half = max(f.cin // 2, 1)
        inputs.append(h.make_tensor_value_info("x", float_t, [1, half, hin, win]))
        inputs.append(h.make_tensor_value_info("x2", float_t, [1, f.cin - half, hin, win]))
        nodes.append(h.make_node("Concat", ["x", "x2"], ["c"], axis=1))
        out_shape = [1, f.cin, hin, win]
    elif f.op == "elementwise":
        inputs.append(h.make_tensor_value_info("x", float_t, [1, f.cin, hin, win]))
        nodes.append(h.make_node("Sigmoid" if "sigmoid" in f.fused else "Relu", ["x"], ["c"]))
        out_shape = [1, f.cout, hout, wout]
    else:
        return None
    nodes[-1].output[0] = "y"  # the last node writes the graph output (no extra copy)
    outputs = [h.make_tensor_value_info("y", float_t, out_shape)]
    g = h.make_graph(nodes, "kernel", inputs, outputs, initializer=inits)
    return h.make_model(g, opset_imports=[h.make_opsetid("", 17)], ir_version=8).SerializeToString()
