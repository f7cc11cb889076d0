"""What defines a study: its configuration, objectives, samplers and constraints.

:class:`SearchConfig` is stored in the study, so ``autoprune search --study NAME`` resumes with no other
arguments, and a conflicting configuration is refused (see :mod:`autoprune.search.study`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any

from autoprune.errors import ConfigError
from autoprune.records import TrialRecord
from autoprune.registry import Registry

CONFIG_ATTR = "autoprune.config"
CONFIG_VERSION = 1
#: Fields a resume may change without a conflict: the budget and where the work runs.
RESUME_FREE = ("trials", "device", "amp")

#: The objective every study has (the others are costs).
ACCURACY = "accuracy"
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

    ``trials`` is the number of COMPLETE trials the study aims for; a resume may change it
    (``--trials N`` adds N). ``device`` (``--device`` as given: auto, cpu, cuda, cuda:N, mps) and
    ``amp`` (mixed precision on CUDA) say where the last run fine-tuned and evaluated; they are
    chosen again on every run, never a conflict, because a study may move between machines (each
    trial records the device it ran on as ``compute_device``). ``max_train_samples`` and ``max_eval_samples``
    cut the data to a stratified subset (:func:`autoprune.data.load_data`; ``None``, as in older studies: all).
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
    device: str = "auto"
    amp: bool = True
    max_train_samples: int | None = None
    max_eval_samples: int | None = None

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
            if key in RESUME_FREE or value is None:
                continue
            mine = getattr(self, key)
            if isinstance(mine, tuple):
                value = tuple(value)
            if mine != value:
                out.append(key)
        return out


def default_study_name(config: SearchConfig) -> str:
    """``<model>-<data>[-t<N>][-e<M>]-<target>-<space>`` with file-safe characters (a data subset is its own study)."""
    from autoprune.data import subset_suffix
    from autoprune.io import safe_name

    data = config.data + subset_suffix(config.max_train_samples, config.max_eval_samples)
    return safe_name(f"{config.model}-{data}-{config.target}-{config.space}", 120).lstrip(".") or "study"


def make_sampler(config: SearchConfig, n_trials: int, salt: int = 0):
    """The configured sampler, seeded by the study's trial count so that a resume draws new points.

    Both backends seed through here. Args:
        config: The study's configuration (sampler name and seed).
        n_trials: Trials the study already has.
        salt: Added to the seed; concurrent workers pass distinct values (e.g. their process id)
            so that workers started together do not sample the same plans.
    """
    return SAMPLERS.get(config.sampler)(config.seed + n_trials + salt)


def _figure(result: TrialRecord | Mapping[str, Any], attribute: str) -> float:
    """One figure of a record (a :class:`~autoprune.records.TrialRecord`, or its dict form)."""
    return float(result[attribute] if isinstance(result, Mapping) else getattr(result, attribute))


def set_constraints(trial, config: SearchConfig, result: TrialRecord | Mapping[str, Any]) -> None:
    """Record the constraint values on the trial (Optuna's samplers treat > 0 as infeasible)."""
    names = [n for n, v in (("max_latency_ms", config.max_latency_ms), ("min_accuracy", config.min_accuracy),
                            ("max_size_mb", config.max_size_mb)) if v is not None]
    for name, value in zip(names, constraint_values(config, result)[1:]):
        trial.set_constraint(name, float(value))


def constraint_values(config: SearchConfig, result: TrialRecord | Mapping[str, Any]) -> list[float]:
    """Constraint values of a result (each <= 0 when satisfied)."""
    out = [0.0]
    if config.max_latency_ms is not None:
        out.append(_figure(result, OBJECTIVES["latency"][1]) - config.max_latency_ms)
    if config.min_accuracy is not None:
        out.append(config.min_accuracy - _figure(result, OBJECTIVES["accuracy"][1]))
    if config.max_size_mb is not None:
        out.append(_figure(result, OBJECTIVES["size"][1]) - config.max_size_mb)
    return out


def objective_values(config: SearchConfig, result: TrialRecord | Mapping[str, Any]) -> list[float]:
    """The objective vector of a result, in the study's order."""
    return [_figure(result, OBJECTIVES[o][1]) for o in config.objectives]


def accuracy_floor(rows: list[TrialRecord], config: SearchConfig, drop: float = 0.01) -> float | None:
    """``--min-accuracy`` if given, else the dense anchor's accuracy minus ``drop``."""
    if config.min_accuracy is not None:
        return config.min_accuracy
    dense = [r.accuracy for r in rows if r.is_dense]
    return dense[0] - drop if dense else None
