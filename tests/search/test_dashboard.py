"""``autoprune dashboard`` serves a study (objectives, user attributes, plan artifacts) over HTTP."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest

from autoprune.cli import main
from tests.conftest import TINY_REF, cli_env, free_port

FAST = ["--model", TINY_REF, "--target", "jetson-nano", "--finetune-epochs", "0", "--no-progress"]


def get(url: str, timeout_s: float = 10):
    with urllib.request.urlopen(url, timeout=timeout_s) as r:
        return r.status, r.headers.get("Content-Type", ""), r.read()


@pytest.fixture
def dashboard(tiny_dense, results_root, tmp_path):
    """Start ``autoprune dashboard`` on a free loopback port; yields ``(base_url, url_of_storage)``."""
    pytest.importorskip("optuna_dashboard")
    url = f"sqlite:///{results_root / 'dash.db'}"
    assert main(["search", *FAST, "--trials", "4", "--study", "dash", "--storage", url]) == 0
    port = free_port()
    cmd = [sys.executable, "-m", "autoprune", "dashboard", "--storage", url, "--port", str(port),
           "--host", "127.0.0.1"]
    log = open(tmp_path / "dashboard.log", "w+b")  # noqa: SIM115 - closed in the finalizer
    proc = subprocess.Popen(cmd, env=cli_env(results_root), stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 60
        while True:
            if proc.poll() is not None:
                log.seek(0)
                raise RuntimeError(f"dashboard exited with {proc.returncode}: {log.read().decode()[-2000:]}")
            try:
                get(f"{base}/api/meta", timeout_s=2)
                break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                if time.time() > deadline:
                    raise RuntimeError("dashboard did not answer within 60 s") from None
                time.sleep(0.3)
        yield base, url
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        log.close()


def test_dashboard_serves_study_attrs_and_plan_artifacts(tiny_dense, dashboard):
    base, _ = dashboard
    _, _, body = get(f"{base}/api/studies")
    studies = {s["study_name"]: s for s in json.loads(body)["study_summaries"]}
    assert "dash" in studies
    assert studies["dash"]["directions"] == ["maximize", "minimize"]
    study_id = studies["dash"]["study_id"]

    _, _, body = get(f"{base}/api/studies/{study_id}")
    detail = json.loads(body)
    assert detail["name"] == "dash"
    assert detail["objective_names"] == ["accuracy (top-1)", "latency (ms)"]
    complete = [t for t in detail["trials"] if t["state"] == "Complete"]
    assert len(complete) == 4
    assert detail["best_trials"]  # the Pareto front
    for trial in complete:
        attrs = {a["key"]: a["value"] for a in trial["user_attrs"]}
        for key in ("accuracy", "latency_ms", "energy_mj", "plan", "latency_provenance", "plan_artifact_id"):
            assert key in attrs, (trial["number"], key)
        assert float(attrs["accuracy"]) == pytest.approx(trial["values"][0])
        # the plan is attached as a JSON artifact and served by the dashboard
        arts = {a["artifact_id"]: a for a in trial["artifacts"]}
        assert attrs["plan_artifact_id"] in arts
        art = arts[attrs["plan_artifact_id"]]
        assert art["mimetype"] == "application/json"
        status, ctype, raw = get(f"{base}/artifacts/{study_id}/{trial['trial_id']}/{art['artifact_id']}")
        assert status == 200 and ctype.startswith("application/json")
        plan = json.loads(raw)
        assert plan["groups"] and "settings" in plan
