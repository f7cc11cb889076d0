"""Early stopping in a multi-objective study: stop a candidate that cannot plausibly reach the front.

A candidate's costs (predicted latency, energy, size, MACs) are known before it is fine-tuned; only its
accuracy is not. At each fine-tuning checkpoint (a fraction ``f`` of the steps) the pipeline evaluates the
validation accuracy ``a`` and asks a :class:`Stopper`, which stops the candidate when

* some completed, feasible trial costs no more on every cost objective of the study, and
* its final accuracy is above ``a + margin(f)``,

where ``margin(f)`` is the largest gain ``final - acc(f)`` seen among the completed trials' curves, plus a small
slack: even a candidate that gains as much as the best-gaining trial so far would still be dominated.

There is no stopping before ``min_curves`` completed trials have curves. The rule is a pure function of the
completed trials' stored user attributes (``accuracy``, the cost objectives, ``curve``, ``constraints``), so a
:meth:`Stopper.from_study` on a reloaded study makes the same decisions: a resumed study keeps its stopping
state. A stopped candidate raises :class:`TrialStopped`, which the backends tell as a PRUNED trial with a
``stopped_reason`` user attribute (never FAIL, never COMPLETE); the budget counts COMPLETE trials only.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from autoprune.search.config import ACCURACY, CONFIG_ATTR, OBJECTIVES, SearchConfig

#: User attribute of a stopped (PRUNED) trial: why it was stopped.
STOPPED_REASON_ATTR = "stopped_reason"
#: No stopping before this many completed trials have accuracy curves.
MIN_CURVES = 4
#: Accuracy added to the largest gain seen (a fraction of 1, i.e. half a percentage point).
SLACK = 0.005


class TrialStopped(Exception):  # noqa: N818 - a stop, not an error
    """A candidate was stopped early: the backend tells its trial PRUNED, with the reason.

    Not an :class:`~autoprune.errors.AutopruneError`: a stop is not a failure, and the backends' failure
    handlers (``CANDIDATE_ERRORS``) must never catch it.

    Args:
        reason: One line: the dominating trial and the numbers.
        attrs: JSON-ready user attributes for the stopped trial (the checkpoint, the curve so far, the costs).
    """

    def __init__(self, reason: str, attrs: Mapping[str, Any] | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.attrs = dict(attrs or {})


def mark_stopped(trial, reason: str, attrs: Mapping[str, Any]) -> None:
    """Write a stopped candidate's reason and attributes onto its (still RUNNING) Optuna trial."""
    for key, value in attrs.items():
        trial.set_user_attr(key, value)
    trial.set_user_attr(STOPPED_REASON_ATTR, reason[:500])


@dataclass(frozen=True)
class CompletedTrial:
    """What the rule reads of one completed trial.

    Attributes:
        number: The trial's number.
        accuracy: Its final validation accuracy (a fraction in [0, 1]).
        costs: Cost objective attribute (``latency_ms``, ...) → value; lower is better.
        curve: ``(fraction of fine-tuning steps, validation accuracy)`` points, fractions ascending, ending
            with ``(1.0, accuracy)``; empty for a trial recorded without one.
        feasible: It meets the study's constraints (an infeasible trial never stops another).
    """

    number: int
    accuracy: float
    costs: Mapping[str, float] = field(default_factory=dict)
    curve: tuple[tuple[float, float], ...] = ()
    feasible: bool = True

    @classmethod
    def from_attrs(cls, number: int, attrs: Mapping[str, Any], cost_keys: Sequence[str]) -> CompletedTrial | None:
        """From a trial's user attributes; None when its accuracy is missing or not finite."""
        acc = _finite(attrs.get(OBJECTIVES[ACCURACY][1]))
        if acc is None:
            return None
        costs = {k: v for k in cost_keys if (v := _finite(attrs.get(k))) is not None}
        feasible = all((c := _finite(v)) is not None and c <= 0 for v in attrs.get("constraints") or [])
        return cls(number, acc, costs, _clean_curve(attrs.get("curve")), feasible)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (see :meth:`from_dict`)."""
        return {**asdict(self), "costs": dict(self.costs), "curve": [list(p) for p in self.curve]}

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> CompletedTrial:
        """Inverse of :meth:`to_dict`."""
        return cls(int(raw["number"]), float(raw[OBJECTIVES[ACCURACY][1]]),
                   {k: float(v) for k, v in raw["costs"].items()}, _clean_curve(raw.get("curve")),
                   bool(raw.get("feasible", True)))


def _finite(value: Any) -> float | None:
    try:
        out = float(value)
    except (TypeError, ValueError):
        return None
    return out if math.isfinite(out) else None


def _clean_curve(raw: Any) -> tuple[tuple[float, float], ...]:
    """A stored curve as sorted finite ``(fraction, accuracy)`` points with fractions in [0, 1]; () if malformed."""
    try:
        points = [(float(f), float(a)) for f, a in (raw or [])]
    except (TypeError, ValueError):
        return ()
    if not all(math.isfinite(f) and math.isfinite(a) and 0.0 <= f <= 1.0 for f, a in points):
        return ()
    return tuple(sorted(points))


def accuracy_at(curve: Sequence[tuple[float, float]], fraction: float) -> float:
    """A curve's accuracy at ``fraction``: linear between its points, its end value beyond them."""
    if fraction <= curve[0][0]:
        return curve[0][1]
    for (f0, a0), (f1, a1) in itertools.pairwise(curve):
        if fraction <= f1:
            return a1 if f1 == f0 else a0 + (a1 - a0) * (fraction - f0) / (f1 - f0)
    return curve[-1][1]


def has_curve(trial: CompletedTrial) -> bool:
    """The trial has at least one checkpoint before the end of its fine-tuning."""
    return any(f < 1.0 for f, _ in trial.curve)


def learned_margin(trials: Sequence[CompletedTrial], fraction: float, slack: float = SLACK) -> tuple[float, int]:
    """``(margin, curves used)``: the largest gain ``final - acc(fraction)`` among ``trials`` with curves
    (never below 0), plus ``slack``."""
    gains = [t.accuracy - accuracy_at(t.curve, fraction) for t in trials if has_curve(t)]
    return max([0.0, *gains]) + slack, len(gains)


def stop_reason(trials: Sequence[CompletedTrial], curve: Sequence[tuple[float, float]], costs: Mapping[str, float],
                cost_keys: Sequence[str], *, min_curves: int = MIN_CURVES, slack: float = SLACK) -> str | None:
    """Why a candidate should stop now, or None to let it run on (the rule of the module docstring).

    Args:
        trials: The study's completed trials.
        curve: The candidate's checkpoints so far, ``(fraction, validation accuracy)``; the last is now.
        costs: The candidate's predicted costs, by attribute name (``latency_ms``, ...).
        cost_keys: The study's cost objectives' attributes; a candidate or trial missing one is never compared.
        min_curves: No stopping before this many completed trials have curves.
        slack: Added to the largest gain seen.
    """
    if not curve or not cost_keys or any(_finite(costs.get(k)) is None for k in cost_keys):
        return None
    fraction, acc = curve[-1]
    margin, used = learned_margin(trials, fraction, slack)
    if used < min_curves:
        return None
    better = [t for t in trials if t.feasible and all(k in t.costs and t.costs[k] <= costs[k] for k in cost_keys)
              and t.accuracy > acc + margin]
    if not better:
        return None
    best = min(better, key=lambda t: (-t.accuracy, t.number))
    than = ", ".join(f"{k} {best.costs[k]:.4g} <= {costs[k]:.4g}" for k in cost_keys)
    return (f"stopped after {fraction:.0%} of fine-tuning: val accuracy {acc:.4f} + margin {margin:.4f} < "
            f"{best.accuracy:.4f}, the final accuracy of trial {best.number} ({than}); margin = the largest gain "
            f"after {fraction:.0%} among {used} completed curves + {slack:g}")


@dataclass(frozen=True)
class Stopper:
    """The stopping rule over a study's completed trials, asked at each fine-tuning checkpoint.

    Attributes:
        trials: The completed trials (a snapshot: build a new stopper for each candidate).
        cost_keys: Attributes of the study's cost objectives (every objective but accuracy).
        min_curves: No stopping before this many completed trials have curves.
        slack: Added to the largest gain seen.
    """

    trials: tuple[CompletedTrial, ...] = ()
    cost_keys: tuple[str, ...] = (OBJECTIVES["latency"][1],)
    min_curves: int = MIN_CURVES
    slack: float = SLACK

    @classmethod
    def from_study(cls, study, config: SearchConfig | None = None, **options: Any) -> Stopper:
        """The stopper of ``study`` now, from its COMPLETE trials' user attributes.

        Args:
            study: The Optuna study.
            config: Its configuration (default: the one stored in the study, else the default objectives).
            options: ``min_curves``, ``slack``.
        """
        from optuna.trial import TrialState

        if config is None:
            raw = study.user_attrs.get(CONFIG_ATTR)
            config = SearchConfig.from_dict(raw) if raw else SearchConfig()
        keys = tuple(OBJECTIVES[o][1] for o in config.objectives if o != ACCURACY)
        trials = (CompletedTrial.from_attrs(t.number, t.user_attrs, keys)
                  for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))
        return cls(tuple(sorted((t for t in trials if t is not None), key=lambda t: t.number)), keys, **options)

    def reason(self, curve: Sequence[tuple[float, float]], costs: Mapping[str, float]) -> str | None:
        """:func:`stop_reason` with this stopper's trials and settings."""
        return stop_reason(self.trials, curve, costs, self.cost_keys, min_curves=self.min_curves, slack=self.slack)

    def check(self, curve: Sequence[tuple[float, float]], costs: Mapping[str, float]) -> None:
        """Ask at a checkpoint; returns when the candidate may go on.

        Args:
            curve: The candidate's checkpoints so far, ``(fraction, validation accuracy)``; the last is now.
            costs: Its predicted costs by attribute name (``latency_ms``, ``energy_mj``, ``size_mb``, ``macs``).

        Raises:
            TrialStopped: The candidate cannot plausibly reach the front (with the reason, the checkpoint,
                the curve so far and the costs as attributes for the stopped trial).
        """
        why = self.reason(curve, costs)
        if why is not None:
            raise TrialStopped(why, {"stopped_at": curve[-1][0], "curve": [list(p) for p in curve],
                                     "costs": {k: float(v) for k, v in costs.items()}})

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form, to hand the stopper to another process (a Ray worker)."""
        return {"trials": [t.to_dict() for t in self.trials], "cost_keys": list(self.cost_keys),
                "min_curves": self.min_curves, "slack": self.slack}

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> Stopper:
        """Inverse of :meth:`to_dict`."""
        return cls(tuple(CompletedTrial.from_dict(t) for t in raw["trials"]), tuple(raw["cost_keys"]),
                   int(raw["min_curves"]), float(raw["slack"]))


__all__ = ["MIN_CURVES", "SLACK", "STOPPED_REASON_ATTR", "CompletedTrial", "Stopper", "TrialStopped",
           "accuracy_at", "has_curve", "learned_margin", "mark_stopped", "stop_reason"]
