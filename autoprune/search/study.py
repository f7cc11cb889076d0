"""Opening and resuming a study, and what is stored in it besides trials: its configuration, its search
space, the anchors, plan artifacts, and the retry of trials a killed process left RUNNING."""

from __future__ import annotations

import json
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import replace
from pathlib import Path
from typing import Any

from autoprune.errors import ConfigError, StorageError
from autoprune.records import TrialRecord
from autoprune.search.config import ACCURACY, CONFIG_ATTR, OBJECTIVES, SearchConfig
from autoprune.search.space import SearchSpace
from autoprune.search.storage import StudyStorage, get_storage, redact_text

SEEDED_ATTR = "autoprune.seeded"
SPACE_ATTR = "autoprune.space"
ARTIFACTS_ATTR = "autoprune.artifacts"
EXCLUDED_ATTR = "autoprune.excluded_groups"


def open_study(storage: str | StudyStorage, study_name: str, config: SearchConfig | None, given: dict[str, Any],
               more_trials: int | None, prepare: Callable[[SearchConfig], Any] | None = None):
    """Create or load a study and return ``(study, config, created)``.

    Args:
        storage: The storage (or its URL).
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

    handle = get_storage(storage)
    storage_url, db = handle.url, handle.sqlite_path
    if config is None and db is not None and not db.exists():
        raise ConfigError(f"no study named {study_name!r}: the storage file {db} does not exist; start one with "
                          f"`autoprune search --target T --study {study_name}`")
    storage = handle.optuna
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
        return open_study(handle, study_name, None, given, more_trials)
    study.set_metric_names([f"{o} ({OBJECTIVES[o][2]})" for o in config.objectives])
    study.set_user_attr(CONFIG_ATTR, config.to_dict())
    return study, config, True


def study_space(study, config: SearchConfig) -> SearchSpace:
    """The study's search space: stored in the study at creation, so editing the YAML file later
    cannot change what a resumed study searches."""
    raw = study.user_attrs.get(SPACE_ATTR)
    if raw is None:
        raw, _ = SearchSpace.read(config.space)
        study.set_user_attr(SPACE_ATTR, raw)
    return SearchSpace.from_dict(raw, name=Path(config.space).stem, where=f"search space stored in {study.study_name}")


def seed_study(study, space: SearchSpace, groups) -> int:
    """Enqueue the anchors (:meth:`~autoprune.search.space.SearchSpace.anchors`) once per study."""
    if study.user_attrs.get(SEEDED_ATTR):
        return 0
    seeds = space.anchors(groups)
    if space.screening is not None:  # the screening's first round holds the sweeps: only the dense reference
        seeds = [s for s in seeds if s[0] == "dense"][:1]
    for label, params, fixed in seeds:
        study.enqueue_trial(params, user_attrs={"anchor": label[:60], **({"anchor_params": fixed} if fixed else {})})
    study.set_user_attr(SEEDED_ATTR, True)
    return len(seeds)


def attach_plan(trial, storage: StudyStorage, plan: dict[str, Any]) -> str:
    """Attach a trial's plan (JSON) to it as an Optuna artifact, before the trial finishes."""
    from optuna.artifacts import upload_artifact

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"plan-trial{trial.number}.json"
        path.write_text(json.dumps(plan, indent=2))
        art = upload_artifact(artifact_store=storage.artifacts, file_path=str(path),
                              study_or_trial=trial, mimetype="application/json")
    trial.set_user_attr("plan_artifact_id", art)
    return art


def retry_attrs(trial) -> dict[str, Any]:
    """User attributes of a retry: which trial it repeats, and its anchor name if it was one."""
    anchor, fixed = trial.user_attrs.get("anchor"), trial.user_attrs.get("anchor_params")
    history = {k: v for k, v in trial.user_attrs.items() if k.startswith("screen_") or k.startswith("rung")}
    return {"retry_of": trial.number, **({"anchor": anchor} if anchor else {}),
            **({"anchor_params": fixed} if fixed else {}), **history}


def fail_and_retry(study, trials: Iterable[Any], reason: str) -> int:
    """Fail each RUNNING trial of ``trials`` with ``reason`` and enqueue its parameters again.

    The one retry path: a trial left RUNNING by a killed process (at a resume, under the
    single-worker lock), and a Ray trial the run ended before it finished. Returns the count.
    """
    from optuna.trial import TrialState

    n = 0
    for t in trials:
        if t.state != TrialState.RUNNING:
            continue
        study._storage.set_trial_user_attr(t._trial_id, "fail_reason", reason)
        study._storage.set_trial_state_values(t._trial_id, TrialState.FAIL)
        study.enqueue_trial(t.params, user_attrs=retry_attrs(t), skip_if_exists=False)
        n += 1
    return n


def completed_rows(study) -> list[TrialRecord]:
    """The :class:`~autoprune.records.TrialRecord` of every COMPLETE trial that recorded one."""
    from optuna.trial import TrialState

    done = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    return [TrialRecord.from_trial(t) for t in done if OBJECTIVES[ACCURACY][1] in t.user_attrs]
