"""The measurement protocol, in one place.

Every latency that autoprune stores as *measured* goes through this module:

1. **Warm-up**: ``warmup`` untimed calls (caches, lazy allocation, JIT).
2. **Repeats until a minimum time**: time single calls until at least
   ``min_repeats`` samples *and* ``min_time_s`` seconds were collected (never more
   than ``max_repeats``).
3. **Summary**: the median is the latency; the spread is the interquartile range
   and a robust coefficient of variation (see :func:`robust_cv`).
4. **Noise bound**: if the CV is above ``max_cv`` the batch is thrown away and,
   after a short back-off (``backoff_s`` times the attempt number, so a passing
   burst of load on a shared machine can end), measured again, up to ``retries``
   more times; if it is still too noisy a
   :class:`~autoprune.errors.NoisyMeasurementError` is raised. Nothing noisy is stored.
5. **Sanity**: a NaN, infinite, zero or negative timing is never stored; it raises
   :class:`~autoprune.errors.ProfilingError` at once.
6. **Timeout**: when the whole measurement (all retries) exceeds ``timeout_s`` it
   is abandoned with a :class:`~autoprune.errors.ProfilingError`. In-process
   callables are checked *between* calls; remote runtimes enforce the bound with a
   watchdog (see :mod:`autoprune.profiling.rpc`).

Timings produced elsewhere (e.g. TVM's ``time_evaluator``, which returns one mean
per repeat) go through :func:`summarize_timings` / :func:`measure_samples`, which
apply the same checks.

Example:
    >>> m = measure_callable(lambda: sum(range(1000)), min_time_s=0.01, max_cv=1.0)
    >>> m.latency_ms > 0 and m.method == "measured"
    True
"""

from __future__ import annotations

import math
import os
import platform
import socket
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timezone
from typing import Any

from autoprune.errors import ConfigError, NoisyMeasurementError, ProfilingError

__all__ = ["DEFAULT_PROTOCOL", "Measurement", "ProtocolSettings", "host_description", "measure_callable",
           "measure_samples", "robust_cv", "summarize_timings"]

#: Normal-consistency constant: IQR / 1.349 estimates the standard deviation.
_IQR_TO_STD = 1.349


@dataclass(frozen=True)
class ProtocolSettings:
    """Knobs of the measurement protocol (defaults are the project's standard).

    Attributes:
        warmup: Untimed calls before timing.
        min_time_s: Keep timing until this many seconds of samples were collected.
        min_repeats: ...and at least this many samples.
        max_repeats: Never more samples than this in one batch.
        max_cv: Largest acceptable robust CV (0.05 = 5 %).
        retries: Extra batches measured when a batch is too noisy.
        timeout_s: Wall-clock bound of the whole measurement, retries included.
        backoff_s: Pause before the n-th re-measurement of a noisy batch is ``n * backoff_s``.
    """

    warmup: int = 5
    min_time_s: float = 0.2
    min_repeats: int = 10
    max_repeats: int = 1000
    max_cv: float = 0.05
    retries: int = 2
    timeout_s: float = 120.0
    backoff_s: float = 0.25

    def __post_init__(self) -> None:
        checks = {
            "warmup": self.warmup >= 0,
            "min_time_s": self.min_time_s >= 0 and math.isfinite(self.min_time_s),
            "min_repeats": self.min_repeats >= 1,
            "max_repeats": self.max_repeats >= self.min_repeats,
            "max_cv": self.max_cv > 0,
            "retries": self.retries >= 0,
            "timeout_s": self.timeout_s > 0,
            "backoff_s": self.backoff_s >= 0 and math.isfinite(self.backoff_s),
        }
        for name, ok in checks.items():
            if not ok:
                raise ConfigError(
                    f"invalid measurement setting {name}={getattr(self, name)!r}; "
                    "use a non-negative number (max_repeats >= min_repeats >= 1, max_cv and timeout_s > 0)"
                )

    def callable_kwargs(self) -> dict[str, Any]:
        """Every setting, as :func:`measure_callable`'s keyword arguments."""
        return asdict(self)

    def batch_kwargs(self) -> dict[str, Any]:
        """The settings that :func:`measure_samples` applies to externally produced batches."""
        return {k: getattr(self, k) for k in ("max_cv", "retries", "min_repeats", "timeout_s", "backoff_s")}

    def with_overrides(self, **overrides: Any) -> ProtocolSettings:
        """Return a copy with ``overrides`` applied (``None`` values are ignored).

        Raises:
            ConfigError: On an unknown setting name.
        """
        known = set(self.__dataclass_fields__)
        unknown = sorted(set(overrides) - known)
        if unknown:
            raise ConfigError(
                f"unknown measurement setting(s) {', '.join(unknown)}; valid: {', '.join(sorted(known))}"
            )
        return replace(self, **{k: v for k, v in overrides.items() if v is not None})


#: The project's standard protocol.
DEFAULT_PROTOCOL = ProtocolSettings()


@dataclass(frozen=True)
class Measurement:
    """One measured latency. Immutable; safe to store as JSON via :meth:`to_dict`.

    Attributes:
        latency_ms: Median of the samples, in milliseconds.
        iqr_ms: Interquartile range of the samples, in milliseconds.
        cv: Robust coefficient of variation, ``IQR / 1.349 / median`` (equals
            std/mean for normally distributed samples, but a few pre-emption
            outliers on a shared machine do not inflate it).
        repeats: Number of samples in the accepted batch.
        samples_ms: The accepted batch's samples, in milliseconds.
        runtime: What executed it, e.g. ``"onnxruntime-1.31.1/CPUExecutionProvider"``.
        device: Where it ran, e.g. ``"host/AMD EPYC"`` or ``"rpc://127.0.0.1:9190 key=nano"``.
        threads: Threads the runtime was allowed (``None`` if unknown).
        method: Always ``"measured"`` here (predictions use other types).
        timestamp: ISO-8601 UTC time when the accepted batch finished.
        attempts: Batches measured (1 + retries used).

    Raises:
        ProfilingError: If ``latency_ms`` or a sample is NaN, infinite, zero or negative (also when read back).
    """

    latency_ms: float
    iqr_ms: float
    cv: float
    repeats: int
    samples_ms: tuple[float, ...]
    runtime: str
    device: str
    threads: int | None = None
    method: str = "measured"
    timestamp: str = field(default_factory=lambda: datetime.now(timezone.utc).isoformat(timespec="seconds"))
    attempts: int = 1

    def __post_init__(self) -> None:
        _validate((self.latency_ms, *self.samples_ms), f"measurement on {self.runtime}")

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-serialisable dict (samples as a list)."""
        d = asdict(self)
        d["samples_ms"] = list(self.samples_ms)
        return d

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Measurement:
        """Rebuild a measurement written by :meth:`to_dict`."""
        data = dict(data)
        data["samples_ms"] = tuple(float(x) for x in data.get("samples_ms", ()))
        return cls(**data)


def host_description() -> str:
    """Return ``"<hostname>/<CPU model>"`` for this machine."""
    model = ""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.lower().startswith(("model name", "hardware", "cpu model")):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return f"{socket.gethostname()}/{model or platform.processor() or platform.machine()}"


def _quartiles(sorted_samples: Sequence[float]) -> tuple[float, float]:
    if len(sorted_samples) < 2:
        return sorted_samples[0], sorted_samples[0]
    q = statistics.quantiles(sorted_samples, n=4, method="inclusive")
    return q[0], q[2]


def robust_cv(samples_ms: Sequence[float]) -> float:
    """Return ``IQR / 1.349 / median`` of ``samples_ms`` (0 for a single sample)."""
    s = sorted(samples_ms)
    q1, q3 = _quartiles(s)
    med = statistics.median(s)
    return (q3 - q1) / _IQR_TO_STD / med if med > 0 else math.inf


def _validate(samples_ms: Sequence[float], where: str) -> list[float]:
    values = []
    for i, x in enumerate(samples_ms):
        try:
            v = float(x)
        except (TypeError, ValueError):
            raise ProfilingError(
                f"{where}: timing #{i} is not a number ({x!r}); the runtime is broken"
            ) from None
        if not math.isfinite(v) or v <= 0:
            raise ProfilingError(
                f"{where}: timing #{i} is {v!r} ms (NaN, infinite, zero or negative timings are never "
                "stored); check the clock/runtime and measure again"
            )
        values.append(v)
    if not values:
        raise ProfilingError(f"{where}: no timings were produced; increase min_repeats/min_time_s")
    return values


def summarize_timings(
    samples_ms: Sequence[float],
    *,
    runtime: str,
    device: str | None = None,
    threads: int | None = None,
    max_cv: float | None = DEFAULT_PROTOCOL.max_cv,
    min_repeats: int = 1,
    attempts: int = 1,
) -> Measurement:
    """Check and summarise externally produced per-repeat timings.

    Args:
        samples_ms: One timing per repeat, in milliseconds (e.g. the per-repeat
            means of TVM's ``time_evaluator``).
        runtime: What executed them (stored in the measurement).
        device: Where they ran; defaults to :func:`host_description`.
        threads: Threads the runtime was allowed.
        max_cv: Reject the batch when its robust CV is above this; ``None`` disables.
        min_repeats: Fewest acceptable samples.
        attempts: Batches measured so far (recorded).

    Returns:
        The :class:`Measurement`.

    Raises:
        ProfilingError: On a NaN/inf/zero/negative sample, too few samples, or a CV
            above ``max_cv``.
    """
    where = f"measurement on {runtime}"
    values = _validate(samples_ms, where)
    if len(values) < min_repeats:
        raise ProfilingError(f"{where}: only {len(values)} timings, need {min_repeats}; raise the repeats")
    s = sorted(values)
    q1, q3 = _quartiles(s)
    med = statistics.median(s)
    cv = robust_cv(s)
    if max_cv is not None and cv > max_cv:
        raise ProfilingError(
            f"{where}: too noisy (CV {cv:.1%} > {max_cv:.1%} over {len(values)} repeats); "
            "quiet the machine, pin clocks, or raise max_cv"
        )
    return Measurement(
        latency_ms=med,
        iqr_ms=q3 - q1,
        cv=cv,
        repeats=len(values),
        samples_ms=tuple(values),
        runtime=runtime,
        device=device or host_description(),
        threads=threads,
        attempts=attempts,
    )


def measure_samples(
    produce_samples_ms: Callable[[], Sequence[float]],
    *,
    runtime: str,
    device: str | None = None,
    threads: int | None = None,
    max_cv: float = DEFAULT_PROTOCOL.max_cv,
    retries: int = DEFAULT_PROTOCOL.retries,
    min_repeats: int = 1,
    timeout_s: float = DEFAULT_PROTOCOL.timeout_s,
    clock: Callable[[], float] = time.monotonic,
    backoff_s: float = DEFAULT_PROTOCOL.backoff_s,
    sleep: Callable[[float], None] = time.sleep,
) -> Measurement:
    """Obtain batches from ``produce_samples_ms`` until one passes the noise bound.

    Each call to ``produce_samples_ms`` must return a fresh batch of per-repeat
    timings in milliseconds. Invalid values (NaN, inf, <= 0) raise at once; a
    batch with CV above ``max_cv`` is re-measured up to ``retries`` times, the n-th
    time after ``sleep(n * backoff_s)`` (never past ``timeout_s``).

    Raises:
        NoisyMeasurementError: If all batches are too noisy.
        ProfilingError: If a batch is invalid, or ``timeout_s`` passes (checked between batches).
    """
    start = clock()
    cvs: list[float] = []
    for attempt in range(1, retries + 2):
        samples = produce_samples_ms()
        m = summarize_timings(
            samples,
            runtime=runtime,
            device=device,
            threads=threads,
            max_cv=None,
            min_repeats=min_repeats,
            attempts=attempt,
        )
        if m.cv <= max_cv:
            return m
        cvs.append(m.cv)
        left = timeout_s - (clock() - start)
        if left <= 0:
            break
        if attempt <= retries and backoff_s > 0:
            sleep(min(attempt * backoff_s, left))
    tried = ", ".join(f"{c:.1%}" for c in cvs)
    raise NoisyMeasurementError(
        f"measurement on {runtime}: too noisy after {len(cvs)} batch(es) (CV {tried} > {max_cv:.1%}); "
        "quiet the machine, pin clocks, or raise max_cv/retries"
    )


def measure_callable(
    fn: Callable[[], object],
    *,
    warmup: int = DEFAULT_PROTOCOL.warmup,
    min_time_s: float = DEFAULT_PROTOCOL.min_time_s,
    min_repeats: int = DEFAULT_PROTOCOL.min_repeats,
    max_repeats: int = DEFAULT_PROTOCOL.max_repeats,
    max_cv: float = DEFAULT_PROTOCOL.max_cv,
    retries: int = DEFAULT_PROTOCOL.retries,
    timeout_s: float = DEFAULT_PROTOCOL.timeout_s,
    backoff_s: float = DEFAULT_PROTOCOL.backoff_s,
    runtime: str = f"python-{platform.python_version()}",
    device: str | None = None,
    threads: int | None = None,
    clock: Callable[[], float] = time.perf_counter,
) -> Measurement:
    """Time ``fn()`` with the standard protocol (see the module docstring).

    Args:
        fn: A zero-argument callable; one call is one inference.
        warmup: Untimed calls first.
        min_time_s: Collect samples for at least this long per batch.
        min_repeats: ...and at least this many.
        max_repeats: At most this many per batch.
        max_cv: Largest acceptable robust CV.
        retries: Extra batches when one is too noisy.
        timeout_s: Bound on the whole measurement, checked between calls.
        backoff_s: Pause unit before re-measuring a noisy batch (see :func:`measure_samples`).
        runtime: Stored in the measurement.
        device: Stored in the measurement; defaults to :func:`host_description`.
        threads: Stored in the measurement.
        clock: Seconds clock (injectable for tests).

    Returns:
        The accepted :class:`Measurement`.

    Raises:
        ProfilingError: On bad timings, persistent noise or timeout.
        ConfigError: On invalid settings.
    """
    ProtocolSettings(warmup, min_time_s, min_repeats, max_repeats, max_cv, retries, timeout_s, backoff_s)
    start = clock()

    def check_timeout() -> None:
        if clock() - start > timeout_s:
            raise ProfilingError(
                f"measurement on {runtime} exceeded its timeout of {timeout_s:g} s; "
                "raise timeout_s or measure a smaller model"
            )

    for _ in range(warmup):
        fn()
        check_timeout()

    def batch() -> list[float]:
        samples: list[float] = []
        batch_start = clock()
        while len(samples) < max_repeats and (
            len(samples) < min_repeats or clock() - batch_start < min_time_s
        ):
            t0 = clock()
            fn()
            samples.append((clock() - t0) * 1e3)
            check_timeout()
        return samples

    return measure_samples(
        batch,
        runtime=runtime,
        device=device,
        threads=threads,
        max_cv=max_cv,
        retries=retries,
        min_repeats=min_repeats,
        timeout_s=timeout_s,
        clock=clock,
        backoff_s=backoff_s,
    )


def cpu_count() -> int:
    """Return the CPUs this process may use (affinity-aware)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1
