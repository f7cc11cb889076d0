"""Search spaces: validated YAML files that become Optuna distributions per prunable group.

A space says which structures each group may take, the ratio range (overall and
per kind of layer), the criteria, the allocation and schedule, and the fine-tuning
budget. :meth:`SearchSpace.suggest` turns one Optuna trial into a pruning plan.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from autoprune.errors import ConfigError
from autoprune.io import read_yaml
from autoprune.structures import STRUCTURE_NAMES as STRUCTURES

SPACES_DIR = Path(__file__).resolve().parents[2] / "search_spaces"
KINDS = ("conv", "depthwise", "linear")
_TOP_KEYS = {
    "version", "description", "structures", "nm_patterns", "ratio", "ratio_by_kind", "criteria",
    "allocation", "schedule", "iterative_steps", "round_to", "min_channels", "finetune", "distillation",
}
_RANGE_KEYS = {"low", "high", "step"}
_FT_KEYS = {"epochs", "steps", "lr", "lr_schedule", "batch_size"}
_KD_KEYS = {"enabled", "temperature", "weight"}


@dataclass(frozen=True)
class RatioRange:
    """A ratio range ``[low, high]`` on a grid of ``step`` (ratios are fractions removed)."""

    low: float
    high: float
    step: float = 0.05

    def grid(self) -> list[float]:
        """All ratios of the range, on its grid."""
        n = int(math.floor((self.high - self.low) / self.step + 1e-9))
        return [round(self.low + i * self.step, 6) for i in range(n + 1)]

    def snap(self, ratio: float) -> float:
        """The grid value nearest to ``ratio``."""
        return min(self.grid(), key=lambda r: abs(r - ratio))


@dataclass(frozen=True)
class FinetuneBudget:
    """How long each candidate is fine-tuned (epochs, or steps if given)."""

    epochs: int = 2
    steps: int | None = None
    lr: float = 0.02
    lr_schedule: str = "cosine"
    batch_size: int = 64


@dataclass(frozen=True)
class SearchSpace:
    """A validated search space (see ``search_spaces/*.yaml``)."""

    name: str
    description: str
    structures: tuple[str, ...]
    ratio: RatioRange
    ratio_by_kind: dict[str, RatioRange] = field(default_factory=dict)
    criteria: tuple[str, ...] = ("l1",)
    allocation: tuple[str, ...] = ("local",)
    schedule: tuple[str, ...] = ("one-shot",)
    iterative_steps: int = 2
    round_to: int | None = None
    min_channels: int = 4
    nm_patterns: tuple[str, ...] = ("2:4",)
    finetune: FinetuneBudget = FinetuneBudget()
    distillation: tuple[bool, ...] = (False,)
    kd_temperature: float = 4.0
    kd_weight: float = 0.7

    # -- construction -------------------------------------------------------------------------
    @classmethod
    def load(cls, ref: str) -> SearchSpace:
        """Load a space by name (``default``) or path (``my-space.yaml``).

        Raises:
            ConfigError: Unknown name (lists the shipped spaces), bad YAML, unknown key
                (named), wrong type or an empty range.
        """
        raw, path = cls.read(ref)
        return cls.from_dict(raw, name=path.stem, where=str(path))

    @staticmethod
    def read(ref: str) -> tuple[Any, Path]:
        """Read a space's raw YAML mapping (stored in a study, so a resume uses the same space)."""
        path = Path(ref)
        if not path.suffix:
            path = SPACES_DIR / f"{ref}.yaml"
            if not path.is_file():
                valid = ", ".join(sorted(p.stem for p in SPACES_DIR.glob("*.yaml")))
                raise ConfigError(f"unknown search space {ref!r}; valid: {valid}, or a path to a .yaml file")
        return read_yaml(path, what="search space"), path

    @classmethod
    def from_dict(cls, raw: Any, name: str = "custom", where: str = "search space") -> SearchSpace:
        """Validate a parsed YAML mapping (see :meth:`load`)."""
        if not isinstance(raw, dict):
            raise ConfigError(f"{where}: must be a mapping of keys to values")
        _no_unknown(raw, _TOP_KEYS, where)
        structures = _str_list(raw.get("structures", ["keep", "channel"]), "structures", where, STRUCTURES)
        ratio = _range(raw.get("ratio", {"low": 0.0, "high": 0.8}), "ratio", where)
        by_kind_raw = raw.get("ratio_by_kind") or {}
        if not isinstance(by_kind_raw, dict):
            raise ConfigError(f"{where}: 'ratio_by_kind' must map a layer kind to a range")
        _no_unknown(by_kind_raw, set(KINDS), f"{where}: ratio_by_kind")
        by_kind = {k: _range(v, f"ratio_by_kind.{k}", where) for k, v in by_kind_raw.items()}
        criteria = _str_list(raw.get("criteria", ["l1"]), "criteria", where, None)
        _check_criteria(criteria, where)
        allocation = _str_list(raw.get("allocation", ["local"]), "allocation", where, ("local", "global"))
        schedule = _str_list(raw.get("schedule", ["one-shot"]), "schedule", where, ("one-shot", "iterative"))
        nm = _str_list(raw.get("nm_patterns", ["2:4"]), "nm_patterns", where, None)
        for pat in nm:
            parts = pat.split(":")
            if len(parts) != 2 or not all(p.isdigit() for p in parts) or not 0 < int(parts[0]) < int(parts[1]):
                raise ConfigError(f"{where}: N:M pattern {pat!r} must look like '2:4' with 0 < N < M")
        steps = _int(raw.get("iterative_steps", 2), "iterative_steps", where, 1)
        round_to = raw.get("round_to")
        if round_to is not None:
            round_to = _int(round_to, "round_to", where, 1)
        min_ch = _int(raw.get("min_channels", 4), "min_channels", where, 1)
        ft_raw = raw.get("finetune") or {}
        if not isinstance(ft_raw, dict):
            raise ConfigError(f"{where}: 'finetune' must be a mapping")
        _no_unknown(ft_raw, _FT_KEYS, f"{where}: finetune")
        ft = FinetuneBudget(
            epochs=_int(ft_raw.get("epochs", 2), "finetune.epochs", where, 0),
            steps=None if ft_raw.get("steps") is None else _int(ft_raw["steps"], "finetune.steps", where, 1),
            lr=_pos_float(ft_raw.get("lr", 0.02), "finetune.lr", where),
            lr_schedule=_str_list([ft_raw.get("lr_schedule", "cosine")], "finetune.lr_schedule", where,
                                  ("cosine", "one-cycle"))[0],
            batch_size=_int(ft_raw.get("batch_size", 64), "finetune.batch_size", where, 1),
        )
        kd_raw = raw.get("distillation") or {}
        if not isinstance(kd_raw, dict):
            raise ConfigError(f"{where}: 'distillation' must be a mapping")
        _no_unknown(kd_raw, _KD_KEYS, f"{where}: distillation")
        enabled = kd_raw.get("enabled", [False])
        enabled = enabled if isinstance(enabled, list) else [enabled]
        if not enabled or not all(isinstance(e, bool) for e in enabled):
            raise ConfigError(f"{where}: 'distillation.enabled' must be true, false or a list of them")
        return cls(
            name=name, description=str(raw.get("description", "")), structures=structures, ratio=ratio,
            ratio_by_kind=by_kind, criteria=criteria, allocation=allocation, schedule=schedule,
            iterative_steps=steps, round_to=round_to, min_channels=min_ch, nm_patterns=nm, finetune=ft,
            distillation=tuple(dict.fromkeys(enabled)),
            kd_temperature=_pos_float(kd_raw.get("temperature", 4.0), "distillation.temperature", where),
            kd_weight=_unit(kd_raw.get("weight", 0.7), "distillation.weight", where),
        )

    # -- per-group view -----------------------------------------------------------------------
    def range_for(self, group) -> RatioRange:
        """The ratio range of ``group`` (per kind of layer where the space says so)."""
        return self.ratio_by_kind.get(group.kind, self.ratio)

    def structures_for(self, group) -> tuple[str, ...]:
        """Structures ``group`` may take: the space's, filtered by what the group allows."""
        allowed = tuple(s for s in self.structures if s in group.allowed)
        return allowed or ("keep",)

    # -- Optuna ---------------------------------------------------------------------------------
    def suggest(self, trial, groups) -> dict[str, Any]:
        """Ask ``trial`` for one point of the space and return the raw choices.

        The choices are turned into a plan by :func:`autoprune.search.space.plan_from_params`;
        every parameter is always suggested (a static space suits TPE's multivariate mode).
        """
        for g in groups:
            structs = self.structures_for(g)
            if len(structs) > 1:
                trial.suggest_categorical(f"s:{g.name}", list(structs))
            rr = self.range_for(g)
            if rr.high > rr.low:
                trial.suggest_float(f"r:{g.name}", rr.low, rr.high, step=rr.step)
        for key, choices in (("criterion", self.criteria), ("allocation", self.allocation),
                             ("schedule", self.schedule), ("nm", self.nm_patterns)):
            if len(choices) > 1:
                trial.suggest_categorical(key, list(choices))
        if "global" in self.allocation:
            trial.suggest_float("global_ratio", self.ratio.low, self.ratio.high, step=self.ratio.step)
        if len(self.distillation) > 1:
            trial.suggest_categorical("kd", list(self.distillation))
        return dict(trial.params)

    def seed_params(self, groups, ratios=(0.0, 0.3, 0.5, 0.7, 0.9)) -> list[dict[str, Any]]:
        """Parameters of the anchor trials: the dense model and uniform channel plans.

        Ratio 0.0 is the dense model (every group ``keep``, or ``channel`` at 0).
        """
        seeds = []
        for ratio in ratios:
            params: dict[str, Any] = {}
            for g in groups:
                structs = self.structures_for(g)
                want = "keep" if ratio == 0 and "keep" in structs else ("channel" if "channel" in structs
                                                                       else structs[0])
                if len(structs) > 1:
                    params[f"s:{g.name}"] = want
                rr = self.range_for(g)
                if rr.high > rr.low:
                    params[f"r:{g.name}"] = rr.snap(min(max(ratio, rr.low), rr.high))
            for key, choices in (("criterion", self.criteria), ("allocation", self.allocation),
                                 ("schedule", self.schedule), ("nm", self.nm_patterns)):
                if len(choices) > 1:
                    params[key] = "local" if key == "allocation" and "local" in choices else choices[0]
            if "global" in self.allocation:
                params["global_ratio"] = self.ratio.snap(ratio)
            if len(self.distillation) > 1:
                params["kd"] = self.distillation[-1]
            seeds.append(params)
        return seeds

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable form (stored with the study)."""
        from dataclasses import asdict

        return asdict(self)


def plan_from_params(space: SearchSpace, groups, params: dict[str, Any], seed: int = 0):
    """Build the pruning plan that a trial's parameters describe (a pure function).

    The plan is fitted to what each group can take (:func:`~autoprune.pruning.snap_plan`):
    grouped convolutions get a kept count their groups divide, and nothing above a
    group's checked ``max_ratio``.

    Args:
        space: The search space.
        groups: The model's prunable groups.
        params: Optuna parameters as suggested by :meth:`SearchSpace.suggest`.
        seed: Seed stored in the plan's settings.
    """
    from autoprune.pruning import GroupPlan, PlanSettings, PruningPlan, snap_plan

    criterion = params.get("criterion", space.criteria[0])
    nm = params.get("nm", space.nm_patterns[0])
    allocation = params.get("allocation", space.allocation[0])
    entries = []
    for g in groups:
        structs = space.structures_for(g)
        structure = params.get(f"s:{g.name}", structs[0])
        ratio = float(params.get(f"r:{g.name}", space.range_for(g).low))
        if allocation == "global" and structure != "keep":
            ratio = float(params.get("global_ratio", 0.0))  # one threshold decides; per-group ratio unused
        elif structure == "keep" or ratio == 0.0:
            structure, ratio = "keep", 0.0
        if structure == "nm":
            n, m = (int(v) for v in nm.split(":"))
            ratio = 1 - n / m
        entries.append((g.name, GroupPlan(structure=structure, ratio=ratio, criterion=criterion, nm=nm)))
    settings = PlanSettings(
        allocation=allocation,
        global_ratio=float(params.get("global_ratio", 0.0)),
        schedule=params.get("schedule", space.schedule[0]),
        iterative_steps=space.iterative_steps,
        round_to=space.round_to,
        min_channels=space.min_channels,
        seed=seed,
    )
    return snap_plan(PruningPlan(groups=tuple(entries), settings=settings), groups)


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
