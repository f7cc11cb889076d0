"""Stop signals never land inside a storage call (autoprune.search.stops)."""

import os
import signal
import sqlite3
import subprocess
import sys
import textwrap

import optuna
import pytest

from autoprune.search import stops
from autoprune.search.storage import make_storage


def test_a_stop_during_a_storage_call_is_raised_once_the_call_has_returned(tmp_path):
    from sqlalchemy import event

    db = tmp_path / "s.db"
    storage = make_storage(f"sqlite:///{db}")
    study = optuna.create_study(storage=storage, study_name="s")
    sent = []

    def stop_mid_statement(*_args):  # a SIGTERM that arrives while the UPDATE/INSERT runs
        if not sent:
            sent.append(1)
            os.kill(os.getpid(), signal.SIGTERM)

    event.listen(storage.engine, "before_cursor_execute", stop_mid_statement)
    with stops.catching(), pytest.raises(stops.StopRequested, match="SIGTERM"):
        storage.set_study_user_attr(study._study_id, "written", "yes")
    event.remove(storage.engine, "before_cursor_execute", stop_mid_statement)
    assert sent
    # the call finished before the stop was raised: its row is committed, and no lock is left behind
    assert optuna.load_study(study_name="s", storage=f"sqlite:///{db}").user_attrs == {"written": "yes"}
    with sqlite3.connect(db, timeout=1) as con:
        con.execute("BEGIN IMMEDIATE")
        con.rollback()


def test_deferred_blocks_nest_and_raise_at_the_outermost():
    reached = []
    with stops.catching():
        with pytest.raises(stops.StopRequested, match="SIGINT"), stops.deferred():
            with stops.deferred():
                os.kill(os.getpid(), signal.SIGINT)
                for _ in range(100):  # the handler runs here, and only records the stop
                    pass
            reached.append("inner block's end")
        assert reached == ["inner block's end"]
        with pytest.raises(stops.StopRequested):  # outside a deferred block, a stop raises at once
            os.kill(os.getpid(), signal.SIGTERM)
            for _ in range(10_000):
                pass


_STOPS_AT_RANDOM = textwrap.dedent("""
    import os, random, signal, sys, threading
    import optuna
    from autoprune.search.config import SearchConfig
    from autoprune.search.loop import run_trials
    from autoprune.search.storage import make_storage

    folder, runs = sys.argv[1], int(sys.argv[2])
    config = SearchConfig(model="x", target="jetson-nano", trials=10**6)
    for run in range(runs):
        storage = make_storage(f"sqlite:///{folder}/{run}.db")
        study = optuna.create_study(storage=storage, study_name="s", directions=["maximize", "minimize"])

        def objective(trial):  # a candidate that is mostly storage calls, as a fast fine-tune's is
            x = trial.suggest_float("x", 0, 1)
            for i in range(20):
                trial.set_user_attr(f"a{i}", i)
                study.get_trials(deepcopy=False)
            return [x, 1 - x]

        threading.Timer(random.Random(run).uniform(0.1, 0.6), os.kill, (os.getpid(), signal.SIGTERM)).start()
        try:
            run_trials(study, config, objective, progress=False)
        except KeyboardInterrupt:
            pass
        states = [t.state for t in study.get_trials(deepcopy=False)]
        assert optuna.trial.TrialState.RUNNING not in states, (run, states)
    print("ok", runs)
""")


def test_stops_at_random_moments_never_leave_the_database_locked(tmp_path):
    """Before the guard, about 1 run in 10 hung: the stop aborted a commit, its connection kept SQLite's write
    lock, and the loop's bookkeeping waited on it for the 60 s busy timeout."""
    script = tmp_path / "stops_at_random.py"
    script.write_text(_STOPS_AT_RANDOM)
    try:
        out = subprocess.run([sys.executable, str(script), str(tmp_path), "25"], capture_output=True, text=True,
                             timeout=120, env={**os.environ, "OMP_NUM_THREADS": "1"})
    except subprocess.TimeoutExpired:
        pytest.fail("a stop left the loop waiting on the database (25 runs did not finish in 120 s)")
    assert out.returncode == 0 and "ok 25" in out.stdout, out.stderr[-3000:]
