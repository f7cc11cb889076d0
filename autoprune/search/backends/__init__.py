"""Search backends: what runs a study's remaining trials.

One small base, :class:`Backend`, in the spirit of Ray Tune's ``Searcher``; a name registry whose
error lists the valid names. ``optuna`` runs the trials in this process; ``ray`` runs them as Ray Tune
trials on a cluster. Both evaluate a candidate with
:func:`~autoprune.search.objective.evaluate_candidate`, record it with
:func:`~autoprune.search.objective.record_result`, tell its outcome (COMPLETE, PRUNED or FAIL with the
reason, a retry enqueued) and count it with :class:`~autoprune.search.loop.TrialBook`, keep trials alive
with :class:`~autoprune.search.objective.Heartbeat`, seed with :func:`~autoprune.search.config.make_sampler`
and retry unfinished trials with :func:`~autoprune.search.study.fail_and_retry`: that bookkeeping
is written once.
"""

from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from typing import Any

from autoprune.registry import Registry

__all__ = ["BACKENDS", "Backend", "get_backend"]


class Backend(ABC):
    """Runs a study's remaining trials until it has ``config.trials`` COMPLETE ones (or a timeout).

    Contract for implementers:

    * the study is already opened (or created) and seeded with its anchors; the backend only asks,
      runs and tells;
    * every trial it asks for is told before :meth:`run` returns: COMPLETE with the candidate's record
      written by :func:`~autoprune.search.objective.record_result`, FAIL with a ``fail_reason`` user
      attribute, or FAIL and enqueued again when it was stopped (interrupt, time budget, lost worker);
      no trial is left RUNNING;
    * non-finite objective values are a failed trial, never a told value;
    * the returned counts are ``completed``, ``failed``, ``surplus`` (trials stopped or past the budget) and
      ``stopped`` (candidates stopped early), as :class:`~autoprune.search.loop.TrialBook` counts them.
    """

    name: str = ""

    @abstractmethod
    def run(self, study, config, storage, pipeline, space, *, timeout_s: float | None = None,
            progress: bool = True, exclusive: bool = True, enqueued_only: bool = False) -> dict[str, int]:
        """Run the remaining trials and return the counts.

        Args:
            study: The Optuna study.
            config: Its :class:`~autoprune.search.config.SearchConfig`.
            storage: Its :class:`~autoprune.search.storage.StudyStorage`.
            pipeline: The driver's :class:`~autoprune.pipeline.Pipeline` (its checked groups define the
                space's parameters).
            space: The study's :class:`~autoprune.search.space.SearchSpace`.
            timeout_s: Stop starting trials after this many seconds.
            progress: Show progress.
            exclusive: This process holds the study alone (SQLite lock); else workers share it.
            enqueued_only: Run only the trials enqueued in the study (anchors, screened candidates) and
                return when none waits, rather than ask the sampler for more (:mod:`autoprune.search.screen`).
        """


#: Backend name → ``module:Class`` (imported when asked for, so Ray is loaded only for ``ray``).
BACKENDS: Registry[str] = Registry("search backend")
BACKENDS.register("optuna", "autoprune.search.backends.inprocess:InProcessBackend")
BACKENDS.register("ray", "autoprune.search.backends.ray:RayBackend")


def get_backend(name: str, **options: Any) -> Backend:
    """An instance of backend ``name``.

    Raises:
        UnknownNameError: For an unknown name (the message lists the valid ones).
    """
    module, cls = BACKENDS.get(name).split(":")
    return getattr(importlib.import_module(module), cls)(**options)
