"""The ``optuna`` backend: trials in this process, in the ask/tell loop of :mod:`autoprune.search.loop`."""

from __future__ import annotations

import os

from autoprune.search.backends import Backend
from autoprune.search.config import make_sampler
from autoprune.search.loop import run_trials
from autoprune.search.objective import evaluate_candidate, record_result
from autoprune.search.stopping import Stopper
from autoprune.search.study import ARTIFACTS_ATTR


class InProcessBackend(Backend):
    """Run the trials one after another here (the default)."""

    name = "optuna"

    def run(self, study, config, storage, pipeline, space, *, timeout_s=None, progress=True, exclusive=True,
            enqueued_only=False):
        study.sampler = make_sampler(config, len(study.get_trials(deepcopy=False)),
                                     salt=0 if exclusive else os.getpid())  # shared-study workers sample apart
        study.set_user_attr(ARTIFACTS_ATTR, str(storage.artifact_dir))

        def objective(trial) -> list[float]:  # the stopper reads the trials completed so far, fresh each time
            record = evaluate_candidate(pipeline, space, config, space.suggest(trial, pipeline.groups),
                                        stopper=Stopper.from_study(study, config))
            return record_result(trial, config, record, storage)

        return run_trials(study, config, objective, timeout_s=timeout_s, progress=progress, enqueued_only=enqueued_only)
