"""The Ray Tune backend on a real local Ray cluster, then the same study resumed in-process."""

from __future__ import annotations

import os
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import optuna
import pytest

from autoprune.cli import main
from tests.conftest import TINY_REF, cli_env

pytestmark = pytest.mark.ray

FAST = ["--model", TINY_REF, "--target", "jetson-nano", "--finetune-epochs", "0", "--no-progress"]
RAY = str(Path(sys.executable).with_name("ray"))
TOKEN = secrets.token_hex(32)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port: int, proc: subprocess.Popen, timeout_s: float = 90) -> None:
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"ray start exited with {proc.returncode}: {proc.stderr.read().decode()[-2000:]}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.5)
    raise RuntimeError(f"Ray GCS did not listen on 127.0.0.1:{port} within {timeout_s} s")


def ray_env(results_root) -> dict[str, str]:
    """Environment of the cluster and the driver: token authentication with a private token."""
    return {**cli_env(results_root), "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": TOKEN}


@pytest.fixture
def ray_cluster(results_root):
    """A two-CPU Ray head on loopback, started in its own process group and stopped by that group.

    ``ray start --block`` keeps the head in the foreground, so the cluster is stopped by
    signalling the processes this fixture started rather than ``ray stop`` (which stops
    every Ray on the machine).
    """
    pytest.importorskip("ray.tune")
    port = free_port()
    temp_dir = tempfile.mkdtemp(prefix="rt", dir="/tmp")  # short: Ray's socket paths must fit 107 bytes
    cmd = [RAY, "start", "--head", "--block", "--node-ip-address=127.0.0.1", f"--port={port}", "--num-cpus=2",
           "--include-dashboard=false", "--disable-usage-stats", f"--temp-dir={temp_dir}"]
    proc = subprocess.Popen(cmd, env=ray_env(results_root), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            start_new_session=True)
    try:
        wait_for_port(port, proc)
        yield f"127.0.0.1:{port}"
    finally:
        for sig, wait_s in ((signal.SIGTERM, 20), (signal.SIGKILL, 10)):
            try:
                os.killpg(proc.pid, sig)
            except ProcessLookupError:
                break
            try:
                proc.wait(timeout=wait_s)
            except subprocess.TimeoutExpired:
                continue
            time.sleep(1.0)  # let the group's other processes follow the head
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # stragglers of the group (workers, raylet), if any
        except ProcessLookupError:
            pass


def states(url: str, study: str) -> dict[optuna.trial.TrialState, list[optuna.trial.FrozenTrial]]:
    out: dict = {}
    for t in optuna.load_study(study_name=study, storage=url).get_trials(deepcopy=False):
        out.setdefault(t.state, []).append(t)
    return out


def test_ray_study_then_plain_resume(tiny_dense, results_root, ray_cluster):
    url = f"sqlite:///{results_root / 'ray.db'}"
    t0 = time.perf_counter()
    cmd = [sys.executable, "-m", "autoprune", "search", *FAST, "--trials", "5", "--study", "ray", "--storage", url,
           "--backend", "ray", "--address", ray_cluster, "--workers", "2"]
    res = subprocess.run(cmd, env=ray_env(results_root), capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    ray_s = time.perf_counter() - t0
    by = states(url, "ray")
    done = by.get(optuna.trial.TrialState.COMPLETE, [])
    assert len(done) == 5, {s.name: len(v) for s, v in by.items()}
    assert not by.get(optuna.trial.TrialState.RUNNING)
    assert "dense" in [t.user_attrs.get("anchor") for t in done]  # the enqueued anchors ran on Ray
    for t in done:
        for key in ("accuracy", "latency_ms", "energy_mj", "plan", "plan_artifact_id", "constraints"):
            assert key in t.user_attrs, (t.number, key)
        assert t.values == [t.user_attrs["accuracy"], t.user_attrs["latency_ms"]]
        assert t.user_attrs["latency_provenance"]["method"] == "predicted"
        assert t.user_attrs["plan"]["groups"]

    # the same study, resumed by the plain Optuna backend in this process
    assert main(["search", "--study", "ray", "--storage", url, "--trials", "2", "--no-progress"]) == 0
    by = states(url, "ray")
    assert len(by.get(optuna.trial.TrialState.COMPLETE, [])) == 7
    assert not by.get(optuna.trial.TrialState.RUNNING)
    print(f"ray search of 5 trials (2 workers): {ray_s:.1f} s")
