"""Timing models for a calibration: the protocols, and a candidate against a reference in one window.

A shared host's speed drifts (here by ±20 % within a minute), so a whole model is timed **against
the dense model in interleaved rounds** (:func:`measure_vs_reference`) and its time taken as the
ratio of the two; isolated kernels are timed once each with the shared protocol
(:func:`measure_relaxed`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from autoprune.errors import NoisyMeasurementError

__all__ = ["KERNEL_PROTOCOL", "MODEL_PROTOCOL", "RELATIVE_PROTOCOL", "RelativeMeasurement", "measure_ms",
           "measure_relaxed", "measure_vs_reference"]

#: Protocol of one isolated kernel.
KERNEL_PROTOCOL = {"warmup": 3, "min_time_s": 0.03, "min_repeats": 7, "max_cv": 0.2, "retries": 2}
#: Protocol of one whole model measured alone (runtimes that cannot interleave two models).
MODEL_PROTOCOL = {"warmup": 5, "min_time_s": 0.2, "min_repeats": 10, "max_cv": 0.1, "retries": 3}
#: A candidate against its reference: ``rounds`` alternating batches of each (``min_time_s`` and
#: ``min_repeats`` per batch); the ratio is the median of the per-round ratios of batch medians.
RELATIVE_PROTOCOL = {"rounds": 12, "warmup": 3, "min_time_s": 0.03, "min_repeats": 3}


@dataclass(frozen=True)
class RelativeMeasurement:
    """A candidate measured against a reference model in the same time window.

    Attributes:
        ratio: Candidate time / reference time, median over the rounds.
        latency_ms: The candidate's median time (raw, drifts with the host).
        reference_ms: The reference's median time in the same rounds.
        rounds: Interleaved rounds.
        ratio_spread: Interquartile range of the per-round ratios, relative to ``ratio``.
        energy: The candidate's energy reading where the runtime reads a sensor
            (:meth:`~autoprune.hardware.energy.EnergyReading.to_dict`), else ``None``.
    """

    ratio: float
    latency_ms: float
    reference_ms: float
    rounds: int
    ratio_spread: float
    energy: dict[str, Any] | None = None


def measure_vs_reference(runtime: Any, model: Any, reference: Any,
                         settings: dict[str, Any] | None = None) -> RelativeMeasurement:
    """Measure ``model`` against ``reference`` in interleaved rounds (drift cancels in the ratio).

    Args:
        runtime: A runtime; with a ``runner`` method (onnxruntime) both models stay loaded
            and alternate in ``rounds`` batches; otherwise each is measured once with
            :data:`MODEL_PROTOCOL` (no drift cancellation).
        model: The candidate (ONNX bytes, path or proto).
        reference: The reference model, or a runner callable already made for it.
        settings: Overrides of :data:`RELATIVE_PROTOCOL`.

    Raises:
        ProfilingError: If either model cannot run, or a timing is not a positive number.
    """
    from autoprune.profiling.interleave import measure_interleaved

    cfg = {**RELATIVE_PROTOCOL, **(settings or {})}
    if hasattr(runtime, "measure_relative"):  # onnxruntime, here or on a device server: + energy where read
        return RelativeMeasurement(**runtime.measure_relative(model, reference, cfg))
    if not hasattr(runtime, "runner"):
        a = measure_ms(runtime, model, MODEL_PROTOCOL)
        b = measure_ms(runtime, reference, MODEL_PROTOCOL)
        return RelativeMeasurement(a / b, a, b, 1, float("nan"))
    run_a = runtime.runner(model)
    run_b = reference if callable(reference) else runtime.runner(reference)
    return RelativeMeasurement(**measure_interleaved(run_a, run_b, **cfg).to_dict())


def measure_relaxed(runtime: Any, model: Any, settings: dict[str, Any]) -> Any:
    """Measure with the shared protocol; one retry with a relaxed noise bound on a busy machine.

    Returns:
        The :class:`~autoprune.profiling.Measurement` (its ``cv`` tells which bound it passed).
    """
    try:
        return runtime.measure(model, None, **settings)
    except NoisyMeasurementError:
        relaxed = {**settings, "max_cv": max(0.5, settings.get("max_cv", 0.1) * 3)}
        return runtime.measure(model, None, **relaxed)


def measure_ms(runtime: Any, onnx_bytes: bytes, settings: dict[str, Any]) -> float:
    """:func:`measure_relaxed`'s latency in ms."""
    return measure_relaxed(runtime, onnx_bytes, settings).latency_ms
