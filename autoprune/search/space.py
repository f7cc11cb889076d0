"""Search spaces: validated YAML files that become Optuna distributions per prunable group.

A space says which structures each group may take, the ratio range (overall and
per kind of layer), the criteria, the allocation and schedule, and the fine-tuning
budget. :meth:`SearchSpace.suggest` turns one Optuna trial into a pruning plan.

Allocations: ``local`` (``r:{group}``), ``global`` (``global_ratio``) and ``knapsack`` (a latency
``budget``, a fraction of the dense model's, priorities ``p:{group}``, log-uniform in ``priorities``, and
``latency_weight`` where the space gives it a range; ``thinning`` is fixed per space), resolved against the
study's pipeline by :mod:`autoprune.search.knapsack` (see :func:`needs_pipeline`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from autoprune.errors import ConfigError
from autoprune.io import read_yaml
from autoprune.search.fields import (
    PriorityRange,
    RatioRange,
    ScreeningSpec,
    _budget,
    _check_criteria,
    _int,
    _latency_weight,
    _no_unknown,
    _number,
    _pos_float,
    _priorities,
    _range,
    _str_list,
    _unit,
)
from autoprune.structures import STRUCTURE_NAMES as STRUCTURES

SPACES_DIR = Path(__file__).resolve().parents[2] / "search_spaces"
KINDS = ("conv", "depthwise", "linear")
_TOP_KEYS = {
    "version", "description", "structures", "nm_patterns", "ratio", "ratio_by_kind", "criteria",
    "allocation", "schedule", "iterative_steps", "round_to", "min_channels", "finetune", "distillation",
    "budget", "priorities", "latency_weight", "thinning", "screening",
}
ALLOCATIONS = ("local", "global", "knapsack")
_FT_KEYS = {"epochs", "steps", "lr", "lr_schedule", "batch_size"}
_KD_KEYS = {"enabled", "temperature", "weight"}


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
    budget: RatioRange = RatioRange(0.1, 0.9, 0.01)  # noqa: RUF009 - frozen
    priorities: PriorityRange = PriorityRange()  # noqa: RUF009 - frozen
    latency_weight: RatioRange = RatioRange(1.0, 1.0, 0.05)  # noqa: RUF009 - frozen
    thinning: float = 1.0
    screening: ScreeningSpec | None = None

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
        allocation = _str_list(raw.get("allocation", ["local"]), "allocation", where, ALLOCATIONS)
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
        budget = _budget(raw.get("budget", {"low": 0.1, "high": 0.9, "step": 0.01}), where)
        priorities = _priorities(raw.get("priorities", {"low": 0.25, "high": 4.0}), where)
        thinning = _number(raw.get("thinning", 1.0), "thinning", where)
        if thinning < 0:
            raise ConfigError(f"{where}: 'thinning' must be >= 0 (0 = HALP's plain sum), got {thinning}")
        return cls(
            name=name, description=str(raw.get("description", "")), structures=structures, ratio=ratio,
            ratio_by_kind=by_kind, criteria=criteria, allocation=allocation, schedule=schedule,
            iterative_steps=steps, round_to=round_to, min_channels=min_ch, nm_patterns=nm, finetune=ft,
            distillation=tuple(dict.fromkeys(enabled)),
            kd_temperature=_pos_float(kd_raw.get("temperature", 4.0), "distillation.temperature", where),
            kd_weight=_unit(kd_raw.get("weight", 0.7), "distillation.weight", where),
            budget=budget, priorities=priorities,
            latency_weight=_latency_weight(raw.get("latency_weight", 1.0), where), thinning=thinning,
            screening=ScreeningSpec.from_dict(raw.get("screening"), where),
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

        The choices are turned into a plan by :func:`autoprune.search.space.plan_from_params`
        (or, for a knapsack allocation, :func:`autoprune.search.knapsack.knapsack_from_params`).
        Every parameter of the space is suggested whatever the trial's allocation (a static space
        suits TPE's multivariate mode): ``r:{group}`` where the space has ``local`` or ``global`` (or
        the group may be ``unstructured``), ``budget`` and ``p:{group}`` where it has ``knapsack``.
        """
        knap = "knapsack" in self.allocation
        for g in groups:
            structs = self.structures_for(g)
            if len(structs) > 1:
                trial.suggest_categorical(f"s:{g.name}", list(structs))
            rr = self.range_for(g)
            if rr.high > rr.low and self._searches_ratio(structs):
                trial.suggest_float(f"r:{g.name}", rr.low, rr.high, step=rr.step)
            if knap and "channel" in structs:
                trial.suggest_float(f"p:{g.name}", self.priorities.low, self.priorities.high, log=True)
        if knap:
            self.budget.suggest(trial, "budget")
            if self.latency_weight.high > self.latency_weight.low:
                self.latency_weight.suggest(trial, "latency_weight")
        for key, choices in (("criterion", self.criteria), ("allocation", self.allocation),
                             ("schedule", self.schedule), ("nm", self.nm_patterns)):
            if len(choices) > 1:
                trial.suggest_categorical(key, list(choices))
        if "global" in self.allocation:
            trial.suggest_float("global_ratio", self.ratio.low, self.ratio.high, step=self.ratio.step)
        if len(self.distillation) > 1:
            trial.suggest_categorical("kd", list(self.distillation))
        return run_params(trial)

    def _searches_ratio(self, structs: tuple[str, ...]) -> bool:
        return bool({"local", "global"} & set(self.allocation)) or "unstructured" in structs

    def seed_params(self, groups, ratios=(0.0, 0.3, 0.5, 0.7, 0.9), budgets=(0.075, 0.15, 0.3, 0.6)
                    ) -> list[dict[str, Any]]:
        """Parameters of the anchor trials, each within the space.

        The dense model first (every group ``keep``, or ``channel`` at 0); then, as the space's
        allocations allow: uniform channel plans at ``ratios`` (``local``), one global plan at the
        middle ratio (``global``, when the space also has another allocation), and knapsack plans at
        ``budgets`` with every priority 1 (``knapsack``; by default 0.075, 0.15, 0.3 and 0.6 of the dense
        latency, each twice the last, so the first trials already span 1.7-13x). :meth:`anchor_label`
        names each.
        """
        return [params for _, params, _ in self.anchors(groups, ratios, budgets)]

    def anchors(self, groups, ratios=(0.0, 0.3, 0.5, 0.7, 0.9), budgets=(0.075, 0.15, 0.3, 0.6)
                ) -> list[tuple[str, dict[str, Any], dict[str, Any]]]:
        """The anchor trials as ``(label, params within the space, fixed params)``.

        :meth:`seed_params`'s anchors have no fixed params. A knapsack-only space (the default) also
        gets the two one-line baselines a search must beat, a uniform and a global L1 plan at the middle
        ratio: their ``fixed`` params (another allocation) override the in-space ones when the trial
        runs (:meth:`suggest` reads them from the trial's ``anchor_params`` user attribute), and their
        in-space params are the knapsack's at about the same latency (``(1 - ratio)²`` of dense), so
        the sampler sees a consistent point. There the order is: dense, the knapsack's middle budget,
        uniform, global, the other budgets.
        """
        local = "local" in self.allocation
        plain = [r for r in ratios if r == 0 or local or self.allocation == ("global",)]
        out = [(self.anchor_label(p), p, {}) for p in
               (self._anchor(groups, r, "local" if local else self.allocation[0]) for r in plain)]
        mid = ratios[len(ratios) // 2]
        if "global" in self.allocation and len(self.allocation) > 1:
            p = self._anchor(groups, mid, "global")
            out.append((self.anchor_label(p), p, {}))
        if "knapsack" in self.allocation:
            ladder = {}  # budgets as the space snaps them (a coarse or narrow range may merge two)
            for b in budgets:
                p = self._anchor(groups, 0.5, "knapsack", budget=b)
                ladder.setdefault(p["budget"], p)
            out += [(f"knapsack-{b:g}", p, {}) for b, p in ladder.items()]
            budgets = tuple(ladder)
        if self.allocation == ("knapsack",) and "channel" in self.structures:
            in_space = self._anchor(groups, 0.5, "knapsack", budget=self.budget.snap((1 - mid) ** 2))
            for allocation in ("local", "global"):
                fixed = {"allocation": allocation, "global_ratio": mid, **self.channel_params(groups, mid)}
                out.append((f"{'uniform' if allocation == 'local' else 'global'}-{mid}", in_space, fixed))
            # A short study runs the knapsack's middle budget, then the two baselines, then the others.
            middle = len(budgets) // 2
            out = [out[0], out[1 + middle], out[-2], out[-1]] + [a for i, a in enumerate(out[1:-2]) if i != middle]
        return out

    def channel_params(self, groups, ratio: float) -> dict[str, Any]:
        """``s:``/``r:`` parameters of a one-line channel baseline at ``ratio``: ``channel`` at the ratio (snapped
        to each group's range) where a group may take it, else its first structure at 0. Outside the space's
        own parameters when it has no ``local`` allocation: the baselines' fixed ``anchor_params``."""
        out: dict[str, Any] = {}
        for g in groups:
            channel = "channel" in self.structures_for(g)
            out[f"s:{g.name}"] = "channel" if channel else self.structures_for(g)[0]
            out[f"r:{g.name}"] = self.range_for(g).snap(ratio) if channel else 0.0
        return out

    def _anchor(self, groups, ratio: float, allocation: str, budget: float | None = None) -> dict[str, Any]:
        params: dict[str, Any] = {}
        for g in groups:
            structs = self.structures_for(g)
            want = "keep" if ratio == 0 and budget is None and "keep" in structs else (
                "channel" if "channel" in structs else structs[0])
            if len(structs) > 1:
                params[f"s:{g.name}"] = want
            rr = self.range_for(g)
            if rr.high > rr.low and self._searches_ratio(structs):
                params[f"r:{g.name}"] = rr.snap(min(max(ratio if budget is None else 0.0, rr.low), rr.high))
            if "knapsack" in self.allocation and "channel" in structs:
                params[f"p:{g.name}"] = min(max(1.0, self.priorities.low), self.priorities.high)
        for key, choices in (("criterion", self.criteria), ("allocation", self.allocation),
                             ("schedule", self.schedule), ("nm", self.nm_patterns)):
            if len(choices) > 1:
                params[key] = allocation if key == "allocation" else choices[0]
        if "global" in self.allocation:
            params["global_ratio"] = self.ratio.snap(ratio)
        if "knapsack" in self.allocation:
            params["budget"] = self.budget.snap(self.budget.high if budget is None else budget)
            if self.latency_weight.high > self.latency_weight.low:  # anchors run HALP's ranking
                params["latency_weight"] = self.latency_weight.high
        if len(self.distillation) > 1:
            params["kd"] = self.distillation[-1]
        return params

    def anchor_label(self, params: dict[str, Any]) -> str:
        """A short name for an anchor's parameters: ``dense``, ``uniform-0.3``, ``global-0.5``, ``knapsack-0.5``."""
        allocation, structs = params.get("allocation", self.allocation[0]), {params[k] for k in params if k[:2] == "s:"}
        ratios = sorted({v for k, v in params.items() if k[:2] == "r:"})
        if structs == {"keep"} or (allocation == "local" and ratios in ([], [0.0])):
            return "dense"
        if allocation in ("knapsack", "global"):
            return f"{allocation}-{params.get('budget' if allocation == 'knapsack' else 'global_ratio')}"
        return f"uniform-{ratios}"[:60]

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable form (stored with the study)."""
        return asdict(self)


def run_params(trial) -> dict[str, Any]:
    """The parameters a trial runs with: its own, overridden by its fixed ``anchor_params`` (an anchor's, or a
    screened candidate's, from another allocation than the space's)."""
    return {**trial.params, **(trial.user_attrs.get("anchor_params") or {})}


def needs_pipeline(space: SearchSpace, params: dict[str, Any]) -> bool:
    """Whether ``params`` need the study's pipeline to become a plan (a ``knapsack`` allocation:
    resolve them with :func:`autoprune.search.knapsack.knapsack_from_params`)."""
    return params.get("allocation", space.allocation[0]) == "knapsack"


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

    Raises:
        ConfigError: The parameters choose the ``knapsack`` allocation (see :func:`needs_pipeline`).
    """
    from autoprune.pruning import GroupPlan, PlanSettings, PruningPlan, snap_plan

    if needs_pipeline(space, params):
        raise ConfigError("knapsack parameters need the study's pipeline (its cost model and importances): "
                          "resolve them with autoprune.search.knapsack.knapsack_from_params")
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
