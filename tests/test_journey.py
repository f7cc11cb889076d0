"""A user's whole journey, small, through the CLI with the defaults a user gets, on a model the zoo doesn't
have (tests/fixtures/branchy_cnn.py: concat, grouped conv + channel shuffle, SE, hard-swish):
profile `local` → search `local` → export with default flags (TVM module built and run) → verify passes →
a tampered export fails verify with exit 1."""

from __future__ import annotations

import json

import numpy as np
import optuna
import pytest

from autoprune.cli import main
from tests.conftest import ROOT

MODEL = f"{ROOT / 'tests' / 'fixtures' / 'branchy_cnn.py'}:build"


@pytest.mark.slow
@pytest.mark.tvm
def test_user_model_journey_profile_search_export_verify(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("AUTOPRUNE_RESULTS", str(tmp_path / "results"))
    url = f"sqlite:///{tmp_path / 'j.db'}"
    # 1. profile `local` (a small calibration: few plans and grid points)
    assert main(["profile", "--target", "local", "--model", MODEL, "--plans", "4", "--grid", "0.5,1.0",
                 "--max-cv", "3"]) == 0
    assert "calibration written" in capsys.readouterr().out
    # 2. search `local`: no trial fails on this model
    assert main(["search", "--target", "local", "--model", MODEL, "--trials", "5", "--finetune-epochs", "0",
                 "--study", "j", "--storage", url, "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert " 0 failed" in out
    study = optuna.load_study(study_name="j", storage=url)
    states = [t.state for t in study.get_trials(deepcopy=False)]
    assert states.count(optuna.trial.TrialState.COMPLETE) == 5 and optuna.trial.TrialState.FAIL not in states
    assert "autoprune.excluded_groups" in study.user_attrs
    # 3. export with the default flags: ONNX + a TVM module built for local, loaded back and run
    assert main(["export", "--study", "j", "--storage", url, "--min-accuracy", "0", "--no-progress"]) == 0
    out = capsys.readouterr().out
    export_dir = next((tmp_path / "results" / "j").glob("export-*"))
    report = json.loads((export_dir / "report.json").read_text())
    assert (export_dir / "model.onnx").is_file() and (export_dir / "model_tvm.so").is_file()
    assert report["tvm"]["built"] is True
    assert report["tvm"]["checked"] is True and report["tvm"]["max_abs_diff"] <= report["tvm"]["tolerance"]
    assert report["measured"] and report["predicted"]["latency_ms"] > 0
    # 4. verify passes on the fresh export
    assert main(["verify", str(export_dir)]) == 0
    capsys.readouterr()
    # 5. a tampered export (one weight tensor changed) makes verify exit 1, naming what regressed
    import onnx
    from onnx import numpy_helper

    proto = onnx.load(str(export_dir / "model.onnx"))
    init = max(proto.graph.initializer, key=lambda t: int(np.prod(t.dims)))
    arr = numpy_helper.to_array(init).copy()
    arr *= -3.0
    init.CopyFrom(numpy_helper.from_array(arr, init.name))
    onnx.save(proto, str(export_dir / "model.onnx"))
    assert main(["verify", str(export_dir)]) == 1
    captured = capsys.readouterr()
    assert "output" in (captured.out + captured.err).lower()


@pytest.mark.slow
@pytest.mark.tvm
def test_user_model_profiles_with_tvm_and_search_finds_it(tmp_path, monkeypatch, capsys):
    """The twin of the ONNX Runtime profile above: `profile --runtime tvm` on a user model."""
    from autoprune.costmodel.calibration import calibration_path, load_calibration, require_calibration

    monkeypatch.setenv("AUTOPRUNE_RESULTS", str(tmp_path / "results"))
    assert main(["profile", "--target", "local", "--runtime", "tvm", "--allow-untuned", "--model", MODEL,
                 "--plans", "2", "--grid", "1.0", "--max-cv", "3"]) == 0
    out = capsys.readouterr().out
    path = calibration_path("local", MODEL, 32)
    assert f"calibration written: {path}" in out and "runtime tvm-" in out
    assert load_calibration(path).provenance.runtime.startswith("tvm-")
    require_calibration("local", MODEL, 32)  # the name search looks for
