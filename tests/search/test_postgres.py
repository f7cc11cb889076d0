"""Studies on a real PostgreSQL server (``AUTOPRUNE_TEST_PG_URL``; ``.ci/postgres.sh start`` runs one).

Four concurrent ``autoprune search`` workers share one study; a server that goes away mid-study
is retried, then the search stops cleanly and resumes once the server is back.
"""

from __future__ import annotations

import collections
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from tests.conftest import TINY_REF, cli_env

pytestmark = [pytest.mark.postgres, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
PG_SCRIPT = ROOT / ".ci" / "postgres.sh"
FAST = ["--model", TINY_REF, "--target", "jetson-nano", "--finetune-epochs", "0", "--no-progress"]


def search(*args: str) -> list[str]:
    return [sys.executable, "-m", "autoprune", "search", *args]


def trials_of(url: str, study: str) -> list[optuna.trial.FrozenTrial]:
    return optuna.load_study(study_name=study, storage=url).get_trials(deepcopy=False)


def count(trials, state) -> int:
    return sum(t.state == state for t in trials)


def password_of(url: str) -> str:
    return re.search(r"://[^:/@]*:([^@]*)@", url).group(1)


def test_four_workers_share_one_study(tiny_dense, results_root, pg_url):
    study, budget = f"four-{uuid.uuid4().hex[:8]}", 12
    env = cli_env(results_root)
    made = subprocess.run(search(*FAST, "--trials", str(budget), "--study", study, "--storage", pg_url,
                                 "--create-only"), env=env, capture_output=True, text=True, timeout=180)
    assert made.returncode == 0, made.stderr[-2000:]
    assert "created" in made.stdout and password_of(pg_url) not in made.stdout + made.stderr
    anchors = {t.user_attrs["anchor"] for t in trials_of(pg_url, study) if t.state == TrialState.WAITING}
    assert len(anchors) >= 3 and not count(trials_of(pg_url, study), TrialState.COMPLETE)

    t0 = time.perf_counter()
    procs = [subprocess.Popen(search("--study", study, "--storage", pg_url, "--no-progress"), env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(4)]
    outs = []
    try:
        for p in procs:
            out, err = p.communicate(timeout=400)
            outs.append((p.returncode, out, err))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    wall_s = time.perf_counter() - t0

    per_worker = []
    for code, out, err in outs:
        assert code == 0, err[-2000:]
        assert "Traceback" not in err and "Traceback" not in out, err[-2000:]
        assert password_of(pg_url) not in out + err
        per_worker.append(int(re.search(r"(\d+) trials completed here", out).group(1)))
    trials = trials_of(pg_url, study)
    states = collections.Counter(t.state.name for t in trials)
    assert count(trials, TrialState.COMPLETE) == budget, states
    assert sum(per_worker) == budget, per_worker
    assert not count(trials, TrialState.RUNNING) and not count(trials, TrialState.WAITING), states
    numbers = [t.number for t in trials]
    assert len(numbers) == len(set(numbers)) and sorted(numbers) == list(range(len(numbers)))
    ran = collections.Counter(t.user_attrs["anchor"] for t in trials
                              if "anchor" in t.user_attrs and t.state != TrialState.WAITING)
    assert set(ran) == anchors and set(ran.values()) == {1}, ran  # each enqueued plan ran once
    done = [t for t in trials if t.state == TrialState.COMPLETE]
    assert all("accuracy" in t.user_attrs and "plan_artifact_id" in t.user_attrs for t in done)
    print(f"4 workers, budget {budget}: completed per worker {per_worker}, states {dict(states)}, "
          f"{wall_s:.1f} s")


@pytest.fixture
def own_server():
    """A private PostgreSQL server (``.ci/postgres.sh`` in a fresh folder) that a test may stop and restart."""
    if shutil.which("runuser") is None and os.geteuid() == 0:
        pytest.skip("runuser is missing")
    folder = tempfile.mkdtemp(prefix="appg-", dir="/tmp")
    env = {**os.environ, "AUTOPRUNE_PG_DIR": folder}

    def ctl(action: str) -> str:
        res = subprocess.run(["bash", str(PG_SCRIPT), action], env=env, capture_output=True, text=True,
                             timeout=120)
        assert res.returncode == 0, res.stderr[-2000:]
        return res.stdout.strip()

    line = ctl("start")
    url = line.split("AUTOPRUNE_TEST_PG_URL=", 1)[1]
    try:
        yield url, ctl
    finally:
        ctl("destroy")


def wait_for_completed(url: str, study: str, n: int, proc: subprocess.Popen, timeout_s: float = 240) -> set[int]:
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        assert proc.poll() is None, proc.stderr.read()[-2000:]
        done = {t.number for t in trials_of(url, study) if t.state == TrialState.COMPLETE}
        if len(done) >= n:
            return done
        time.sleep(0.3)
    raise AssertionError(f"{study}: fewer than {n} trials completed in {timeout_s} s")


def test_connection_drop_is_retried_then_stops_cleanly_and_resumes(tiny_dense, results_root, pg_url, own_server):
    url, ctl = own_server
    password = password_of(url)
    base = cli_env(results_root)

    # 1) the server is back within the retry window: the search goes on
    study = "drop-short"
    env = {**base, "AUTOPRUNE_DB_RETRIES": "6", "AUTOPRUNE_DB_RETRY_BACKOFF_S": "0.5"}  # ~31 s window
    assert subprocess.run(search(*FAST, "--trials", "6", "--study", study, "--storage", url, "--create-only"),
                          env=env, capture_output=True, timeout=180).returncode == 0
    proc = subprocess.Popen(search("--study", study, "--storage", url, "--no-progress"), env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for_completed(url, study, 2, proc)
        ctl("stop")
        time.sleep(4)
        ctl("start")
        out, err = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err[-2000:]
    assert "Traceback" not in err and password not in out + err
    assert "unreachable" in err and "reachable again" in err, err[-2000:]
    trials = trials_of(url, study)
    assert count(trials, TrialState.COMPLETE) == 6 and not count(trials, TrialState.RUNNING)

    # 2) the server stays away past the window: one clear line, exit 2, nothing finished is lost
    study = "drop-long"
    env = {**base, "AUTOPRUNE_DB_RETRIES": "3", "AUTOPRUNE_DB_RETRY_BACKOFF_S": "0.5"}  # 3.5 s window
    assert subprocess.run(search(*FAST, "--finetune-epochs", "1", "--trials", "8", "--study", study, "--storage",
                                 url, "--create-only"), env=env, capture_output=True, timeout=180).returncode == 0
    proc = subprocess.Popen(search("--study", study, "--storage", url, "--no-progress"), env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for_completed(url, study, 2, proc)
        done_before = {t.number for t in trials_of(url, study) if t.state == TrialState.COMPLETE}
        ctl("stop")
        t_stop = time.perf_counter()
        out, err = proc.communicate(timeout=120)
        stopped_after_s = time.perf_counter() - t_stop
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        ctl("start")
    assert proc.returncode == 2, err[-2000:]
    assert "Traceback" not in err and password not in out + err, err[-2000:]
    last = err.strip().splitlines()[-1]
    assert last.startswith("autoprune search: error: lost the connection to the study storage"), last
    assert ":***@127.0.0.1" in last and "resume" in last
    assert stopped_after_s < 60
    trials = trials_of(url, study)
    assert done_before <= {t.number for t in trials if t.state == TrialState.COMPLETE}

    # resume once the server is back: the full budget, the trial cut off by the outage failed and retried
    res = subprocess.run(search("--study", study, "--storage", url, "--no-progress"), env=base,
                         capture_output=True, text=True, timeout=400)
    assert res.returncode == 0, res.stderr[-2000:]
    trials = trials_of(url, study)
    assert count(trials, TrialState.COMPLETE) == 8 and not count(trials, TrialState.RUNNING)
    assert done_before <= {t.number for t in trials if t.state == TrialState.COMPLETE}
    print(f"outage: stopped {stopped_after_s:.1f} s after the server went away; "
          f"{len(done_before)} finished trials kept; resumed to 8")
