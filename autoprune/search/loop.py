"""The in-process trial loop: ask, run, tell, until the study has its completed-trial budget.

The budget is exact across workers (a trial started past it is PRUNED as surplus), a heartbeat keeps
each running trial alive for other workers, and SIGINT/SIGTERM become a clean stop: the trial in
progress is failed with the reason and its parameters enqueued again, so no trial is left RUNNING.
A candidate stopped early (:class:`~autoprune.search.stopping.TrialStopped`) is PRUNED with its reason: it
is neither a failure nor a completed trial, so it leaves the budget to the next one.

:class:`TrialBook` is that bookkeeping (tell COMPLETE, PRUNED or FAIL with the reason, enqueue a retry,
count): this loop and the Ray backend's searcher both tell their trials through it.
"""

from __future__ import annotations

import signal
import time
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import datetime
from typing import TYPE_CHECKING, Any

from autoprune.errors import AutopruneError, StorageError
from autoprune.search import stops
from autoprune.search.config import SearchConfig, accuracy_floor, objective_values
from autoprune.search.objective import CANDIDATE_ERRORS, Heartbeat, failure_reason
from autoprune.search.pareto import pareto_mask
from autoprune.search.stopping import TrialStopped, mark_stopped
from autoprune.search.study import completed_rows, retry_attrs

if TYPE_CHECKING:
    from optuna.study import Study
    from optuna.trial import Trial, TrialState


#: The outcomes a worker counts (a backend's :meth:`~autoprune.search.backends.Backend.run` returns them).
COUNT_KEYS = ("completed", "failed", "surplus", "stopped")


@contextmanager
def quiet_heartbeat() -> Iterator[None]:
    """Silence Optuna's warning for ask/tell outside ``Study.optimize``: :class:`~autoprune.search.objective.Heartbeat`
    records the heartbeats instead."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed", category=UserWarning)
        yield


class TrialBook:
    """Tells a study how its asked (RUNNING) trials ended, and counts the outcomes: written once, for every backend.

    * :meth:`complete`: COMPLETE with the values (the record is on the trial already, see
      :func:`~autoprune.search.objective.record_result`);
    * :meth:`stopped`: a candidate stopped early, PRUNED with its reason and attributes
      (:func:`~autoprune.search.stopping.mark_stopped`);
    * :meth:`surplus`: a trial past the budget, PRUNED with a ``fail_reason``;
    * :meth:`failed`: FAIL with a ``fail_reason``; with ``retry``, its parameters are enqueued again.

    Args:
        study: The Optuna study the trials were asked from.

    Attributes:
        counts: Trials told so far, by outcome (:data:`COUNT_KEYS`).
    """

    def __init__(self, study: Study) -> None:
        self.study = study
        self.counts: dict[str, int] = dict.fromkeys(COUNT_KEYS, 0)

    def complete(self, trial: Trial, values: Sequence[float]) -> None:
        """Tell ``trial`` COMPLETE with ``values``."""
        self._tell(trial, values=values)
        self.counts["completed"] += 1

    def stopped(self, trial: Trial, reason: str, attrs: Mapping[str, Any]) -> None:
        """Tell ``trial`` PRUNED: stopped early for ``reason``, with the stopper's ``attrs``."""
        from optuna.trial import TrialState

        mark_stopped(trial, reason, attrs)
        self._tell(trial, state=TrialState.PRUNED)
        self.counts["stopped"] += 1

    def surplus(self, trial: Trial, reason: str) -> None:
        """Tell ``trial`` PRUNED with ``reason``: it started past the budget and is not run."""
        from optuna.trial import TrialState

        trial.set_user_attr("fail_reason", reason)
        self._tell(trial, state=TrialState.PRUNED)
        self.counts["surplus"] += 1

    def failed(self, trial: Trial, reason: str, *, retry: bool = False) -> None:
        """Tell ``trial`` FAIL with ``reason`` (its first 500 characters).

        Args:
            trial: The RUNNING trial.
            reason: Why it failed.
            retry: It did not fail but was stopped (interrupt, time budget, lost worker): enqueue its
                parameters again (:func:`~autoprune.search.study.retry_attrs`) and count it as surplus.
        """
        from optuna.trial import TrialState

        trial.set_user_attr("fail_reason", str(reason)[:500])
        self._tell(trial, state=TrialState.FAIL)
        if retry:
            self.study.enqueue_trial(trial.params, user_attrs=retry_attrs(trial))
        self.counts["surplus" if retry else "failed"] += 1

    def _tell(self, trial: Trial, values: Sequence[float] | None = None, state: TrialState | None = None) -> None:
        with quiet_heartbeat():
            self.study.tell(trial, values, state=state)


def run_trials(study, config: SearchConfig, objective: Callable[[Any], list[float]], *,
               timeout_s: float | None = None, progress: bool = True, on_trial=None,
               max_consecutive_failures: int = 10, enqueued_only: bool = False) -> dict[str, int]:
    """Ask/tell until the study has ``config.trials`` COMPLETE trials (or the timeout).

    Args:
        study: The Optuna study (sampler attached).
        config: The study's configuration (budget, objectives, constraints).
        objective: ``objective(trial) -> objective values``: runs the candidate and records it on the
            trial (:func:`~autoprune.search.objective.record_result`); it raises
            :class:`~autoprune.search.stopping.TrialStopped` for a candidate stopped early.
        timeout_s: Stop asking for new trials after this many seconds.
        progress: Show a progress bar.
        on_trial: Optional callback ``(study, frozen_trial)`` after each trial.
        max_consecutive_failures: Stop after this many failures in a row.
        enqueued_only: Stop when no enqueued (WAITING) trial is left, rather than ask the sampler.

    Returns:
        Counts: ``completed``, ``failed``, ``surplus``, ``stopped`` (trials this worker started).
    """
    import optuna
    from optuna.storages import fail_stale_trials
    from optuna.trial import TrialState
    from tqdm import tqdm

    # The ask/tell loop records heartbeats itself (see Heartbeat); Optuna warns for any non-optimize use.
    warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed", category=UserWarning)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    book = TrialBook(study)
    t_start = time.monotonic()
    done0 = len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))
    bar = tqdm(total=config.trials, initial=min(done0, config.trials), desc="search", unit="trial",
               disable=not progress)
    old = stops.catch()
    consecutive = 0
    trial = None
    try:
        while True:
            trial = None
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
            if enqueued_only and not study.get_trials(deepcopy=False, states=(TrialState.WAITING,)):
                break
            # No stop between the trial's row being created and ``trial`` being set: it would be left RUNNING.
            with stops.deferred():
                trial = study.ask()
            if _is_surplus(study, trial, config.trials):
                book.surplus(trial, "surplus: the budget was taken by other workers")
                continue
            hb = Heartbeat(study._storage, lambda t=trial: [t._trial_id])
            try:
                book.complete(trial, objective(trial))
                consecutive = 0
            except StorageError:
                raise  # the database is gone (after retries): nothing can be recorded, stop
            except TrialStopped as exc:
                book.stopped(trial, exc.reason, exc.attrs)
                consecutive = 0
                bar.write(f"trial {trial.number} stopped early: {exc.reason[:200]}")
            except CANDIDATE_ERRORS as exc:
                reason = failure_reason(exc)
                book.failed(trial, reason)
                consecutive += 1
                bar.write(f"trial {trial.number} failed: {reason[:200]}")
            finally:
                hb.close()
            if on_trial is not None:
                on_trial(study, study.get_trials(deepcopy=False)[-1])
    except KeyboardInterrupt as exc:
        # A stop may land anywhere in the loop, also after the trial was told: record it only if it is
        # still RUNNING, with no further signal interrupting the bookkeeping.
        for s in stops.STOP_SIGNALS:
            signal.signal(s, signal.SIG_IGN)
        if trial is not None and study._storage.get_trial(trial._trial_id).state == TrialState.RUNNING:
            book.failed(trial, f"interrupted ({exc or 'SIGINT'}); retried on resume", retry=True)
        raise KeyboardInterrupt from None
    finally:
        stops.restore(old)
        bar.close()
    return book.counts


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
    ok = [r.latency_ms for r in rows if floor is not None and r.accuracy >= floor]
    best = f", best {min(ok):.3g} ms at acc>={floor:.3f}" if ok else ""
    return f"front {front}{best}"
