"""The search: an Optuna multi-objective study over per-group pruning plans.

:class:`SearchConfig` is stored in the study, so ``autoprune search --study NAME``
resumes with no other arguments, and a conflicting configuration is refused.
Trials run in an ask/tell loop that keeps the completed-trial budget exact across
workers, records a heartbeat, fails and re-enqueues trials left RUNNING by a killed
process, and turns SIGINT/SIGTERM into a clean stop with no trial left RUNNING.
"""

from __future__ import annotations

import math
import signal
import threading
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields, replace
from datetime import datetime
from typing import Any

from autoprune.errors import AutopruneError, ConfigError, StorageError
from autoprune.registry import Registry
from autoprune.search.pareto import pareto_mask
from autoprune.search.storage import make_storage, redact_text

CONFIG_ATTR = "autoprune.config"
TARGET_ATTR = "autoprune.target_trials"
CONFIG_VERSION = 1

#: Objective name → (direction, trial user attribute, unit label).
OBJECTIVES: dict[str, tuple[str, str, str]] = {
    "accuracy": ("maximize", "accuracy", "top-1"),
    "latency": ("minimize", "latency_ms", "ms"),
    "energy": ("minimize", "energy_mj", "mJ"),
    "size": ("minimize", "size_mb", "MB"),
    # Hardware-blind (AMC's FLOPs mode): multiply-accumulates of the pruned model, no target knowledge.
    "macs": ("minimize", "macs", "MACs"),
}

SAMPLERS: Registry[Callable[..., Any]] = Registry("sampler")


@SAMPLERS.register("tpe")
def _tpe(seed: int):
    import optuna

    return optuna.samplers.TPESampler(seed=seed, multivariate=True, n_startup_trials=8)


@SAMPLERS.register("nsga2")
def _nsga2(seed: int):
    import optuna

    return optuna.samplers.NSGAIISampler(seed=seed, population_size=16)


@SAMPLERS.register("gp")
def _gp(seed: int):
    import optuna

    return optuna.samplers.GPSampler(seed=seed, n_startup_trials=8)


@SAMPLERS.register("random")
def _random(seed: int):
    import optuna

    return optuna.samplers.RandomSampler(seed=seed)


@dataclass(frozen=True)
class SearchConfig:
    """Everything that defines a study; stored in it and checked on resume.

    ``trials`` is the number of COMPLETE trials the study aims for; it is the one
    field a resume may change (``--trials N`` adds N).
    """

    model: str = "vgg11"
    data: str = "digits"
    input_size: int | None = None
    checkpoint: str | None = None
    target: str = "jetson-nano"
    space: str = "default"
    objectives: tuple[str, ...] = ("accuracy", "latency")
    max_latency_ms: float | None = None
    min_accuracy: float | None = None
    max_size_mb: float | None = None
    sampler: str = "tpe"
    seed: int = 0
    finetune_epochs: int | None = None
    trials: int = 30
    dense_seed: int | None = None

    def __post_init__(self) -> None:
        bad = [o for o in self.objectives if o not in OBJECTIVES]
        if bad:
            raise ConfigError(f"unknown objective {bad[0]!r}; valid: {', '.join(OBJECTIVES)}")
        if "accuracy" not in self.objectives or len(self.objectives) < 2:
            raise ConfigError("--objectives must include accuracy and at least one of latency, energy, size, macs")
        if len(set(self.objectives)) != len(self.objectives):
            raise ConfigError("--objectives lists an objective twice")
        SAMPLERS.get(self.sampler)
        if self.trials < 1:
            raise ConfigError(f"--trials must be at least 1, got {self.trials}")

    @property
    def data_seed(self) -> int:
        """Seed of the data splits and of the dense model's training: ``dense_seed``, else ``seed``.

        Separating it lets several search seeds share one dense model and one split
        (the search-quality benchmark does this), so they differ only in the search.
        """
        return self.seed if self.dense_seed is None else self.dense_seed

    @property
    def directions(self) -> list[str]:
        """Optuna directions, one per objective."""
        return [OBJECTIVES[o][0] for o in self.objectives]

    def to_dict(self) -> dict[str, Any]:
        """JSON form, with a version (stored as a study user attribute)."""
        return {"version": CONFIG_VERSION, **asdict(self)}

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> SearchConfig:
        """Inverse of :meth:`to_dict`."""
        names = {f.name for f in fields(cls)}
        kwargs = {k: v for k, v in raw.items() if k in names}
        if "objectives" in kwargs:
            kwargs["objectives"] = tuple(kwargs["objectives"])
        return cls(**kwargs)

    def conflicts(self, given: dict[str, Any]) -> list[str]:
        """Names of fields in ``given`` (explicit user arguments) that differ from this config."""
        out = []
        for key, value in given.items():
            if key == "trials" or value is None:
                continue
            mine = getattr(self, key)
            if isinstance(mine, tuple):
                value = tuple(value)
            if mine != value:
                out.append(key)
        return out


def default_study_name(config: SearchConfig) -> str:
    """``<model>-<data>-<target>-<space>`` with file-safe characters."""
    raw = f"{config.model}-{config.data}-{config.target}-{config.space}"
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in raw)[:120]


# -- opening and resuming ---------------------------------------------------------------------------
def open_study(storage_url: str, study_name: str, config: SearchConfig | None, given: dict[str, Any],
               more_trials: int | None, prepare: Callable[[SearchConfig], Any] | None = None):
    """Create or load a study and return ``(study, config)``.

    Args:
        storage_url: The Optuna storage URL.
        study_name: The study's name.
        config: The configuration for a new study (``None`` = must exist).
        given: The arguments the user gave explicitly (checked against a stored config).
        more_trials: ``--trials`` on resume: this many more COMPLETE trials.
        prepare: Called with the configuration of a *new* study before it is created, so that a bad
            model, data set, checkpoint or calibration fails before anything is stored.

    Raises:
        ConfigError: Resuming a missing study, or with a conflicting configuration.
        StorageError: The storage is unreachable (URL redacted).
    """
    import optuna

    from autoprune.search.storage import sqlite_path

    db = sqlite_path(storage_url)
    if config is None and db is not None and not db.exists():
        raise ConfigError(f"no study named {study_name!r}: the storage file {db} does not exist; start one with "
                          f"`autoprune search --target T --study {study_name}`")
    storage = make_storage(storage_url)
    try:
        existing = {s.study_name for s in optuna.get_all_study_summaries(storage, include_best_trial=False)}
    except Exception as exc:  # noqa: BLE001
        raise StorageError(f"cannot read studies from {redact_text(storage_url, storage_url)}: "
                           f"{redact_text(str(exc).splitlines()[0], storage_url)}") from None
    if study_name in existing:
        study = optuna.load_study(study_name=study_name, storage=storage)
        raw = study.user_attrs.get(CONFIG_ATTR)
        if raw is None:
            raise ConfigError(f"study {study_name!r} was not made by autoprune (no stored configuration); "
                              "pick another --study name")
        stored = SearchConfig.from_dict(raw)
        clash = stored.conflicts(given)
        if clash:
            k = clash[0]
            raise ConfigError(
                f"study {study_name!r} exists with {k}={getattr(stored, k)!r}, but you asked for "
                f"{k}={given[k]!r}; resume it with `autoprune search --study {study_name}` alone, "
                "or start a new study with another --study name"
            )
        if more_trials is not None:
            done = len(study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)))
            stored = replace(stored, trials=done + more_trials)
            study.set_user_attr(CONFIG_ATTR, stored.to_dict())
        return study, stored, False
    if config is None:
        hint = ", ".join(sorted(existing)) or "none yet"
        raise ConfigError(f"no study named {study_name!r} in {redact_text(storage_url, storage_url)} "
                          f"(existing: {hint}); start one with `autoprune search --target T --study "
                          f"{study_name}`")
    if prepare is not None:
        prepare(config)
    try:
        study = optuna.create_study(study_name=study_name, storage=storage, directions=config.directions)
    except optuna.exceptions.DuplicatedStudyError:
        # another worker created it a moment ago: wait for its configuration, then resume it
        for _ in range(60):
            if CONFIG_ATTR in optuna.load_study(study_name=study_name, storage=storage).user_attrs:
                break
            time.sleep(0.5)
        return open_study(storage_url, study_name, None, given, more_trials)
    study.set_metric_names([f"{o} ({OBJECTIVES[o][2]})" for o in config.objectives])
    study.set_user_attr(CONFIG_ATTR, config.to_dict())
    return study, config, True


def attach_sampler(study, config: SearchConfig, salt: int = 0) -> None:
    """Give ``study`` the configured sampler (seeded by the trial count, so resumes differ).

    Args:
        study: The study.
        config: Its configuration (sampler name and seed).
        salt: Added to the seed; concurrent workers pass distinct values (e.g. their process id)
            so that workers started together do not sample the same plans.
    """
    n = len(study.get_trials(deepcopy=False))
    study.sampler = SAMPLERS.get(config.sampler)(config.seed + n + salt)


def set_constraints(trial, config: SearchConfig, result: dict[str, Any]) -> None:
    """Record the constraint values on the trial (Optuna's samplers treat > 0 as infeasible)."""
    names = [n for n, v in (("max_latency_ms", config.max_latency_ms), ("min_accuracy", config.min_accuracy),
                            ("max_size_mb", config.max_size_mb)) if v is not None]
    for name, value in zip(names, constraint_values(config, result)[1:]):
        trial.set_constraint(name, float(value))


def constraint_values(config: SearchConfig, result: dict[str, Any]) -> list[float]:
    """Constraint values of a result (each <= 0 when satisfied)."""
    out = [0.0]
    if config.max_latency_ms is not None:
        out.append(result["latency_ms"] - config.max_latency_ms)
    if config.min_accuracy is not None:
        out.append(config.min_accuracy - result["accuracy"])
    if config.max_size_mb is not None:
        out.append(result["size_mb"] - config.max_size_mb)
    return out


def objective_values(config: SearchConfig, result: dict[str, Any]) -> list[float]:
    """The objective vector of a result, in the study's order."""
    return [float(result[OBJECTIVES[o][1]]) for o in config.objectives]


def stale_trials_to_retry(study, reason: str) -> int:
    """Fail every RUNNING trial (only safe under the single-worker lock) and re-enqueue its plan."""
    import optuna

    n = 0
    for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        study._storage.set_trial_user_attr(t._trial_id, "fail_reason", reason)
        study._storage.set_trial_state_values(t._trial_id, optuna.trial.TrialState.FAIL)
        study.enqueue_trial(t.params, user_attrs={"retry_of": t.number}, skip_if_exists=False)
        n += 1
    return n


# -- the loop ------------------------------------------------------------------------------------
class _Heartbeat:
    """Record Optuna heartbeats for an ask/tell trial so other workers see it alive."""

    def __init__(self, study, trial) -> None:
        from optuna.storages._heartbeat import is_heartbeat_enabled

        self._stop = threading.Event()
        self._thread = None
        storage = study._storage
        if is_heartbeat_enabled(storage):
            interval = storage.get_heartbeat_interval()

            def beat() -> None:
                while not self._stop.wait(interval):
                    try:
                        storage.record_heartbeat(trial._trial_id)
                    except Exception:  # noqa: BLE001 - a missed beat is retried next time
                        pass

            storage.record_heartbeat(trial._trial_id)
            self._thread = threading.Thread(target=beat, daemon=True)
            self._thread.start()

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)


class _InterruptedError(Exception):
    pass


def _raise_interrupt(signum, frame):
    raise _InterruptedError(signal.Signals(signum).name)


def run_trials(study, config: SearchConfig, objective: Callable[[Any], dict[str, Any]], *,
               timeout_s: float | None = None, progress: bool = True, on_trial=None,
               max_consecutive_failures: int = 10) -> dict[str, int]:
    """Ask/tell until the study has ``config.trials`` COMPLETE trials (or the timeout).

    Args:
        study: The Optuna study (sampler attached).
        config: The study's configuration (budget, objectives, constraints).
        objective: ``objective(trial) -> result dict`` (see :class:`~autoprune.pipeline.CandidateResult`).
        timeout_s: Stop asking for new trials after this many seconds.
        progress: Show a progress bar.
        on_trial: Optional callback ``(study, frozen_trial)`` after each trial.
        max_consecutive_failures: Stop after this many failures in a row.

    Returns:
        Counts: ``completed``, ``failed``, ``surplus`` (trials this worker started).
    """
    import optuna
    from optuna.storages import fail_stale_trials
    from optuna.trial import TrialState
    from tqdm import tqdm

    # The ask/tell loop records heartbeats itself (see _Heartbeat); Optuna warns for any non-optimize use.
    warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed", category=UserWarning)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    counts = {"completed": 0, "failed": 0, "surplus": 0}
    t_start = time.monotonic()
    done0 = len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))
    bar = tqdm(total=config.trials, initial=min(done0, config.trials), desc="search", unit="trial",
               disable=not progress)
    old = {s: signal.signal(s, _raise_interrupt) for s in (signal.SIGINT, signal.SIGTERM)}
    consecutive = 0
    try:
        while True:
            fail_stale_trials(study)
            trials = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.RUNNING))
            done = sum(t.state == TrialState.COMPLETE for t in trials)
            running = sum(t.state == TrialState.RUNNING for t in trials)
            bar.n = min(done, config.trials)
            bar.set_postfix_str(_progress_text(study, config))
            if done >= config.trials:
                break
            if timeout_s is not None and time.monotonic() - t_start > timeout_s:
                break
            if consecutive >= max_consecutive_failures:
                raise AutopruneError(f"{consecutive} trials failed in a row; see `autoprune pareto --study "
                                     f"{study.study_name}` for their reasons")
            if done + running >= config.trials:
                time.sleep(1.0)  # other workers hold the remaining budget
                continue
            trial = study.ask()
            if _is_surplus(study, trial, config.trials):
                trial.set_user_attr("fail_reason", "surplus: the budget was taken by other workers")
                study.tell(trial, state=TrialState.PRUNED)
                counts["surplus"] += 1
                continue
            hb = _Heartbeat(study, trial)
            try:
                result = objective(trial)
                values = objective_values(config, result)
                if not all(math.isfinite(v) for v in values):
                    raise AutopruneError(f"non-finite objective values {values}")
                study.tell(trial, values)
                counts["completed"] += 1
                consecutive = 0
            except (_InterruptedError, KeyboardInterrupt) as exc:
                trial.set_user_attr("fail_reason", f"interrupted ({exc or 'SIGINT'}); retried on resume")
                study.tell(trial, state=TrialState.FAIL)
                study.enqueue_trial(trial.params, user_attrs={"retry_of": trial.number})
                raise KeyboardInterrupt from None
            except StorageError:
                raise  # the database is gone (after retries): nothing can be recorded, stop
            except (AutopruneError, RuntimeError, ValueError, FloatingPointError) as exc:
                reason = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"
                trial.set_user_attr("fail_reason", reason[:500])
                study.tell(trial, state=TrialState.FAIL)
                counts["failed"] += 1
                consecutive += 1
                bar.write(f"trial {trial.number} failed: {reason[:200]}")
            finally:
                hb.close()
            if on_trial is not None:
                on_trial(study, study.get_trials(deepcopy=False)[-1])
    finally:
        for s, h in old.items():
            signal.signal(s, h)
        bar.close()
    return counts


def _is_surplus(study, trial, target: int) -> bool:
    """True if ``trial`` (just asked, RUNNING) is past the budget.

    The RUNNING trials are ranked by when they started (then by number), and only the first
    ``target - COMPLETE`` of them may run. A trial that becomes RUNNING later ranks after every
    trial already admitted — also an enqueued retry, whose number is older than its start — so
    admitted trials can never be pushed past the budget, and concurrent workers on one
    PostgreSQL study never complete more than ``target`` trials. (Workers on several hosts
    need synchronised clocks for the ranking to hold.)
    """
    from optuna.trial import TrialState

    trials = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.RUNNING))
    done = sum(t.state == TrialState.COMPLETE for t in trials)
    running = sorted((t for t in trials if t.state == TrialState.RUNNING),
                     key=lambda t: (t.datetime_start or datetime.max, t.number))
    room = target - done
    return trial.number not in {t.number for t in running[: max(room, 0)]}


def _progress_text(study, config: SearchConfig) -> str:
    rows = completed_rows(study)
    if not rows:
        return "front 0"
    import numpy as np

    vals = np.array([objective_values(config, r) for r in rows])
    front = int(pareto_mask(vals, config.directions).sum())
    floor = accuracy_floor(rows, config)
    ok = [r["latency_ms"] for r in rows if floor is not None and r["accuracy"] >= floor]
    best = f", best {min(ok):.3g} ms at acc>={floor:.3f}" if ok else ""
    return f"front {front}{best}"


def completed_rows(study) -> list[dict[str, Any]]:
    """One dict per COMPLETE trial: its number and every recorded user attribute."""
    from optuna.trial import TrialState

    out = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        if "accuracy" in t.user_attrs:
            out.append({"number": t.number, **t.user_attrs})
    return out


def accuracy_floor(rows: list[dict[str, Any]], config: SearchConfig, drop: float = 0.01) -> float | None:
    """``--min-accuracy`` if given, else the dense anchor's accuracy minus ``drop``."""
    if config.min_accuracy is not None:
        return config.min_accuracy
    dense = [r["accuracy"] for r in rows if r.get("anchor") == "dense"]
    return dense[0] - drop if dense else None
