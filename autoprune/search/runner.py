"""``run_search``: the product's main job, from a configuration to a written Pareto front."""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from autoprune.search.config import CONFIG_ATTR, SearchConfig
from autoprune.search.context import StudyContext
from autoprune.search.objective import build_pipeline
from autoprune.search.space import SearchSpace
from autoprune.search.storage import StudyStorage, get_storage
from autoprune.search.study import EXCLUDED_ATTR, fail_and_retry, open_study, seed_study, study_space


@dataclass(frozen=True)
class SearchSummary:
    """What a search run did and found (``run_search``'s result).

    Attributes:
        study: The Optuna study.
        config: Its configuration (as stored in the study).
        context: Its resolved facts (target profile, model, compute, storage), as the run used them.
        created: The study was created by this run.
        seeded: Anchor trials enqueued by this run.
        dense_checkpoint: The dense model's :class:`~autoprune.train.DenseCheckpoint`.
        excluded_groups: Group name → why it is kept whole (failed its test prune at discovery).
        counts: ``completed``, ``failed``, ``surplus``, ``stale_retried`` trials of this run.
        trials_s: Wall time of the trials, without set-up.
        rows: Every completed trial's record (with its ``number``).
        front: The Pareto-front rows.
        dense: The dense anchor's row, if it completed.
        dir: The folder of the front files.
        hypervolume: Of the completed trials, for the study's objectives.
    """

    study: Any
    config: SearchConfig
    context: StudyContext
    created: bool
    seeded: int
    dense_checkpoint: Any
    excluded_groups: dict[str, str]
    counts: dict[str, int] = field(default_factory=dict)
    trials_s: float = 0.0
    rows: list[dict[str, Any]] = field(default_factory=list)
    front: list[dict[str, Any]] = field(default_factory=list)
    dense: dict[str, Any] | None = None
    dir: Path | None = None
    hypervolume: float | None = None


def run_search(config: SearchConfig | None, *, study_name: str, storage: str | StudyStorage | None,
               given: dict[str, Any], more_trials: int | None = None, timeout_s: float | None = None,
               progress: bool = True, backend: str = "optuna", workers: int = 1, address: str | None = None,
               create_only: bool = False, device: str | None = None, amp: bool = True,
               gpus_per_trial: float | None = None, cpus_per_trial: float | None = None) -> SearchSummary:
    """Create or resume a study, run its trials, and write its Pareto front.

    Args:
        config: The configuration of a new study (``None``: resume ``study_name`` as stored).
        study_name: The study's name.
        storage: The storage (a URL or a :class:`StudyStorage`; ``None``: the default SQLite file).
        given: The arguments the user gave explicitly (a resume refuses conflicting ones).
        more_trials: On a resume, this many more COMPLETE trials.
        timeout_s: Stop starting trials after this many seconds.
        progress: Show progress bars.
        backend: ``optuna`` (this process) or ``ray`` (see :data:`~autoprune.search.backends.BACKENDS`).
        workers: Concurrent Ray trials.
        address: A Ray cluster's address.
        create_only: Create the study (validated, search space stored, anchors enqueued) and
            return without running a trial; start concurrent workers on a PostgreSQL study this way.
        device: ``--device`` (``None``: auto) for this run, new study or resume alike: it is chosen
            again on every run and stored in the configuration, never a conflict.
        amp: Mixed precision where the device is CUDA.
        gpus_per_trial, cpus_per_trial: Each Ray trial's resources (``ray`` backend only).

    Returns:
        A :class:`SearchSummary`. The caller updates the study's dashboard note
        (:func:`autoprune.dashboard.note.update_study_note`): the search sits below the dashboard.
    """
    from autoprune.compute import Compute
    from autoprune.errors import ConfigError
    from autoprune.io import check_study_name
    from autoprune.search.backends import get_backend
    from autoprune.search.report import write_front

    check_study_name(study_name)  # it names results/<study>/: one line before anything is stored
    device = device or "auto"
    compute = Compute.resolve(device, amp=amp)  # a device this machine lacks is one line, before anything is stored
    if backend != "ray" and (gpus_per_trial is not None or cpus_per_trial is not None):
        raise ConfigError("--gpus-per-trial and --cpus-per-trial are Ray trial resources: add --backend ray")
    options: dict[str, Any] = {}
    if backend == "ray":
        options = {"workers": workers, "address": address, "gpus_per_trial": gpus_per_trial,
                   "cpus_per_trial": 1.0 if cpus_per_trial is None else cpus_per_trial, "device": device}
    runner = get_backend(backend, **options)
    if config is not None:
        config = replace(config, device=device, amp=amp)
    # The study's names resolved once (an unknown target is one line before the storage is touched).
    context = StudyContext.resolve(config, compute=compute) if config is not None else None
    storage = get_storage(storage)
    prepared: dict[str, Any] = {}

    def prepare(cfg: SearchConfig) -> None:  # validate everything before a new study is stored
        prepared["pipeline"] = build_pipeline(context.with_config(cfg), SearchSpace.load(cfg.space), progress)

    study, config, created = open_study(storage, study_name, config, given, more_trials, prepare=prepare)
    moved = (config.device, config.amp) != (device, amp)
    config = replace(config, device=device, amp=amp)  # where the work runs is chosen again on every run
    if context is None or not context.resolves(config):  # a resume: the stored configuration names the target
        context = StudyContext.resolve(config, compute=compute)
    context = context.with_config(config, storage=storage)
    space = study_space(study, config)
    with storage.lock(study_name) as exclusive:
        if moved and exclusive:
            study.set_user_attr(CONFIG_ATTR, config.to_dict())
        retried = 0
        if exclusive and not created:
            retried = fail_and_retry(study, study.get_trials(deepcopy=False),
                                     "stale: left RUNNING by a process that was killed; retried")
        pipeline, dense_rec = prepared.get("pipeline") or build_pipeline(context, space, progress)
        seeded = seed_study(study, space, pipeline.groups) if created or exclusive else 0
        if created or exclusive:  # groups that failed their test prune at discovery are kept whole: say which
            study.set_user_attr(EXCLUDED_ATTR, pipeline.excluded_groups)
        base = {"study": study, "config": config, "context": context, "created": created, "seeded": seeded,
                "dense_checkpoint": dense_rec, "excluded_groups": dict(pipeline.excluded_groups)}
        if create_only:
            return SearchSummary(**base)
        t_trials = time.perf_counter()
        if space.screening is not None:  # screen many candidates, fully fine-tune the promoted ones
            from autoprune.search.screen_loop import run_screened

            counts = run_screened(study, config, storage, pipeline, space, runner, timeout_s=timeout_s,
                                  progress=progress, exclusive=exclusive)
        else:
            counts = runner.run(study, config, storage, pipeline, space, timeout_s=timeout_s, progress=progress,
                                exclusive=exclusive)
        trials_s = time.perf_counter() - t_trials
        front = write_front(study, config)
    return SearchSummary(**base, counts={**counts, "stale_retried": retried}, trials_s=trials_s, **front)
