"""The measurement protocol's logic, driven by synthetic timings and a fake clock."""

from __future__ import annotations

import math

import pytest

from autoprune.errors import ConfigError, NoisyMeasurementError, ProfilingError
from autoprune.profiling.protocol import (
    Measurement,
    ProtocolSettings,
    measure_callable,
    measure_samples,
    robust_cv,
    summarize_timings,
)


class FakeClock:
    """A clock that advances only when the measured function runs."""

    def __init__(self, durations_s):
        self.now = 0.0
        self.durations = list(durations_s)
        self.calls = 0

    def __call__(self) -> float:
        return self.now

    def fn(self) -> None:
        self.now += self.durations[self.calls % len(self.durations)]
        self.calls += 1


def test_summary_is_median_iqr_and_robust_cv():
    m = summarize_timings([1.0, 2.0, 3.0, 4.0, 5.0], runtime="x", device="d", max_cv=None)
    assert m.latency_ms == 3.0
    assert m.iqr_ms == pytest.approx(2.0)
    assert m.cv == pytest.approx(2.0 / 1.349 / 3.0)
    assert m.repeats == 5 and m.samples_ms == (1.0, 2.0, 3.0, 4.0, 5.0)
    assert m.method == "measured" and m.device == "d" and m.timestamp


def test_robust_cv_ignores_a_single_outlier():
    samples = [1.0] * 20 + [50.0]
    assert robust_cv(samples) == 0.0


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf, 0.0, -1.0, "x"])
def test_invalid_timings_are_rejected(bad):
    with pytest.raises(ProfilingError, match="timing #1"):
        summarize_timings([1.0, bad, 1.0], runtime="x", device="d")


def test_empty_and_too_few_rejected():
    with pytest.raises(ProfilingError, match="no timings"):
        summarize_timings([], runtime="x", device="d")
    with pytest.raises(ProfilingError, match="only 2"):
        summarize_timings([1.0, 1.0], runtime="x", device="d", min_repeats=3)


def test_noisy_batch_is_remeasured_then_accepted():
    batches = iter([[1.0, 2.0, 3.0, 4.0], [1.0, 1.01, 0.99, 1.0]])
    m = measure_samples(lambda: next(batches), runtime="x", device="d", max_cv=0.05, retries=2)
    assert m.attempts == 2 and m.latency_ms == pytest.approx(1.0)


def test_persistently_noisy_is_rejected():
    calls = []

    def produce():
        calls.append(1)
        return [1.0, 2.0, 3.0, 4.0]

    slept = []
    with pytest.raises(NoisyMeasurementError, match="too noisy after 3 batch"):
        measure_samples(produce, runtime="x", device="d", max_cv=0.05, retries=2, backoff_s=0.5,
                        sleep=slept.append)
    assert len(calls) == 3
    assert slept == [0.5, 1.0]  # a growing pause before each re-measurement, none after the last


def test_backoff_never_runs_past_the_timeout():
    t = [0.0]

    def clock():
        return t[0]

    def produce():
        t[0] += 1.0
        return [1.0, 2.0, 3.0, 4.0]

    slept = []
    with pytest.raises(NoisyMeasurementError):
        measure_samples(produce, runtime="x", device="d", max_cv=0.05, retries=3, timeout_s=1.5, backoff_s=2.0,
                        clock=clock, sleep=slept.append)
    assert slept == [0.5]  # 1.5 s bound - 1 s spent; the second batch ends past the bound


def test_measure_callable_with_fake_clock_repeats_until_min_time():
    clock = FakeClock([0.002])
    m = measure_callable(clock.fn, warmup=3, min_time_s=0.1, min_repeats=5, clock=clock, device="d")
    assert m.latency_ms == pytest.approx(2.0)
    assert m.cv == pytest.approx(0.0)
    # 3 warm-up calls, then >= 0.1 s of 2 ms samples.
    assert m.repeats == 50 and clock.calls == 53


def test_measure_callable_stops_at_max_repeats():
    clock = FakeClock([0.001])
    m = measure_callable(clock.fn, warmup=0, min_time_s=10.0, min_repeats=2, max_repeats=7, clock=clock,
                         device="d")
    assert m.repeats == 7


def test_measure_callable_remeasures_noise_and_rejects():
    # Alternating 1 ms / 3 ms: CV far above 5 %, every batch.
    clock = FakeClock([0.001, 0.003])
    with pytest.raises(NoisyMeasurementError, match="too noisy"):
        measure_callable(clock.fn, warmup=0, min_time_s=0.0, min_repeats=10, retries=1, clock=clock,
                         device="d", backoff_s=0.0)
    assert clock.calls == 20  # two batches of 10


def test_measure_callable_zero_duration_rejected():
    clock = FakeClock([0.0])
    with pytest.raises(ProfilingError, match="zero or negative"):
        measure_callable(clock.fn, warmup=0, min_time_s=0.0, min_repeats=3, clock=clock, device="d")


def test_measure_callable_times_out():
    clock = FakeClock([1.0])
    with pytest.raises(ProfilingError, match="timeout of 5 s"):
        measure_callable(clock.fn, warmup=0, min_time_s=100.0, min_repeats=1, timeout_s=5, clock=clock,
                         device="d")


def test_real_clock_measurement_is_positive():
    m = measure_callable(lambda: sum(range(2000)), min_time_s=0.02, max_cv=10.0)
    assert m.latency_ms > 0 and math.isfinite(m.latency_ms) and m.repeats >= 10


def test_settings_validation_and_overrides():
    with pytest.raises(ConfigError, match="max_cv"):
        ProtocolSettings(max_cv=0)
    with pytest.raises(ConfigError, match="unknown measurement setting"):
        ProtocolSettings().with_overrides(warmpu=1)
    assert ProtocolSettings().with_overrides(warmup=1, max_cv=None).warmup == 1


def test_measurement_round_trips_through_json_dict():
    import json

    m = summarize_timings([1.0, 1.1, 0.9], runtime="x", device="d", threads=2, max_cv=None)
    again = Measurement.from_dict(json.loads(json.dumps(m.to_dict())))
    assert again == m
