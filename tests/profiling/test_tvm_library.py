"""TvmRuntime.load/local_runner: an exported TVM library is loaded back, run, and timed against another model."""

from __future__ import annotations

import numpy as np
import pytest

from autoprune.errors import ConfigError, ProfilingError

pytest.importorskip("tvm")

from autoprune.profiling import get_runtime
from autoprune.profiling.rpc import RPCConfig
from tests.profiling.conftest import tiny_convnet_bytes

pytestmark = pytest.mark.tvm

SHAPE = (1, 3, 16, 16)
TARGET = {"kind": "llvm", "num-cores": 1}


@pytest.fixture(scope="module")
def library(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tvmlib")
    (folder / "small.onnx").write_bytes(tiny_convnet_bytes(channels=8))
    (folder / "wide.onnx").write_bytes(tiny_convnet_bytes(channels=64))
    rt = get_runtime("tvm", target=TARGET)
    ex, _, _ = rt.compile(str(folder / "small.onnx"))
    ex.export_library(str(folder / "small.so"))
    return folder


def test_exported_library_loads_back_and_matches_onnxruntime(library):
    import onnxruntime as ort

    from autoprune.deploy.reference import max_abs_diff, tvm_outputs

    rt = get_runtime("tvm", target=TARGET)
    x = np.random.default_rng(3).random((4, *SHAPE[1:]), dtype=np.float32)
    got = tvm_outputs(rt, library / "small.so", x)
    sess = ort.InferenceSession(str(library / "small.onnx"), providers=["CPUExecutionProvider"])
    want = np.concatenate([sess.run(None, {"x": x[i:i + 1]})[0] for i in range(len(x))])
    assert got.shape == (4, 10)
    assert max_abs_diff(got, want) < 1e-4
    vm, _, inputs = rt.load(library / "small.so", SHAPE)
    assert inputs == [("input", SHAPE, "float32")] and vm is not None
    run = rt.local_runner(library / "small.so", SHAPE)
    run()  # one inference, no error


def test_library_and_onnx_timed_against_each_other(library):
    from autoprune.deploy.speed import measure_speedup

    rt = get_runtime("tvm", target=TARGET)
    m = measure_speedup(rt, str(library / "small.so"), str(library / "wide.onnx"), SHAPE, attempts=1)
    assert m.runtime.startswith("tvm-") and m.threads == 1 and m.attempts == 1 and m.rounds >= 4
    assert m.pruned_ms > 0 and m.dense_ms > 0 and m.speedup > 0 and m.host


def test_library_errors_are_clear(library, tmp_path):
    rt = get_runtime("tvm", target=TARGET)
    with pytest.raises(ProfilingError, match="not found"):
        rt.load(tmp_path / "nope.so")
    (tmp_path / "junk.so").write_bytes(b"not a library")
    with pytest.raises(ProfilingError, match="cannot load the TVM library"):
        rt.load(tmp_path / "junk.so")
    with pytest.raises(ConfigError, match="input_shapes"):
        rt.local_runner(library / "small.so")
    remote = get_runtime("tvm", target=TARGET, rpc=RPCConfig("127.0.0.1", 9))
    with pytest.raises(ConfigError, match="this machine"):
        remote.load(library / "small.so")
    # no `runner`: calibrations keep timing TVM with time_evaluator, here or over RPC
    assert not hasattr(rt, "runner")
