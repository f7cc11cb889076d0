"""How far a prediction may be off: the band every calibrated prediction carries.

A calibration stores its error (:mod:`autoprune.costmodel.builder.calibrate` the measured plans' residuals,
:mod:`autoprune.costmodel.builder.published` the leave-one-out errors of the published networks). From it,
:func:`from_calibration` derives one :class:`Uncertainty` per calibration, and :meth:`Uncertainty.band`
turns one predicted latency into a :class:`Band` (``latency ± half_width_ms``).

The rule (one place):

* **Measured**: ``band_rel`` is the 80th percentile of ``|predicted / measured - 1|`` over the held-out plans;
  with none held out, over every fitted plan, times 1.5 (in-sample residuals flatter the fit). Never below 3 %
  (the spread of a repeated measurement on a quiet host).
* **Published**: the 80th percentile of the leave-one-out ``|error|``; where only a MAPE is stored,
  the MAPE times 1.5. Same 3 % floor.
* **Prior** (a datasheet roofline, never checked): no band (``None``): its error is unknown, not small.
* Outside the whole-model latencies the calibration measured (or was fitted on), the band widens by
  ``1 + 2·|ln(latency / nearest edge)|``; at an input size the fit never saw, by 2. Either is said in
  :attr:`Band.outside`.

Pure numpy (the predictor's import rule): no torch, no onnx.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["BAND_PERCENTILE", "FLOOR_REL", "Band", "Uncertainty", "from_calibration"]

#: Percentile of the absolute relative errors that sets the band's half-width.
BAND_PERCENTILE = 80.0
#: The narrowest band, as a fraction of the prediction.
FLOOR_REL = 0.03
#: Widening of a band measured on the fitted points themselves, or derived from a MAPE alone.
IN_SAMPLE_FACTOR = 1.5
#: Widening per unit of ``|ln(latency / nearest calibrated latency)|`` outside the calibrated range.
RANGE_SLOPE = 2.0
#: Widening at an input size the fit never saw.
UNSEEN_INPUT_FACTOR = 2.0


@dataclass(frozen=True)
class Band:
    """The uncertainty band of one predicted latency.

    Attributes:
        half_width_ms: Half-width of the band (the prediction is ``latency ± half_width_ms``).
        low_ms: Its lower edge (never below 0 ms).
        high_ms: Its upper edge.
        outside: One line saying why the prediction lies outside what the calibration covers
            (latency range, input size), else ``None``.
    """

    half_width_ms: float
    low_ms: float
    high_ms: float
    outside: str | None = None


@dataclass(frozen=True)
class Uncertainty:
    """What a calibration's error says about its predictions.

    Attributes:
        band_rel: Half-width of the band as a fraction of the prediction, inside the calibrated range.
        basis: One line on how ``band_rel`` was obtained (e.g. ``80th percentile of |error| on 3 held-out
            plans, floor 3 %``).
        n_points: Errors it was computed from.
        range_ms: Smallest and largest whole-model latency the calibration measured or was fitted on
            (``None`` where not stored).
        input_size_px: Input side of the fit, in pixels (``None`` where unknown).
        published_input_sizes: Input sides the published figures were taken at (``None`` for a measured fit).
    """

    band_rel: float
    basis: str
    n_points: int
    range_ms: tuple[float, float] | None = None
    input_size_px: int | None = None
    published_input_sizes: tuple[int, ...] | None = None

    def band(self, latency_ms: float, *, input_size_px: int | None = None) -> Band:
        """The band of one predicted latency.

        Args:
            latency_ms: The predicted latency.
            input_size_px: The candidate's input side (``None``: taken to be the fit's).

        Returns:
            The :class:`Band`, widened (and :attr:`Band.outside` set) outside the calibrated latency range
            or at an input size the fit never saw.
        """
        rel = self.band_rel
        why: list[str] = []
        if self.range_ms is not None and latency_ms > 0:
            lo, hi = self.range_ms
            edge = lo if latency_ms < lo else hi if latency_ms > hi else None
            if edge is not None and edge > 0:
                rel *= 1.0 + RANGE_SLOPE * abs(math.log(latency_ms / edge))
                side = "below the smallest" if edge == lo else "above the largest"
                why.append(f"{latency_ms:.3g} ms is {side} latency calibrated ({edge:.3g} ms)")
        if input_size_px is not None:
            seen = self.published_input_sizes or ((self.input_size_px,) if self.input_size_px else ())
            if seen and int(input_size_px) not in seen:
                rel *= UNSEEN_INPUT_FACTOR
                sizes = ", ".join(str(s) for s in seen)
                fit = "the published fit saw only" if self.published_input_sizes else "the calibration was fitted at"
                why.append(f"input {int(input_size_px)} px: {fit} {sizes} px")
        half = rel * latency_ms
        return Band(half_width_ms=half, low_ms=max(latency_ms - half, 0.0), high_ms=latency_ms + half,
                    outside="; ".join(why) or None)

    def to_dict(self) -> dict[str, Any]:
        """JSON form (tuples as lists)."""
        return {"band_rel": self.band_rel, "basis": self.basis, "n_points": self.n_points,
                "range_ms": list(self.range_ms) if self.range_ms is not None else None,
                "input_size_px": self.input_size_px,
                "published_input_sizes": list(self.published_input_sizes)
                if self.published_input_sizes is not None else None}

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> Uncertainty:
        """Inverse of :meth:`to_dict`."""
        rng = raw.get("range_ms")
        sizes = raw.get("published_input_sizes")
        size = raw.get("input_size_px")
        return cls(band_rel=float(raw["band_rel"]), basis=str(raw.get("basis", "")),
                   n_points=int(raw.get("n_points", 0)),
                   range_ms=(float(rng[0]), float(rng[1])) if rng else None,
                   input_size_px=int(size) if size is not None else None,
                   published_input_sizes=tuple(int(s) for s in sizes) if sizes is not None else None)


def _percentile(errors: Sequence[float]) -> float:
    return float(np.percentile(np.abs(np.asarray(errors, dtype=float)), BAND_PERCENTILE))


def _range(values: Sequence[float]) -> tuple[float, float] | None:
    v = [float(x) for x in values if isinstance(x, (int, float)) and math.isfinite(x) and x > 0]
    return (min(v), max(v)) if v else None


def _measured(error: Mapping[str, Any]) -> tuple[float, str, int, tuple[float, float] | None] | None:
    """``(band_rel before the floor, basis, n, range)`` from a measured calibration's ``fit_points``."""
    points = [p for p in error.get("fit_points") or () if isinstance(p, Mapping)]
    ok = [p for p in points if all(isinstance(p.get(k), (int, float)) and math.isfinite(p[k]) and p[k] > 0
                                   for k in ("measured_ms", "predicted_ms"))]
    if not ok:
        return None
    rng = _range([p["measured_ms"] for p in ok])
    held = [p for p in ok if p.get("heldout")]
    use = held or ok
    rel = _percentile([p["predicted_ms"] / p["measured_ms"] - 1.0 for p in use])
    if held:
        return rel, f"80th percentile of |error| on {len(held)} held-out plans", len(held), rng
    return (rel * IN_SAMPLE_FACTOR, f"80th percentile of |error| on {len(ok)} fitted plans (none held out) "
            f"x{IN_SAMPLE_FACTOR:g}", len(ok), rng)


def _published(error: Mapping[str, Any]) -> tuple[float, str, int, tuple[float, float] | None] | None:
    """``(band_rel before the floor, basis, n, range)`` from a published fit's ``leave_one_out`` errors."""
    loo = error.get("leave_one_out")
    rows = [v for v in loo.values() if isinstance(v, Mapping)] if isinstance(loo, Mapping) else []
    errs = []
    for v in rows:
        e = v.get("error")
        if not isinstance(e, (int, float)) and v.get("published_ms") and v.get("predicted_ms") is not None:
            e = float(v["predicted_ms"]) / float(v["published_ms"]) - 1.0
        if isinstance(e, (int, float)) and math.isfinite(e):
            errs.append(float(e))
    if not errs:
        return None
    return (_percentile(errs), f"80th percentile of |leave-one-out error| over {len(errs)} published networks",
            len(errs), _range([v.get("published_ms") for v in rows]))


def from_calibration(error: Mapping[str, Any] | None, *, input_size_px: int | None,
                     status: str) -> Uncertainty | None:
    """The :class:`Uncertainty` of a calibration, from its ``error`` block (see the module's rule).

    Args:
        error: The calibration file's ``error`` object (``fit_points``, ``leave_one_out``, ``heldout_mape``...).
        input_size_px: The fit's input side in pixels (the file's ``input_shape[-1]``).
        status: ``measured``, ``published`` or ``prior``.

    Returns:
        ``None`` for a prior, or where the block holds no error at all (never checked: no band).
    """
    if status == "prior" or not error:
        return None
    size = int(input_size_px) if input_size_px else None
    found = _published(error) if status == "published" else _measured(error)
    if found is None:
        found = _published(error) if status != "published" else _measured(error)
    if found is None:
        mape = error.get("heldout_mape")
        if not isinstance(mape, (int, float)) or not math.isfinite(mape):
            return None
        n = int(error.get("n_heldout") or 0)
        found = (float(mape) * IN_SAMPLE_FACTOR, f"held-out MAPE {float(mape):.1%} on {n} points "
                 f"x{IN_SAMPLE_FACTOR:g} (no per-point errors stored)", n, None)
    rel, basis, n, rng = found
    published = status == "published"
    where = f" at {size} px" if published and size else ""
    return Uncertainty(band_rel=max(rel, FLOOR_REL), basis=f"{basis}{where}, floor {FLOOR_REL * 100:g} %", n_points=n,
                       range_ms=rng, input_size_px=size,
                       published_input_sizes=(size,) if published and size else None)
