"""A Ray worker process killed mid-trial: Ray retries the trial under FailureConfig, the study stays exact."""

from __future__ import annotations

import os
import sys
import time

import optuna
import pytest
from optuna.trial import TrialState

from tests.conftest import ROOT
from tests.search.test_ray_backend import local_cluster, ray_env

CRASH_REF = f"{ROOT / 'tests' / 'fixtures' / 'crash_cnn.py'}:crash_cnn"
FAST = ["--model", CRASH_REF, "--target", "jetson-nano", "--finetune-epochs", "0", "--no-progress"]


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.mark.ray
@pytest.mark.slow
def test_killed_worker_is_retried_and_no_trial_left_running(results_root, tmp_path):
    pytest.importorskip("ray.tune")
    import subprocess

    from autoprune.data import load_data
    from autoprune.train import TrainConfig, ensure_dense

    ensure_dense(CRASH_REF, load_data("digits"), 0, config=TrainConfig(epochs=2), progress=False)  # no crash here
    marker = tmp_path / "killed.pid"
    url = f"sqlite:///{results_root / 'ray-crash.db'}"
    budget = 3
    t0 = time.perf_counter()
    with local_cluster({**ray_env(results_root), "AUTOPRUNE_TEST_CRASH_MARKER": str(marker)}) as address:
        res = subprocess.run([sys.executable, "-m", "autoprune", "search", *FAST, "--trials", str(budget),
                              "--study", "crash", "--storage", url, "--backend", "ray", "--address", address,
                              "--workers", "2"], env=ray_env(results_root), capture_output=True, text=True,
                             timeout=240)
    elapsed = time.perf_counter() - t0
    assert res.returncode == 0, res.stderr[-3000:]
    assert "Traceback" not in res.stderr, res.stderr[-3000:]  # Ray's trial error is one line
    assert "Trial task failed" in res.stderr and "ActorDiedError" in res.stderr, res.stderr[-3000:]
    # a worker really died, mid-trial: it wrote its pid, then SIGKILLed itself
    assert marker.is_file(), "no worker crashed: is the cluster's environment passed to its workers?"
    pid = int(marker.read_text())
    assert pid != os.getpid() and not alive(pid)
    errors = list((results_root / "crash" / "ray").rglob("error.txt"))
    assert errors, "Ray recorded no trial failure"
    trials = optuna.load_study(study_name="crash", storage=url).get_trials(deepcopy=False)
    by = {s: [t for t in trials if t.state == s] for s in TrialState}
    assert len(by[TrialState.COMPLETE]) == budget, {s.name: len(v) for s, v in by.items() if v}
    assert not by[TrialState.RUNNING]
    assert not [t for t in by[TrialState.FAIL] if t.user_attrs.get("fail_reason", "").startswith("ray:")]
    print(f"ray worker {pid} killed mid-trial; retried; {budget} trials complete in {elapsed:.1f} s")
