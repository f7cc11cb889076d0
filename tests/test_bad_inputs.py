"""The bad-input table: each case is one clear line on stderr, exit code 2, no traceback, nothing stored."""

from __future__ import annotations

import subprocess
import sys

import pytest
import yaml

from tests.conftest import TINY_REF, cli_env

FAST = ["--model", TINY_REF, "--target", "jetson-nano", "--finetune-epochs", "0", "--no-progress", "--trials", "1"]


def space_file(tmp_path, name, **ratio):
    raw = {"structures": ["channel"], "ratio": {"low": 0.0, "high": 0.5, **ratio}, "criteria": ["l1"]}
    p = tmp_path / f"{name}.yaml"
    p.write_text(yaml.safe_dump(raw))
    return str(p)


def raw_file(tmp_path, name, text):
    p = tmp_path / name
    p.write_text(text)
    return str(p)


def cases(tmp_path, results_root):
    bad_ckpt = tmp_path / "list.pt"
    import torch

    torch.save([1, 2, 3], bad_ckpt)
    one_channel = raw_file(tmp_path, "gray.py", "from torch import nn\n"
                           "def gray(num_classes=10):\n"
                           "    return nn.Sequential(nn.Conv2d(1, 8, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(),"
                           " nn.Linear(8, num_classes))\n")
    from pathlib import Path

    text = (Path(__file__).resolve().parents[1] / "hw_profiles" / "raspberry-pi-4.yaml").read_text()
    profile = yaml.safe_load(text)
    truncated = raw_file(tmp_path, "trunc.yaml", text[:300])
    incomplete = dict(profile)
    incomplete.pop(next(iter(k for k in profile if k not in ("name", "schema_version"))))
    incomplete_path = raw_file(tmp_path, "incomplete.yaml", yaml.safe_dump(incomplete))
    import numpy as np

    from autoprune.costmodel.calibration import calibration_path

    x = np.random.default_rng(0).random((30, 8, 8, 3)).astype(np.float32)
    y = np.repeat(np.arange(3), 10)
    x_nan = x.copy()
    x_nan[7, 1, 1, 1] = np.nan
    np.savez(tmp_path / "nan.npz", x=x_nan, y=y)
    np.savez(tmp_path / "soft.npz", x=x, y=y + 0.7)
    corrupt = calibration_path("local", TINY_REF, 32, results_root)  # where search looks for it
    corrupt.parent.mkdir(parents=True, exist_ok=True)
    corrupt.write_text('{"version": 1, "trunc')
    return {
        "ratio -0.1": (["search", *FAST, "--space", space_file(tmp_path, "neg", low=-0.1)], "[0, 1)"),
        "ratio 1.0": (["search", *FAST, "--space", space_file(tmp_path, "one", high=1.0)], "[0, 1)"),
        "ratio NaN": (["search", *FAST, "--space", raw_file(tmp_path, "nan.yaml",
                                                            "ratio: {low: 0.0, high: .nan}\n")], "finite number"),
        "ratio true": (["search", *FAST, "--space", raw_file(tmp_path, "bool.yaml",
                                                             "ratio: {low: 0.0, high: true}\n")], "finite number"),
        "unknown target": (["search", *FAST[:2], "--target", "jetson-orin"], "valid: cuda, jetson-nano"),
        "unknown model": (["search", "--model", "resnet1000", "--trials", "1"], "valid: mobilenet_v2"),
        "unknown criterion": (["search", *FAST, "--space",
                               raw_file(tmp_path, "crit.yaml", "criteria: [magic]\n")], "unknown criterion 'magic'"),
        "truncated profile": (["search", *FAST[:2], "--target", truncated], "trunc.yaml"),
        "incomplete profile": (["search", *FAST[:2], "--target", incomplete_path], "incomplete.yaml"),
        "corrupt calibration": (["search", *FAST[:2], "--target", "local", "--finetune-epochs", "0",
                                 "--trials", "1", "--no-progress"], "is corrupt"),
        "space unknown key": (["search", *FAST, "--space", raw_file(tmp_path, "k.yaml", "ratios: {low: 0}\n")],
                              "unknown key 'ratios'"),
        "space empty range": (["search", *FAST, "--space", space_file(tmp_path, "empty", low=0.4, high=0.2)],
                              "empty range"),
        "input shape mismatch": (["search", "--model", f"{one_channel}:gray", "--target", "jetson-nano", "--trials",
                                  "1"], "does not fit the model"),
        "missing checkpoint": (["search", *FAST, "--checkpoint", str(tmp_path / "nope.pt")], "checkpoint not found"),
        "checkpoint not a state dict": (["search", *FAST, "--checkpoint", str(bad_ckpt)], "not a state dict"),
        "trials 0": (["search", *FAST[:-2], "--trials", "0"], "must be at least 1"),
        "trials negative": (["search", *FAST[:-2], "--trials", "-5"], "must be at least 1"),
        "missing study": (["search", "--study", "ghost"], "no study named 'ghost'"),
        "malformed model reference": (["search", "--model", "a:b:c", "--trials", "1"], "malformed model reference"),
        "unknown dataset": (["search", *FAST, "--data", "imagenet"], "unknown dataset 'imagenet'"),
        "study name escapes results": (["search", *FAST, "--study", "../outside"], "cannot be a folder under results/"),
        "study name with a folder": (["search", *FAST, "--study", "a/b"], "use only letters, digits"),
        "NaN in the data": (["search", *FAST, "--data", str(tmp_path / "nan.npz")],
                            "1 NaN or infinite input value(s) in 1 sample(s), the first in sample 7"),
        "float labels": (["search", *FAST, "--data", str(tmp_path / "soft.npz")],
                         "30 label(s) are not class indices (integers >= 0), the first y[0] = 0.7"),
        "input smaller than the downsampling": (["train", "--model", "resnet20", "--input-size", "1", "--no-progress"],
                                                "--input-size 4 or more"),
    }


CASE_NAMES = ["ratio -0.1", "ratio 1.0", "ratio NaN", "ratio true", "unknown target", "unknown model",
              "unknown criterion", "truncated profile", "incomplete profile", "corrupt calibration",
              "space unknown key", "space empty range", "input shape mismatch", "missing checkpoint",
              "checkpoint not a state dict", "trials 0", "trials negative", "missing study",
              "malformed model reference", "unknown dataset", "study name escapes results", "study name with a folder",
              "NaN in the data", "float labels", "input smaller than the downsampling"]


@pytest.mark.parametrize("case", CASE_NAMES)
def test_bad_input(case, tmp_path, results_root, tiny_dense):
    args, needle = cases(tmp_path, results_root)[case]
    db = tmp_path / "bad.db"
    proc = subprocess.run([sys.executable, "-m", "autoprune", *args, "--storage", f"sqlite:///{db}"]
                          if args[0] == "search" else [sys.executable, "-m", "autoprune", *args],
                          capture_output=True, text=True, env=cli_env(results_root), timeout=300)
    err = proc.stderr.strip()
    assert proc.returncode == 2, (case, proc.returncode, err[-1500:])
    assert "Traceback" not in err, err[-1500:]
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and needle in lines[0], (case, err[-1500:])
    if db.exists():  # nothing stored: no study, no trial
        import optuna

        assert optuna.get_all_study_summaries(f"sqlite:///{db}", include_best_trial=False) == []


def test_unreachable_latency_constraint_says_no_feasible_point(tiny_dense, results_root, tmp_path):
    db = tmp_path / "c.db"
    proc = subprocess.run([sys.executable, "-m", "autoprune", "search", *FAST[:-2], "--trials", "3",
                           "--max-latency-ms", "0.000001", "--storage", f"sqlite:///{db}", "--study", "c"],
                          capture_output=True, text=True, env=cli_env(results_root), timeout=300)
    assert proc.returncode == 0, proc.stderr[-1500:]
    assert "no feasible point" in proc.stdout and "Traceback" not in proc.stderr
