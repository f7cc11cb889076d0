"""Two models timed against each other in alternating rounds, so that a host's drift cancels in their ratio.

Part of the measurement protocol (:mod:`autoprune.profiling.protocol`): calibrations time every whole model
against the dense model this way, here and on a device (:mod:`autoprune.device.server`).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

from autoprune.errors import ProfilingError
from autoprune.profiling.protocol import DEFAULT_PROTOCOL, measure_callable

__all__ = ["Interleaved", "measure_interleaved"]


@dataclass(frozen=True)
class Interleaved:
    """One interleaved measurement of a candidate against a reference.

    Attributes:
        ratio: The median of the per-round ratios of batch medians (candidate / reference).
        latency_ms: The median of the candidate's batch medians.
        reference_ms: The median of the reference's batch medians.
        rounds: Rounds run.
        ratio_spread: The interquartile range of the ratios relative to the ratio (NaN under four rounds).
    """

    ratio: float
    latency_ms: float
    reference_ms: float
    rounds: int
    ratio_spread: float

    def to_dict(self) -> dict[str, float | int]:
        """The JSON form (what a device server sends back)."""
        return asdict(self)


def measure_interleaved(
    run_a: Callable[[], object],
    run_b: Callable[[], object],
    *,
    rounds: int = 12,
    warmup: int = 3,
    min_time_s: float = 0.03,
    min_repeats: int = 3,
    timeout_s: float = DEFAULT_PROTOCOL.timeout_s,
    clock: Callable[[], float] = time.perf_counter,
) -> Interleaved:
    """Time ``run_a`` against ``run_b`` in ``rounds`` alternating batches (drift cancels in the ratio).

    Each round times one batch of each (``min_repeats`` calls and ``min_time_s`` seconds at least,
    after ``warmup`` untimed calls in the first round and one in later rounds); the ratio is the
    median of the per-round ratios of batch medians. The same loop runs here and on a device
    (:mod:`autoprune.device.server`), so a remote ratio means what a local one means.

    Returns:
        An :class:`Interleaved` record.

    Raises:
        ProfilingError: On a bad timing, or when ``timeout_s`` passes (checked between calls).
    """
    rounds = max(1, int(rounds))
    start = clock()
    a_ms: list[float] = []
    b_ms: list[float] = []
    for r in range(rounds):
        for fn, out in ((run_a, a_ms), (run_b, b_ms)):
            left = timeout_s - (clock() - start)
            if left <= 0:
                raise ProfilingError(
                    f"interleaved measurement exceeded its timeout of {timeout_s:g} s after {r} of {rounds} "
                    "rounds; raise timeout_s or measure a smaller model"
                )
            m = measure_callable(fn, warmup=int(warmup) if r == 0 else 1, min_time_s=float(min_time_s),
                                 min_repeats=int(min_repeats), max_repeats=max(1000, int(min_repeats)),
                                 max_cv=1e9, retries=0, timeout_s=left, clock=clock)
            out.append(m.latency_ms)
    ratios = sorted(x / y for x, y in zip(a_ms, b_ms))
    ratio = statistics.median(ratios)
    q1, q3 = ratios[len(ratios) // 4], ratios[(3 * len(ratios)) // 4]
    return Interleaved(ratio=ratio, latency_ms=statistics.median(a_ms), reference_ms=statistics.median(b_ms),
                       rounds=rounds, ratio_spread=(q3 - q1) / ratio if len(ratios) >= 4 else float("nan"))
