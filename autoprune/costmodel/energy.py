"""A cost model's energy: *measured* where its calibration read a sensor, else *modelled*.

A calibration made with a runtime that reads an energy sensor stores a power fit
(:func:`autoprune.costmodel.builder.energy_fit.fit_energy`). :func:`apply_energy_fit` makes a cost
model predict with that power (``energy_mj = power_w × latency_ms``, no separate DRAM term: the
sensor already saw the memory's energy) and labels its provenance ``measured``, naming the sensor
and rail. Without a fit nothing changes: the energy stays the profile's model
(:func:`autoprune.costmodel.targets.energy_mj`), labelled ``modelled``.
"""

from __future__ import annotations

import dataclasses
from typing import Any

__all__ = ["MODELLED", "apply_energy_fit", "energy_label"]

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
