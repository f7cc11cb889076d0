"""Speedups measured here: the dense model's time over the pruned model's, both timed in one interleaved run
(:func:`autoprune.costmodel.builder.measure_vs_reference`), so the host's drift cancels in the ratio.

A speedup is always against the same runtime's dense build of the same tuning: a tuned TVM module against the
dense model tuned alike (``dense_tvm.so``). An untuned TVM module gets no speedup (against an untuned dense it
means nothing); it is timed against ONNX Runtime instead, in one interleaved run, which says how much slower it is.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from autoprune.deploy import ReportPart, optional_step, report_object
from autoprune.deploy.tvm import DENSE_TVM, TvmModule
from autoprune.profiling.base import threads_of

#: An interleaved run whose per-round ratios spread more than this (IQR / median) is re-measured.
MAX_RATIO_SPREAD = 0.25


#: Interleaved runs tried before a measurement is reported as too noisy.
SPEED_ATTEMPTS = 3
#: ``measured.where`` of an export timed here.
MEASURED_HERE = "measured here"


@dataclass(frozen=True)
class SpeedMeasurement:
    """The pruned model against the dense model, timed in one interleaved run on this machine.

    Attributes:
        runtime: What ran them, e.g. ``onnxruntime-1.32.0/CPUExecutionProvider``.
        threads: Threads the runtime was given.
        pruned_ms: The pruned model's median time over the rounds, in ms (drifts with the host).
        dense_ms: The dense model's median time in the same rounds, in ms.
        speedup: ``dense / pruned``, from the median per-round ratio (drift cancels in it).
        ratio_spread: Interquartile range of the per-round ratios relative to their median.
        rounds: Interleaved rounds.
        attempts: Interleaved runs made (more than one when a run was too noisy).
        noisy: Whether even the best run spread more than :data:`MAX_RATIO_SPREAD`.
        host: Where it ran (``hostname/CPU``).
    """

    runtime: str
    threads: int | None
    pruned_ms: float
    dense_ms: float
    speedup: float
    ratio_spread: float
    rounds: int
    attempts: int
    noisy: bool
    host: str

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return asdict(self)


@dataclass(frozen=True)
class RuntimeSpeed(ReportPart):
    """The pruned model timed against the dense one with one runtime here (an export to ``local``).

    Where it was measured, the fields of :class:`~autoprune.deploy.speed.SpeedMeasurement` are set
    (``ok``: not too noisy to compare against); where not, only ``ok`` (false) and ``reason``.

    Attributes:
        ok: The figures can be compared against (``verify`` re-measures only these).
        runtime, threads, pruned_ms, dense_ms, speedup, ratio_spread, rounds, attempts, noisy, host: The
            measurement (:class:`~autoprune.deploy.speed.SpeedMeasurement`).
        reason: Why it was not measured, or why it is not trusted.
    """

    ok: bool
    runtime: str | None = None
    threads: int | None = None
    pruned_ms: float | None = None
    dense_ms: float | None = None
    speedup: float | None = None
    ratio_spread: float | None = None
    rounds: int | None = None
    attempts: int | None = None
    noisy: bool | None = None
    host: str | None = None
    reason: str | None = None
    tuned: bool | None = None
    onnxruntime_ms: float | None = None
    vs_onnxruntime: float | None = None

    def _written(self) -> Iterator[str]:
        ok, *measurement, reason = (f.name for f in fields(self) if f.name not in _LATER)
        yield ok
        if self.runtime is not None:  # measured: every field of the measurement, None or not
            yield from measurement
            yield from (name for name in _LATER if getattr(self, name) is not None)  # newer keys, where set
        if self.reason is not None:
            yield reason


#: Fields of :class:`RuntimeSpeed` added after its first version: written only where set.
_LATER = ("tuned", "onnxruntime_ms", "vs_onnxruntime")


@dataclass(frozen=True)
class Measured(ReportPart):
    """The export timed here, pruned against dense in one interleaved run per runtime (``local`` targets).

    Attributes:
        where: ``measured here``.
        host: The machine (``hostname/CPU``).
        input_shape: ``(1, C, H, W)`` it was timed at.
        runtimes: Runtime name (``onnxruntime``, ``tvm``) → its measurement.
        latency_ms: The pruned model's time with the calibration's runtime (what the prediction describes).
        runtime: That runtime, on that host.
        compared_runtime: Its name in ``runtimes``.
        prediction_error_pct: The predicted latency's error against ``latency_ms``, in %.
        speedup_prediction_error_pct: The predicted speedup's error against the measured one, in %.
        host_scale: The dense model's time measured in the same run over its predicted time (the
            calibration's): how much slower (> 1) or faster the host is now than while it was calibrated.
        reanchored_ms: The prediction re-anchored to now: its share of the predicted dense time (the
            calibration's relative cost) times the dense time measured in the same run (the host's scale now).
        reanchored_error_pct: ``reanchored_ms``'s error against ``latency_ms``, in %.
        reason: Why nothing was measured.
        malformed: ``runtimes`` in the file was not an object of objects (read as empty): ``verify`` says
            the report is corrupt when it needs them. Not written.
    """

    where: str = MEASURED_HERE
    host: str | None = None
    input_shape: tuple[int, ...] | None = None
    runtimes: Mapping[str, RuntimeSpeed] = field(default_factory=dict)
    latency_ms: float | None = None
    runtime: str | None = None
    compared_runtime: str | None = None
    prediction_error_pct: float | None = None
    speedup_prediction_error_pct: float | None = None
    host_scale: float | None = None
    reanchored_ms: float | None = None
    reanchored_error_pct: float | None = None
    reason: str | None = None
    malformed: bool = field(default=False, compare=False)

    def _written(self) -> Iterator[str]:
        return (name for name in self._present("where", "runtimes") if name != "malformed")

    @classmethod
    def from_dict(cls, raw: Any, what: str = "measured") -> Measured:
        """Inverse of :meth:`to_dict` (malformed runtimes are flagged, not raised: see :attr:`malformed`)."""
        raw = report_object(raw, what)
        runs = raw.get("runtimes") or {}
        ok = isinstance(runs, Mapping) and all(isinstance(v, Mapping) for v in runs.values())
        kwargs = {f.name: raw.get(f.name) for f in fields(cls) if f.name not in ("runtimes", "malformed")}
        if isinstance(kwargs["input_shape"], list):
            kwargs["input_shape"] = tuple(kwargs["input_shape"])
        runtimes = {k: RuntimeSpeed.from_dict(v, f"measured.runtimes.{k}") for k, v in runs.items()} if ok else {}
        return cls(runtimes=runtimes, malformed=not ok, **kwargs)


class _Prepared:
    """A stand-in runtime for :func:`measure_vs_reference` whose runners were made beforehand."""

    @staticmethod
    def runner(model: Callable[[], object]) -> Callable[[], object]:
        return model


def measure_speedup(runtime: Any, model: Any, dense: Any, input_shape: tuple[int, ...], *,
                    attempts: int = SPEED_ATTEMPTS) -> SpeedMeasurement:
    """Time ``model`` against ``dense`` in interleaved rounds with ``runtime`` on this machine.

    Both are loaded once (``runtime.runner``) and alternate in batches
    (:data:`autoprune.costmodel.builder.measure.RELATIVE_PROTOCOL`); a run whose per-round ratios
    spread more than :data:`MAX_RATIO_SPREAD` is repeated, up to ``attempts`` runs, and the
    least spread one is kept (``noisy`` says when even that one spread too much).

    Args:
        runtime: ONNX Runtime (``runner``) or TVM (``local_runner``) on this machine.
        model: The pruned model (ONNX path; for TVM also an exported ``.so``).
        dense: The dense model (ONNX path); for TVM, ``dense_tvm.so`` beside it when the export built one
            (tuned as the pruned module was), else the ONNX file compiled here (untuned).
        input_shape: ``(1, C, H, W)``.
        attempts: Interleaved runs at most.

    Raises:
        ProfilingError: If either model cannot be loaded or run.
    """
    from autoprune.costmodel.builder import measure_vs_reference
    from autoprune.profiling.protocol import host_description

    make = getattr(runtime, "local_runner", None) or runtime.runner  # TVM: local_runner; ONNX Runtime: runner
    tuned_dense = Path(dense).with_name(DENSE_TVM)
    if getattr(runtime, "local_runner", None) is not None and tuned_dense.is_file():
        dense = str(tuned_dense)
    run_model = make(model, tuple(input_shape))
    run_dense = make(dense, tuple(input_shape))
    runs: list[tuple[float, Any]] = []
    while len(runs) < max(1, attempts) and (not runs or runs[-1][0] > MAX_RATIO_SPREAD):
        rel = measure_vs_reference(_Prepared(), run_model, run_dense)
        runs.append((rel.ratio_spread if math.isfinite(rel.ratio_spread) else math.inf, rel))
    spread, rel = min(runs, key=lambda r: r[0])
    tries = len(runs)
    return SpeedMeasurement(
        runtime=runtime.describe(), threads=runtime.threads, pruned_ms=rel.latency_ms, dense_ms=rel.reference_ms,
        speedup=1.0 / rel.ratio, ratio_spread=spread if math.isfinite(spread) else -1.0, rounds=rel.rounds,
        attempts=tries, noisy=not spread <= MAX_RATIO_SPREAD, host=host_description(),
    )


def local_runtimes(profile: Any, calibration_runtime: str = "", tvm_library: Path | None = None,
                   threads: dict[str, int] | None = None, tvm: TvmModule | None = None) -> dict[str, Any]:
    """The runtimes that time an export on this machine: name → ``(runtime, pruned model file name)``.

    ONNX Runtime runs with the thread count the calibration was measured with (so the
    measured time is comparable with the prediction), else the profile's; TVM with the
    profile's TVM target and threads, on the exported library (only when one was built and
    linked here, and apache-tvm is installed). ``threads`` overrides either (verify passes
    the counts the report recorded). ``tvm``, the export's module: a tuned one's target and tuning
    (so that TVM describes itself as tuned).
    """
    from autoprune.profiling import get_runtime

    threads = threads or {}
    out: dict[str, Any] = {}
    ort_opts = profile.runtime_options("onnxruntime") if "onnxruntime" in profile.runtimes else {}
    n = threads.get("onnxruntime") or threads_of(calibration_runtime) or ort_opts.get("threads") or 1
    out["onnxruntime"] = (get_runtime("onnxruntime", threads=int(n), providers=ort_opts.get("providers")),
                          "model.onnx")
    if tvm_library is not None and tvm_library.suffix == ".so" and "tvm" in profile.runtimes:
        opts, tuned = profile.runtime_options("tvm"), {}
        if tvm is not None and tvm.tuned and tvm.tuning is not None:
            from autoprune.profiling.tvm_runtime import TvmTuning

            t = tvm.tuning
            tuned = {"target": tvm.target, "tuning": TvmTuning(Path(t.database), int(t.trials), float(t.timeout_s))}
        try:
            rt = get_runtime("tvm", **{"target": opts["target"], **tuned},
                             threads=threads.get("tvm") or opts.get("threads"))
        except ImportError:  # apache-tvm missing: time what can be timed
            return out
        out["tvm"] = (rt, tvm_library.name)
    return out


def measure_local(out_dir: Path, profile: Any, provenance: Mapping[str, Any], predicted_ms: float,
                  predicted_speedup: float, input_shape: tuple[int, ...], tvm: TvmModule,
                  notes: list[str]) -> Measured:
    """Time model.onnx (and model_tvm.so) against dense.onnx here, one interleaved run per runtime.

    Args:
        out_dir: The export folder.
        profile: The target's (this machine's) profile.
        provenance: The prediction's provenance (its ``runtime`` is the calibration's).
        predicted_ms: The predicted latency of the pruned model.
        predicted_speedup: The predicted speedup over the dense model.
        input_shape: ``(1, C, H, W)``.
        tvm: The export's TVM module (timed where it was linked and checked here).
        notes: One line is added per runtime that could not be measured, or measured too noisily.
    """
    from autoprune.profiling.protocol import host_description

    lib = Path(tvm.path) if tvm.checked and tvm.format == "so" and tvm.path else None
    cal_runtime = str(provenance.get("runtime", ""))
    runtimes = local_runtimes(profile, cal_runtime, lib, tvm=tvm)
    runs: dict[str, RuntimeSpeed] = {}
    if "tvm" not in runtimes:
        why = "--no-tvm" if tvm.skipped else (tvm.reason or "no TVM module linked for this machine")
        runs["tvm"] = RuntimeSpeed(ok=False, reason=f"not measured: {why}")
    elif tvm.tuned and not tvm.dense_path:
        runs["tvm"] = RuntimeSpeed(ok=False, tuned=True, reason=f"not measured: {tvm.reason}")
        del runtimes["tvm"]
    for name, (rt, pruned) in runtimes.items():
        if name == "tvm" and not tvm.tuned:
            runs[name] = _untuned(rt, out_dir / pruned, runtimes["onnxruntime"], out_dir, input_shape, notes)
            continue
        runs[name] = _timed(name, rt, out_dir / pruned, out_dir / "dense.onnx", input_shape, notes)
        runs[name] = replace(runs[name], tuned=True) if name == "tvm" else runs[name]
    measured = Measured(host=host_description(), input_shape=tuple(input_shape), runtimes=runs)
    # the prediction describes the calibration's runtime: compare with that one
    name = "tvm" if cal_runtime.startswith("tvm") else "onnxruntime"
    rec = runs.get(name)
    if rec is None or rec.pruned_ms is None or rec.speedup is None:
        return measured
    # The calibration's milliseconds are the host's speed while it ran; the dense model timed in this run
    # gives the scale now (the relative cost still comes from the calibration).
    scale = rec.dense_ms / (predicted_speedup * predicted_ms) if rec.dense_ms and predicted_ms > 0 else None
    again = reanchored_ms(predicted_ms, predicted_speedup * predicted_ms, rec.dense_ms) if scale is not None else None
    return replace(measured, latency_ms=rec.pruned_ms, runtime=f"{rec.runtime} on {rec.host}",
                   compared_runtime=name, prediction_error_pct=100.0 * (predicted_ms / rec.pruned_ms - 1.0),
                   speedup_prediction_error_pct=100.0 * (predicted_speedup / rec.speedup - 1.0),
                   host_scale=scale, reanchored_ms=again,
                   reanchored_error_pct=100.0 * (again / rec.pruned_ms - 1.0) if again is not None else None)


def reanchored_ms(predicted_ms: float, predicted_dense_ms: float, measured_dense_ms: float) -> float:
    """A prediction re-anchored to the host's speed now: its share of the predicted dense time, times the dense
    model's time measured in the same run (the calibration's relative cost, this run's scale)."""
    return predicted_ms / predicted_dense_ms * measured_dense_ms if predicted_dense_ms > 0 else float("nan")


def _timed(name: str, runtime: Any, model: Path, dense: Path, input_shape: tuple[int, ...],
           notes: list[str]) -> RuntimeSpeed:
    """One runtime's measurement of ``model`` against ``dense`` (a failed or noisy one noted in ``notes``)."""
    m, reason = optional_step(notes, f"{name} measurement",
                              lambda: measure_speedup(runtime, str(model), str(dense), input_shape))
    if m is None:
        return RuntimeSpeed(ok=False, reason=reason)
    if not m.noisy:
        return RuntimeSpeed(ok=True, **m.to_dict())
    why = (f"too noisy: per-round ratios spread {m.ratio_spread:.0%} (> 25 %) over {m.attempts} "
           "interleaved runs; the figures are kept but verify will not compare against them")
    notes.append(f"{name} measurement: {why}")
    return RuntimeSpeed(ok=False, **m.to_dict(), reason=why)


def _untuned(runtime: Any, library: Path, onnxruntime: tuple[Any, str], out_dir: Path, input_shape: tuple[int, ...],
             notes: list[str]) -> RuntimeSpeed:
    """An untuned TVM module timed against ONNX Runtime on the same pruned model, in one interleaved run: how
    much slower it is (no speedup: against an untuned dense it would mean nothing)."""
    from autoprune.costmodel.builder import measure_vs_reference
    from autoprune.profiling.protocol import host_description

    ort, onnx_name = onnxruntime

    def measure() -> Any:
        run_tvm = runtime.local_runner(str(library), tuple(input_shape))
        return measure_vs_reference(_Prepared(), run_tvm, ort.runner(str(out_dir / onnx_name), tuple(input_shape)))

    rel, reason = optional_step(notes, "tvm measurement", measure)
    if rel is None:
        return RuntimeSpeed(ok=False, tuned=False, reason=reason)
    spread = rel.ratio_spread if math.isfinite(rel.ratio_spread) else -1.0
    return RuntimeSpeed(
        ok=False, runtime=runtime.describe(), threads=runtime.threads, pruned_ms=rel.latency_ms, ratio_spread=spread,
        rounds=rel.rounds, attempts=1, noisy=not 0 <= spread <= MAX_RATIO_SPREAD, host=host_description(),
        tuned=False, onnxruntime_ms=rel.reference_ms, vs_onnxruntime=rel.ratio,
        reason=(f"untuned: {rel.ratio:.3g}x ONNX Runtime's time ({ort.describe()}, {ort.threads} thread(s)), "
                "and no speedup against an untuned dense; tune with --tvm-tune-trials N, or deploy with ONNX Runtime"))
