"""One target record: the cost model's device facts come from the profile YAML, and a user's own
profile (a new board, or an edited shipped one) changes predictions without editing the package."""

from __future__ import annotations

import math

import pytest
import yaml

from autoprune.cli import main
from autoprune.costmodel import load_cost_model, target_spec
from autoprune.costmodel.targets import energy_mj
from autoprune.hardware.profile import SHIPPED_PROFILES


def _profile(name: str, **device) -> dict:
    raw = yaml.safe_load((SHIPPED_PROFILES / "raspberry-pi-4.yaml").read_text())
    raw["name"] = name
    raw["device"].update(device)
    return raw


def test_spec_reads_the_profile_fields():
    nano = target_spec("jetson-nano")  # TensorRT/CUDA providers + a GPU: the GPU's FP16 peak
    assert (nano.processor, nano.precision, nano.peak_gflops, nano.bytes_per_element) == ("gpu", "fp16", 472.0, 2)
    assert nano.bandwidth_gbps == 25.6 and nano.active_power_w == 10.0 and nano.power_mode == "maxn"
    assert target_spec("jetson-nano", "5w").active_power_w == 5.0
    pi = target_spec("raspberry-pi-4")
    assert (pi.processor, pi.peak_gflops, pi.bandwidth_gbps, pi.active_power_w) == ("cpu", 48.0, 5.0, 6.4)
    assert energy_mj(pi, 10.0) == pytest.approx(64.0)
    assert math.isnan(energy_mj(pi.__class__(**{**pi.__dict__, "active_power_w": None}), 1.0))


def test_a_new_board_in_a_user_folder_changes_predictions(tmp_path, monkeypatch):
    fast = _profile("my-board", cpu={"model": "X", "cores": 4, "clock_mhz": 1500, "peak_gflops": {"fp32": 480.0}},
                    memory_bandwidth_gbs=50.0)
    (tmp_path / "my-board.yaml").write_text(yaml.safe_dump(fast))
    monkeypatch.setenv("AUTOPRUNE_HW_PROFILES", str(tmp_path))
    assert target_spec("my-board").peak_gflops == 480.0
    pi = load_cost_model("raspberry-pi-4", "resnet20").predict
    mine = load_cost_model("my-board", "resnet20").predict
    from autoprune.models import build_model

    m = build_model("resnet20").eval()
    assert mine(m).latency_ms < 0.5 * pi(m).latency_ms  # 10x the peak, 10x the bandwidth


def test_an_edited_shipped_profile_overrides_it(tmp_path, monkeypatch):
    from autoprune.models import build_model

    m = build_model("resnet20").eval()
    before = load_cost_model("raspberry-pi-4", "resnet20").predict(m).latency_ms
    slow = _profile("raspberry-pi-4", memory_bandwidth_gbs=1.0)
    (tmp_path / "raspberry-pi-4.yaml").write_text(yaml.safe_dump(slow))
    monkeypatch.setenv("AUTOPRUNE_HW_PROFILES", str(tmp_path))
    assert load_cost_model("raspberry-pi-4", "resnet20").predict(m).latency_ms > before


def test_cli_profiles_option_lists_the_users_board(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("AUTOPRUNE_HW_PROFILES", "")  # restored after the test: main() sets it
    (tmp_path / "my-board.yaml").write_text(yaml.safe_dump(_profile("my-board")))
    assert main(["targets", "--profiles", str(tmp_path)]) == 0
    assert "my-board" in capsys.readouterr().out
    assert main(["targets", "--profiles", str(tmp_path / "missing")]) == 2
    assert "no such folder" in capsys.readouterr().err
