"""The fields of a search space file: ratio and priority ranges, the screening settings, and the checks
that read each key.

Every check raises :class:`~autoprune.errors.ConfigError` with one line that names the file, the key
and what it must be.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Any

from autoprune.errors import ConfigError

_RANGE_KEYS = {"low", "high", "step"}


@dataclass(frozen=True)
class RatioRange:
    """A ratio range ``[low, high]`` on a grid of ``step`` (ratios are fractions removed)."""

    low: float
    high: float
    step: float = 0.05
    log: bool = False  # searched log-uniformly, off any grid (a latency budget: speedups spread evenly)

    def grid(self) -> list[float]:
        """All ratios of the range, on its grid."""
        n = int(math.floor((self.high - self.low) / self.step + 1e-9))
        return [round(self.low + i * self.step, 6) for i in range(n + 1)]

    def snap(self, ratio: float) -> float:
        """The grid value nearest to ``ratio`` (a log range has no grid: ``ratio`` clipped to it)."""
        if self.log:
            return min(max(float(ratio), self.low), self.high)
        return min(self.grid(), key=lambda r: abs(r - ratio))

    def suggest(self, trial, name: str) -> float:
        """Ask ``trial`` for a value of this range under ``name``."""
        if self.log:
            return trial.suggest_float(name, self.low, self.high, log=True)
        return trial.suggest_float(name, self.low, self.high, step=self.step)


@dataclass(frozen=True)
class PriorityRange:
    """Per-group knapsack priorities, searched log-uniformly in ``[low, high]``."""

    low: float = 0.25
    high: float = 4.0


def _no_unknown(raw: dict, allowed: set[str], where: str) -> None:
    unknown = sorted(set(map(str, raw)) - allowed)
    if unknown:
        raise ConfigError(f"{where}: unknown key {unknown[0]!r}; valid keys: {', '.join(sorted(allowed))}")


def _str_list(value: Any, key: str, where: str, valid) -> tuple[str, ...]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
        raise ConfigError(f"{where}: {key!r} must be a non-empty list of names")
    if valid is not None:
        for v in value:
            if v not in valid:
                raise ConfigError(f"{where}: unknown {key} value {v!r}; valid: {', '.join(valid)}")
    return tuple(dict.fromkeys(value))


def _check_criteria(criteria: tuple[str, ...], where: str) -> None:
    from autoprune.pruning import CRITERIA

    for c in criteria:
        if c not in CRITERIA:
            raise ConfigError(f"{where}: unknown criterion {c!r}; valid: {', '.join(CRITERIA.names())}")


def _number(value: Any, key: str, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ConfigError(f"{where}: {key!r} must be a finite number, got {value!r}")
    return float(value)


def _int(value: Any, key: str, where: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"{where}: {key!r} must be an integer >= {minimum}, got {value!r}")
    return value


def _pos_float(value: Any, key: str, where: str) -> float:
    v = _number(value, key, where)
    if v <= 0:
        raise ConfigError(f"{where}: {key!r} must be above 0, got {value!r}")
    return v


def _unit(value: Any, key: str, where: str) -> float:
    v = _number(value, key, where)
    if not 0 <= v <= 1:
        raise ConfigError(f"{where}: {key!r} must be in [0, 1], got {value!r}")
    return v


def _budget(raw: Any, where: str) -> RatioRange:
    if isinstance(raw, dict) and set(raw) <= _RANGE_KEYS | {"log"} and {"low", "high"} <= set(raw):
        low, high = _number(raw["low"], "budget.low", where), _number(raw["high"], "budget.high", where)
        step = _number(raw.get("step", 0.01), "budget.step", where)
        log = raw.get("log", False)
        if 0 < low <= high <= 1 and step > 0 and isinstance(log, bool):
            return RatioRange(low, high, step, log)
    raise ConfigError(f"{where}: 'budget' must be a mapping of low, high (fractions of the dense latency, "
                      f"0 < low <= high <= 1), an optional step > 0 and an optional log (true: log-uniform, "
                      f"no step), got {raw!r}")


def _latency_weight(raw: Any, where: str) -> RatioRange:
    """``latency_weight``: a number (fixed) or a range ``{low, high, step}`` in [0, 1] (searched)."""
    if isinstance(raw, (int, float)) and not isinstance(raw, bool):
        v = _unit(raw, "latency_weight", where)
        return RatioRange(v, v, 0.05)
    if isinstance(raw, dict) and set(raw) <= _RANGE_KEYS and {"low", "high"} <= set(raw):
        low = _number(raw["low"], "latency_weight.low", where)
        high = _number(raw["high"], "latency_weight.high", where)
        step = _number(raw.get("step", 0.05), "latency_weight.step", where)
        if 0 <= low <= high <= 1 and step > 0:
            return RatioRange(low, high, step)
    raise ConfigError(f"{where}: 'latency_weight' must be a number in [0, 1] or a mapping of low, high "
                      f"(0 <= low <= high <= 1) and an optional step > 0, got {raw!r}")


def _priorities(raw: Any, where: str) -> PriorityRange:
    if isinstance(raw, dict) and not set(raw) - {"low", "high"}:
        low = _pos_float(raw.get("low", 0.25), "priorities.low", where)
        if low <= _pos_float(raw.get("high", 4.0), "priorities.high", where):
            return PriorityRange(low, float(raw.get("high", 4.0)))
    raise ConfigError(f"{where}: 'priorities' must be a mapping of low and high, 0 < low <= high, got {raw!r}")


def _range(raw: Any, key: str, where: str) -> RatioRange:
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: {key!r} must be a mapping with low, high (and step)")
    _no_unknown(raw, _RANGE_KEYS, f"{where}: {key}")
    if "low" not in raw or "high" not in raw:
        raise ConfigError(f"{where}: {key!r} needs both 'low' and 'high'")
    low, high = _number(raw["low"], f"{key}.low", where), _number(raw["high"], f"{key}.high", where)
    step = _number(raw.get("step", 0.05), f"{key}.step", where)
    if not 0 <= low < 1 or not 0 <= high < 1:
        raise ConfigError(f"{where}: {key!r} ratios must lie in [0, 1), got low={low}, high={high}")
    if high < low:
        raise ConfigError(f"{where}: {key!r} is an empty range (low={low} > high={high}); make low <= high")
    if step <= 0:
        raise ConfigError(f"{where}: {key}.step must be above 0, got {step}")
    return RatioRange(low, high, step)


@dataclass(frozen=True)
class ScreeningSpec:
    """How a study screens candidates before it fine-tunes any (:mod:`autoprune.search.screen`).

    Each round scores plans at rung 0 (pruned, BatchNorm re-estimated on ``bn_batches`` batches, evaluated on
    ``val_samples`` validation samples, latency predicted): in the first round the sweeps and ``random`` draws,
    in later rounds ``random // 4`` draws; then ``refine_children`` per-layer deviations (standard deviation
    ``refine_sigma`` in ratio) of the best ``refine_parents`` of each of ``bands`` latency bands. The best
    ``rung1_per_band`` of each band are fine-tuned for ``rung1_fraction`` of a full fine-tune (rung 1, in the
    rounds that promote by band; 0 skips it). The first round promotes the best of each band but the slowest
    to the study's next fully fine-tuned trials; later rounds promote by contribution to the front
    (:mod:`autoprune.search.contribution`) and fill what that leaves with the best ``promote_per_band`` of
    each band.
    Screening takes at most ``budget_share`` of a round's wall time (:func:`~autoprune.search.promotion.
    round_budget`: it scores as many plans as that buys, and with a time limit the round promotes only as
    many as the rest of it can fine-tune); 0 lifts the limit.
    """

    random: int = 24
    bands: int = 5
    refine_parents: int = 1
    refine_children: int = 4
    refine_sigma: float = 0.1
    rung1_fraction: float = 0.25
    rung1_per_band: int = 2
    promote_per_band: int = 2
    val_samples: int = 512
    bn_batches: int = 4
    budget_share: float = 0.3

    @classmethod
    def from_dict(cls, raw: Any, where: str) -> ScreeningSpec | None:
        """Validate the ``screening`` mapping (``None`` or ``false``: no screening)."""
        if raw is None or raw is False:
            return None
        if raw is True:
            return cls()
        if not isinstance(raw, dict):
            raise ConfigError(f"{where}: 'screening' must be a mapping, true or false")
        _no_unknown(raw, {f.name for f in fields(cls)}, f"{where}: screening")
        d = cls()
        ints = {k: _int(raw.get(k, getattr(d, k)), f"screening.{k}", where, 0 if k == "random" else 1)
                for k in ("random", "bands", "refine_parents", "refine_children", "rung1_per_band",
                          "promote_per_band", "val_samples", "bn_batches")}
        return cls(**ints, refine_sigma=_unit(raw.get("refine_sigma", d.refine_sigma), "screening.refine_sigma", where),
                   rung1_fraction=_unit(raw.get("rung1_fraction", d.rung1_fraction), "screening.rung1_fraction",
                                        where),
                   budget_share=_share(raw.get("budget_share", d.budget_share), where))


def _share(value: Any, where: str) -> float:
    v = _number(value, "screening.budget_share", where)
    if not 0 <= v <= 0.9:
        raise ConfigError(f"{where}: 'screening.budget_share' must be in [0, 0.9] (0: no limit), got {value!r}")
    return v
