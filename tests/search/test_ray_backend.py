"""The Ray Tune backend on a real local Ray cluster, then the same study resumed in-process."""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from autoprune.cli import main
from tests.conftest import TINY_REF, cli_env, free_port, ray_searcher

FAST = ["--model", TINY_REF, "--target", "jetson-nano", "--finetune-epochs", "0", "--no-progress"]
RAY = str(Path(sys.executable).with_name("ray"))
TOKEN = secrets.token_hex(32)


def wait_for_port(port: int, proc: subprocess.Popen, log, timeout_s: float = 90) -> None:
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        if proc.poll() is not None:
            log.seek(0)
            raise RuntimeError(f"ray start exited with {proc.returncode}: {log.read().decode()[-2000:]}")
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
    """A two-CPU Ray head on loopback (see :func:`local_cluster`)."""
    pytest.importorskip("ray.tune")
    with local_cluster(ray_env(results_root)) as address:
        yield address


@contextmanager
def local_cluster(env: dict[str, str]):
    """A two-CPU Ray head on loopback with environment ``env`` (its workers inherit it), started in
    its own process group and stopped by that group; yields its address.

    ``ray start --block`` keeps the head in the foreground, so the cluster is stopped by
    signalling the processes started here rather than ``ray stop`` (which stops
    every Ray on the machine).
    """
    port = free_port()
    temp_dir = tempfile.mkdtemp(prefix="rt", dir="/tmp")  # short: Ray's socket paths must fit 107 bytes
    cmd = [RAY, "start", "--head", "--block", "--node-ip-address=127.0.0.1", f"--port={port}", "--num-cpus=2",
           "--include-dashboard=false", "--disable-usage-stats", f"--temp-dir={temp_dir}"]
    log = open(Path(temp_dir) / "ray-start.log", "w+b")  # noqa: SIM115 - closed in the finalizer
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_for_port(port, proc, log)
        yield f"127.0.0.1:{port}"
    finally:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass
            time.sleep(0.5)
            os.killpg(proc.pid, signal.SIGKILL)  # the rest of the group: GCS, raylet, workers
        except ProcessLookupError:
            pass
        proc.wait()
        log.close()
        shutil.rmtree(temp_dir, ignore_errors=True)


def states(url: str, study: str) -> dict[TrialState, list[optuna.trial.FrozenTrial]]:
    out: dict = {}
    for t in optuna.load_study(study_name=study, storage=url).get_trials(deepcopy=False):
        out.setdefault(t.state, []).append(t)
    return out


@pytest.mark.ray
def test_ray_study_then_plain_resume(tiny_dense, results_root, ray_cluster):
    url = f"sqlite:///{results_root / 'ray.db'}"
    t0 = time.perf_counter()
    cmd = [sys.executable, "-m", "autoprune", "search", *FAST, "--trials", "5", "--study", "ray", "--storage", url,
           "--backend", "ray", "--address", ray_cluster, "--workers", "2"]
    res = subprocess.run(cmd, env=ray_env(results_root), capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    ray_s = time.perf_counter() - t0
    by = states(url, "ray")
    done = by.get(TrialState.COMPLETE, [])
    assert len(done) == 5, {s.name: len(v) for s, v in by.items()}
    assert not by.get(TrialState.RUNNING)
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
    assert len(by.get(TrialState.COMPLETE, [])) == 7
    assert not by.get(TrialState.RUNNING)
    print(f"ray search of 5 trials (2 workers): {ray_s:.1f} s")


def test_searcher_bookkeeping_without_a_cluster(tiny_dense, results_root):
    """The driver's searcher and the worker's evaluation, joined by hand: every outcome lands on the study."""
    pytest.importorskip("ray.tune")
    from ray.tune.search import Searcher

    from autoprune.search.backends import ray as rb

    url, study, config, searcher = ray_searcher(results_root, "searcher", trials=3)
    spec = rb.worker_spec(study, config)

    params = {tid: searcher.suggest(tid) for tid in ("a", "b", "c")}
    assert all(rb.TRIAL_KEY in p and any(k.startswith(("r:", "p:")) for k in p) for p in params.values())
    assert searcher.suggest("d") is Searcher.FINISHED  # three RUNNING trials hold the whole budget

    # a: a real candidate, evaluated as a worker would, recorded on its Optuna trial
    result = rb.evaluate_params(params["a"], spec)
    assert rb.RECORD_KEY in result and rb.ERROR_KEY not in result
    searcher.on_trial_complete("a", result)
    # b: a candidate whose plan cannot be built fails with the candidate's own reason
    bad = {**params["b"], **{k: "no-such-structure" for k in params["b"] if k.startswith("s:")}}
    assert bad != params["b"]
    result = rb.evaluate_params(bad, spec)
    assert rb.ERROR_KEY in result
    searcher.on_trial_complete("b", result)
    # c: the worker crashed past Ray's retries
    searcher.on_trial_complete("c", None, error=True)
    # d: stopped by Ray before it reported: failed and enqueued again
    assert searcher.suggest("d") is not Searcher.FINISHED
    searcher.on_trial_complete("d", None)

    trials = {t.number: t for t in optuna.load_study(study_name="searcher", storage=url).get_trials()}
    num = {tid: searcher.trials[tid].number for tid in "abcd"}
    a = trials[num["a"]]
    assert a.state == TrialState.COMPLETE and a.values == [a.user_attrs["accuracy"], a.user_attrs["latency_ms"]]
    for key in ("plan", "latency_provenance", "plan_artifact_id", "constraints", "size_mb"):
        assert key in a.user_attrs
    assert trials[num["b"]].state == TrialState.FAIL
    assert trials[num["b"]].user_attrs["fail_reason"].startswith("PlanError: ")
    assert trials[num["c"]].state == TrialState.FAIL and trials[num["c"]].user_attrs["fail_reason"].startswith("ray:")
    assert trials[num["d"]].state == TrialState.FAIL and "retried" in trials[num["d"]].user_attrs["fail_reason"]
    retry = [t for t in trials.values() if t.user_attrs.get("retry_of") == num["d"]]
    assert retry and retry[0].state == TrialState.WAITING
    assert not [t for t in trials.values() if t.state == TrialState.RUNNING]
    assert searcher.counts == {"completed": 1, "failed": 2, "surplus": 1, "stopped": 0}


def test_searcher_sends_an_anchors_fixed_parameters_to_the_worker(tiny_dense, results_root):
    """A baseline anchor's (or a screened global-L1 candidate's) fixed parameters override the in-space ones
    on the worker, as in-process: the worker must receive them."""
    pytest.importorskip("ray.tune")
    _, study, _, searcher = ray_searcher(results_root, "fixed-params", trials=2)
    study.enqueue_trial({}, user_attrs={"anchor": "global-0.5",
                                        "anchor_params": {"allocation": "global", "global_ratio": 0.5}})
    sent = searcher.suggest("a")
    assert sent["allocation"] == "global" and sent["global_ratio"] == 0.5
