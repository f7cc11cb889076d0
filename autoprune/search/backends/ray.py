"""The Ray Tune backend of ``autoprune search``: trials on a Ray cluster, one Optuna study.

The driver (this process) runs Ray Tune with a searcher
(:class:`~autoprune.search.backends.ray_searcher.StudySearcher`, on Ray's public ``Searcher`` API)
that drives the *same* Optuna storage and study as the plain backend with ask/tell, so a study can
be started on Ray and resumed in-process (or the other way round), and ``autoprune pareto`` /
``autoprune dashboard`` see every trial alike.

* **Driver**: the searcher asks the study for trials (the configured sampler, the study's
  enqueued anchors first), and on completion writes the candidate's record as trial user
  attributes and its plan as an artifact, then tells the study
  (:class:`~autoprune.search.loop.TrialBook`, as in-process). Only the driver touches
  the storage, so SQLite works too.
* **Workers**: a function trainable rebuilds the :class:`~autoprune.pipeline.Pipeline`
  once per worker process (actors are reused), turns the sampled parameters into a plan,
  runs it and reports the objectives plus the record (as JSON). Each trial asks Ray for
  ``--cpus-per-trial`` CPUs and ``--gpus-per-trial`` GPUs
  (:mod:`autoprune.search.backends.resources`); a worker given a GPU uses the one Ray assigned.

A failed candidate (bad plan, diverging fine-tune, failed export) is reported as such
and told FAIL with its reason; one stopped early (each trial gets the :class:`~autoprune.search.stopping.Stopper`
of the trials completed when it was suggested) PRUNED with its reason; a crashed worker is retried by Ray
(``FailureConfig(max_failures=MAX_FAILURES)``). No Optuna trial is left RUNNING: after the run,
any trial this driver asked for and did not finish is failed with a reason and its
parameters are enqueued again.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from autoprune.errors import AutopruneError
from autoprune.io import results_dir, study_dir
from autoprune.registry import lazy_import
from autoprune.search.backends import Backend
from autoprune.search.backends.resources import (
    ERROR_KEY,
    MAX_FAILURES,
    RECORD_KEY,
    STOPPED_KEY,
    STOPPER_KEY,
    TRIAL_KEY,
    TrialResources,
    trial_resources,
    with_trial_resources,
)
from autoprune.search.config import SearchConfig, objective_values
from autoprune.search.loop import COUNT_KEYS
from autoprune.search.objective import CANDIDATE_ERRORS, Heartbeat, evaluate_candidate, failure_reason
from autoprune.search.stopping import Stopper, TrialStopped
from autoprune.search.storage import StudyStorage, get_storage
from autoprune.search.study import SPACE_ATTR, fail_and_retry, study_space

if TYPE_CHECKING:
    from optuna.study import Study

    from autoprune.pipeline import Pipeline
    from autoprune.search.backends.ray_searcher import StudySearcher
    from autoprune.search.space import SearchSpace

__all__ = ["ERROR_KEY", "MAX_FAILURES", "MAX_ROUNDS", "RECORD_KEY", "STOPPED_KEY", "STOPPER_KEY", "TRIAL_KEY",
           "RayBackend", "evaluate_params", "make_searcher", "run_ray", "worker_spec"]

#: Tuner rounds at most (a round ends when Ray runs out of samples; failed trials leave budget).
MAX_ROUNDS = 5


# -- driver --------------------------------------------------------------------------------------
class RayBackend(Backend):
    """Run the trials as Ray Tune trials (``workers`` at once) on a cluster, or a local Ray on loopback.

    Args:
        workers: Trials run at once.
        address: A Ray cluster (``host:port``); ``None`` starts a local Ray on loopback.
        gpus_per_trial: GPUs each trial asks Ray for (fractions share a GPU); ``None``: 1 where
            ``device`` is CUDA here, else 0.
        cpus_per_trial: CPUs each trial asks Ray for.
        device: The driver's ``--device`` (checked against the resources, see
            :func:`~autoprune.search.backends.resources.trial_resources`).

    Raises:
        ConfigError: Resources that contradict ``device`` or that a local Ray cannot give.
    """

    name = "ray"

    def __init__(self, workers: int = 1, address: str | None = None, gpus_per_trial: float | None = None,
                 cpus_per_trial: float = 1.0, device: str | None = "auto") -> None:
        self.workers = workers
        self.address = address
        self.resources = trial_resources(device, gpus_per_trial, cpus_per_trial, address)

    def run(self, study: Study, config: SearchConfig, storage: StudyStorage, pipeline: Pipeline,
            space: SearchSpace, *, timeout_s: float | None = None, progress: bool = True,
            exclusive: bool = True, enqueued_only: bool = False) -> dict[str, int]:
        """Run the remaining trials on Ray (see :meth:`Backend.run <autoprune.search.backends.Backend.run>`);
        Ray Tune's progress table stays off."""
        return run_ray(study, config, storage, pipeline.groups, workers=self.workers, address=self.address,
                       timeout_s=timeout_s, progress=False, resources=self.resources, enqueued_only=enqueued_only)


def run_ray(study: Study, config: SearchConfig, storage: str | StudyStorage, groups: Sequence[Any], *,
            workers: int = 1,
            address: str | None = None, timeout_s: float | None = None, progress: bool = False,
            resources: TrialResources | None = None, enqueued_only: bool = False) -> dict[str, int]:
    """Run the study's remaining trials as Ray Tune trials and return trial counts.

    Args:
        study: The Optuna study (created or resumed by :func:`~autoprune.search.study.open_study`,
            anchors already enqueued).
        config: The study's configuration (budget, objectives, sampler, constraints).
        storage: The study's storage (the searcher loads its own Study object on its Optuna storage).
        groups: The model's checked prunable groups (the driver's pipeline's), which the searcher
            suggests over; the workers' pipelines find the same ones.
        workers: Trials run at once (``max_concurrent_trials``), each with ``resources``.
        address: A Ray cluster (``host:port``); ``None`` starts a local Ray on loopback.
        timeout_s: Stop starting trials after this many seconds.
        progress: Let Ray Tune print its progress table.
        resources: Each trial's CPUs and GPUs, and its worker's device (default: one CPU, no GPU).
        enqueued_only: Run only the study's enqueued (WAITING) trials, never the sampler's.

    Returns:
        ``completed``, ``failed`` (candidates or workers that failed), ``surplus``
        (trials stopped or left unstarted: failed here and enqueued again).

    Raises:
        MissingDependencyError: Ray Tune is not installed.
        AutopruneError: Ray cannot be reached at ``address``.
    """
    from optuna.trial import TrialState

    ray = lazy_import("ray", "ray[tune]")
    lazy_import("ray.tune", "ray[tune]")

    storage = get_storage(storage)
    counts = dict.fromkeys(COUNT_KEYS, 0)
    t_start = time.monotonic()
    asked: set[int] = set()  # numbers of the Optuna trials asked for, over all rounds
    _shorten_trial_errors()
    started_here = _connect(ray, address)
    try:
        for _ in range(MAX_ROUNDS):
            remaining = config.trials - _count(study, TrialState.COMPLETE)
            if enqueued_only:
                remaining = min(remaining, _count(study, TrialState.WAITING))
            left_s = None if timeout_s is None else timeout_s - (time.monotonic() - t_start)
            if remaining <= 0 or (left_s is not None and left_s <= 0):
                break
            round_counts = _run_round(study, config, storage, groups, remaining, workers, left_s, progress,
                                      asked, resources or TrialResources())
            for k in counts:
                counts[k] += round_counts[k]
            if round_counts["completed"] + round_counts["stopped"] == 0:
                break  # every trial of the round failed: do not loop on a broken setup
    finally:  # another worker's RUNNING trials (PostgreSQL / journal storages) are left alone
        mine = [t for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)) if t.number in asked]
        counts["surplus"] += fail_and_retry(study, mine, "ray: the run ended before this trial finished; "
                                                         "retried on resume")
        if started_here:
            ray.shutdown()
    return counts


class _OneLineTrialErrors(logging.Filter):
    """Turn Ray Tune's "Trial task failed" traceback into one line; the traceback stays in error.txt."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and str(record.msg).startswith("Trial task failed"):
            exc = record.exc_info[1]
            first = str(exc).strip().splitlines()[0] if exc is not None and str(exc).strip() else ""
            record.msg = (f"{record.getMessage()}: {type(exc).__name__}: {first[:200]} (Ray retries it up to "
                          f"{MAX_FAILURES} times; the traceback is in the trial's error.txt)")
            record.args = None
            record.exc_info = None
            record.exc_text = None
        return True


def _shorten_trial_errors() -> None:
    """Install :class:`_OneLineTrialErrors` on Ray Tune's controller logger (once)."""
    logger = logging.getLogger("ray.tune.execution.tune_controller")
    if not any(isinstance(f, _OneLineTrialErrors) for f in logger.filters):
        logger.addFilter(_OneLineTrialErrors())


def _connect(ray: Any, address: str | None) -> bool:
    """Connect to ``address`` or start a local Ray on loopback; True if this call started it."""
    if ray.is_initialized():
        return False
    env = {"RAY_CHDIR_TO_TRIAL_DIR": "0"}
    if "AUTOPRUNE_RESULTS" in os.environ:
        env["AUTOPRUNE_RESULTS"] = str(Path(os.environ["AUTOPRUNE_RESULTS"]).resolve())
    kwargs: dict[str, Any] = {"runtime_env": {"env_vars": env}, "log_to_driver": False,
                              "logging_level": "WARNING", "configure_logging": True}
    if address is not None:
        try:
            ray.init(address=address, **kwargs)
        except Exception as exc:  # noqa: BLE001 - Ray raises ConnectionError, RuntimeError, ...
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            auth = ("; if the cluster uses token authentication (Ray's default), set RAY_AUTH_MODE=token and "
                    "its token (RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token)"
                    if os.environ.get("RAY_AUTH_MODE") != "token" else "")
            raise AutopruneError(f"cannot connect to the Ray cluster at {address}: {first[:300]}{auth}; check "
                                 "that `ray start --head` runs there, or leave out --address for a local Ray"
                                 ) from None
    else:
        ray.init(num_cpus=os.cpu_count() or 1, include_dashboard=False, _node_ip_address="127.0.0.1", **kwargs)
    return True


def _count(study: Study, state: Any) -> int:
    """The number of ``study``'s trials in ``state``."""
    return len(study.get_trials(deepcopy=False, states=(state,)))


def make_searcher(study: Study, config: SearchConfig, storage: str | StudyStorage,
                  groups: Sequence[Any]) -> StudySearcher:
    """The driver's searcher: asks ``study`` for trials and tells it their outcomes, for Ray Tune.

    Args:
        study: The Optuna study (its name is used; the searcher loads its own on the storage, with the
            configured sampler seeded by the trial count, as in-process).
        config: The study's configuration.
        storage: The study's storage.
        groups: The model's prunable groups (the study's space suggests over them).

    Raises:
        MissingDependencyError: Ray Tune is not installed.
    """
    lazy_import("ray.tune", "ray[tune]")
    from autoprune.search.backends.ray_searcher import StudySearcher

    return StudySearcher.open(study, config, get_storage(storage), groups)


def _run_round(study: Study, config: SearchConfig, storage: StudyStorage, groups: Sequence[Any], remaining: int,
               workers: int, timeout_s: float | None, progress: bool, asked: set[int],
               resources: TrialResources) -> dict[str, int]:
    """One ``Tuner.fit`` over ``remaining`` samples; adds the trials it asked for to ``asked`` and returns
    this round's counts."""
    from ray import tune

    searcher = make_searcher(study, config, storage, groups)
    spec = worker_spec(study, config, resources)
    trainable = with_trial_resources(tune.with_parameters(_trainable, spec=spec), resources)
    run_dir = study_dir(study.study_name).resolve() / "ray"  # beside the study's front files
    run_dir.mkdir(parents=True, exist_ok=True)
    tuner = tune.Tuner(
        trainable,
        tune_config=tune.TuneConfig(search_alg=searcher, num_samples=remaining, max_concurrent_trials=workers,
                                    reuse_actors=True, time_budget_s=timeout_s,
                                    trial_dirname_creator=_trial_dirname),
        run_config=tune.RunConfig(
            name=time.strftime("%Y%m%d-%H%M%S"), storage_path=str(run_dir),
            failure_config=tune.FailureConfig(max_failures=MAX_FAILURES), verbose=1 if progress else 0,
        ),
    )
    beats = Heartbeat(storage.optuna, searcher.running)
    try:
        tuner.fit()
    finally:
        beats.close()
        asked.update(searcher.asked)
    return dict(searcher.counts)


def _trial_dirname(trial: Any) -> str:
    """Ray trial folders named by their Optuna trial number."""
    return f"trial-{trial.config.get(TRIAL_KEY, trial.trial_id)}"


def worker_spec(study: Study, config: SearchConfig, resources: TrialResources | None = None) -> dict[str, Any]:
    """What a worker needs to rebuild the pipeline: the config (with the worker's device), the study's
    stored search space, its torch threads, and the driver's folder and results folder."""
    resources = resources or TrialResources()
    study_space(study, config)  # stores the space in the study if it is not there yet
    return {"config": {**config.to_dict(), "device": resources.device}, "space": study.user_attrs[SPACE_ATTR],
            "cwd": os.getcwd(), "threads": resources.threads, "results": str(results_dir().resolve())}


# -- worker --------------------------------------------------------------------------------------
def _worker_setup(spec: dict[str, Any]) -> tuple[SearchConfig, SearchSpace, Pipeline]:
    """``(config, space, pipeline)`` for ``spec``, built once per worker process (actors are reused)."""
    return _build_worker(json.dumps(spec, sort_keys=True))


@functools.lru_cache(maxsize=1)  # one study per worker process at a time
def _build_worker(key: str) -> tuple[SearchConfig, SearchSpace, Pipeline]:
    import torch

    from autoprune.search.objective import build_pipeline
    from autoprune.search.space import SearchSpace

    spec = json.loads(key)
    torch.set_num_threads(int(spec["threads"]))
    if spec.get("results"):
        os.environ["AUTOPRUNE_RESULTS"] = spec["results"]
    config = SearchConfig.from_dict(spec["config"])
    space = SearchSpace.from_dict(spec["space"], name=Path(config.space).stem,
                                  where=f"search space of study config {config.space!r}")
    pipeline, _ = build_pipeline(config, space, progress=False)
    return config, space, pipeline


def evaluate_params(params: dict[str, Any], spec: dict[str, Any]) -> dict[str, Any]:
    """Run one candidate in this (worker) process and return what the trainable reports.

    Args:
        params: The trial's configuration from the searcher (search parameters and the trial number).
        spec: ``config`` (the study's, as a dict, with the worker's device), ``cwd``, ``threads`` and
            ``results`` of the driver.

    Returns:
        The objective values by name and the record (its dict form) as JSON (``RECORD_KEY``), or NaN objectives
        and the failure reason (``ERROR_KEY``) for a candidate that cannot be built or evaluated,
        or NaN objectives and the stop (``STOPPED_KEY``) for a candidate stopped early.
    """
    if spec.get("cwd") and Path(spec["cwd"]).is_dir():
        os.chdir(spec["cwd"])  # relative model, space and checkpoint paths mean the driver's folder
    config, space, pipeline = _worker_setup(spec)
    stopper = Stopper.from_dict(json.loads(params[STOPPER_KEY])) if STOPPER_KEY in params else None
    params = {k: v for k, v in params.items() if k not in (TRIAL_KEY, STOPPER_KEY)}
    nan = {o: float("nan") for o in config.objectives}
    try:
        record = evaluate_candidate(pipeline, space, config, params, stopper=stopper)
        values = dict(zip(config.objectives, objective_values(config, record), strict=True))
    except TrialStopped as exc:
        return {**nan, STOPPED_KEY: json.dumps({"reason": exc.reason, "attrs": exc.attrs})}
    except CANDIDATE_ERRORS as exc:
        return {**nan, ERROR_KEY: failure_reason(exc)}
    return {**values, RECORD_KEY: json.dumps(record.to_dict())}


def _trainable(params: dict[str, Any], spec: dict[str, Any]) -> None:
    """Ray Tune function trainable: run one candidate and report its objectives and record."""
    from ray import tune

    tune.report(evaluate_params(params, spec))
