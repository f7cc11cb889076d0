"""A control study deleted while its request runs: the controller re-creates it and the request can still be
stopped; a ``tell`` on the running search's trial (a fake point on the front) is refused all along."""

from __future__ import annotations

import signal

from tests.dashboard.conftest import Dashboard, attrs, make_study, post_form, wait_for


def _running_search_trial(dash: Dashboard, name: str) -> dict | None:
    return next((t for t in dash.study(name)["trials"] if t["state"] == "Running"), None)


def _request_trial(dash: Dashboard, name: str) -> dict | None:
    """The control trial that carries the request, whatever its number (``None`` while there is no control study)."""
    if f"{name}.control" not in dash.studies():
        return None
    ctrl = dash.study(f"{name}.control")
    return next((t for t in ctrl["trials"] if "request" in attrs(t)), None)


def test_control_study_deleted_while_a_request_runs(tiny_dense, results_root, tmp_path):
    import optuna

    url = make_study(tmp_path, "del", trials=2)
    dash = Dashboard(url, results_root, tmp_path / "dashboard.log")
    try:
        w = dash.waiting_trial("del")
        status, body = post_form(dash.base, w["trial_id"], {"action": 1.0, "trials": "200", "timeout_s": "",
                                                             "trial": ""})
        assert status == 200, body
        running = wait_for(lambda: _running_search_trial(dash, "del"), 60, "the resumed search's first trial", 0.25)

        # a fake point on the front of the running search: refused from any Host, with or without the token
        tell = {"state": "Complete", "values": [0.999, 0.001]}
        for headers in ({"Host": "evil.example"}, dash.auth()):
            status, reply, _ = dash.write("POST", f"/api/trials/{running['trial_id']}/tell", tell, headers)
            assert status == 403, reply
        # the UI may not delete the control study (no --allow-edits); another process deletes it
        ctrl_id = dash.studies()["del.control"]["study_id"]
        status, reply, _ = dash.write("DELETE", f"/api/studies/{ctrl_id}", None, dash.auth())
        assert status == 403 and "--allow-edits" in reply["reason"]
        storage = optuna.storages.RDBStorage(url)
        optuna.delete_study(study_name="del.control", storage=storage)
        storage.engine.dispose()

        # the controller re-creates the control study, gives the request a new trial there, and arms a form
        job = wait_for(lambda: (t := _request_trial(dash, "del")) and "recreated" in attrs(t) and t, 30,
                       "the request's re-created control trial")
        assert job["state"] == "Running" and attrs(job)["request"] == "resume 200 trials"
        w2 = dash.waiting_trial("del")
        status, body = post_form(dash.base, w2["trial_id"], {"action": 2.0, "trials": "", "timeout_s": "",
                                                              "trial": ""})
        assert status == 200, body
        done = wait_for(lambda: (t := _request_trial(dash, "del")) and t["state"] in ("Complete", "Fail") and t, 90,
                        "the stopped request to be recorded")
        a = attrs(done)
        assert done["state"] == "Complete" and a["exit_status"] == "130", a
        assert "recreated" in a and "interrupted" in a["log_tail"]
        # the told trial was never faked: it ended with the search's own values (or was stopped)
        told = next(t for t in dash.study("del")["trials"] if t["trial_id"] == running["trial_id"])
        assert told.get("values") != tell["values"]
        dash.waiting_trial("del")  # and the form is armed again
    finally:
        dash.stop(signal.SIGINT)
    text = dash.text()
    assert dash.proc.returncode == 0, text[-2000:]
    assert "KeyError" not in text and "Traceback" not in text, text[-3000:]
    assert "re-created it: the request is now control trial" in text
