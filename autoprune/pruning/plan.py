"""The pruning plan: which structure, ratio and criterion each prunable group gets.

A :class:`PruningPlan` is a frozen, JSON-serialisable value. The search proposes
one per trial; :func:`autoprune.pruning.prune_model` applies it. This module
imports no torch so that plans can be built, stored and validated cheaply.

Ratios:
    * ``channel``: the fraction of the group's output channels removed. The kept
      count is ``max(min_channels, round(channels * (1 - ratio)))``, then rounded
      to a multiple of ``round_to`` (never above the dense count, never below 1)
      and of the group's ``channel_multiple`` (a grouped convolution's groups),
      see :func:`kept_count`.
    * ``unstructured``: the fraction of weights zeroed in each member's weight
      tensor (local allocation), or across all unstructured members (global).
    * ``nm``: ``ratio`` is not used; every block of ``M`` consecutive weights along
      the input-channel (reduction) dimension keeps its ``N`` highest-scoring
      weights, so the effective sparsity is ``1 - N/M`` (50 % for ``2:4``).
      :meth:`GroupPlan.effective_sparsity` reports it.
    * ``keep``: dense; ``ratio`` is not used.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

from autoprune.errors import PlanError
from autoprune.structures import STRUCTURE_NAMES

STRUCTURES = STRUCTURE_NAMES  # the registry: autoprune.structures
ALLOCATIONS = ("local", "global")
SCHEDULES = ("one-shot", "iterative")
REGULARIZATIONS = ("none", "bn-l1", "group-lasso")
PLAN_VERSION = 1


def parse_nm(nm: str) -> tuple[int, int]:
    """Parse an ``"N:M"`` pattern into ``(n, m)`` with ``1 <= n < m``.

    Raises:
        PlanError: If the text is not two integers ``N:M`` with ``1 <= N < M``.
    """
    parts = str(nm).split(":") if isinstance(nm, str) else []
    try:
        n, m = (int(p) for p in parts) if len(parts) == 2 else (None, None)
    except ValueError:
        n = m = None
    if n is None or m is None or not 1 <= n < m:
        raise PlanError(f"bad N:M pattern {nm!r}: write it as 'N:M' with integers 1 <= N < M, e.g. '2:4'")
    return n, m


class GroupLike(Protocol):
    """What a plan reads of a prunable group: :class:`autoprune.pruning.groups.PrunableGroup` is one.

    Written here so that this module (torch-free) needs nothing of :mod:`autoprune.pruning.groups`,
    which imports it.
    """

    @property
    def name(self) -> str: ...

    @property
    def allowed(self) -> tuple[str, ...]: ...

    @property
    def reduction_channels(self) -> tuple[int, ...]: ...

    def allows_nm(self, nm: str) -> bool: ...


def kept_count(dense: int, ratio: float, round_to: int | None, min_channels: int, multiple: int = 1) -> int:
    """The channels a group keeps at ``ratio`` (see the module docstring).

    Args:
        dense: The group's dense channel count (a multiple of ``multiple``).
        ratio: Fraction of channels removed.
        round_to: Align the kept count to this multiple (only where ``dense >= round_to``).
        min_channels: Never keep fewer.
        multiple: The group's channel unit (a grouped convolution's ``groups``): the kept
            count is always a multiple of it, aligned to ``lcm(round_to, multiple)`` where
            that leaves something to prune (is below ``dense``).

    Returns:
        The kept count, in ``[1, dense]``.
    """
    if ratio <= 0.0:
        return dense
    keep = max(math.floor(dense * (1.0 - ratio) + 0.5), min_channels, 1)
    step = round_to if round_to and dense >= round_to else 1
    if multiple > 1:
        both = math.lcm(step, multiple)
        step = both if both < dense else multiple
    if step > 1:
        keep = max(step, math.floor(keep / step + 0.5) * step)
        if keep < min_channels:
            keep = math.ceil(min_channels / step) * step
    return min(keep, dense)


def _check_ratio(ratio: Any, where: str) -> float:
    if isinstance(ratio, bool) or not isinstance(ratio, (int, float)):
        raise PlanError(f"{where}: ratio {ratio!r} is not a number; give a float in [0, 1)")
    if math.isnan(ratio) or not 0.0 <= ratio < 1.0:
        raise PlanError(f"{where}: ratio {ratio!r} is outside [0, 1); give a float in [0, 1)")
    return float(ratio)


@dataclass(frozen=True)
class GroupPlan:
    """What to do with one prunable group.

    Attributes:
        structure: ``keep``, ``channel``, ``unstructured`` or ``nm``.
        ratio: Pruning ratio in ``[0, 1)`` (see the module docstring per structure).
        criterion: Name of an importance criterion in
            :data:`autoprune.pruning.criteria.CRITERIA`.
        nm: The ``N:M`` pattern, used only when ``structure == "nm"``.
    """

    structure: str = "keep"
    ratio: float = 0.0
    criterion: str = "l1"
    nm: str = "2:4"

    def effective_sparsity(self) -> float:
        """The fraction of weights (or channels, for ``channel``) this plan removes."""
        if self.structure == "keep":
            return 0.0
        if self.structure == "nm":
            n, m = parse_nm(self.nm)
            return 1.0 - n / m
        return float(self.ratio)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return asdict(self)


@dataclass(frozen=True)
class PlanSettings:
    """Network-wide settings of a plan.

    Attributes:
        allocation: ``local`` (each group its own ratio) or ``global`` (one
            importance threshold across all groups of a structure, reaching
            ``global_ratio`` in total; per-group ratios are then not used, but a
            ``keep`` group stays dense).
        global_ratio: Target ratio for ``global`` allocation, in ``[0, 1)``.
        schedule: ``one-shot`` or ``iterative``.
        iterative_steps: Number of prune steps for ``iterative`` (>= 1); the
            ratio grows linearly, ``r * s / k`` at step ``s``.
        round_to: Kept channel counts are multiples of this (e.g. 8), or None.
        min_channels: No channel-pruned group keeps fewer channels (>= 1).
        regularization: ``none``, ``bn-l1`` (L1 on BN scales) or ``group-lasso``
            (L2 norm per output channel), applied during fine-tuning.
        reg_strength: Weight of the regularisation term (>= 0).
        calib_batches: Batches drawn from the calibration loader for data-driven
            criteria (>= 1).
        seed: Seed for the ``random`` criterion and any sampling.
    """

    allocation: str = "local"
    global_ratio: float = 0.0
    schedule: str = "one-shot"
    iterative_steps: int = 1
    round_to: int | None = None
    min_channels: int = 1
    regularization: str = "none"
    reg_strength: float = 0.0
    calib_batches: int = 4
    seed: int = 0

    def validate(self) -> None:
        """Check every field.

        Raises:
            PlanError: Naming the bad field and the valid values.
        """
        for fname, value, valid in (
            ("allocation", self.allocation, ALLOCATIONS),
            ("schedule", self.schedule, SCHEDULES),
            ("regularization", self.regularization, REGULARIZATIONS),
        ):
            if value not in valid:
                raise PlanError(f"unknown {fname} {value!r}; valid: {', '.join(valid)}")
        _check_ratio(self.global_ratio, "settings.global_ratio")
        for fname, value, low in (
            ("iterative_steps", self.iterative_steps, 1),
            ("min_channels", self.min_channels, 1),
            ("calib_batches", self.calib_batches, 1),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise PlanError(f"settings.{fname} must be an integer >= {low}, got {value!r}")
        if self.round_to is not None and (
            isinstance(self.round_to, bool) or not isinstance(self.round_to, int) or self.round_to < 1
        ):
            raise PlanError(f"settings.round_to must be a positive integer or null, got {self.round_to!r}")
        if (
            isinstance(self.reg_strength, bool)
            or not isinstance(self.reg_strength, (int, float))
            or not (math.isfinite(self.reg_strength) and self.reg_strength >= 0)
        ):
            raise PlanError(f"settings.reg_strength must be a finite number >= 0, got {self.reg_strength!r}")

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return asdict(self)


@dataclass(frozen=True)
class PruningPlan:
    """A complete, immutable pruning plan.

    Attributes:
        groups: ``(group_name, GroupPlan)`` pairs in the order of
            :func:`~autoprune.pruning.discover_groups`. Groups left out are kept dense.
        settings: Network-wide :class:`PlanSettings`.
    """

    groups: tuple[tuple[str, GroupPlan], ...] = ()
    settings: PlanSettings = field(default_factory=PlanSettings)

    def __post_init__(self) -> None:
        items = self.groups.items() if isinstance(self.groups, Mapping) else self.groups
        object.__setattr__(self, "groups", tuple((str(k), v) for k, v in items))

    # ----------------------------------------------------------- constructors
    @classmethod
    def dense(cls, groups: Iterable[GroupLike], settings: PlanSettings | None = None) -> PruningPlan:
        """A plan that keeps every group dense."""
        return cls(tuple((g.name, GroupPlan("keep")) for g in groups), settings or PlanSettings())

    @classmethod
    def uniform(
        cls,
        groups: Iterable[GroupLike],
        structure: str,
        ratio: float,
        criterion: str = "l1",
        nm: str = "2:4",
        settings: PlanSettings | None = None,
    ) -> PruningPlan:
        """The same structure and ratio for every group that allows it.

        Groups that do not allow ``structure`` (e.g. the classifier for
        ``channel``, or a layer whose input channels are not a multiple of M for
        ``nm``) are kept dense.
        """
        pairs = []
        for g in groups:
            gp = GroupPlan(structure, ratio, criterion, nm)
            if structure not in g.allowed or (structure == "nm" and not g.allows_nm(nm)):
                gp = GroupPlan("keep", 0.0, criterion, nm)
            pairs.append((g.name, gp))
        return cls(tuple(pairs), settings or PlanSettings())

    # ------------------------------------------------------------- accessors
    def as_mapping(self) -> dict[str, GroupPlan]:
        """The group plans keyed by group name (a new dict)."""
        return dict(self.groups)

    def get(self, name: str) -> GroupPlan:
        """The plan of group ``name`` (``keep`` when the plan does not mention it)."""
        return self.as_mapping().get(name, GroupPlan("keep"))

    # ------------------------------------------------------------ validation
    def validate(self, groups: Iterable[GroupLike], needs_data_ok: bool = True) -> None:
        """Check the whole plan against a model's groups before any work is done.

        Args:
            groups: The model's groups from :func:`~autoprune.pruning.discover_groups`.
            needs_data_ok: False when no calibration data will be given; then a
                data-driven criterion is refused.

        Raises:
            PlanError: For a bad ratio (outside [0, 1), NaN, not a number), an
                unknown group, criterion or structure, a structure the group does
                not allow, an N:M pattern the layer cannot take, a duplicate group,
                or bad settings.
        """
        from autoprune.pruning.criteria import CRITERIA

        if not isinstance(self.settings, PlanSettings):
            raise PlanError("plan settings must be a PlanSettings; build plans with PruningPlan(...)")
        self.settings.validate()
        by_name = {g.name: g for g in groups}
        seen: set[str] = set()
        for name, gp in self.groups:
            where = f"group {name!r}"
            if name in seen:
                raise PlanError(f"{where} appears twice in the plan; give each group once")
            seen.add(name)
            if name not in by_name:
                valid = ", ".join(list(by_name)[:8]) + (", ..." if len(by_name) > 8 else "")
                raise PlanError(f"unknown {where}; the model's groups are: {valid}")
            if not isinstance(gp, GroupPlan):
                raise PlanError(f"{where}: plan entry must be a GroupPlan, got {type(gp).__name__}")
            if gp.structure not in STRUCTURES:
                raise PlanError(
                    f"{where}: unknown structure {gp.structure!r}; valid: {', '.join(STRUCTURES)}"
                )
            _check_ratio(gp.ratio, where)
            if gp.criterion not in CRITERIA:
                raise PlanError(
                    f"{where}: unknown criterion {gp.criterion!r}; valid: {', '.join(CRITERIA.names())}"
                )
            group = by_name[name]
            if gp.structure not in group.allowed:
                raise PlanError(
                    f"{where} cannot take structure {gp.structure!r}; allowed: {', '.join(group.allowed)}"
                )
            if gp.structure == "nm":
                _n, m = parse_nm(gp.nm)
                if not group.allows_nm(gp.nm):
                    raise PlanError(
                        f"{where} cannot take N:M {gp.nm!r}: its members' input channels "
                        f"({', '.join(map(str, group.reduction_channels))}) are not all multiples of {m}; "
                        "use another structure or M"
                    )
            if gp.structure != "keep" and CRITERIA.get(gp.criterion).needs_data and not needs_data_ok:
                raise PlanError(
                    f"{where}: criterion {gp.criterion!r} needs data; pass calib_loader or pick "
                    "a data-free criterion (l1, l2, fpgm, bn-scale, random)"
                )

    # --------------------------------------------------------- serialisation
    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (``version``, ``groups`` as a list, ``settings``)."""
        return {
            "version": PLAN_VERSION,
            "groups": [{"name": n, **gp.to_dict()} for n, gp in self.groups],
            "settings": self.settings.to_dict(),
        }

    @classmethod
    def from_dict(cls, payload: Mapping[str, Any]) -> PruningPlan:
        """Rebuild a plan from :meth:`to_dict` output.

        Raises:
            PlanError: If the payload is malformed or of another version.
        """
        if not isinstance(payload, Mapping) or payload.get("version") != PLAN_VERSION:
            raise PlanError(f"not a version-{PLAN_VERSION} pruning plan; regenerate it with this autoprune")
        try:
            groups = tuple(
                (str(g["name"]), GroupPlan(**{k: v for k, v in g.items() if k != "name"}))
                for g in payload["groups"]
            )
            settings = PlanSettings(**payload.get("settings", {}))
        except (KeyError, TypeError) as exc:
            raise PlanError(
                f"malformed pruning plan ({exc}); regenerate it with PruningPlan.to_json"
            ) from None
        return cls(groups, settings)

    def to_json(self) -> str:
        """The plan as indented JSON text."""
        return json.dumps(self.to_dict(), indent=2, allow_nan=False)

    @classmethod
    def from_json(cls, text: str) -> PruningPlan:
        """Parse :meth:`to_json` output.

        Raises:
            PlanError: If the text is not JSON or not a plan.
        """
        try:
            payload = json.loads(text)
        except json.JSONDecodeError as exc:
            raise PlanError(f"pruning plan is not valid JSON ({exc}); regenerate it") from None
        return cls.from_dict(payload)
