"""Energy of a calibration: fit a power figure to sensor readings, where the measuring side has a sensor.

When the runtime that calibrates reads an energy sensor (an INA3221 rail on a Jetson, RAPL on
x86, NVML on an NVIDIA GPU; see :mod:`autoprune.hardware.energy`), each whole model measured
against the dense model also comes with its energy per inference and the wall time per inference
of that reading. :func:`fit_energy` fits one power figure to them,

    ``energy_mj = power_w × latency_ms``  (least squares through the origin, W = mJ/ms),

on the same fit models as the latency correction, and measures its error on the held-out ones.
:func:`~autoprune.costmodel.energy.apply_energy_fit` (the predictor's side) makes a cost model
predict with that power and labels its provenance ``measured``, naming the sensor and rail. Without
readings nothing changes: the energy stays the profile's model
(:func:`autoprune.costmodel.targets.energy_mj`), labelled ``modelled``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

__all__ = ["fit_energy", "sensor_and_rail"]


def sensor_and_rail(source: str) -> tuple[str, str]:
    """``("ina3221", "VDD_IN")`` from ``ina3221:VDD_IN:/sys/...``; ``("rapl", "intel-rapl:0")``;
    ``("nvml", "gpu0")``."""
    kind, _, rest = source.partition(":")
    if kind == "ina3221":
        return kind, rest.split(":", 1)[0]
    if kind == "rapl":
        return kind, ",".join(p.rstrip("/").rsplit("/", 1)[-1] for p in rest.split(",") if p) or "package"
    return kind, rest or "?"


@dataclass(frozen=True)
class EnergyPoint:
    """One whole model's sensor reading in an energy fit: its time per call and energy per call."""

    latency_ms: float
    energy_mj: float
    average_power_w: float
    heldout: bool


def fit_energy(readings: Sequence[dict[str, Any] | None], n_fit: int) -> dict[str, Any] | None:
    """Fit ``energy_mj = power_w × latency_ms`` to sensor readings of whole models.

    Args:
        readings: Per measured model, in calibration order, an
            :meth:`~autoprune.hardware.energy.EnergyReading.to_dict` or ``None`` (no sensor).
        n_fit: The first ``n_fit`` models fit; the rest are held out.

    Returns:
        ``None`` when no model has a reading (energy stays modelled); else the fit: ``method``
        (``measured``), ``power_w``, ``source``, ``sensor``, ``rail``, ``n_fit``, ``n_heldout``,
        ``fit_mape``, ``heldout_mape`` (``None`` without held-out readings), ``points`` and ``note``.
    """
    from autoprune.hardware.energy import EnergyReading

    read = [(i, EnergyReading.from_dict(r)) for i, r in enumerate(readings) if r]
    points = [(i, r) for i, r in read if r.energy_mj > 0]
    if not points:
        return None
    fit = [(float(r.window_latency_ms), float(r.energy_mj)) for i, r in points if i < n_fit]
    held = [(float(r.window_latency_ms), float(r.energy_mj)) for i, r in points if i >= n_fit]
    if not fit:  # every reading is held out: fit on them all rather than not at all
        fit, held = held, []
    power_w = sum(lat * e for lat, e in fit) / sum(lat * lat for lat, _ in fit)

    def mape(pairs: list[tuple[float, float]]) -> float | None:
        return sum(abs(power_w * lat / e - 1.0) for lat, e in pairs) / len(pairs) if pairs else None

    sources = sorted({str(r.source) for _, r in points})
    sensor, rail = sensor_and_rail(sources[0])
    return {
        "method": "measured",
        "power_w": power_w,
        "source": sources[0] if len(sources) == 1 else "; ".join(sources),
        "sensor": sensor,
        "rail": rail,
        "n_fit": len(fit),
        "n_heldout": len(held),
        "fit_mape": mape(fit),
        "heldout_mape": mape(held),
        "points": [asdict(EnergyPoint(float(r.window_latency_ms), float(r.energy_mj), float(r.average_power_w),
                                      i >= n_fit)) for i, r in points],
        "note": f"energy per inference read from {sensor} rail {rail} around each of {len(points)} whole models; "
                "energy_mj = power_w x latency_ms fitted on the fit models (least squares), error on the held-out ones",
    }
