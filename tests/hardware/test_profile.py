"""Hardware profile loading and validation."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from autoprune.errors import ConfigError, UnknownNameError
from autoprune.hardware import TARGETS, list_profiles, load_profile
from autoprune.hardware.profile import ProfileCatalog, load_profile_file

SHIPPED = Path(__file__).resolve().parents[2] / "hw_profiles"


def test_shipped_profiles_load():
    names = [p.name for p in list_profiles()]
    assert {"jetson-nano", "jetson-nano-5w", "raspberry-pi-4", "local"} <= set(names)
    nano = load_profile("jetson-nano")
    assert nano.device.gpu.peak_gflops["fp16"] == 472.0
    assert nano.device.memory_bandwidth_gbs == 25.6
    assert nano.default_power_mode == "maxn" and nano.power_mode("5w").cpu_cores == 2
    assert nano.calibration.status == "published"
    assert nano.sparsity_support == frozenset({"none"})
    target = nano.runtime_options("tvm")["target"]
    assert target["tag"] == "nvidia/jetson-nano" and target["host"]["mcpu"] == "cortex-a57"
    assert load_profile("raspberry-pi-4").calibration.status == "prior"
    five = load_profile("jetson-nano-5w")
    assert five.device.cpu.cores == 2 and five.device.gpu.clock_mhz == 640


def test_local_profile_is_detected():
    local = load_profile("local")
    assert local.device.cpu.cores >= 1 and local.device.cpu.model != "auto"
    assert local.device.cpu.peak_gflops["fp32"] > 0
    assert local.runtime_options("tvm")["target"] == {"kind": "llvm", "num-cores": local.device.cpu.cores}
    assert local.runtime_options("onnxruntime")["threads"] == local.device.cpu.cores


def test_local_becomes_measured_once_calibrated(tmp_path, monkeypatch):
    monkeypatch.setenv("AUTOPRUNE_RESULTS", str(tmp_path))
    assert load_profile("local").calibration.status == "prior"
    cal = tmp_path / "calibrations" / "local"
    cal.mkdir(parents=True)
    (cal / "onnxruntime.json").write_text('{"device": "vm/AMD EPYC", "runtime": "onnxruntime-1.31.1/CPU"}')
    info = load_profile("local").calibration
    assert info.status == "measured" and info.where == "vm/AMD EPYC" and info.runtime.startswith("onnx")


def test_unknown_target_lists_valid_names():
    with pytest.raises(UnknownNameError, match=r"unknown target 'jetson-nanoo'; valid: .*jetson-nano"):
        load_profile("jetson-nanoo")
    assert "jetson-nano" in TARGETS


def _write(tmp_path, mutate, name="jetson-nano"):
    raw = yaml.safe_load((SHIPPED / f"{name}.yaml").read_text())
    mutate(raw)
    path = tmp_path / f"{raw.get('name', name)}.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


@pytest.mark.parametrize(
    ("mutate", "pattern"),
    [
        (lambda r: r["device"]["cpu"].pop("cores"), "missing required key 'device.cpu.cores'"),
        (lambda r: r.pop("calibration"), "missing required key 'calibration'"),
        (lambda r: r["device"].update(npu={"x": 1}), "unknown key 'device.npu'"),
        (lambda r: r.update(colour="green"), "unknown key 'colour'"),
        (lambda r: r["device"]["cpu"].update(cores="four"), "'device.cpu.cores' must be an integer"),
        (lambda r: r["power"]["modes"]["maxn"].update(active_w=True), "'power.modes.maxn.active_w' must be a number"),
        (lambda r: r.update(sparsity_support=["2:4"]), "unknown kind"),
        (lambda r: r["calibration"].update(status="guessed"), "calibration.status"),
        (lambda r: r.update(default_power_mode="turbo"), "default_power_mode"),
        (lambda r: r.update(schema_version=2), "schema_version"),
        (lambda r: r["sources"].pop("device.memory_bandwidth_gbs"), "'device.memory_bandwidth_gbs' has no entry"),
        (lambda r: r["runtimes"]["tvm"]["target"].update(kind="cuda"), "ignores the tag"),
    ],
)
def test_invalid_profiles_name_path_and_key(tmp_path, mutate, pattern):
    path = _write(tmp_path, mutate)
    with pytest.raises(ConfigError, match=pattern) as info:
        load_profile(path)
    assert str(path) in str(info.value)


def test_corrupt_yaml_names_the_path(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("name: [unclosed\n  device: {")
    with pytest.raises(ConfigError, match="not valid YAML") as info:
        load_profile_file(path)
    assert str(path) in str(info.value)
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    with pytest.raises(ConfigError, match="empty or not a mapping"):
        load_profile_file(empty)


def test_catalog_in_another_folder(tmp_path):
    _write(tmp_path, lambda r: None, name="raspberry-pi-4")
    cat = ProfileCatalog(tmp_path)
    assert cat.names() == ["raspberry-pi-4"]
    with pytest.raises(UnknownNameError, match="valid: raspberry-pi-4"):
        cat.get("jetson-nano")


def test_profile_to_dict_is_json():
    import json

    for p in list_profiles():
        json.dumps(p.to_dict())
