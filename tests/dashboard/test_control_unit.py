"""The request channel's parts that need no server: validation, the study note, the bind-address rule."""

from __future__ import annotations

import pytest

from autoprune.dashboard.control import (
    MAX_TRIALS,
    Request,
    RequestError,
    inferred_exit_status,
    parse_request,
)
from autoprune.dashboard.server import check_host
from autoprune.errors import ConfigError


def test_ui_shaped_requests_are_parsed():
    # the UI sends the choice as its float value and every text field as a string ('' when empty)
    assert parse_request({"action": 1.0, "trials": "3", "timeout_s": "", "trial": ""}) == Request("resume", trials=3)
    assert parse_request({"action": 1, "trials": "", "timeout_s": "90", "trial": ""}) == \
        Request("resume", trials=MAX_TRIALS, timeout_s=90.0)
    assert parse_request({"action": 3.0, "trials": "", "timeout_s": "", "trial": " 12 "}) == Request("export", trial=12)
    assert parse_request({"action": "verify", "trial": "0"}) == Request("verify", trial=0)
    assert parse_request({"action": 2.0, "trials": "junk is ignored for stop"}) == Request("stop")
    r = Request("resume", trials=5, timeout_s=30.0)
    assert parse_request(r.form_values()) == r


@pytest.mark.parametrize(("fields", "reason"), [
    ({"action": 1, "trials": "0"}, "N must be from 1"),
    ({"action": 1, "trials": str(MAX_TRIALS + 1)}, "N must be from 1"),
    ({"action": 1, "trials": "-2"}, "whole number"),
    ({"action": 1, "trials": "2.5"}, "whole number"),
    ({"action": 1, "trials": "3; rm -rf /"}, "whole number"),
    ({"action": 1, "trials": "", "timeout_s": ""}, "needs N"),
    ({"action": 1, "trials": "2", "timeout_s": "nan"}, "number of seconds"),
    ({"action": 1, "trials": "2", "timeout_s": "0"}, "more than 0"),
    ({"action": 3, "trial": ""}, "needs a trial number"),
    ({"action": 9}, "unknown action"),
    ({"action": "rm"}, "unknown action"),
    ({"action": True}, "unknown action"),
    ({"action": 1, "trials": "2", "argv": "--storage x"}, "unknown form field"),
    ({"action": 1, "trials": ["2"]}, "holds a list"),
])
def test_bad_requests_are_refused_with_a_reason(fields, reason):
    with pytest.raises(RequestError, match=reason):
        parse_request(fields)


def test_exit_status_of_an_adopted_child_is_read_from_its_log():
    assert inferred_exit_status("...\nfront written to results/x\n") == 0
    assert inferred_exit_status("trial 4 ...\nautoprune search: interrupted\n") == 130
    assert inferred_exit_status("  File x\noptuna.exceptions.UpdateFinishedTrialError: Trial#15 ...\n") == 1
    assert inferred_exit_status("autoprune export: error: trial 9 is not a completed trial\n") == 2
    assert inferred_exit_status("Traceback (most recent call last):\n  ...\nValueError: x\n") == 1


def test_non_loopback_host_needs_allow_remote():
    assert check_host("127.0.0.1", False) is None
    assert check_host("::1", False) is None
    with pytest.raises(ConfigError, match="--allow-remote"):
        check_host("0.0.0.0", False)
    assert "warning" in check_host("0.0.0.0", True)


def test_remote_host_without_allow_remote_is_one_line_exit_2(capsys):
    from autoprune.cli import main

    assert main(["dashboard", "--host", "0.0.0.0", "--port", "1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--allow-remote" in err[0]


def test_study_note_keeps_user_text_and_lists_front_and_commands(tiny_dense, tmp_path):
    import optuna
    from optuna_dashboard import get_note, save_note

    from autoprune.dashboard.note import MARKER, update_study_note
    from tests.dashboard.conftest import make_study

    url = make_study(tmp_path, "note", trials=3)
    from autoprune.search.storage import make_storage

    study = optuna.load_study(study_name="note", storage=make_storage(url))
    body = update_study_note(study, url)
    assert body.startswith(MARKER) and get_note(study) == body
    for text in ("### Configuration", "| target | `jetson-nano` |", "### Pareto front", "| 0 (dense) |",
                 "latency ms (measured)", "speedup", "size MB",
                 f"autoprune search --study note --storage {url} --trials N",
                 f"autoprune export --study note --storage {url} --trial N"):
        assert text in body, text
    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert f"{len(done)} of 3 trials complete" in body
    # what a user writes above the marker survives the next update
    save_note(study, "my remarks: trial 2 looks good\n\n" + body)
    again = update_study_note(study, url)
    assert again.startswith("my remarks: trial 2 looks good") and again.count(MARKER) == 1
