"""Small real ONNX models for the runtime tests (built with onnx.helper, no download)."""

from __future__ import annotations

import numpy as np
import pytest


def tiny_convnet_bytes(channels: int = 8, size: int = 16) -> bytes:
    """Conv(3→C, 3×3) + ReLU + Conv(C→C) + GlobalAveragePool + Flatten + Gemm(C→10)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)

    def init(name, *shape):
        return numpy_helper.from_array((rng.standard_normal(shape) * 0.1).astype(np.float32), name)

    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"]),
        helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c2"], ["r2"]),
        helper.make_node("GlobalAveragePool", ["r2"], ["p"]),
        helper.make_node("Flatten", ["p"], ["f"]),
        helper.make_node("Gemm", ["f", "wf", "bf"], ["y"], transB=1),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, size, size])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 10])],
        [
            init("w1", channels, 3, 3, 3),
            init("b1", channels),
            init("w2", channels, channels, 3, 3),
            init("b2", channels),
            init("wf", 10, channels),
            init("bf", 10),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model.SerializeToString()


@pytest.fixture(scope="session")
def tiny_onnx() -> bytes:
    return tiny_convnet_bytes()


@pytest.fixture(scope="session")
def tiny_onnx_path(tmp_path_factory, tiny_onnx) -> str:
    path = tmp_path_factory.mktemp("onnx") / "tiny.onnx"
    path.write_bytes(tiny_onnx)
    return str(path)
