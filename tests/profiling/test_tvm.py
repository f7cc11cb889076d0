"""TVM Relax runtime: local measurement, loopback RPC (server and tracker), timeouts."""

from __future__ import annotations

import logging
import math
import os
import signal
import threading
import time

import numpy as np
import pytest

from autoprune.errors import ConfigError, ProfilingError

pytest.importorskip("tvm")

from autoprune.profiling import get_runtime
from autoprune.profiling.rpc import LoopbackServer, LoopbackTracker, RPCConfig
from autoprune.profiling.tvm_runtime import make_target

pytestmark = pytest.mark.tvm

SHAPE = (1, 3, 16, 16)
# Behaviour tests, not noise tests: CI machines are shared (noise rejection is tested in test_protocol).
FAST = {"min_time_s": 0.05, "warmup": 2, "max_cv": 10.0, "retries": 1}
TARGET = {"kind": "llvm", "num-cores": 1}


def test_target_must_be_a_json_dict():
    with pytest.raises(ConfigError, match="JSON dicts"):
        make_target("llvm -num-cores=1")
    with pytest.raises(ConfigError, match="ignores the tag"):
        make_target({"kind": "cuda", "tag": "nvidia/jetson-nano"})
    with pytest.raises(ConfigError, match="mcpu=native"):
        make_target({"kind": "llvm", "mcpu": "native"})


def test_jetson_tag_with_aarch64_host_is_sm53():
    host = {"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mcpu": "cortex-a57"}
    t = make_target({"tag": "nvidia/jetson-nano", "host": host})
    assert t.kind.name == "cuda" and str(t.attrs["arch"]) == "sm_53"
    assert str(t.host.attrs["mcpu"]) == "cortex-a57"


def test_local_tvm_matches_onnxruntime_and_measures(tiny_onnx):
    import onnxruntime as ort
    import tvm
    from tvm import relax

    rt = get_runtime("tvm", target=TARGET)
    ex, _, _ = rt.compile(tiny_onnx, SHAPE)
    x = np.random.default_rng(1).random(SHAPE, dtype=np.float32)
    vm = relax.VirtualMachine(ex, tvm.cpu())
    got = vm["main"](tvm.runtime.tensor(x, tvm.cpu())).numpy()
    want = ort.InferenceSession(tiny_onnx, providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)

    m = rt.measure(tiny_onnx, SHAPE, **FAST)
    assert m.latency_ms > 0 and math.isfinite(m.latency_ms) and m.repeats >= 10
    assert m.runtime.startswith("tvm-") and "llvm" in m.runtime and m.threads == 1


def test_cross_compiling_without_a_cross_compiler_is_a_clear_error(tiny_onnx, monkeypatch):
    monkeypatch.setattr("shutil.which", lambda name: None)
    target = {"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mcpu": "cortex-a72"}
    rt = get_runtime("tvm", target=target, rpc=RPCConfig("127.0.0.1", 9))
    with pytest.raises(ProfilingError, match="cross compiler"):
        rt.measure(tiny_onnx, SHAPE, **FAST)


def test_rpc_args_parsing():
    assert RPCConfig.from_args() is None
    cfg = RPCConfig.from_args(tracker="10.0.0.2:9190", key="nano")
    assert cfg.tracker and cfg.describe() == "rpc-tracker://10.0.0.2:9190 key=nano"
    with pytest.raises(ConfigError, match="HOST:PORT"):
        RPCConfig.from_args(rpc="nohostport")
    with pytest.raises(ConfigError, match="--rpc-key"):
        RPCConfig.from_args(tracker="10.0.0.2:9190")
    with pytest.raises(ConfigError, match="not both"):
        RPCConfig.from_args(rpc="a:1", tracker="b:2", key="k")


def test_loopback_rpc_server_round_trip(tiny_onnx, caplog):
    with caplog.at_level(logging.WARNING), LoopbackServer() as server:
        assert server.host == "127.0.0.1"
        assert "executes arbitrary code" in caplog.text
        rt = get_runtime("tvm", target=TARGET, rpc=RPCConfig.from_args(rpc=server.address))
        m = rt.measure(tiny_onnx, SHAPE, **FAST)
    assert m.latency_ms > 0 and math.isfinite(m.latency_ms)
    assert m.device == f"rpc://{server.address}"


def test_loopback_rpc_tracker_round_trip(tiny_onnx):
    with LoopbackTracker() as tracker, LoopbackServer(key="loopback", tracker=tracker.address):
        cfg = RPCConfig.from_args(tracker=tracker.address, key="loopback", connect_timeout_s=20)
        deadline = time.monotonic() + 20
        rt = get_runtime("tvm", target=TARGET, rpc=cfg)
        while True:  # the server registers with the tracker asynchronously
            try:
                m = rt.measure(tiny_onnx, SHAPE, **FAST)
                break
            except ProfilingError as exc:
                if "no device with key" not in str(exc) or time.monotonic() > deadline:
                    raise
                time.sleep(0.5)
    assert m.latency_ms > 0 and m.device == f"rpc-tracker://{tracker.address} key=loopback"


def test_unreachable_server_and_tracker_fail_fast(tiny_onnx):
    for cfg in (
        RPCConfig.from_args(rpc="127.0.0.1:9", connect_timeout_s=3),
        RPCConfig.from_args(tracker="127.0.0.1:9", key="nano", connect_timeout_s=3),
    ):
        rt = get_runtime("tvm", target=TARGET, rpc=cfg)
        start = time.monotonic()
        with pytest.raises(ProfilingError, match=r"127\.0\.0\.1:9"):
            rt.measure(tiny_onnx, SHAPE, **FAST)
        assert time.monotonic() - start < 15


def _server_children(server: LoopbackServer):
    import psutil

    return psutil.Process(server._server.proc._proc.pid).children(recursive=True)


def test_server_killed_mid_measure_is_an_error_not_a_hang(tiny_onnx):
    with LoopbackServer() as server:
        rt = get_runtime("tvm", target=TARGET, rpc=RPCConfig.from_args(rpc=server.address))
        threading.Timer(2.0, server.stop).start()
        start = time.monotonic()
        with pytest.raises(ProfilingError):
            # 30 s of timing per batch: the server dies long before that.
            rt.measure(tiny_onnx, SHAPE, min_time_s=30, max_cv=0.5, retries=0, timeout_s=20)
        assert time.monotonic() - start < 25


def test_hung_server_hits_the_watchdog(tiny_onnx):
    with LoopbackServer() as server:
        rt = get_runtime("tvm", target=TARGET, rpc=RPCConfig.from_args(rpc=server.address))
        stopped = []

        def freeze():
            for p in _server_children(server):
                os.kill(p.pid, signal.SIGSTOP)
                stopped.append(p)

        threading.Timer(2.0, freeze).start()
        start = time.monotonic()
        try:
            with pytest.raises(ProfilingError, match="no answer within"):
                rt.measure(tiny_onnx, SHAPE, min_time_s=30, max_cv=0.5, retries=0, timeout_s=6)
            assert time.monotonic() - start < 20
        finally:
            for p in stopped:
                os.kill(p.pid, signal.SIGCONT)
