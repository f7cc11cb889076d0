"""One candidate, evaluated and recorded the same way by every backend.

:func:`build_pipeline` makes the per-study :class:`~autoprune.pipeline.Pipeline` (the dense model trained
when missing, after checking the calibration exists); :func:`evaluate_candidate` turns a trial's
parameters into a plan and runs it; :func:`record_result` writes the record onto the Optuna trial
(constraints, user attributes, the plan as an artifact) and returns the objective values to tell.
:class:`Heartbeat` keeps trials alive for other workers while they run.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from autoprune.errors import AutopruneError
from autoprune.records import TrialRecord
from autoprune.search.config import SearchConfig, constraint_values, objective_values, set_constraints
from autoprune.search.space import SearchSpace, needs_pipeline, plan_from_params
from autoprune.search.storage import StudyStorage
from autoprune.search.study import attach_plan

if TYPE_CHECKING:
    from autoprune.search.context import StudyContext


def build_pipeline(context: StudyContext | SearchConfig, space: SearchSpace, progress: bool = True, *,
                   measure: bool | None = None):
    """``(pipeline, dense checkpoint record)``: the dense model (trained if missing), its data and the
    per-candidate pipeline, on the context's compute device. A missing calibration is reported before
    anything is trained.

    Args:
        context: The study's resolved :class:`~autoprune.search.context.StudyContext` (a bare
            :class:`SearchConfig` is resolved here, as a library entry point).
        space: The study's search space.
        progress: Progress bars while the dense model trains.
        measure: Also time each candidate here (default: where the target is this machine's CPU).

    Raises:
        CalibrationError: No calibration for the model on the target (names the command that makes it).
        ConfigError: ``config.device`` is not a device this machine has.
    """
    from autoprune.costmodel import profile_command, require_calibration
    from autoprune.data import load_data_for
    from autoprune.pipeline import Pipeline
    from autoprune.search.context import StudyContext
    from autoprune.train import ensure_dense

    ctx = context if isinstance(context, StudyContext) else StudyContext.resolve(context)
    config, model = ctx.config, ctx.model
    data = load_data_for(config.model, config.data, input_size=config.input_size, seed=config.data_seed,
                         max_train_samples=config.max_train_samples, max_eval_samples=config.max_eval_samples)
    fix = profile_command(ctx.profile.name, model.ref, data=config.data, input_size=config.input_size)
    require_calibration(ctx.profile, model.ref, data.input_shape[-1], fix=f"run `{fix}`")
    dense, rec = ensure_dense(config.model, data, config.data_seed, checkpoint=config.checkpoint, progress=progress,
                              compute=ctx.compute)
    ft = space.finetune
    return Pipeline(dense, data, ctx.profile, model.ref,
                    finetune_epochs=config.finetune_epochs if config.finetune_epochs is not None else ft.epochs,
                    finetune_steps=ft.steps, lr=ft.lr, lr_schedule=ft.lr_schedule, batch_size=ft.batch_size,
                    kd_temperature=space.kd_temperature, kd_weight=space.kd_weight, seed=config.seed,
                    space=space, compute=ctx.compute, measure=measure, base_profile=ctx.base_profile), rec


def evaluate_candidate(pipeline, space: SearchSpace, config: SearchConfig, params: dict[str, Any],
                       stopper=None) -> TrialRecord:
    """Run the candidate that ``params`` describe and return its :class:`~autoprune.records.TrialRecord`
    with its constraint values.

    Knapsack parameters are resolved against the pipeline first
    (:func:`~autoprune.search.knapsack.knapsack_from_params`); the record then also holds
    ``allocation``: the budget, priorities, criterion and the resolved per-group kept channels.

    Raises:
        AutopruneError, RuntimeError, ValueError, FloatingPointError: The candidate failed (a bad plan,
            a diverging fine-tune, a failed export); the backend fails the trial with the reason.
        autoprune.search.stopping.TrialStopped: ``stopper`` stopped it at a fine-tuning checkpoint; the
            backend tells the trial PRUNED with the reason.
    """
    plan, info = candidate_plan(pipeline, space, config, params)
    record = pipeline.run(plan, kd=bool(params.get("kd", space.distillation[0])), stopper=stopper).trial_record()
    if info is not None:
        record = replace(record, allocation=info)
    return record.with_constraints(constraint_values(config, record))


def candidate_plan(pipeline, space: SearchSpace, config: SearchConfig, params: dict[str, Any]):
    """``(plan, knapsack allocation or None)``: the pruning plan that a trial's ``params`` describe, resolved
    against the pipeline where they choose the knapsack (:func:`~autoprune.search.knapsack.knapsack_from_params`)."""
    if needs_pipeline(space, params):
        from autoprune.search.knapsack import knapsack_from_params

        return knapsack_from_params(pipeline, space, params, config.seed)
    return plan_from_params(space, pipeline.groups, params, config.seed), None


def record_result(trial, config: SearchConfig, record: TrialRecord | Mapping[str, Any],
                  storage: StudyStorage | None) -> list[float]:
    """Write a candidate's record (or its dict form, as a Ray worker sends it) onto its (still RUNNING)
    trial and return the values to tell.

    Raises:
        AutopruneError: The objective values are not finite (the trial is then failed, not told).
    """
    if not isinstance(record, TrialRecord):
        record = TrialRecord.from_dict(record)
    values = objective_values(config, record)
    if not all(math.isfinite(v) for v in values):
        raise AutopruneError(f"non-finite objective values {values}")
    set_constraints(trial, config, record)
    for key, value in record.to_dict().items():
        trial.set_user_attr(key, value)
    if storage is not None:
        attach_plan(trial, storage, dict(record.plan))
    return values


def failure_reason(exc: BaseException) -> str:
    """One line for a failed candidate: the error's class and first line."""
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0] if text else ''}"[:500]


#: What a failing candidate raises; anything else is a bug and propagates.
CANDIDATE_ERRORS = (AutopruneError, RuntimeError, ValueError, FloatingPointError)


class Heartbeat:
    """Record Optuna heartbeats for running trials so other workers see them alive.

    Args:
        storage: The Optuna storage (nothing is done unless it has heartbeats enabled).
        trial_ids: Returns the storage ids of the trials to keep alive, asked on every beat.
    """

    def __init__(self, storage, trial_ids: Callable[[], list[int]]) -> None:
        from optuna.storages._heartbeat import is_heartbeat_enabled

        self._stop = threading.Event()
        self._thread = None
        if storage is None or not is_heartbeat_enabled(storage):
            return

        def beat() -> None:
            while True:
                for trial_id in trial_ids():
                    try:
                        storage.record_heartbeat(trial_id)
                    except Exception:  # noqa: BLE001 - a missed beat is retried next time
                        pass
                if self._stop.wait(storage.get_heartbeat_interval()):
                    return

        self._thread = threading.Thread(target=beat, name="autoprune-heartbeat", daemon=True)
        self._thread.start()

    def close(self) -> None:
        """Stop beating (the trials are told by then)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
