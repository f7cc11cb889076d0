"""The record of one evaluated candidate, as a trial stores it: :class:`TrialRecord`.

One record per fact, passed between the stages as an object: the pipeline makes it
(:meth:`autoprune.pipeline.CandidateResult.record`), the search adds its constraint values and writes
it onto the Optuna trial (one user attribute per field, :meth:`TrialRecord.to_dict`), and the front,
the export, the dashboard and the benchmarks read it back (:meth:`TrialRecord.from_dict`) by attribute,
never by a key spelled as a string. Its field names are the objectives' record attributes
(``autoprune.search.config.OBJECTIVES``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from typing import Any

__all__ = ["ScreenScore", "TrialRecord"]

#: The fields a trial's user attributes never hold: the trial's own number and the other attributes.
_NOT_STORED = ("number", "extra")


@dataclass(frozen=True)
class TrialRecord:
    """What was measured or predicted about one candidate (fractions in [0, 1], sizes in bytes or MB).

    Attributes:
        plan: The snapped pruning plan (:meth:`~autoprune.pruning.PruningPlan.to_dict`).
        accuracy: Top-1 accuracy on the evaluated split.
        precision_macro, recall_macro, f1_macro: Macro-averaged metrics on that split.
        params: Parameters of the pruned model.
        macs: Its multiply-accumulates per sample.
        size_bytes: Dense-storage size.
        sparse_size_bytes: Size with exact zeros not stored.
        size_mb: ``sparse_size_bytes`` in MB (the size objective).
        latency_ms: PREDICTED latency on the target (the cost model's, see ``latency_provenance``).
        energy_mj: PREDICTED energy on the target (``energy_method`` says measured-fit or modelled).
        latency_band_ms: Half-width of the predicted latency's uncertainty band (``latency_ms ± latency_band_ms``,
            from the calibration's error); ``None`` where there is none (a prior, or a study from before bands).
        latency_outside_range: Why the prediction lies outside what its calibration covers (its band is widened),
            else ``None``.
        latency_provenance: The cost model's provenance (calibration, status, error).
        energy_method: How the energy figure was obtained.
        per_layer_ms: ``[module, predicted ms]`` per kernel.
        measured_latency_ms: MEASURED latency here (``local`` only), or ``None``.
        measured_runtime: The runtime that measured it.
        onnx: The ONNX export's record (bytes, opset, parity), where it was exported.
        seconds: Wall time per stage.
        compute_device: Where it was fine-tuned and evaluated.
        curve: ``[fraction of fine-tuning steps, accuracy]`` at each checkpoint.
        constraints: The constraint values (each <= 0 when satisfied); the first is always 0.
        allocation: A knapsack trial's resolved allocation (budget, priorities, kept channels).
        number: The Optuna trial's number, where the record was read from a trial.
        anchor: The anchor's label, where the trial was one.
        extra: Every other user attribute of the trial (``anchor_params``, ``plan_artifact_id``, ...).
    """

    accuracy: float
    latency_ms: float = float("nan")
    energy_mj: float = float("nan")
    plan: Mapping[str, Any] = field(default_factory=dict)
    precision_macro: float | None = None
    recall_macro: float | None = None
    f1_macro: float | None = None
    params: int = 0
    macs: float = 0.0
    size_bytes: int = 0
    sparse_size_bytes: int = 0
    size_mb: float | None = None
    latency_provenance: Mapping[str, Any] = field(default_factory=dict)
    latency_band_ms: float | None = None
    latency_outside_range: str | None = None
    energy_method: str | None = None
    per_layer_ms: list[Any] = field(default_factory=list)
    measured_latency_ms: float | None = None
    measured_runtime: str | None = None
    onnx: Mapping[str, Any] | None = None
    seconds: Mapping[str, float] = field(default_factory=dict)
    compute_device: str = "cpu"
    curve: list[Any] = field(default_factory=list)
    constraints: tuple[float, ...] = (0.0,)
    allocation: Mapping[str, Any] | None = None
    number: int | None = None
    anchor: str | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.size_mb is None:  # records from before the size objective: derived from the sparse size
            object.__setattr__(self, "size_mb", self.sparse_size_bytes / 1e6)
        object.__setattr__(self, "constraints", tuple(float(c) for c in self.constraints))

    @property
    def feasible(self) -> bool:
        """Every constraint is satisfied."""
        return all(c <= 0 for c in self.constraints)

    @property
    def is_dense(self) -> bool:
        """The dense anchor (the unpruned model)."""
        return self.anchor == "dense"

    def value(self, attribute: str) -> float:
        """The figure of one record attribute (an objective's, e.g. ``OBJECTIVES[name][1]``) as a float."""
        return float(getattr(self, attribute))

    def with_constraints(self, values: list[float]) -> TrialRecord:
        """This record with its constraint values."""
        return replace(self, constraints=tuple(values))

    def to_dict(self) -> dict[str, Any]:
        """The trial's user attributes, one per field (``None`` allocations and unset anchors left out,
        as they are never stored), then :attr:`extra`."""
        out: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name in _NOT_STORED or (f.name in ("allocation", "anchor") and value is None):
                continue
            out[f.name] = list(value) if isinstance(value, tuple) else value
        return {**out, **self.extra}

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any], number: int | None = None) -> TrialRecord:
        """Inverse of :meth:`to_dict` (a trial's ``{"number": n, **user_attrs}`` reads too); keys that are
        not fields go to :attr:`extra`."""
        names = {f.name for f in fields(cls)} - {"extra"}
        kwargs = {k: v for k, v in raw.items() if k in names}
        if number is not None:
            kwargs["number"] = number
        return cls(**kwargs, extra={k: v for k, v in raw.items() if k not in names})

    @classmethod
    def from_trial(cls, trial: Any) -> TrialRecord:
        """The record a (COMPLETE) Optuna trial stores."""
        return cls.from_dict(trial.user_attrs, number=trial.number)


@dataclass(frozen=True)
class ScreenScore:
    """A candidate scored cheaply, without its full fine-tune (:meth:`Pipeline.screen`).

    Attributes:
        plan: The snapped plan that was pruned.
        accuracy: Validation accuracy (a fraction) on the first ``samples`` validation samples, after
            ``steps`` fine-tuning steps (0: BatchNorm re-estimated only).
        samples: Validation samples evaluated.
        steps: Fine-tuning steps taken.
        latency_ms: PREDICTED latency on the target (the cost model's, as a full trial's).
        energy_mj: PREDICTED energy on the target.
        size_mb: Sparse size before fine-tuning.
        macs: Multiply-accumulates per sample.
        seconds: Wall time of the screen.
    """

    plan: dict[str, Any]
    accuracy: float
    samples: int
    steps: int
    latency_ms: float
    energy_mj: float
    size_mb: float
    macs: float
    seconds: float
