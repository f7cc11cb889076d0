"""A cost model's energy: *measured* where its calibration read a sensor, else *modelled*.

Modelled: :func:`model_energy` = active power of the power mode × latency, plus bytes moved × the
profile's pJ/byte where it gives one: the cost model's one energy model,
:func:`autoprune.costmodel.targets.energy_mj`, with its figures named. Units: W × ms = mJ;
1 pJ = 1e-9 mJ. (Energy *read from a sensor* is :mod:`autoprune.hardware.energy`'s.)

Measured: a calibration made with a runtime that reads an energy sensor stores a power fit
(:func:`autoprune.costmodel.builder.energy_fit.fit_energy`). :func:`apply_energy_fit` makes a cost
model predict with that power (``energy_mj = power_w × latency_ms``, no separate DRAM term: the
sensor already saw the memory's energy) and labels its provenance ``measured``, naming the sensor
and rail. Without a fit nothing changes: the energy stays the profile's model
(:func:`autoprune.costmodel.targets.energy_mj`), labelled ``modelled``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from autoprune.errors import ConfigError

from .targets import energy_mj, spec_from_profile

if TYPE_CHECKING:  # pragma: no cover
    from autoprune.hardware.records import HardwareProfile

__all__ = ["MODELLED", "EnergyEstimate", "apply_energy_fit", "energy_label", "model_energy"]

#: The label of modelled energy (the same words as :class:`~autoprune.costmodel.base.Provenance`'s default).
MODELLED = "modelled: the profile's active power x predicted latency (no sensor was read)"


def energy_label(fit: dict[str, Any] | None) -> str:
    """One line saying whether energy is ``measured`` (sensor, rail, power, error) or ``modelled``."""
    if fit and fit.get("method") == "measured":
        err = fit.get("heldout_mape")
        tail = f", held-out error {err:.1%}" if err is not None else ""
        return (f"measured: {fit['power_w']:.3g} W from {fit['sensor']} rail {fit['rail']}, fitted to "
                f"{fit['n_fit']} models measured on the device{tail}")
    return MODELLED


def apply_energy_fit(model: Any, fit: dict[str, Any] | None) -> Any:
    """Make ``model`` (a :class:`~autoprune.costmodel.base.CostModel`) predict energy from ``fit`` and
    label its provenance; without a measured fit only the ``modelled`` label is set. Returns ``model``."""
    if fit and fit.get("method") == "measured" and float(fit.get("power_w", 0)) > 0:
        model.target = dataclasses.replace(model.target, active_power_w=float(fit["power_w"]), dram_pj_per_byte=None)
    model.provenance = dataclasses.replace(model.provenance, energy=energy_label(fit))
    return model


@dataclass(frozen=True)
class EnergyEstimate:
    """Energy modelled from a profile's power figures.

    Attributes:
        energy_mj: Energy per inference, in millijoules.
        method: Always ``"modelled"``.
        source: What the model used, e.g. ``"model:jetson-nano/maxn active_w=10"``.
        latency_ms: The latency it was computed from.
        active_w: Active power used.
        bytes_moved: DRAM bytes accounted for (0 if none or no pJ/byte figure).
        data_energy_mj: The data-movement part of ``energy_mj``.
    """

    energy_mj: float
    method: str
    source: str
    latency_ms: float
    active_w: float
    bytes_moved: int = 0
    data_energy_mj: float = 0.0


def model_energy(
    profile: HardwareProfile, latency_ms: float, bytes_moved: int = 0, power_mode: str | None = None
) -> EnergyEstimate:
    """Model energy per inference: active power × latency (+ bytes × pJ/byte if known).

    Args:
        profile: The target.
        latency_ms: Latency of one inference (measured or predicted), in ms.
        bytes_moved: DRAM traffic of one inference, in bytes.
        power_mode: Power mode name (default: the profile's default).

    Raises:
        ConfigError: On a non-positive latency or a profile without power figures.
        UnknownNameError: On an unknown power mode.
    """
    if not (latency_ms > 0 and latency_ms != float("inf")):
        raise ConfigError(f"latency_ms must be positive and finite, got {latency_ms!r}")
    if bytes_moved < 0:
        raise ConfigError(f"bytes_moved must be >= 0, got {bytes_moved!r}")
    if not profile.power_modes:
        profile.power_mode(power_mode)  # raises: no power figures, with the fix
    spec = spec_from_profile(profile, power_mode)
    source = f"model:{profile.name}/{spec.power_mode} active_w={spec.active_power_w:g}"
    if bytes_moved and spec.dram_pj_per_byte is not None:
        source += f" pj_per_byte={spec.dram_pj_per_byte:g}"
    elif bytes_moved:
        source += " (no pJ/byte figure: data movement not modelled)"
        bytes_moved = 0
    total = energy_mj(spec, latency_ms, bytes_moved)
    return EnergyEstimate(
        energy_mj=total,
        method="modelled",
        source=source,
        latency_ms=latency_ms,
        active_w=float(spec.active_power_w),
        bytes_moved=bytes_moved,
        data_energy_mj=total - spec.active_power_w * latency_ms,
    )
