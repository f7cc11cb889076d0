"""Database outages without a server: an unreachable storage at start, and the retry of dropped connections."""

from __future__ import annotations

import socket
import subprocess
import sys
import time

import pytest
from sqlalchemy import exc as sa_exc

from autoprune.errors import ConfigError, StorageError
from autoprune.search import storage as st
from tests.conftest import TINY_REF, cli_env

PASSWORD = "s3cret-Pw-4711"


def closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def dead_url() -> str:
    return f"postgresql+psycopg2://autoprune:{PASSWORD}@127.0.0.1:{closed_port()}/autoprune"


@pytest.mark.parametrize("resume", [False, True], ids=["new-study", "resume"])
def test_unreachable_storage_at_start_is_one_redacted_line(results_root, resume):
    url = dead_url()
    args = ["--study", "down", "--storage", url, "--no-progress"]
    if not resume:
        args = ["--model", TINY_REF, "--target", "jetson-nano", "--trials", "2", *args]
    t0 = time.perf_counter()
    res = subprocess.run([sys.executable, "-m", "autoprune", "search", *args], env=cli_env(results_root),
                         capture_output=True, text=True, timeout=120)
    elapsed = time.perf_counter() - t0
    assert res.returncode == 2, res.stderr[-2000:]
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, res.stderr
    assert lines[0].startswith("autoprune search: error: cannot open study storage"), lines[0]
    assert "autoprune:***@127.0.0.1" in lines[0] and "reachable" in lines[0]
    assert PASSWORD not in res.stdout + res.stderr
    assert "Traceback" not in res.stderr
    assert elapsed < 60


class FlakyStorage:
    """Stands in for an RDBStorage whose connection is down for the first ``down`` calls."""

    def __init__(self, down: int, error: Exception | None = None) -> None:
        self.down = down
        self.calls = 0
        self.error = error

    def _error(self) -> Exception:
        if self.error is not None:
            return self.error
        orig = Exception(f"connection to server at 127.0.0.1 failed: password {PASSWORD} rejected\nDETAIL: x")
        return sa_exc.OperationalError("SELECT 1", {}, orig)

    def get_all_trials(self, study_id: int) -> list[int]:
        self.calls += 1
        if self.calls <= self.down:
            raise self._error()
        return [study_id]

    def set_trial_user_attr(self, trial_id: int, key: str, value) -> None:
        self.get_all_trials(trial_id)  # a nested call is not retried on its own

    def get_heartbeat_interval(self) -> int:
        return 10


URL = f"postgresql://autoprune:{PASSWORD}@db.example:5432/autoprune"


def test_connection_back_within_the_window_goes_on(capsys):
    storage = st.with_connection_retries(FlakyStorage(down=2), URL, retries=3, backoff_s=0.05)
    t0 = time.perf_counter()
    assert storage.get_all_trials(7) == [7]
    assert 0.05 + 0.1 <= time.perf_counter() - t0 < 2
    assert storage.calls == 3
    err = capsys.readouterr().err
    assert "unreachable" in err and "reachable again" in err and PASSWORD not in err
    assert storage.get_heartbeat_interval() == 10  # not a database call: untouched


def test_connection_gone_past_the_window_stops_with_one_redacted_line(capsys):
    storage = st.with_connection_retries(FlakyStorage(down=100), URL, retries=3, backoff_s=0.05)
    t0 = time.perf_counter()
    with pytest.raises(StorageError) as info:
        storage.set_trial_user_attr(1, "k", "v")
    assert 0.05 * 7 <= time.perf_counter() - t0 < 3  # 0.05 + 0.1 + 0.2 s of backoff
    assert storage.calls == 4  # 1 + 3 retries, the nested call not retried on its own
    msg = str(info.value)
    assert "\n" not in msg and PASSWORD not in msg and "autoprune:***@db.example" in msg
    assert "3 retries" in msg and "resume" in msg
    assert PASSWORD not in capsys.readouterr().err


def test_a_stop_during_the_retry_back_off_lands_at_once_not_after_the_window():
    import os
    import signal
    import threading

    from autoprune.search import stops

    storage = st.guard_with_retries(FlakyStorage(down=100), URL, retries=5, backoff_s=1.0)  # a 31 s window
    timer = threading.Timer(0.3, os.kill, (os.getpid(), signal.SIGTERM))
    t0 = time.perf_counter()
    with stops.catching(), pytest.raises(stops.StopRequested, match="SIGTERM"):
        timer.start()
        storage.get_all_trials(1)
    timer.join()
    assert time.perf_counter() - t0 < 2.0  # in the first 1 s sleep, not after 31 s of retries
    assert storage.calls == 1


def test_other_errors_are_not_retried():
    storage = st.with_connection_retries(FlakyStorage(down=1, error=ValueError("bad value")), URL, retries=5,
                                         backoff_s=1.0)
    t0 = time.perf_counter()
    with pytest.raises(ValueError, match="bad value"):
        storage.get_all_trials(1)
    assert time.perf_counter() - t0 < 0.5 and storage.calls == 1


def test_retry_policy_from_environment(monkeypatch):
    monkeypatch.delenv("AUTOPRUNE_DB_RETRIES", raising=False)
    monkeypatch.delenv("AUTOPRUNE_DB_RETRY_BACKOFF_S", raising=False)
    assert st.retry_policy() == (st.DB_RETRIES, st.DB_RETRY_BACKOFF_S)
    monkeypatch.setenv("AUTOPRUNE_DB_RETRIES", "2")
    monkeypatch.setenv("AUTOPRUNE_DB_RETRY_BACKOFF_S", "0.25")
    assert st.retry_policy() == (2, 0.25)
    for bad in ("-1", "many", "nan"):
        monkeypatch.setenv("AUTOPRUNE_DB_RETRY_BACKOFF_S", bad)
        with pytest.raises(ConfigError, match="AUTOPRUNE_DB_RETRY_BACKOFF_S"):
            st.retry_policy()
