"""The in-process loop's clean stop: wherever a SIGINT lands, a finished trial stays finished, a running one
is failed and enqueued again, and nothing is left RUNNING."""

from __future__ import annotations

import os
import signal

import optuna
import pytest
from optuna.trial import TrialState

from autoprune.search.config import SearchConfig
from autoprune.search.loop import run_trials


def _study():
    study = optuna.create_study(directions=["maximize", "minimize"])
    study.sampler = optuna.samplers.RandomSampler(seed=0)
    return study


def _objective(trial):
    trial.suggest_float("r", 0.0, 0.9)
    return [0.9, 1.0]


def test_a_stop_after_the_tell_keeps_the_trial_complete():
    study = _study()

    def stop_after_tell(study, frozen):
        os.kill(os.getpid(), signal.SIGINT)  # lands after the trial was told COMPLETE

    with pytest.raises(KeyboardInterrupt):
        run_trials(study, SearchConfig(trials=3), _objective, progress=False, on_trial=stop_after_tell)
    states = [t.state for t in study.get_trials()]
    assert states == [TrialState.COMPLETE]  # not failed afterwards, no retry enqueued


def test_a_stop_during_a_trial_fails_it_and_enqueues_it_again():
    study = _study()

    def interrupted(trial):
        trial.suggest_float("r", 0.0, 0.9)
        os.kill(os.getpid(), signal.SIGINT)
        return [0.9, 1.0]

    with pytest.raises(KeyboardInterrupt):
        run_trials(study, SearchConfig(trials=3), interrupted, progress=False)
    trials = study.get_trials()
    assert [t.state for t in trials] == [TrialState.FAIL, TrialState.WAITING]
    assert "interrupted" in trials[0].user_attrs["fail_reason"] and trials[1].user_attrs["retry_of"] == 0
    assert trials[1].system_attrs["fixed_params"] == trials[0].params  # the same plan, drawn again on resume


def test_a_stop_inside_a_librarys_except_exception_still_stops_cleanly():
    """A signal that lands inside a broad ``except Exception`` (SQLAlchemy's statement wrapper, a pipeline
    guard) is not swallowed: the trial is failed and enqueued again, and the loop stops."""
    import time

    study = _study()

    def guarded(trial):
        trial.suggest_float("r", 0.0, 0.9)
        try:
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.5)  # the handler runs here, inside the try
        except Exception:  # noqa: BLE001 - what a library does
            pass
        return [0.9, 1.0]

    with pytest.raises(KeyboardInterrupt):
        run_trials(study, SearchConfig(trials=3), guarded, progress=False)
    trials = study.get_trials()
    assert [t.state for t in trials] == [TrialState.FAIL, TrialState.WAITING]
    assert "interrupted" in trials[0].user_attrs["fail_reason"] and trials[1].user_attrs["retry_of"] == 0


def test_a_stop_delivered_to_another_thread_while_a_trial_is_asked_leaves_nothing_running():
    """The signal reaches the process while ``study.ask()`` is creating the trial's row, through a thread that
    does not mask it (a heartbeat, OpenMP's workers): CPython runs the handler in the main thread, inside
    ``ask``. The trial it created must still be failed and enqueued again, not left RUNNING."""
    import threading
    import time

    study = _study()
    ask = study.ask

    def ask_then_signalled(*args, **kwargs):
        trial = ask(*args, **kwargs)
        sender = threading.Thread(target=os.kill, args=(os.getpid(), signal.SIGINT))
        sender.start()
        sender.join()
        time.sleep(0.2)  # the handler runs here, before ``ask`` has returned
        return trial

    study.ask = ask_then_signalled
    with pytest.raises(KeyboardInterrupt):
        run_trials(study, SearchConfig(trials=3), _objective, progress=False)
    trials = study.get_trials()
    assert [t.state for t in trials] == [TrialState.FAIL, TrialState.WAITING]
    assert "interrupted" in trials[0].user_attrs["fail_reason"]
