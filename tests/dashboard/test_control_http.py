"""The control form over HTTP, posted exactly as optuna-dashboard's UI posts it."""

from __future__ import annotations

import json
import signal
import time
import urllib.request
from pathlib import Path

import psutil

from tests.dashboard.conftest import (
    Dashboard,
    attrs,
    make_study,
    n_complete,
    post_form,
    wait_for,
)


def _control_trial(dash: Dashboard, name: str, number: int) -> dict:
    return next(t for t in dash.study(f"{name}.control")["trials"] if t["number"] == number)


def _finished(dash: Dashboard, name: str, number: int):
    t = _control_trial(dash, name, number)
    return t if t["state"] in ("Complete", "Fail") else None


def _snapshot(dash: Dashboard, name: str) -> str:
    """Everything a refused request must leave alone: the study's and the control study's trials."""
    keep = ("number", "state", "values", "user_attrs", "params")
    studies = (name, f"{name}.control")
    return json.dumps([[{k: t.get(k) for k in keep} for t in dash.study(n)["trials"]] for n in studies], sort_keys=True)


def test_resume_export_and_refusals(driven, results_root):
    from autoprune.search.storage import single_worker_lock

    dash = driven
    before = n_complete(dash.study("ctl"))
    w = dash.waiting_trial("ctl")
    assert dash.study("ctl.control")["form_widgets"]["output_type"] == "user_attr"

    # refused requests: the reason comes back, nothing changes
    state = _snapshot(dash, "ctl")
    status, body = post_form(dash.base, w["trial_id"], {"action": 3.0, "trials": "", "timeout_s": "", "trial": "99"})
    assert status == 400 and "trial 99 is not a completed trial of 'ctl'" in body["reason"]
    status, body = post_form(dash.base, w["trial_id"], {"action": 1.0, "trials": "0", "timeout_s": "", "trial": ""})
    assert status == 400 and "N must be from 1" in body["reason"]
    with single_worker_lock(dash.url, "ctl"):  # another worker holds the study
        status, body = post_form(dash.base, w["trial_id"], {"action": 1.0, "trials": "2", "timeout_s": "",
                                                             "trial": ""})
    assert status == 400 and "already being searched by another process" in body["reason"]
    status, body = post_form(dash.base, w["trial_id"], {"action": 1.0, "trials": "2"},
                             headers={"Origin": "http://evil.example"})
    assert status == 403 and "cross-origin" in body["reason"]
    assert _snapshot(dash, "ctl") == state

    # resume 2 more trials
    t0 = time.monotonic()
    status, body = post_form(dash.base, w["trial_id"], {"action": 1.0, "trials": "2", "timeout_s": "", "trial": ""})
    assert status == 200 and body == {"accepted": "resume 2 trials", "control_trial": w["number"]}
    w2 = dash.waiting_trial("ctl", newer_than=w["number"])  # re-armed at once
    # one request per study at a time
    status, body = post_form(dash.base, w2["trial_id"], {"action": 3.0, "trials": "", "timeout_s": "", "trial": "0"})
    assert status == 400 and "one request per study at a time" in body["reason"]
    wait_for(lambda: n_complete(dash.study("ctl")) > before, 120, "the first new trial", 0.25)
    print(f"\nsubmit -> first new trial: {time.monotonic() - t0:.1f} s")
    job = wait_for(lambda: _finished(dash, "ctl", w["number"]), 120, "the resume to finish")
    a = attrs(job)
    assert job["state"] == "Complete" and a["exit_status"] == "0", a.get("log_tail")
    assert a["new_trials_complete"] == "2" and "2 trials completed here" in a["log_tail"]
    assert a["command"].startswith("autoprune search --study ctl --storage sqlite:///")
    assert n_complete(dash.study("ctl")) == before + 2
    assert f"completed trials: {before} → {before + 2}" in job["note"]["body"]

    # export a Pareto point: the user reads its number off the front
    detail = dash.study("ctl")
    front = sorted(t["number"] for t in detail["best_trials"])
    number = front[-1]
    w3 = dash.waiting_trial("ctl")
    assert w3["number"] == w2["number"]  # the refused request did not use up the form
    status, body = post_form(dash.base, w3["trial_id"], {"action": 3.0, "trials": "", "timeout_s": "",
                                                          "trial": str(number)})
    assert status == 200, body
    job = wait_for(lambda: _finished(dash, "ctl", w3["number"]), 180, "the export to finish")
    a = attrs(job)
    assert job["state"] == "Complete" and a["exit_status"] == "0", a.get("log_tail")
    out = Path(a["export_dir"])
    report = json.loads((out / "report.json").read_text())
    assert report["trial"] == number
    names = {art["filename"]: art for art in job["artifacts"]}
    expected = {"model.onnx", "report.json", "latency_per_layer.png"} | (
        {"model_tvm.so"} if report["tvm"].get("built") else set())
    assert set(names) == expected
    ctrl_id = dash.studies()["ctl.control"]["study_id"]
    for fname, art in names.items():  # served by the dashboard, byte for byte
        with urllib.request.urlopen(f"{dash.base}/artifacts/{ctrl_id}/{job['trial_id']}/{art['artifact_id']}") as r:
            assert r.read() == (out / fname).read_bytes()
    assert f"Export of trial {number}" in job["note"]["body"] and "test accuracy" in job["note"]["body"]
    # the study note lists the export and the commands
    note = dash.study("ctl")["note"]["body"]
    assert "### Exports" in note and str(out) in note and "autoprune export --study ctl" in note
    dash.waiting_trial("ctl")  # and the form is armed again


def test_killed_dashboard_child_is_adopted_and_stops_cleanly(tiny_dense, results_root, tmp_path):
    """Kill -9 the dashboard mid-resume: the child goes on, the next dashboard adopts it and can stop it."""
    import optuna

    from autoprune.search.storage import make_storage

    url = make_study(tmp_path, "adopt", trials=2)
    dash = Dashboard(url, results_root, tmp_path / "dash1.log")
    try:
        w = dash.waiting_trial("adopt")
        before = n_complete(dash.study("adopt"))
        assert post_form(dash.base, w["trial_id"], {"action": 1.0, "trials": "200", "timeout_s": "",
                                                     "trial": ""})[0] == 200
        wait_for(lambda: n_complete(dash.study("adopt")) > before, 120, "the first new trial", 0.25)
        pid = int(attrs(_control_trial(dash, "adopt", w["number"]))["pid"])
    finally:
        dash.stop(signal.SIGKILL)
    child = psutil.Process(pid)
    assert child.is_running() and "search" in child.cmdline()  # the child outlived the dashboard

    study = optuna.load_study(study_name="adopt", storage=make_storage(url))
    kept = len(study.get_trials(states=(optuna.trial.TrialState.COMPLETE,)))
    dash = Dashboard(url, results_root, tmp_path / "dash2.log")
    try:
        job = wait_for(lambda: "adopted" in attrs(_control_trial(dash, "adopt", w["number"])), 30, "the adoption")
        assert f"adopted the running resume 200 trials of control trial {w['number']} (pid {pid})" in dash.text()
        wait_for(lambda: n_complete(dash.study("adopt")) > kept, 60, "a trial after the adoption", 0.25)
        w2 = dash.waiting_trial("adopt", newer_than=w["number"])
        # Stop it with a trial in flight, read from the storage (the dashboard's answers may be 2 s old): the
        # child is then inside its trial loop, its SIGINT/SIGTERM handlers installed, and the stop exercises
        # the bookkeeping of an interrupted trial. (Stopped between two trials, it has none to do.)
        inflight = wait_for(lambda: _running(study), 60, "a trial in flight after the adoption", 0.05).number
        assert post_form(dash.base, w2["trial_id"], {"action": 2.0, "trials": "", "timeout_s": "",
                                                      "trial": ""})[0] == 200
        job = wait_for(lambda: _finished(dash, "adopt", w["number"]), 90, "the adopted child to stop")
        a = attrs(job)
        assert job["state"] == "Complete" and a["exit_status"] == "130", (  # what to read first when it is not
            job["state"], {k: a.get(k) for k in ("exit_status", "stop", "status", "recreated", "log_tail")})
        assert "adopted" in a["exit_status_source"] and "interrupted" in a["log_tail"]
        assert not child.is_running() or child.status() == psutil.STATUS_ZOMBIE
        stopper = _control_trial(dash, "adopt", w2["number"])
        assert stopper["state"] == "Complete" and "SIGINT sent" in attrs(stopper)["result"]
    finally:
        dash.stop()
    # Nothing lost: every finished trial is kept and none is left RUNNING. The trial in flight when the stop
    # was sent either finished before the SIGINT reached the child (COMPLETE, or PRUNED when stopped early),
    # or it is FAIL "interrupted" with its parameters enqueued again; so is any trial the stop interrupted.
    from optuna.trial import TrialState

    trials = optuna.load_study(study_name="adopt", storage=make_storage(url)).get_trials()
    by_number = {t.number: t for t in trials}
    assert [t.number for t in trials if t.state == TrialState.RUNNING] == []
    assert sum(t.state == TrialState.COMPLETE for t in trials) > kept
    interrupted = {t.number for t in trials if t.state == TrialState.FAIL
                   and "interrupted" in t.user_attrs.get("fail_reason", "")}
    retried = {t.user_attrs.get("retry_of"): t for t in trials if t.user_attrs.get("retry_of") is not None}
    for n in interrupted:  # enqueued again: a WAITING trial carries the parameters as fixed ones until it runs
        again = retried.get(n)
        assert again is not None and (again.params or again.system_attrs.get("fixed_params")) == \
            by_number[n].params, (n, by_number[n].params, again)
    assert by_number[inflight].state in (TrialState.COMPLETE, TrialState.PRUNED) or inflight in interrupted, (
        inflight, by_number[inflight].state, by_number[inflight].user_attrs)


def _running(study):
    """A RUNNING trial of the Optuna ``study`` (a ``FrozenTrial``), read from its storage; else ``None``."""
    import optuna

    running = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))
    return running[-1] if running else None
