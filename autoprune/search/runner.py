"""``run_search``: the product's main job, from a configuration to a written Pareto front."""

from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from autoprune.io import results_dir
from autoprune.search.space import SearchSpace, plan_from_params
from autoprune.search.storage import single_worker_lock, sqlite_path
from autoprune.search.study import (
    SearchConfig,
    attach_sampler,
    constraint_values,
    open_study,
    run_trials,
    set_constraints,
    stale_trials_to_retry,
)

SEEDED_ATTR = "autoprune.seeded"
SPACE_ATTR = "autoprune.space"
ARTIFACTS_ATTR = "autoprune.artifacts"
EXCLUDED_ATTR = "autoprune.excluded_groups"


def study_space(study, config: SearchConfig) -> SearchSpace:
    """The study's search space: stored in the study at creation, so editing the YAML file later
    cannot change what a resumed study searches."""
    raw = study.user_attrs.get(SPACE_ATTR)
    if raw is None:
        raw, _ = SearchSpace.read(config.space)
        study.set_user_attr(SPACE_ATTR, raw)
    return SearchSpace.from_dict(raw, name=Path(config.space).stem, where=f"search space stored in {study.study_name}")


def artifact_dir(storage_url: str) -> Path:
    """The artifact store folder for a storage: beside a SQLite file, else under results/."""
    db = sqlite_path(storage_url)
    return (db.parent if db is not None else results_dir()) / "artifacts"


def artifact_store(storage_url: str):
    """Optuna's file-system artifact store for ``storage_url`` (shared with the dashboard)."""
    from optuna.artifacts import FileSystemArtifactStore

    path = artifact_dir(storage_url)
    path.mkdir(parents=True, exist_ok=True)
    return FileSystemArtifactStore(str(path))


def build_pipeline(config: SearchConfig, space: SearchSpace, progress: bool = True):
    """The dense model (trained if missing), its data and the per-candidate pipeline."""
    from autoprune.costmodel import profile_command, require_calibration
    from autoprune.data import load_data_for
    from autoprune.pipeline import Pipeline
    from autoprune.train import ensure_dense

    data = load_data_for(config.model, config.data, input_size=config.input_size, seed=config.data_seed)
    # A missing calibration is found before the dense model is trained, with the command that makes it.
    fix = profile_command(config.target, config.model, data=config.data, input_size=config.input_size)
    require_calibration(config.target, config.model, data.input_shape[-1], fix=f"run `{fix}`")
    dense, rec = ensure_dense(config.model, data, config.data_seed, checkpoint=config.checkpoint, progress=progress)
    ft = space.finetune
    return Pipeline(dense, data, config.target, config.model,
                    finetune_epochs=config.finetune_epochs if config.finetune_epochs is not None else ft.epochs,
                    finetune_steps=ft.steps, lr=ft.lr, lr_schedule=ft.lr_schedule, batch_size=ft.batch_size,
                    kd_temperature=space.kd_temperature, kd_weight=space.kd_weight, seed=config.seed,
                    space=space), rec


def make_objective(pipeline, space: SearchSpace, config: SearchConfig, storage_url: str | None = None):
    """``objective(trial) -> result dict``: suggest a plan, run the pipeline, record everything."""

    def objective(trial) -> dict[str, Any]:
        params = space.suggest(trial, pipeline.groups)
        plan = plan_from_params(space, pipeline.groups, params, config.seed)
        result = pipeline.run(plan, kd=bool(params.get("kd", space.distillation[0])))
        record = result.to_dict()
        record["size_mb"] = result.sparse_size_bytes / 1e6
        record["constraints"] = constraint_values(config, record)
        set_constraints(trial, config, record)
        for key, value in record.items():
            trial.set_user_attr(key, value)
        if storage_url is not None:
            attach_plan(trial, storage_url, record["plan"])
        return record

    return objective


def seed_study(study, space: SearchSpace, groups) -> int:
    """Enqueue the anchors (dense + uniform plans) once per study."""
    if study.user_attrs.get(SEEDED_ATTR):
        return 0
    seeds = space.seed_params(groups)
    for i, params in enumerate(seeds):
        anchor = "dense" if i == 0 else f"uniform-{sorted({v for k, v in params.items() if k.startswith('r:')})}"
        study.enqueue_trial(params, user_attrs={"anchor": anchor if i == 0 else anchor[:60]})
    study.set_user_attr(SEEDED_ATTR, True)
    return len(seeds)


def attach_plan(trial, storage_url: str, plan: dict[str, Any]) -> str:
    """Attach a trial's plan (JSON) to it as an Optuna artifact, before the trial finishes."""
    from optuna.artifacts import upload_artifact

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"plan-trial{trial.number}.json"
        path.write_text(json.dumps(plan, indent=2))
        art = upload_artifact(artifact_store=artifact_store(storage_url), file_path=str(path),
                              study_or_trial=trial, mimetype="application/json")
    trial.set_user_attr("plan_artifact_id", art)
    return art


def run_search(config: SearchConfig | None, *, study_name: str, storage_url: str, given: dict[str, Any],
               more_trials: int | None = None, timeout_s: float | None = None, progress: bool = True,
               backend: str = "optuna", workers: int = 1, address: str | None = None,
               create_only: bool = False) -> dict[str, Any]:
    """Create or resume a study, run its trials, and write its Pareto front.

    Args:
        create_only: Create the study (validated, search space stored, anchors enqueued) and
            return without running a trial: ``summary["created"]`` says whether it was new.
            Start concurrent workers on a PostgreSQL study this way, once, before the workers.

    Returns:
        A summary: the study, its config, trial counts and the front (see :func:`write_front`).
    """
    from autoprune.dashboard.note import update_study_note
    from autoprune.search.report import write_front

    prepared: dict[str, Any] = {}

    def prepare(cfg: SearchConfig) -> None:  # validate everything before a new study is stored
        prepared["pipeline"] = build_pipeline(cfg, SearchSpace.load(cfg.space), progress)

    study, config, created = open_study(storage_url, study_name, config, given, more_trials, prepare=prepare)
    space = study_space(study, config)
    with single_worker_lock(storage_url, study_name) as exclusive:
        retried = 0
        if exclusive and not created:
            retried = stale_trials_to_retry(study, "stale: left RUNNING by a process that was killed; retried")
        pipeline, dense_rec = prepared.get("pipeline") or build_pipeline(config, space, progress)
        seeded = seed_study(study, space, pipeline.groups) if created or exclusive else 0
        if created or exclusive:  # groups that failed their test prune at discovery are kept whole: say which
            study.set_user_attr(EXCLUDED_ATTR, pipeline.excluded_groups)
        if create_only:
            update_study_note(study, storage_url)
            return {"study": study, "config": config, "created": created, "seeded": seeded,
                    "dense_checkpoint": dense_rec, "excluded_groups": pipeline.excluded_groups}
        t_trials = time.perf_counter()
        if backend == "ray":
            from autoprune.search.ray_backend import run_ray

            counts = run_ray(study, config, storage_url, pipeline.groups, workers=workers, address=address,
                             timeout_s=timeout_s)
        else:
            attach_sampler(study, config, salt=0 if exclusive else os.getpid())  # workers sample apart
            study.set_user_attr(ARTIFACTS_ATTR, str(artifact_dir(storage_url)))
            counts = run_trials(study, config, make_objective(pipeline, space, config, storage_url),
                                timeout_s=timeout_s, progress=progress)
        trials_s = time.perf_counter() - t_trials
        summary = write_front(study, config)
        update_study_note(study, storage_url)  # the dashboard's view: config, front, equivalent commands
    return {"study": study, "config": config, "counts": {**counts, "stale_retried": retried}, "trials_s": trials_s,
            "dense_checkpoint": dense_rec, "excluded_groups": pipeline.excluded_groups, **summary}
