"""The Ray backend's searcher: Ray Tune asks it for trials, and it drives the Optuna study.

A :class:`ray.tune.search.Searcher` written on Ray's public API, with Optuna's ask/tell: each Ray
trial is one ``study.ask()`` (the configured sampler, the study's enqueued anchors first), and its
outcome is told through :class:`~autoprune.search.loop.TrialBook`, as in-process. This module imports
Ray Tune; :mod:`autoprune.search.backends.ray` imports it once Ray is known to be installed.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from ray.tune.search import Searcher

from autoprune.errors import AutopruneError
from autoprune.search.backends.resources import ERROR_KEY, MAX_FAILURES, RECORD_KEY, STOPPED_KEY, STOPPER_KEY, TRIAL_KEY
from autoprune.search.config import SearchConfig, make_sampler
from autoprune.search.loop import TrialBook, quiet_heartbeat
from autoprune.search.objective import failure_reason, record_result
from autoprune.search.space import SearchSpace
from autoprune.search.stopping import Stopper
from autoprune.search.storage import StudyStorage
from autoprune.search.study import study_space

if TYPE_CHECKING:
    from optuna.study import Study
    from optuna.trial import Trial


class StudySearcher(Searcher):
    """Suggests the study's trials to Ray Tune and tells the study how each ended.

    ``suggest`` asks the study for a trial (none past the budget: :attr:`Searcher.FINISHED` once the
    COMPLETE and RUNNING trials hold it) and hands the worker its parameters, its number and the
    :class:`~autoprune.search.stopping.Stopper` of the trials completed by then. ``on_trial_complete``
    writes the worker's record on the trial (:func:`~autoprune.search.objective.record_result`) and tells
    it COMPLETE; a candidate stopped early PRUNED; a failed candidate, or a worker that failed past Ray's
    retries, FAIL with its reason; a trial Ray stopped before it reported FAIL and enqueued again.

    Args:
        study: The searcher's own :class:`optuna.study.Study` on the study's storage, with its sampler.
        config: The study's configuration (budget, objectives, directions).
        storage: The study's storage (plans are attached to its artifact store).
        space: The study's search space.
        groups: The model's checked prunable groups, which ``space`` suggests over.
    """

    def __init__(self, study: Study, config: SearchConfig, storage: StudyStorage, space: SearchSpace,
                 groups: Sequence[Any]) -> None:
        super().__init__(metric=list(config.objectives),
                         mode=["max" if d == "maximize" else "min" for d in config.directions])
        self.study = study
        self.config = config
        self.storage = storage
        self.space = space
        self.groups = groups
        self.book = TrialBook(study)
        #: Ray trial id → the Optuna trial asked for it.
        self.trials: dict[str, Trial] = {}
        self._told: set[str] = set()

    @classmethod
    def open(cls, study: Study, config: SearchConfig, storage: StudyStorage, groups: Sequence[Any]
             ) -> StudySearcher:
        """A searcher on ``study``'s storage, with the configured sampler seeded by the trial count (as in-process).

        Args:
            study: The Optuna study (its name and storage are used; the searcher loads its own).
            config: The study's configuration.
            storage: The study's storage.
            groups: The model's checked prunable groups.
        """
        import optuna

        sampler = make_sampler(config, len(study.get_trials(deepcopy=False)))
        own = optuna.load_study(study_name=study.study_name, storage=storage.optuna, sampler=sampler,
                                pruner=optuna.pruners.NopPruner())
        return cls(own, config, storage, study_space(study, config), groups)

    @property
    def counts(self) -> dict[str, int]:
        """Trials told so far: ``completed``, ``failed``, ``surplus``, ``stopped``."""
        return self.book.counts

    @property
    def asked(self) -> set[int]:
        """Numbers of the Optuna trials this searcher asked for."""
        return {t.number for t in list(self.trials.values())}

    def running(self) -> list[int]:
        """Optuna storage ids of the trials asked for and not yet told (for the heartbeat)."""
        return [t._trial_id for tid, t in list(self.trials.items()) if tid not in self._told]

    def suggest(self, trial_id: str) -> dict[str, Any] | str:
        """The configuration of Ray trial ``trial_id``, or :attr:`Searcher.FINISHED` at the budget."""
        from optuna.trial import TrialState

        with quiet_heartbeat():
            if trial_id not in self.trials:
                trials = self.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.RUNNING))
                if len(trials) >= self.config.trials:
                    return Searcher.FINISHED  # the rest of the budget is held by running trials
                self.trials[trial_id] = self.study.ask()
            trial = self.trials[trial_id]
            # The trial's parameters with an anchor's or a screened candidate's fixed ones (``anchor_params``).
            params = self.space.suggest(trial, self.groups)
        stopper = Stopper.from_study(self.study, self.config)  # the trials completed by now decide
        return {**params, TRIAL_KEY: trial.number, STOPPER_KEY: json.dumps(stopper.to_dict())}

    def on_trial_complete(self, trial_id: str, result: dict[str, Any] | None = None, error: bool = False) -> None:
        """Record and tell the Optuna trial of Ray trial ``trial_id`` (once; a repeat is ignored).

        Args:
            trial_id: The Ray trial.
            result: What its worker reported last (:func:`~autoprune.search.backends.ray.evaluate_params`),
                or ``None`` if it reported nothing.
            error: Its worker failed past Ray's retries.
        """
        trial = self.trials.get(trial_id)
        if trial is None or trial_id in self._told:
            return
        self._tell(trial, result or {}, error)
        self._told.add(trial_id)

    def _tell(self, trial: Trial, result: dict[str, Any], error: bool) -> None:
        if result.get(STOPPED_KEY):
            stop = json.loads(result[STOPPED_KEY])
            return self.book.stopped(trial, stop["reason"], stop["attrs"])
        reason = result.get(ERROR_KEY)  # the candidate failed (bad plan, divergence, export)
        if not reason and RECORD_KEY in result:
            try:
                values = record_result(trial, self.config, json.loads(result[RECORD_KEY]), self.storage)
            except (AutopruneError, KeyError, TypeError, ValueError) as exc:  # a malformed record
                reason = failure_reason(exc)
            else:
                return self.book.complete(trial, values)
        if reason:
            return self.book.failed(trial, reason)
        if error:
            return self.book.failed(trial, f"ray: the trial's worker failed {MAX_FAILURES + 1} times; see the Ray "
                                           "logs (session_latest/logs) for the traceback")
        return self.book.failed(trial, "stopped by Ray before it reported (time budget or interrupt); retried on "
                                       "resume", retry=True)

    def save_to_dir(self, checkpoint_dir: str, session_str: str = "default") -> None:
        """No Ray-side checkpoint: the Optuna study is the state, and resumes from storage."""
