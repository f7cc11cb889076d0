"""Where a model's calibration is stored and how a missing one is reported: one function for the name."""

from __future__ import annotations

import shlex
import time

import numpy as np
import pytest

from autoprune.cli import main
from autoprune.costmodel.calibration import (
    calibration_name,
    calibration_path,
    profile_command,
    require_calibration,
)
from autoprune.errors import CalibrationError


@pytest.mark.parametrize("ref", ["usermodel.py:build", "./usermodel.py:build", "/abs/dir/usermodel.py:build",
                                 "sub/dir/usermodel.py:build"])
def test_a_file_model_has_one_name_wherever_it_is_referenced_from(ref):
    assert calibration_name(ref) == "usermodel.build"


def test_zoo_and_module_names():
    assert calibration_name("resnet20") == "resnet20"
    assert calibration_name("pkg.models:make") == "pkg.models.make"
    assert calibration_name(calibration_name("pkg.models:make")) == "pkg.models.make"  # idempotent
    assert calibration_path("local", "usermodel.py:build", 32).name == "usermodel.build-32.json"
    assert calibration_path("local", "usermodel.build", 32) == calibration_path("local", "x/usermodel.py:build", 32)


def test_profile_command_names_what_changes_the_calibration():
    want = "autoprune profile --target local --model 'my model.py:build'"
    assert profile_command("local", "my model.py:build") == want
    cmd = profile_command("local", "m.py:build", data="imgs/", input_size=48)
    assert shlex.split(cmd)[-4:] == ["--data", "imgs/", "--input-size", "48"]
    assert "--data" not in profile_command("local", "m.py:build", data="digits")


def test_require_calibration(tmp_path):
    require_calibration("jetson-nano", "m.py:build", 32, root=tmp_path)  # published / prior: fine
    with pytest.raises(CalibrationError, match=r"usermodel\.build-32\.json.*autoprune profile --target local"):
        require_calibration("local", "usermodel.py:build", 32, root=tmp_path)


def test_profile_refuses_an_unknown_target_listing_the_valid_ones(capsys):
    assert main(["profile", "--target", "jetson-nan0", "--model", "resnet20"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "unknown target 'jetson-nan0'" in err and "jetson-nano" in err and "--rpc" not in err


@pytest.mark.slow
def test_missing_calibration_is_reported_before_training_and_its_command_works(tmp_path, monkeypatch, capsys):
    """A user's model and data: `search --target local` stops at once naming the exact `profile` command;
    that command (made quick with extra flags), pasted, writes the calibration `search` then finds."""
    from tests.conftest import ROOT

    monkeypatch.setenv("AUTOPRUNE_RESULTS", str(tmp_path / "results"))
    rng = np.random.default_rng(0)
    npz = tmp_path / "gray.npz"
    np.savez(npz, x=rng.normal(size=(90, 1, 16, 16)).astype(np.float32), y=np.arange(90) % 3)
    model = f"{ROOT / 'tests' / 'fixtures' / 'branchy_cnn.py'}:build"
    t0 = time.perf_counter()
    rc = main(["search", "--target", "local", "--model", model, "--data", str(npz), "--trials", "1",
               "--study", "nocal", "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 2 and time.perf_counter() - t0 < 30
    assert not (tmp_path / "results" / "checkpoints").exists()  # nothing was trained
    cmd = err.split("`")[1]
    argv = shlex.split(cmd)
    assert argv[:2] == ["autoprune", "profile"] and argv[argv.index("--data") + 1] == str(npz)
    assert main([*argv[1:], "--plans", "2", "--grid", "1.0", "--max-cv", "3"]) == 0
    written = calibration_path("local", model, 16)
    assert written.is_file() and f"calibration written: {written}" in capsys.readouterr().out
    require_calibration("local", model, 16)  # search now finds it
