"""Measure a study's Pareto front here: each front trial, pruned again from its stored plan, timed against the
dense model in one interleaved run (``autoprune pareto --measure``, a study whose target is this machine).

Latency does not depend on the weights' values, so each candidate is rebuilt from its plan without
fine-tuning, exported to ONNX in a temporary folder beside the dense model, and timed with the
calibration's runtime (ONNX Runtime at the calibration's thread count). The figures are stored on the
study, one study attribute per trial (:data:`~autoprune.search.report.FRONT_MEASURED_PREFIX`): Optuna does not
let a finished trial's own attributes change. The front table shows them beside the predictions.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from autoprune.deploy.speed import local_runtimes, measure_speedup, reanchored_ms
from autoprune.errors import ConfigError
from autoprune.search.config import SearchConfig
from autoprune.search.context import StudyContext
from autoprune.search.report import front_measured_key, front_rows

__all__ = ["FrontMeasurement", "check_measurable", "measure_front"]


@dataclass(frozen=True)
class FrontMeasurement:
    """One front trial timed here against the dense model (stored as the trial's ``front_measured``).

    Attributes:
        trial: The trial's number.
        predicted_ms: Its predicted latency (the stored prediction).
        predicted_dense_ms: The dense model's predicted latency (the calibration's).
        pruned_ms: Its median time now, in ms.
        dense_ms: The dense model's median time in the same interleaved run, in ms.
        speedup: Measured ``dense / pruned`` (median per-round ratio).
        predicted_speedup: ``predicted_dense_ms / predicted_ms``.
        error_pct: The prediction's error against ``pruned_ms``, in %.
        reanchored_error_pct: The prediction re-anchored to now (its share of the predicted dense time times
            ``dense_ms``) against ``pruned_ms``, in %.
        runtime: What timed them (``onnxruntime-.../CPUExecutionProvider``).
        threads: Threads the runtime was given.
        host: Where (``hostname/CPU``).
        measured_at: When, ISO 8601 in UTC.
        noisy: Whether the interleaved run's ratios spread more than the protocol allows.
    """

    trial: int
    predicted_ms: float
    predicted_dense_ms: float
    pruned_ms: float
    dense_ms: float
    speedup: float
    predicted_speedup: float
    error_pct: float
    reanchored_error_pct: float
    runtime: str
    threads: int | None
    host: str
    measured_at: str
    noisy: bool

    def to_dict(self) -> dict[str, Any]:
        """The stored ``front_measured`` dict."""
        return asdict(self)


def check_measurable(study_name: str, context: StudyContext) -> None:
    """Refuse to time a front whose target is not this machine.

    Raises:
        ConfigError: Naming the target, and how to measure on it instead.
    """
    if context.profile.here != "cpu":
        raise ConfigError(
            f"--measure times the front here: study {study_name!r} targets {context.config.target}, which is not "
            f"this machine; export a front point (`autoprune export --study {study_name} --trial N`) and time it "
            "on the device, or run `autoprune pareto` without --measure")


def measure_front(study: Any, config: SearchConfig | StudyContext, *, progress: bool = False,
                  say: Callable[[str], None] | None = None) -> list[FrontMeasurement]:
    """Time every front trial of ``study`` here against the dense model and store the figures on the study.

    Args:
        study: The Optuna study (its target must be this machine, ``local``).
        config: Its configuration, or its resolved context.
        progress: Progress bars while the dense model is loaded.
        say: Progress messages, one line each.

    Returns:
        One measurement per front trial, in the front's order (fastest predicted first).

    Raises:
        ConfigError: The study's target is not this machine.
        AutopruneError: A plan cannot be rebuilt or exported, or a model cannot be timed.
    """
    from autoprune.pruning import PruningPlan, export_onnx
    from autoprune.search.objective import build_pipeline
    from autoprune.search.study import study_space

    context = config if isinstance(config, StudyContext) else StudyContext.resolve(config)
    check_measurable(study.study_name, context)
    say = say or (lambda _msg: None)
    _, front, _ = front_rows(study, context.config)
    if not front:
        return []
    pipeline, _ = build_pipeline(context, study_space(study, context.config), progress, measure=False)
    cal_runtime = str(pipeline.cost_model.provenance.runtime or "")
    runtime, _ = local_runtimes(context.profile, cal_runtime)["onnxruntime"]
    predicted_dense = float(pipeline.cost_model.predict(pipeline.dense).latency_ms)
    shape = tuple(pipeline.example.shape)
    out: list[FrontMeasurement] = []
    with tempfile.TemporaryDirectory(prefix="autoprune-front-") as tmp:
        dense_path = Path(tmp) / "dense.onnx"
        export_onnx(pipeline.dense, dense_path, pipeline.example)
        for row in front:
            say(f"timing trial {row.number} against the dense model here (interleaved)")
            path = Path(tmp) / f"trial-{row.number}.onnx"
            pruned = pipeline.prune(PruningPlan.from_dict(dict(row.plan)))
            export_onnx(pruned.make_permanent(), path, pipeline.example)
            m = measure_speedup(runtime, str(path), str(dense_path), shape)
            rec = _measurement(row.number, float(row.latency_ms), predicted_dense, m)
            study.set_user_attr(front_measured_key(row.number), rec.to_dict())
            out.append(rec)
    return out


def _measurement(trial: int, predicted_ms: float, predicted_dense_ms: float, m: Any) -> FrontMeasurement:
    """The figures of one interleaved run, with the prediction's errors (plain and re-anchored to now)."""
    return FrontMeasurement(
        trial=trial, predicted_ms=predicted_ms, predicted_dense_ms=predicted_dense_ms, pruned_ms=m.pruned_ms,
        dense_ms=m.dense_ms, speedup=m.speedup,
        predicted_speedup=predicted_dense_ms / predicted_ms if predicted_ms > 0 else float("nan"),
        error_pct=100.0 * (predicted_ms / m.pruned_ms - 1.0),
        reanchored_error_pct=100.0 * (reanchored_ms(predicted_ms, predicted_dense_ms, m.dense_ms) / m.pruned_ms - 1.0),
        runtime=m.runtime, threads=m.threads, host=m.host,
        measured_at=datetime.now(timezone.utc).isoformat(timespec="seconds"), noisy=m.noisy)
