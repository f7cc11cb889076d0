"""The benchmark scripts: their accounting and their error paths (they are not run in full here)."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import optuna

ROOT = Path(__file__).resolve().parents[1]


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_steps_used_charges_fine_tuning_only():
    """Equal compute is counted in fine-tuning steps: a completed trial spends all of its steps, a
    stopped one the part it ran, the dense anchor (evaluated, never fine-tuned) and a failure none."""
    sq = _load("search_quality")
    study = optuna.create_study(directions=["maximize", "minimize"])
    dist = {"x": optuna.distributions.FloatDistribution(0, 1)}

    def add(state, attrs, values=(0.9, 1.0)):
        study.add_trial(optuna.trial.create_trial(state=state, params={"x": 0.5}, distributions=dist,
                                                  values=list(values) if state.name == "COMPLETE" else None,
                                                  user_attrs=attrs))

    s = optuna.trial.TrialState
    add(s.COMPLETE, {"anchor": "dense"})
    add(s.COMPLETE, {})
    add(s.COMPLETE, {"anchor": "uniform-[0.5]"})
    add(s.PRUNED, {"stopped_reason": "dominated", "stopped_at": 0.5})
    add(s.PRUNED, {})  # pruned for another reason (no fine-tuning recorded)
    add(s.FAIL, {})
    assert sq.steps_used(study, 8) == 8 + 8 + 4


def test_in_context_kernels_without_a_calibration_says_what_to_run(tmp_path):
    env = {**os.environ, "AUTOPRUNE_RESULTS": str(tmp_path)}
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "in_context_kernels.py"), "--model", "resnet20",
                          "--plans", "1"], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert out.returncode == 2, out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in out.stderr
    assert lines[0].startswith("error: no calibration")
    assert "autoprune profile --target local --model resnet20" in lines[0]
