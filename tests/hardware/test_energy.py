"""Energy: RAPL and INA3221 readers against fake sysfs trees, versus the power model."""

from __future__ import annotations

from pathlib import Path

import pytest

from autoprune.costmodel.energy import model_energy
from autoprune.errors import ConfigError, ProfilingError
from autoprune.hardware import load_profile
from autoprune.hardware.energy import Ina3221Sensor, RaplSensor, detect_sensor, measure_energy


def _rapl_tree(root: Path, energy_uj: int, max_uj: int = 262143328850) -> Path:
    d = root / "class" / "powercap" / "intel-rapl:0"
    d.mkdir(parents=True, exist_ok=True)
    (d / "name").write_text("package-0\n")
    (d / "energy_uj").write_text(f"{energy_uj}\n")
    (d / "max_energy_range_uj").write_text(f"{max_uj}\n")
    sub = root / "class" / "powercap" / "intel-rapl:0:0"  # a sub-domain: not summed
    sub.mkdir(exist_ok=True)
    (sub / "energy_uj").write_text("5\n")
    return d / "energy_uj"


class CounterClock:
    """Advances the fake RAPL counter as the workload runs: 4 W for 10 ms per call."""

    def __init__(self, counter: Path, start_uj: int, max_uj: int | None = None):
        self.counter, self.uj, self.max_uj, self.t = counter, start_uj, max_uj, 0.0

    def clock(self) -> float:
        return self.t

    def call(self) -> None:
        self.t += 0.010
        self.uj += 40_000  # 4 W x 10 ms = 40 mJ = 40,000 uJ
        if self.max_uj is not None:
            self.uj %= self.max_uj
        self.counter.write_text(f"{self.uj}\n")


def test_rapl_energy_from_fake_tree(tmp_path):
    counter = _rapl_tree(tmp_path, 1_000_000)
    sensor = RaplSensor(tmp_path)
    assert sensor.source == f"rapl:{tmp_path}/class/powercap/intel-rapl:0"
    fake = CounterClock(counter, 1_000_000)
    r = measure_energy(fake.call, sensor, warmup=0, min_time_s=0.5, clock=fake.clock)
    assert r.method == "measured" and r.calls == 50
    assert r.energy_mj == pytest.approx(40.0) and r.average_power_w == pytest.approx(4.0)


def test_rapl_wrap_around(tmp_path):
    max_uj = 1_000_000
    counter = _rapl_tree(tmp_path, 900_000, max_uj=max_uj)
    fake = CounterClock(counter, 900_000, max_uj=max_uj)
    r = measure_energy(fake.call, RaplSensor(tmp_path), warmup=0, min_time_s=0.045, clock=fake.clock)
    # 5 x 40 mJ = 200 mJ although the counter went 900,000 -> 100,000 uJ.
    assert r.total_energy_mj == pytest.approx(200.0) and r.energy_mj == pytest.approx(40.0)


def test_no_rapl_is_a_clear_error(tmp_path):
    with pytest.raises(ProfilingError, match="no RAPL"):
        RaplSensor(tmp_path)
    assert detect_sensor(tmp_path) is None or detect_sensor(tmp_path).source.startswith("nvml")


def test_counter_that_does_not_advance_is_rejected(tmp_path):
    _rapl_tree(tmp_path, 1000)
    with pytest.raises(ProfilingError, match="did not advance"):
        measure_energy(lambda: None, RaplSensor(tmp_path), warmup=0, min_time_s=0.01)


def _ina_iio_tree(root: Path, mw: int) -> None:
    d = root / "bus" / "i2c" / "drivers" / "ina3221x" / "6-0040" / "iio:device0"
    d.mkdir(parents=True)
    for k, (name, p) in enumerate([("POM_5V_IN", mw), ("POM_5V_GPU", 1000), ("POM_5V_CPU", 800)]):
        (d / f"rail_name_{k}").write_text(name + "\n")
        (d / f"in_power{k}_input").write_text(f"{p}\n")


def _ina_hwmon_tree(root: Path, mv: int, ma: int) -> None:
    d = root / "bus" / "i2c" / "drivers" / "ina3221" / "1-0040" / "hwmon" / "hwmon3"
    d.mkdir(parents=True)
    (d / "in1_label").write_text("VDD_IN\n")
    (d / "in1_input").write_text(f"{mv}\n")
    (d / "curr1_input").write_text(f"{ma}\n")


def test_ina3221_iio_rail_integrates_power(tmp_path):
    _ina_iio_tree(tmp_path, mw=5000)  # a constant 5 W board
    sensor = Ina3221Sensor("POM_5V_IN", tmp_path, interval_s=0.005)
    assert sensor.source.startswith("ina3221:POM_5V_IN")
    sensor.start()
    import time

    time.sleep(0.2)
    mj = sensor.stop()
    assert mj == pytest.approx(5.0 * 200, rel=0.25)  # ~1 J over ~0.2 s


def test_ina3221_hwmon_rail_and_detection(tmp_path):
    _ina_hwmon_tree(tmp_path, mv=5000, ma=1200)  # 6 W
    sensor = detect_sensor(tmp_path)
    assert isinstance(sensor, Ina3221Sensor) and "VDD_IN" in sensor.source
    assert sensor._power_w() == pytest.approx(6.0)
    with pytest.raises(ProfilingError, match="rails found: VDD_IN"):
        Ina3221Sensor("VDD_CPU", tmp_path)


def test_model_energy_from_profile():
    nano = load_profile("jetson-nano")
    e = model_energy(nano, latency_ms=11.4)
    assert e.method == "modelled" and e.energy_mj == pytest.approx(114.0)  # 10 W x 11.4 ms
    assert e.source == "model:jetson-nano/maxn active_w=10"
    assert model_energy(nano, 11.4, power_mode="5w").energy_mj == pytest.approx(57.0)
    e = model_energy(nano, 11.4, bytes_moved=10**6)
    assert e.bytes_moved == 0 and "not modelled" in e.source
    with pytest.raises(ConfigError, match="latency_ms"):
        model_energy(nano, float("nan"))


def test_model_energy_with_per_byte_cost_and_versus_measured(tmp_path):
    import dataclasses

    pi = dataclasses.replace(load_profile("raspberry-pi-4"), energy_pj_per_byte=100.0)
    e = model_energy(pi, latency_ms=40.0, bytes_moved=50_000_000)
    assert e.data_energy_mj == pytest.approx(5.0) and e.energy_mj == pytest.approx(6.4 * 40 + 5.0)
    # A fake 6.4 W RAPL run of 40 ms calls is measured at what the model predicts.
    counter = _rapl_tree(tmp_path, 0)
    t = {"now": 0.0, "uj": 0}

    def call():
        t["now"] += 0.040
        t["uj"] += 256_000
        counter.write_text(str(t["uj"]))

    measured = measure_energy(call, RaplSensor(tmp_path), warmup=0, min_time_s=0.4, clock=lambda: t["now"])
    assert measured.energy_mj == pytest.approx(model_energy(pi, 40.0).energy_mj)


def test_a_profile_without_power_figures_says_so():
    import dataclasses

    bare = dataclasses.replace(load_profile("raspberry-pi-4"), power_modes={}, default_power_mode=None)
    with pytest.raises(ConfigError, match="no power figures"):
        model_energy(bare, 1.0)
