"""End-to-end studies on a tiny user model: front files, resume after SIGKILL, conflicts, export."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import optuna
import pytest

from autoprune.cli import main
from tests.conftest import TINY_REF, cli_env

FAST = ["--model", TINY_REF, "--target", "jetson-nano", "--finetune-epochs", "0", "--no-progress"]


def storage_url(root, name="s.db"):
    return f"sqlite:///{root / name}"


def trials_of(url, study):
    return optuna.load_study(study_name=study, storage=url).get_trials(deepcopy=False)


def test_search_writes_front_and_records_attrs(tiny_dense, results_root, capsys):
    url = storage_url(results_root, "front.db")
    assert main(["search", *FAST, "--trials", "6", "--study", "front", "--storage", url]) == 0
    out = capsys.readouterr().out
    assert "PREDICTED" in out and "trial" in out
    trials = trials_of(url, "front")
    done = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(done) == 6
    anchors = [t.user_attrs.get("anchor") for t in done]
    assert "dense" in anchors and sum(a is not None for a in anchors) >= 3
    for t in done:
        for key in ("plan", "accuracy", "f1_macro", "latency_ms", "energy_mj", "latency_provenance", "params",
                    "macs", "per_layer_ms", "plan_artifact_id"):
            assert key in t.user_attrs, key
        assert t.user_attrs["latency_provenance"]["method"] == "predicted"
    folder = results_root / "front"
    for name in ("pareto.csv", "pareto.json", "pareto.png", "pareto.html"):
        assert (folder / name).stat().st_size > 0
    summary = json.loads((folder / "pareto.json").read_text())
    assert summary["front"] and summary["hypervolume"] > 0
    # the same front through `autoprune pareto`
    assert main(["pareto", "--study", "front", "--storage", url]) == 0
    assert "trial" in capsys.readouterr().out


def test_conflicting_resume_is_refused(tiny_dense, results_root, capsys):
    url = storage_url(results_root, "conflict.db")
    assert main(["search", *FAST, "--trials", "1", "--study", "c", "--storage", url]) == 0
    n = len(trials_of(url, "c"))
    code = main(["search", *FAST[:2], "--target", "raspberry-pi-4", "--study", "c", "--storage", url])
    assert code == 2
    err = capsys.readouterr().err
    assert "target='jetson-nano'" in err and "--study c" in err
    assert len(trials_of(url, "c")) == n  # nothing written


def test_resume_after_sigkill_keeps_completed_and_retries_stale(tiny_dense, results_root):
    url = storage_url(results_root, "kill.db")
    env = cli_env(results_root)
    cmd = [sys.executable, "-m", "autoprune", "search", *FAST, "--finetune-epochs", "3", "--trials", "10",
           "--study", "k", "--storage", url]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            start_new_session=True)
    deadline = time.time() + 240
    killed_at = None
    try:
        while time.time() < deadline:
            time.sleep(0.5)
            try:
                trials = trials_of(url, "k")
            except Exception:  # noqa: BLE001 - the study may not exist yet
                continue
            done = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
            running = [t for t in trials if t.state == optuna.trial.TrialState.RUNNING]
            if len(done) >= 2 and running:
                os.killpg(proc.pid, signal.SIGKILL)
                killed_at = {t.number for t in done}, running[0].number
                break
        assert killed_at is not None, "search never reached 2 completed trials: " + proc.stderr.read().decode()[-2000:]
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    done_before, stale = killed_at
    res = subprocess.run([sys.executable, "-m", "autoprune", "search", "--study", "k", "--storage", url,
                          "--no-progress"], env=env, capture_output=True, text=True, timeout=400)
    assert res.returncode == 0, res.stderr[-2000:]
    trials = {t.number: t for t in trials_of(url, "k")}
    assert done_before <= {n for n, t in trials.items() if t.state == optuna.trial.TrialState.COMPLETE}
    assert trials[stale].state == optuna.trial.TrialState.FAIL
    assert "stale" in trials[stale].user_attrs["fail_reason"]
    retried = [t for t in trials.values() if t.user_attrs.get("retry_of") == stale]
    # the retry repeats every parameter the killed trial had drawn (a kill mid-suggest leaves a partial plan)
    assert retried and trials[stale].params.items() <= retried[0].params.items()
    assert sum(t.state == optuna.trial.TrialState.COMPLETE for t in trials.values()) == 10
    assert not any(t.state == optuna.trial.TrialState.RUNNING for t in trials.values())


def test_sigterm_stops_cleanly(tiny_dense, results_root):
    url = storage_url(results_root, "term.db")
    cmd = [sys.executable, "-m", "autoprune", "search", *FAST, "--finetune-epochs", "3", "--trials", "50",
           "--study", "t", "--storage", url]
    proc = subprocess.Popen(cmd, env={**cli_env(results_root), "PYTHONFAULTHANDLER": "1"},
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 240
    while time.time() < deadline:
        time.sleep(0.5)
        try:
            trials = trials_of(url, "t")
        except Exception:  # noqa: BLE001
            continue
        if any(t.state == optuna.trial.TrialState.COMPLETE for t in trials) and \
                any(t.state == optuna.trial.TrialState.RUNNING for t in trials):
            break
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:  # a hang: SIGABRT makes faulthandler print every thread's stack
        proc.send_signal(signal.SIGABRT)
        proc.wait(timeout=30)
        pytest.fail("the search did not stop within 60 s of SIGTERM; its threads:\n"
                    + proc.stderr.read().decode()[-6000:])
    err = proc.stderr.read().decode()
    assert proc.returncode == 130 and "Traceback" not in err, err[-2000:]
    trials = trials_of(url, "t")
    assert not any(t.state == optuna.trial.TrialState.RUNNING for t in trials)
    interrupted = [t for t in trials if "interrupted" in t.user_attrs.get("fail_reason", "")]
    assert interrupted
    waiting = [t for t in trials if t.state == optuna.trial.TrialState.WAITING]
    assert any(t.user_attrs.get("retry_of") == interrupted[0].number for t in waiting)


def test_export_picks_under_constraint_with_parity(tiny_dense, results_root, capsys):
    url = storage_url(results_root, "export.db")
    assert main(["search", *FAST, "--trials", "6", "--study", "e", "--storage", url]) == 0
    front = json.loads((results_root / "e" / "pareto.json").read_text())["front"]
    lat = sorted(r["latency_ms"] for r in front)
    limit = (lat[0] + lat[-1]) / 2 if len(lat) > 1 else lat[0]
    capsys.readouterr()
    assert main(["export", "--study", "e", "--storage", url, "--max-latency-ms", str(limit), "--epochs", "1",
                 "--no-progress", "--no-tvm"]) == 0
    out = capsys.readouterr().out
    picked = int(out.split("exported trial ")[1].split()[0])
    report = json.loads((results_root / "e" / f"export-{picked}" / "report.json").read_text())
    assert report["predicted"]["latency_ms"] <= limit * 1.0001
    onnx = report["onnx"]
    assert onnx["max_abs_diff"] <= onnx["atol"] and onnx["file_bytes"] > 0
    for name in ("model.onnx", "latency_per_layer.png", "report.json"):
        assert (results_root / "e" / f"export-{picked}" / name).exists()
    assert 0 <= report["test"]["accuracy"] <= 1
    # a condition nothing meets is a clear error
    code = main(["export", "--study", "e", "--storage", url, "--max-latency-ms", "1e-9", "--no-progress"])
    assert code == 2
    assert "no Pareto point" in capsys.readouterr().err


@pytest.mark.parametrize("sampler", ["nsga2", "gp", "random"])
def test_other_samplers_run(tiny_dense, results_root, sampler):
    url = storage_url(results_root, f"sampler-{sampler}.db")
    assert main(["search", *FAST, "--trials", "5", "--sampler", sampler, "--study", sampler, "--storage", url]) == 0
    assert sum(t.state == optuna.trial.TrialState.COMPLETE for t in trials_of(url, sampler)) == 5
