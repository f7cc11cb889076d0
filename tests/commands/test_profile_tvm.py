"""``autoprune profile --runtime tvm``: untuned kernels are refused in one line unless ``--allow-untuned``; tuning
goes with TVM only and measures on this machine."""

from __future__ import annotations

import pytest

from autoprune.cli import main


def _refused(capsys, *args: str) -> str:
    assert main(["profile", "--target", "local", "--model", "resnet20", "--plans", "2", *args]) == 2
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def test_untuned_tvm_kernels_are_refused_in_one_line(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("AUTOPRUNE_RESULTS", str(tmp_path))
    line = _refused(capsys, "--runtime", "tvm")
    assert "untuned" in line and "--tvm-tune-trials N" in line and "--allow-untuned" in line
    assert not (tmp_path / "calibrations").exists()


def test_tuning_goes_with_tvm_only(capsys):
    assert "--runtime tvm" in _refused(capsys, "--tvm-tune-trials", "8")


def test_tuning_over_rpc_is_refused(capsys):
    line = _refused(capsys, "--runtime", "tvm", "--tvm-tune-trials", "8", "--rpc", "127.0.0.1:9")
    assert "RPC" in line and "--allow-untuned" in line


@pytest.mark.parametrize("flag", ["--tvm-tune-trials", "--tvm-tune-timeout"])
def test_a_budget_must_be_positive(capsys, flag):
    with pytest.raises(SystemExit) as stop:
        main(["profile", "--runtime", "tvm", flag, "0"])
    err = capsys.readouterr().err
    assert stop.value.code == 2 and len(err.strip().splitlines()) == 1 and flag in err
