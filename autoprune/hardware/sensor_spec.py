"""The sensor a ``--energy-sensor`` value names (``autoprune device serve``, ``autoprune profile``)."""

from __future__ import annotations

from pathlib import Path

from autoprune.errors import ConfigError, ProfilingError
from autoprune.hardware.energy import BOARD_RAILS, EnergySensor, Ina3221Sensor, NvmlSensor, RaplSensor, detect_sensor

__all__ = ["SENSOR_SPECS", "sensor_from_spec"]


SENSOR_SPECS = "auto, none, ina3221[:RAIL], rapl, nvml[:GPU INDEX]"


def sensor_from_spec(spec: str | None, sysfs_root: str | Path = "/sys") -> EnergySensor | None:
    """The sensor a ``--energy-sensor`` value names.

    Args:
        spec: ``auto`` (first of INA3221 board rail, RAPL, NVML, else none), ``none``/``None``,
            ``ina3221`` (the board rail) or ``ina3221:RAIL``, ``rapl``, ``nvml`` or ``nvml:INDEX``.
        sysfs_root: The ``/sys`` folder (tests pass a fake tree).

    Raises:
        ConfigError: On an unknown spec.
        ProfilingError: If the named sensor is not present.
        MissingDependencyError: For ``nvml`` without ``pynvml``.
    """
    text = (spec or "none").strip()
    kind, _, arg = text.partition(":")
    kind = kind.lower()
    if kind == "none":
        return None
    if kind == "auto":
        return detect_sensor(sysfs_root)
    if kind == "ina3221":
        if arg:
            return Ina3221Sensor(arg, sysfs_root)
        for rail in BOARD_RAILS:
            try:
                return Ina3221Sensor(rail, sysfs_root)
            except ProfilingError:
                continue
        return Ina3221Sensor(BOARD_RAILS[0], sysfs_root)  # raises, listing the rails found
    if kind == "rapl":
        return RaplSensor(sysfs_root, [d for d in arg.split(",") if d] or None)
    if kind == "nvml":
        if arg and not arg.isdigit():
            raise ConfigError(f"energy sensor {text!r}: the NVML GPU index must be a number, e.g. nvml:0")
        return NvmlSensor(int(arg or 0))
    raise ConfigError(f"unknown energy sensor {text!r}; valid: {SENSOR_SPECS}")
