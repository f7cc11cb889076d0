"""Measured energy in calibrations: sensor specs, the power fit, how a cost model then predicts and labels energy,
and a local calibration against a fake RAPL counter that runs at a known power."""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import pytest

from autoprune.costmodel.builder.energy_fit import fit_energy, sensor_and_rail
from autoprune.costmodel.energy import MODELLED, apply_energy_fit
from autoprune.errors import ConfigError, ProfilingError
from autoprune.hardware.energy import Ina3221Sensor, RaplSensor
from autoprune.hardware.sensor_spec import sensor_from_spec
from tests.device.conftest import make_ina3221_tree


def _reading(latency_ms: float, power_w: float, source: str = "ina3221:VDD_IN:/sys/x") -> dict:
    calls = 100
    return {"energy_mj": power_w * latency_ms, "method": "measured", "source": source,
            "total_energy_mj": power_w * latency_ms * calls, "duration_s": latency_ms * calls / 1e3, "calls": calls,
            "average_power_w": power_w, "window_latency_ms": latency_ms}


def test_fit_energy_recovers_the_power_and_measures_heldout_error():
    rng = np.random.default_rng(0)
    lat = rng.uniform(0.5, 20.0, 12)
    noisy = [_reading(x, 7.0 * (1 + rng.normal(0, 0.02))) for x in lat]
    fit = fit_energy(noisy, n_fit=9)
    assert fit["method"] == "measured" and fit["n_fit"] == 9 and fit["n_heldout"] == 3
    assert fit["power_w"] == pytest.approx(7.0, rel=0.03)
    assert 0 < fit["heldout_mape"] < 0.08 and (fit["sensor"], fit["rail"]) == ("ina3221", "VDD_IN")
    # the held-out points do not move the fit
    changed = noisy[:9] + [_reading(x, 50.0) for x in lat[9:]]
    assert fit_energy(changed, n_fit=9)["power_w"] == pytest.approx(fit["power_w"])
    assert fit_energy(changed, n_fit=9)["heldout_mape"] == pytest.approx(1 - 7 / 50, abs=0.03)
    assert fit_energy([None, None], n_fit=1) is None  # no sensor: energy stays modelled


def test_sensor_and_rail_names():
    assert sensor_and_rail("ina3221:POM_5V_IN:/sys/bus/x") == ("ina3221", "POM_5V_IN")
    assert sensor_and_rail("rapl:/sys/class/powercap/intel-rapl:0,/sys/class/powercap/intel-rapl:1") == \
        ("rapl", "intel-rapl:0,intel-rapl:1")
    assert sensor_and_rail("nvml:gpu0") == ("nvml", "gpu0")


def test_sensor_specs(tmp_path):
    make_ina3221_tree(tmp_path, {"POM_5V_IN": 5000, "POM_5V_GPU": 900})
    assert sensor_from_spec("none", tmp_path) is None and sensor_from_spec(None, tmp_path) is None
    board = sensor_from_spec("ina3221", tmp_path)
    assert isinstance(board, Ina3221Sensor) and board.source.startswith("ina3221:POM_5V_IN:")
    assert sensor_from_spec("ina3221:POM_5V_GPU", tmp_path).source.startswith("ina3221:POM_5V_GPU:")
    assert sensor_from_spec("auto", tmp_path).source.startswith("ina3221:POM_5V_IN:")
    with pytest.raises(ProfilingError, match="rails found: POM_5V_IN, POM_5V_GPU"):
        sensor_from_spec("ina3221:VDD_CPU", tmp_path)
    with pytest.raises(ProfilingError, match="no RAPL"):
        sensor_from_spec("rapl", tmp_path)
    with pytest.raises(ConfigError, match="valid: auto, none"):
        sensor_from_spec("thermometer", tmp_path)
    with pytest.raises(ConfigError, match="nvml:0"):
        sensor_from_spec("nvml:first", tmp_path)


def test_a_measured_fit_changes_the_predicted_energy_and_its_label():
    from autoprune.costmodel import load_cost_model

    model = load_cost_model("jetson-nano", "resnet20")
    shape = model.template.describe(_dense("resnet20"))
    before = model.predict(shape)
    assert model.provenance.energy == MODELLED and before.provenance.energy.startswith("modelled:")
    assert before.energy_mj == pytest.approx(10.0 * before.latency_ms, rel=1e-6)  # MAXN's 10 W, no pJ/byte
    fit = fit_energy([_reading(2.0, 3.2), _reading(4.0, 3.2), _reading(3.0, 3.2)], n_fit=2)
    after = apply_energy_fit(model, fit).predict(shape)
    assert after.latency_ms == pytest.approx(before.latency_ms)
    assert after.energy_mj == pytest.approx(3.2 * after.latency_ms, rel=1e-6)
    assert after.provenance.energy.startswith("measured: 3.2 W from ina3221 rail VDD_IN")


def _dense(name: str):
    from autoprune.models import build_model

    return build_model(name, num_classes=10).eval()


class LiveRapl(RaplSensor):
    """A fake RAPL package counter at exactly ``power_w``: a pure function of ``time.monotonic()``, read at
    each access and written to its ``energy_uj`` file, then parsed by :class:`RaplSensor`'s own reader.

    The counter is sampled at one instant inside each read, and :func:`measure_energy` times its window
    from the middle of a clock bracket around the whole read: a pause inside the read (this fake's file
    writes, a garbage collection, a busy machine) moved those apart, and a 0.11 s pause in one read once
    made a 1 s window 5 % long (11.06 W, 12.945 W for 12.5 W). The fake knows the instants it sampled,
    so it reports them as the reading's window (:attr:`EnergySensor.window_s`, which ``measure_energy``
    divides by): energy = power x window, exactly, however the reads are delayed.
    """

    def __init__(self, root: Path, power_w: float) -> None:
        self.counter = root / "class" / "powercap" / "intel-rapl:0"
        self.counter.mkdir(parents=True)
        (self.counter / "max_energy_range_uj").write_text("262143328850\n")
        self.power_w, self.t0 = power_w, time.monotonic()
        self.sampled: list[float] = []
        self._write(self.t0)
        super().__init__(root)

    def _write(self, t: float) -> None:
        uj = round(self.power_w * 1e6 * (t - self.t0)) + 1_000
        tmp = self.counter / ".energy_uj.tmp"
        tmp.write_text(f"{uj}\n")
        os.replace(tmp, self.counter / "energy_uj")

    def _read(self) -> list[float]:
        t = time.monotonic()
        self.sampled.append(t)
        self._write(t)
        return super()._read()

    def start(self) -> None:
        self.window_s = None
        super().start()

    def stop(self) -> float:
        mj = super().stop()
        self.window_s = self.sampled[-1] - self.sampled[-2]
        return mj


def test_local_calibration_with_a_rapl_counter_recovers_its_power(tmp_path):
    """The one energy path, here: ONNX Runtime reads the sensor around each whole model of calibrate()."""
    from autoprune.costmodel.builder import CalibrationOptions, calibrate
    from autoprune.profiling import get_runtime
    from tests.fixtures.tiny_cnn import tiny_cnn

    runtime = get_runtime("onnxruntime", threads=1, energy_sensor=LiveRapl(tmp_path, 12.5), energy_min_time_s=1.0)
    options = CalibrationOptions(plans=4, grid=(1.0,), input_size_px=16, max_cv=3.0)
    result = calibrate("tiny", options, runtime=runtime, model=tiny_cnn())
    fit = result.error["energy"]
    # the dense model, the uniform ladder and 3 of the 4 random plans fit; one is held out
    assert fit["sensor"] == "rapl" and fit["rail"] == "intel-rapl:0" and fit["n_fit"] == 1 + len(options.ladder) + 3
    print(f"fitted {fit['power_w']:.6f} W for 12.5 W; points: "
          f"{[round(p['average_power_w'], 6) for p in fit['points']]}")
    assert fit["power_w"] == pytest.approx(12.5, rel=0.03)
    # every reading is exact (1 uJ rounding over >= 1 s at 12.5 W): nothing the machine's load can move
    assert all(p["average_power_w"] == pytest.approx(12.5, rel=1e-5) for p in fit["points"])
    assert result.model.provenance.energy.startswith("measured:")
    est = result.model.predict(result.model.template.describe(tiny_cnn()))
    assert est.energy_mj == pytest.approx(fit["power_w"] * est.latency_ms, rel=1e-6)
