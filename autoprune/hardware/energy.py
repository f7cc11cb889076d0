"""Energy per inference, *measured* from a power sensor.

Where the platform exposes a sensor (``method="measured"``):

* :class:`RaplSensor`: Linux powercap/RAPL ``energy_uj`` counters (package
  domains), differenced with wrap-around at ``max_energy_range_uj``;
* :class:`Ina3221Sensor`: Jetson INA3221 rails via sysfs (L4T ``iio`` files
  ``rail_name_N`` / ``in_powerN_input`` in mW, or ``hwmon`` ``inN_label`` /
  ``inN_input`` mV × ``currN_input`` mA), sampled in a thread and integrated;
* :class:`NvmlSensor`: NVIDIA GPUs through ``pynvml`` (total-energy counter), if installed.

The sysfs root is a parameter so tests point the readers at a fake tree.

Energy *modelled* from a profile's power figures (no sensor) is the cost model's:
:func:`autoprune.costmodel.energy.model_energy`. This module measures only, and imports
nothing of the cost model.
"""

from __future__ import annotations

import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from autoprune.errors import MissingDependencyError, ProfilingError

__all__ = [
    "EnergyReading",
    "EnergySensor",
    "Ina3221Sensor",
    "NvmlSensor",
    "RaplSensor",
    "detect_sensor",
    "measure_energy",
]

#: Board-input rails, most specific first: ``VDD_IN`` (Xavier/Orin, mainline hwmon labels) and
#: ``POM_5V_IN`` (Nano/TX2 on L4T 32.x) measure the whole module's input power.
BOARD_RAILS = ("VDD_IN", "POM_5V_IN")


@dataclass(frozen=True)
class EnergyReading:
    """Energy measured with a sensor while running a callable repeatedly.

    Attributes:
        energy_mj: Energy per call (one inference), in millijoules.
        method: Always ``"measured"``.
        source: The sensor, e.g. ``"rapl:/sys/class/powercap/intel-rapl:0"``.
        total_energy_mj: Energy over the whole run.
        duration_s: Wall time of the run.
        calls: Number of calls in the run.
        average_power_w: ``total_energy_mj / duration_s / 1000``.
    """

    energy_mj: float
    method: str
    source: str
    total_energy_mj: float
    duration_s: float
    calls: int
    average_power_w: float

    @property
    def window_latency_ms(self) -> float:
        """Wall time per call during the reading, in ms (what the energy was spent over)."""
        return self.duration_s * 1e3 / self.calls

    def to_dict(self) -> dict[str, float | int | str]:
        """A JSON-serialisable dict (sent back by the device server, stored in calibrations)."""
        return {**asdict(self), "window_latency_ms": self.window_latency_ms}

    @classmethod
    def from_dict(cls, raw: dict[str, float | int | str]) -> EnergyReading:
        """Inverse of :meth:`to_dict` (``window_latency_ms`` is derived, so it is not read back)."""
        return cls(**{f.name: raw[f.name] for f in fields(cls)})


# -- sensors -----------------------------------------------------------------------------------------


class EnergySensor(ABC):
    """A power/energy sensor: ``start()``, run the workload, then ``stop()`` returns millijoules.

    Implementations are either counters (read twice and difference) or power
    meters (sampled in a thread and integrated); both expose the same two calls.
    """

    source: str = ""
    #: Seconds the last reading integrated over, where the sensor knows it (sampled power meters);
    #: ``None`` for counters, whose window is the caller's clock between ``start`` and ``stop``.
    window_s: float | None = None

    @abstractmethod
    def start(self) -> None:
        """Begin a reading."""

    @abstractmethod
    def stop(self) -> float:
        """End the reading; return the energy since :meth:`start` in millijoules."""


def _read_number(path: Path) -> float:
    try:
        return float(path.read_text().strip())
    except (OSError, ValueError) as exc:
        raise ProfilingError(f"cannot read energy sensor file {path} ({exc}); check permissions") from None


class RaplSensor(EnergySensor):
    """Linux powercap/RAPL package counters (sum over ``intel-rapl:N`` packages).

    Args:
        sysfs_root: The ``/sys`` folder (tests pass a fake tree).
        domains: Domain folder names; default: every top-level ``intel-rapl:N``.

    Raises:
        ProfilingError: If no RAPL domain is present.
    """

    def __init__(self, sysfs_root: str | Path = "/sys", domains: list[str] | None = None) -> None:
        base = Path(sysfs_root) / "class" / "powercap"
        names = domains or sorted(
            p.name for p in base.glob("intel-rapl:*") if p.name.count(":") == 1 and (p / "energy_uj").exists()
        )
        if not names:
            raise ProfilingError(f"no RAPL energy counters under {base}; this machine cannot measure energy")
        self.dirs = [base / n for n in names]
        self.source = "rapl:" + ",".join(str(d) for d in self.dirs)
        self._start: list[float] = []

    def _read(self) -> list[float]:
        return [_read_number(d / "energy_uj") for d in self.dirs]

    def start(self) -> None:
        self._start = self._read()

    def stop(self) -> float:
        end = self._read()
        total_uj = 0.0
        for d, a, b in zip(self.dirs, self._start, end):
            if b < a:  # the counter wrapped around once
                b += _read_number(d / "max_energy_range_uj")
            total_uj += b - a
        return total_uj / 1e3


class _SampledPowerSensor(EnergySensor):
    """Samples ``_power_w()`` in a thread and integrates it with the trapezoidal rule."""

    def __init__(self, interval_s: float = 0.02) -> None:
        self.interval_s = interval_s
        self._samples: list[tuple[float, float]] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @abstractmethod
    def _power_w(self) -> float: ...

    def _loop(self) -> None:
        while not self._stop.is_set():
            self._samples.append((time.monotonic(), self._power_w()))
            self._stop.wait(self.interval_s)

    def start(self) -> None:
        self._samples = [(time.monotonic(), self._power_w())]
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def stop(self) -> float:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self._samples.append((time.monotonic(), self._power_w()))
        self.window_s = self._samples[-1][0] - self._samples[0][0]
        joules = sum((t1 - t0) * (p0 + p1) / 2 for (t0, p0), (t1, p1) in zip(self._samples, self._samples[1:]))
        return joules * 1e3


class Ina3221Sensor(_SampledPowerSensor):
    """A Jetson INA3221 rail read from sysfs (``VDD_IN`` / ``POM_5V_IN`` is the whole board).

    Args:
        rail: Rail name as the driver labels it.
        sysfs_root: The ``/sys`` folder (tests pass a fake tree).
        interval_s: Sampling period.

    Raises:
        ProfilingError: If no INA3221 rail of that name exists.
    """

    def __init__(self, rail: str = "VDD_IN", sysfs_root: str | Path = "/sys", interval_s: float = 0.02) -> None:
        super().__init__(interval_s)
        root = Path(sysfs_root) / "bus" / "i2c" / "drivers"
        self._read_power: Callable[[], float] | None = None
        found = []
        # L4T 32.x (Nano): ina3221x/<bus>/iio:deviceN/rail_name_K + in_powerK_input (mW).
        for name_file in sorted(root.glob("ina3221x/*/iio:device*/rail_name_*")):
            label = name_file.read_text().strip()
            found.append(label)
            if label == rail:
                k = name_file.name.rsplit("_", 1)[1]
                path = name_file.parent / f"in_power{k}_input"
                self._read_power = lambda path=path: _read_number(path) / 1e3
                self.source = f"ina3221:{rail}:{path}"
        # L4T 34+ / mainline: ina3221/<bus>/hwmon/hwmonN/inK_label + inK_input (mV) x currK_input (mA).
        for label_file in sorted(root.glob("ina3221/*/hwmon/hwmon*/in*_label")):
            label = label_file.read_text().strip()
            found.append(label)
            if label == rail and self._read_power is None:
                k = label_file.name[2:].split("_", 1)[0]
                volt, curr = label_file.parent / f"in{k}_input", label_file.parent / f"curr{k}_input"
                self._read_power = lambda v=volt, c=curr: _read_number(v) * _read_number(c) / 1e6
                self.source = f"ina3221:{rail}:{label_file.parent}"
        if self._read_power is None:
            raise ProfilingError(
                f"no INA3221 rail {rail!r} under {root}; rails found: {', '.join(found) or '(none)'}"
            )

    def _power_w(self) -> float:
        return self._read_power()  # type: ignore[misc]  # set in __init__, or __init__ raised


class NvmlSensor(EnergySensor):
    """An NVIDIA GPU's total-energy counter through ``pynvml`` (Volta and newer).

    Raises:
        MissingDependencyError: If ``pynvml`` is not installed.
        ProfilingError: If the GPU or its energy counter is unavailable.
    """

    def __init__(self, index: int = 0) -> None:
        try:
            import pynvml
        except ImportError as exc:
            raise MissingDependencyError(
                "pynvml is not installed; `pip install nvidia-ml-py` to read NVIDIA GPU energy"
            ) from exc
        try:
            pynvml.nvmlInit()
            self._handle = pynvml.nvmlDeviceGetHandleByIndex(index)
            self._read = lambda: float(pynvml.nvmlDeviceGetTotalEnergyConsumption(self._handle))
            self._read()
        except pynvml.NVMLError as exc:
            raise ProfilingError(f"NVML energy counter unavailable on gpu{index}: {exc}") from None
        self.source = f"nvml:gpu{index}"
        self._start = 0.0

    def start(self) -> None:
        self._start = self._read()

    def stop(self) -> float:
        return self._read() - self._start  # NVML counts millijoules


def detect_sensor(sysfs_root: str | Path = "/sys") -> EnergySensor | None:
    """Return the first available sensor (INA3221 ``VDD_IN``/``POM_5V_IN``, RAPL, NVML), or ``None``."""
    makers: list[Callable[[], EnergySensor]] = [lambda r=r: Ina3221Sensor(r, sysfs_root) for r in BOARD_RAILS]
    makers += [lambda: RaplSensor(sysfs_root), NvmlSensor]
    for make in makers:
        try:
            return make()
        except (ProfilingError, MissingDependencyError):
            continue
    return None


def measure_energy(
    fn: Callable[[], object],
    sensor: EnergySensor | None = None,
    *,
    warmup: int = 3,
    min_time_s: float = 1.0,
    max_calls: int = 100_000,
    clock: Callable[[], float] = time.monotonic,
) -> EnergyReading:
    """Run ``fn`` repeatedly for at least ``min_time_s`` and read the energy it took.

    Args:
        fn: One inference.
        sensor: The sensor; default :func:`detect_sensor`.
        warmup: Untimed calls first.
        min_time_s: Minimum measured duration (counters have coarse update rates).
        max_calls: Upper bound on calls.
        clock: Seconds clock.

    Returns:
        The :class:`EnergyReading` (energy per call and in total).

    Raises:
        ProfilingError: If there is no sensor, or the reading is not positive and finite.
    """
    sensor = sensor or detect_sensor()
    if sensor is None:
        raise ProfilingError(
            "no energy sensor here (no RAPL, INA3221 or NVML); "
            "use autoprune.costmodel.energy.model_energy() for a modelled estimate"
        )
    for _ in range(warmup):
        fn()
    calls = 0
    # The window is timed from the middle of the first sensor read to the middle of the last, so that a
    # pause between a read and the clock (a busy machine preempting this process) counts on both sides.
    before = clock()
    sensor.start()
    t0 = (before + clock()) / 2
    while calls < max_calls and (calls == 0 or clock() - t0 < min_time_s):
        fn()
        calls += 1
    before = clock()
    total_mj = sensor.stop()
    duration = (before + clock()) / 2 - t0
    if sensor.window_s:  # a power meter integrated over its own sample times: divide by the same window
        duration = sensor.window_s
    if not (total_mj > 0 and total_mj != float("inf")) or duration <= 0:
        raise ProfilingError(
            f"energy reading from {sensor.source} is {total_mj!r} mJ over {duration:.3f} s; "
            "the counter did not advance; raise min_time_s"
        )
    return EnergyReading(
        energy_mj=total_mj / calls,
        method="measured",
        source=sensor.source,
        total_energy_mj=total_mj,
        duration_s=duration,
        calls=calls,
        average_power_w=total_mj / duration / 1e3,
    )

