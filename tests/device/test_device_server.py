"""`autoprune device serve` on loopback (ONNX Runtime on CPU, a fake INA3221 board rail): measuring through it,
calibrating through it end to end (zoo and user model), a search using that calibration, the measured energy fit,
and a server that dies or hangs mid-measurement."""

from __future__ import annotations

import json
import signal
import subprocess
import threading
import time

import optuna
import pytest

from autoprune.cli import main
from autoprune.device.client import DeviceOnnxRuntime
from autoprune.errors import NoisyMeasurementError, ProfilingError
from autoprune.profiling.rpc import RPCConfig
from tests.conftest import PYTHON, ROOT, TINY_REF, cli_env
from tests.device.conftest import TRUE_POWER_MW, DeviceServer
from tests.profiling.conftest import tiny_convnet_bytes

QUICK = {"warmup": 1, "min_time_s": 0.02, "min_repeats": 5, "max_cv": 5.0, "retries": 0}


def _runtime(server: DeviceServer, **kw) -> DeviceOnnxRuntime:
    return DeviceOnnxRuntime(RPCConfig("127.0.0.1", server.port, connect_timeout_s=5.0), **kw)


def test_info_reports_the_board_sensor_and_providers(device_server):
    info = _runtime(device_server).info()
    assert info["energy_source"].startswith("ina3221:POM_5V_IN:")
    assert "CPUExecutionProvider" in info["available_providers"]
    assert info["onnxruntime"] and info["tvm"]


def test_measure_on_the_device_follows_the_protocol(device_server):
    rt = _runtime(device_server, providers=["CUDAExecutionProvider", "CPUExecutionProvider"])
    m = rt.measure(tiny_convnet_bytes(), **QUICK)
    assert m.method == "measured" and m.latency_ms > 0 and m.repeats >= 5
    assert m.device.startswith(f"rpc://127.0.0.1:{device_server.port}")
    # The device has no CUDA provider: the fallback is written into the runtime, as locally.
    assert "CPUExecutionProvider" in m.runtime and "fallback: CUDAExecutionProvider unavailable" in m.runtime
    # The device's noise bound is the protocol's: an impossible bound raises the same error class here.
    with pytest.raises(NoisyMeasurementError, match="too noisy"):
        rt.measure(tiny_convnet_bytes(), warmup=0, min_time_s=0.01, min_repeats=20, max_cv=1e-9, retries=0)


def test_interleaved_measurement_reads_energy_on_the_device(device_server):
    rt = _runtime(device_server)
    small, big = tiny_convnet_bytes(4), tiny_convnet_bytes(32)
    r = rt.measure_relative(big, small, {"rounds": 4, "warmup": 1, "min_time_s": 0.02, "min_repeats": 3})
    assert r["rounds"] == 4 and r["ratio"] > 1.0  # 32 channels take longer than 4 on the same device
    e = r["energy"]
    assert e["method"] == "measured" and e["source"].startswith("ina3221:POM_5V_IN")
    # A constant 4.75 W rail: the reading's average power is that power.
    assert e["average_power_w"] == pytest.approx(TRUE_POWER_MW / 1e3, rel=0.01)
    assert e["energy_mj"] == pytest.approx(e["average_power_w"] * e["window_latency_ms"], rel=1e-6)


def test_a_plain_tvm_server_is_named_not_misused(tmp_path):
    from autoprune.profiling.rpc import LoopbackServer

    with LoopbackServer(port=9500, port_end=9600) as server:
        rt = DeviceOnnxRuntime(RPCConfig("127.0.0.1", server.port, connect_timeout_s=5.0))
        with pytest.raises(ProfilingError, match="autoprune device serve"):
            rt.info()


def test_unreachable_server_is_one_bounded_line():
    from tests.conftest import free_port

    rt = DeviceOnnxRuntime(RPCConfig("127.0.0.1", free_port(), connect_timeout_s=3.0))
    t0 = time.monotonic()
    with pytest.raises(ProfilingError) as err:
        rt.measure(tiny_convnet_bytes(), **QUICK)
    assert time.monotonic() - t0 < 10
    assert "\n" not in str(err.value) and "rpc://127.0.0.1" in str(err.value)


@pytest.mark.parametrize("how", ["killed", "hung"])
def test_server_killed_or_hung_mid_measurement_is_a_bounded_error(fake_board, how):
    server = DeviceServer(fake_board)
    try:
        rt = _runtime(server, margin_s=3.0)
        rt.info()
        sig = signal.SIGKILL if how == "killed" else signal.SIGSTOP
        timer = threading.Timer(1.5, server.signal, (sig,))
        timer.start()
        t0 = time.monotonic()
        with pytest.raises(ProfilingError) as err:  # a 20 s batch: the server goes away in its middle
            rt.measure(tiny_convnet_bytes(), warmup=0, min_time_s=20.0, min_repeats=5, max_repeats=10**9,
                       max_cv=5.0, retries=0, timeout_s=6.0)
        elapsed = time.monotonic() - t0
        timer.join()
        print(f"{how}: {elapsed:.1f} s: {err.value}")
        assert "\n" not in str(err.value) and f"127.0.0.1:{server.port}" in str(err.value)
        assert elapsed < 6.0 + 3.0 + 2.0  # the protocol's timeout + the RPC margin, never a hang
        if how == "hung":
            assert "no answer within" in str(err.value)
    finally:
        server.kill()


@pytest.mark.slow
def test_profile_through_the_device_server_then_search(device_server, tmp_path, monkeypatch, capsys):
    """Zoo and user model calibrated through the device server; the energy fit recovers the rail's power;
    a search then predicts with that calibration (latency and measured energy)."""
    from autoprune.costmodel import load_cost_model
    from autoprune.costmodel.calibration import calibration_path

    monkeypatch.setenv("AUTOPRUNE_RESULTS", str(tmp_path / "results"))
    rpc = ["--runtime", "onnxruntime", "--rpc", device_server.address, "--plans", "4", "--grid", "1.0",
           "--max-cv", "3"]
    # 1. a zoo model
    assert main(["profile", "--model", "resnet20", "--input-size", "16", *rpc]) == 0
    out = capsys.readouterr().out
    assert f"on rpc://127.0.0.1:{device_server.port}" in out and "energy MEASURED" in out
    cal = json.loads(calibration_path("local", "resnet20", 16, tmp_path / "results").read_text())
    fit = cal["error"]["energy"]
    assert fit["method"] == "measured" and fit["sensor"] == "ina3221" and fit["rail"] == "POM_5V_IN"
    assert fit["power_w"] == pytest.approx(TRUE_POWER_MW / 1e3, rel=0.02)
    assert f"rpc://127.0.0.1:{device_server.port}" in cal["runtime"]
    model = load_cost_model("local", "resnet20", (3, 16, 16), root=tmp_path / "results")
    assert model.provenance.status == "measured" and model.provenance.energy.startswith("measured:")
    # 2. a user model, then a search on it that uses this calibration
    assert main(["profile", "--model", TINY_REF, *rpc]) == 0
    capsys.readouterr()
    url = f"sqlite:///{tmp_path / 's.db'}"
    assert main(["search", "--target", "local", "--model", TINY_REF, "--trials", "2", "--finetune-epochs", "0",
                 "--study", "d", "--storage", url, "--no-progress"]) == 0
    trials = [t for t in optuna.load_study(study_name="d", storage=url).get_trials(deepcopy=False)
              if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(trials) == 2
    user_cal = json.loads(next((tmp_path / "results" / "calibrations" / "local").glob("tiny_cnn*.json")).read_text())
    power = user_cal["error"]["energy"]["power_w"]
    assert power == pytest.approx(TRUE_POWER_MW / 1e3, rel=0.02)
    for t in trials:
        prov = t.user_attrs["latency_provenance"]
        assert prov["status"] == "measured" and prov["energy"].startswith("measured:")
        assert f"rpc://127.0.0.1:{device_server.port}" in prov["runtime"]
        assert t.user_attrs["energy_mj"] == pytest.approx(power * t.user_attrs["latency_ms"], rel=1e-6)


@pytest.mark.slow
def test_profile_stores_nothing_when_the_server_dies(fake_board, tmp_path):
    server = DeviceServer(fake_board)
    env = cli_env(tmp_path / "results")
    try:
        proc = subprocess.Popen([PYTHON, "-m", "autoprune", "profile", "--model", "resnet20", "--input-size", "16",
                                 "--runtime", "onnxruntime", "--rpc", server.address, "--plans", "40",
                                 "--max-cv", "3"], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        time.sleep(12)  # well into the isolated kernel measurements
        server.signal(signal.SIGKILL)
        _, err = proc.communicate(timeout=90)
    finally:
        server.kill()
    assert proc.returncode == 2
    last = [line for line in err.strip().splitlines() if line.strip()][-1]
    assert last.startswith("autoprune profile: error:") and f"127.0.0.1:{server.port}" in last
    assert not list((tmp_path / "results").glob("calibrations/**/*.json"))
