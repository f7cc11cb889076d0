"""A whole ``autoprune profile`` run: the model and data, the runtime, the calibration, the file.

:func:`profile_target` is what the ``profile`` command hands off to. It takes the target's loaded
:class:`~autoprune.hardware.records.HardwareProfile` (resolved once, at the command's edge, and
passed down as an object) and a :class:`ProfileJob` record of what to measure, and

1. picks the runtime that measures: ONNX Runtime or TVM, on this machine or on a device over RPC
   (``autoprune device serve`` or a TVM RPC server), with the checks that fail in one line before
   any work (a remote target without ``--rpc``, a GPU target whose onnxruntime lacks the GPU
   providers, an energy sensor where none can be read) and the energy sensor read here;
2. builds the model exactly as ``search`` does (its data's classes, channels and input size);
3. calibrates (:func:`~autoprune.costmodel.builder.calibrate.calibrate`) inside a
   :class:`~autoprune.hardware.host_state.HostMonitor` window (this machine's load average, CPU
   steal and busy share, stored in the calibration's ``error.host_state``; a busy host is a warning,
   or with ``strict`` a refusal that saves nothing), saves the calibration and loads it back (the
   checksum round trip);
4. returns a :class:`ProfileOutcome` record, which the command prints.

torch, onnxruntime and TVM are imported inside the functions, never at import time.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from autoprune.errors import ConfigError
from autoprune.hardware.records import GPU_PROVIDERS

if TYPE_CHECKING:
    from autoprune.hardware.host_state import HostState
    from autoprune.hardware.records import HardwareProfile
    from autoprune.profiling import Runtime

__all__ = ["MeasuredEnergy", "ProfileJob", "ProfileOutcome", "ProgressFactory", "ProgressFn", "profile_target",
           "runtime_for_job"]

#: ``progress(done, total, what)``: one more measurement done out of ``total``.
ProgressFn = Callable[[int, int, str], None]
#: ``progress_for(calibration name, input side in px, target name)``: a context manager around the
#: measurements that yields the :data:`ProgressFn` (the CLI opens a tqdm bar and closes it on exit).
ProgressFactory = Callable[[str, int, str], AbstractContextManager[ProgressFn | None]]
#: How long a device server keeps one calibration's session (each step has its own, shorter bound).
DEVICE_SESSION_TIMEOUT_S = 900.0


@dataclass(frozen=True)
class ProfileJob:
    """What one ``autoprune profile`` run measures, as given (the target is passed apart, loaded).

    Attributes:
        model_ref: The model as ``search`` takes it: a zoo name, ``package.module:function`` or
            ``file.py:function``.
        data_ref: The data the model is searched on (sets the classes and the default input size).
        input_size_px: Square input side (``None``: :func:`autoprune.models.natural_input_size`).
        checkpoint: Dense state dict to check the model against (``None``: random weights).
        seed: Seed of the data split and of the random plans.
        runtime: ``"onnxruntime"`` or ``"tvm"``.
        rpc: ``HOST:PORT`` of the device's server (``autoprune device serve`` or a TVM RPC server).
        rpc_tracker: ``HOST:PORT`` of a TVM RPC tracker (with ``rpc_key``).
        rpc_key: Device key registered with the tracker.
        energy_sensor: Sensor read here (``auto``, ``none``, ``ina3221[:RAIL]``, ``rapl``,
            ``nvml[:INDEX]``; ``None``: NVML on a GPU of this machine, else none).
        threads: Intra-op threads of the runtime.
        plans: Random plans measured end to end (some are held out).
        grid: Kept-channel fractions per layer, each in (0, 1].
        round_to: Channel alignment of the grid and the random plans (1: none, as the default spaces).
        min_channels: The fewest channels a plan keeps per group (the space's ``min_channels``).
        max_ratio: The largest channel ratio measured (the space's largest ratio).
        max_cv: Noise bound of each isolated kernel measurement as a robust CV (``None``: 0.2).
        tvm_tune_trials: With ``runtime="tvm"``: tune each measured model with MetaSchedule first, about this
            many trials per model, into ``results/tvm-tuning/<target>/<model>`` (0: untuned).
        tvm_tune_timeout_s: Bound on each model's tuning, s.
        allow_untuned: Calibrate on untuned TVM kernels (refused without it: nobody deploys them).
        strict: Refuse to save a calibration measured on a busy host
            (:func:`~autoprune.hardware.host_state.host_busy_reason`; never on an RPC target, whose
            device this machine's numbers do not describe).
    """

    model_ref: str = "vgg11"
    data_ref: str = "digits"
    input_size_px: int | None = None
    checkpoint: str | None = None
    seed: int = 0
    runtime: str = "onnxruntime"
    rpc: str | None = None
    rpc_tracker: str | None = None
    rpc_key: str | None = None
    energy_sensor: str | None = None
    threads: int = 1
    plans: int = 96
    grid: tuple[float, ...] = (0.125, 0.25, 0.5, 0.75, 1.0)
    round_to: int = 1
    min_channels: int = 4
    max_ratio: float = 0.95
    max_cv: float | None = None
    tvm_tune_trials: int = 0
    tvm_tune_timeout_s: float = 600.0
    allow_untuned: bool = False
    strict: bool = False

    @property
    def remote(self) -> bool:
        """Measured on a device over RPC (``rpc`` or ``rpc_tracker`` given)."""
        return bool(self.rpc or self.rpc_tracker)


@dataclass(frozen=True)
class MeasuredEnergy:
    """The power figure fitted to an energy sensor's readings of the whole models.

    Attributes:
        power_w: Fitted power, W (``energy_mj = power_w x latency_ms``).
        sensor: Sensor kind (``ina3221``, ``rapl``, ``nvml``).
        rail: The rail (or RAPL domain, or GPU) read.
        fit_models: Models the power was fitted on.
        heldout_mape: Mean absolute error on the held-out models, as a fraction (``None``: none held out).
    """

    power_w: float
    sensor: str
    rail: str
    fit_models: int
    heldout_mape: float | None


@dataclass(frozen=True)
class ProfileOutcome:
    """What :func:`profile_target` wrote and how well the fit predicts (the ``profile`` summary).

    Attributes:
        path: The calibration file written (and loaded back).
        target: Target name.
        runtime: The runtime measured, as the calibration records it.
        kernel_points: Isolated kernel measurements stored.
        layer_configs: Distinct layer configurations with a lookup table.
        plans: Random plans measured end to end.
        calibration_s: Wall time of the calibration, s.
        rejected_points: Isolated measurements rejected as too noisy (not stored).
        class_scales: Op class -> in-context kernel scale (``None``: the global correction was fitted).
        kernel_scale_range: Smallest and largest per-kernel scale (``None`` with the global correction).
        alpha: Global correction factor (with the global correction).
        power: Global correction exponent (with the global correction).
        overhead_ms: Fitted per-inference overhead, ms.
        energy: The measured power fit (``None``: energy stays modelled from the profile).
        dense_reference_ms: The dense model's median time over the calibration, ms.
        dense_reference_range_ms: Its lowest and highest time over the calibration, ms.
        heldout_plans: Random plans held out of the fit.
        heldout_mape: Their mean absolute percentage error, as a fraction (``None``: none held out).
        heldout_within_10pct: Share of them predicted within 10 %, as a fraction.
        heldout_spearman: Spearman rank correlation on them (``None`` under three).
        heldout_by_decile: The held-out error per latency decile, fastest first
            (:func:`~autoprune.costmodel.builder.calibrate.error_by_decile`).
        host_state: This machine's load over the calibration (``None``: not recorded).
        host_is_target: Whether ``host_state`` describes the target (``False`` over RPC: it is the
            client's, this machine's, not the device's).
        host_warning: Why the target's host was busy (:func:`~autoprune.hardware.host_state.host_busy_reason`;
            ``None``: quiet, or measured over RPC).
    """

    path: Path
    target: str
    runtime: str
    kernel_points: int
    layer_configs: int
    plans: int
    calibration_s: float
    rejected_points: tuple[str, ...]
    class_scales: Mapping[str, float] | None
    kernel_scale_range: tuple[float, float] | None
    alpha: float
    power: float
    overhead_ms: float
    energy: MeasuredEnergy | None
    dense_reference_ms: float
    dense_reference_range_ms: tuple[float, float]
    heldout_plans: int
    heldout_mape: float | None
    heldout_within_10pct: float | None
    heldout_spearman: float | None
    heldout_by_decile: tuple[dict[str, Any], ...] = ()
    host_state: HostState | None = None
    host_is_target: bool = True
    host_warning: str | None = None


def profile_target(profile: HardwareProfile, job: ProfileJob, *, progress: ProgressFactory | None = None,
                   echo: Callable[[str], None] = print) -> ProfileOutcome:
    """Measure ``job``'s model on ``profile``'s target; write, check and summarise its calibration.

    Args:
        profile: The target, loaded (:func:`autoprune.hardware.load_profile`); never resolved again here.
        job: What to measure and how (model, data, runtime, RPC endpoint, sensor, plans, grid...).
        progress: ``progress(name, input side px, target)`` returning a context manager around the
            measurements that yields a ``progress(done, total, what)`` callback (``None``: no progress).
        echo: Where a notice goes (the energy staying modelled when the default NVML sensor is absent).

    Returns:
        A :class:`ProfileOutcome` of the file written and its error.

    Raises:
        ConfigError: A remote target without ``job.rpc``, an energy sensor with TVM or over RPC, a GPU
            target whose onnxruntime lacks the GPU providers, or a model that does not fit its data.
        ProfilingError: A device that cannot be reached, a measurement that fails, or with ``job.strict``
            a host busy during the calibration (nothing saved).
        NoisyMeasurementError: Too many isolated measurements too noisy to store.
    """
    from types import MappingProxyType

    from autoprune.costmodel.calibration import (
        calibration_name,
        calibration_path,
        load_calibration,
        save_calibration,
    )
    from autoprune.data import load_data_for
    from autoprune.errors import ProfilingError
    from autoprune.hardware.host_state import HostMonitor, host_busy_reason
    from autoprune.models import build_model, load_checkpoint
    from autoprune.train import check_model_fits

    from .calibrate import CalibrationOptions, calibrate

    runtime = runtime_for_job(profile, job, echo=echo)
    # The model exactly as `search` builds it: its data's classes, channels and input size.
    data = load_data_for(job.model_ref, job.data_ref, input_size=job.input_size_px, seed=job.seed)
    size = int(data.input_shape[-1])
    dense = build_model(job.model_ref, num_classes=data.num_classes, in_channels=data.input_shape[0], input_size=size)
    if job.checkpoint is not None:
        load_checkpoint(dense, job.checkpoint)
    check_model_fits(dense, data)
    name = calibration_name(job.model_ref)
    options = CalibrationOptions(plans=job.plans, grid=job.grid, seed=job.seed, round_to=job.round_to,
                                 min_channels=job.min_channels, max_ratio=job.max_ratio, max_cv=job.max_cv,
                                 num_classes=data.num_classes, input_size_px=size,
                                 in_channels=data.input_shape[0])
    bar = progress(name, size, profile.name) if progress is not None else contextlib.nullcontext(None)
    monitor = HostMonitor()
    with bar as tick, monitor:
        result = calibrate(name, options, target=profile, runtime=runtime, model=dense, progress=tick)
    host = monitor.state
    # Over RPC this machine is only the client: its numbers are recorded as its own, never judged.
    warning = None if job.remote else host_busy_reason(host, own_threads=job.threads)
    if warning is not None and job.strict:
        raise ProfilingError(f"calibration not saved (--strict): {warning}")
    path = calibration_path(profile.name, name, size)
    error = {**result.error, "host_state": {"describes": "rpc-client" if job.remote else "target",
                                            **host.to_dict(), "busy_reason": warning}}
    save_calibration(result.model, path, model_name=name, input_shape=tuple(data.input_shape),
                     runtime=result.runtime, status="measured", error=error,
                     extra={"grid": list(job.grid), "plans": job.plans, "seed": job.seed, "round_to": job.round_to,
                            "min_channels": job.min_channels, "max_ratio": job.max_ratio,
                            "kernel_points": result.kernel_points, "calibration_seconds": result.seconds,
                            "model_ref": job.model_ref, "data": job.data_ref,
                            "template": result.model.template.to_dict()})
    model = load_calibration(path, target=result.model.target)  # round-trip check (checksum), same target facts
    e = result.error
    fit = e.get("whole_model_fit", {})
    energy = e.get("energy")
    lo, hi = e["dense_reference_range_ms"]
    return ProfileOutcome(
        path=path, target=profile.name, runtime=result.runtime, kernel_points=result.kernel_points,
        layer_configs=len(model.tables), plans=job.plans, calibration_s=result.seconds,
        rejected_points=tuple(e["rejected_points"]),
        class_scales=MappingProxyType(dict(fit["class_scales"])) if "class_scales" in fit else None,
        kernel_scale_range=(tuple(fit["kernel_scale_range"][:2]) if "class_scales" in fit else None),
        alpha=model.alpha, power=model.power, overhead_ms=model.overhead_ms,
        energy=None if not energy else MeasuredEnergy(
            power_w=energy["power_w"], sensor=energy["sensor"], rail=energy["rail"], fit_models=energy["n_fit"],
            heldout_mape=energy.get("heldout_mape")),
        dense_reference_ms=e["dense_reference_ms"], dense_reference_range_ms=(lo, hi),
        heldout_plans=e["n_heldout"], heldout_mape=e["heldout_mape"],
        heldout_within_10pct=e.get("heldout_within_10pct"), heldout_spearman=e["heldout_spearman"],
        heldout_by_decile=tuple(e.get("heldout_by_decile") or ()),
        host_state=host, host_is_target=not job.remote, host_warning=warning)


def runtime_for_job(profile: HardwareProfile, job: ProfileJob, *, echo: Callable[[str], None] = print) -> Runtime:
    """The runtime ``job`` measures ``profile``'s target with: ONNX Runtime or TVM, here or over RPC.

    Args:
        profile: The target, loaded.
        job: The runtime, RPC endpoint, threads and energy sensor asked for.
        echo: Where the notice goes when the default NVML sensor of a GPU here cannot be read.

    Raises:
        ConfigError: A target that is not this machine without an RPC endpoint, an energy sensor
            with TVM or over RPC, or a GPU target whose onnxruntime lacks the GPU providers.
        ProfilingError: A device server that cannot be reached (checked before any work).
    """
    from autoprune.profiling.base import runtime_for_profile
    from autoprune.profiling.rpc import RPCConfig

    if not profile.is_here and not job.remote:
        raise ConfigError(f"{profile.name} is not this machine: start `autoprune device serve` on it and give --rpc "
                          "HOST:PORT (or --rpc-tracker HOST:PORT --rpc-key KEY), or profile --target local")
    if job.runtime != "tvm" and job.tvm_tune_trials:
        raise ConfigError("--tvm-tune-trials goes with --runtime tvm (ONNX Runtime has nothing to tune)")
    if job.runtime == "tvm":
        if job.energy_sensor not in (None, "none"):
            raise ConfigError("--energy-sensor goes with --runtime onnxruntime (TVM measurements read no sensor)")
        rpc = RPCConfig.from_args(job.rpc, job.rpc_tracker, job.rpc_key) if job.remote else None
        # The target's own TVM target (e.g. nvidia/jetson-nano + its aarch64 host), not this host's.
        return runtime_for_profile(profile, "tvm", threads=job.threads, rpc=rpc, **_tvm_tuning(profile, job))
    if job.remote:
        from autoprune.device.client import device_runtime_for_profile

        if job.energy_sensor not in (None, "none"):
            raise ConfigError("--energy-sensor is for measuring here; on a device, give it to `autoprune device "
                              "serve --energy-sensor ...`")
        # One session serves many measurements; each step has its own bound (protocol timeout + margin).
        rpc = RPCConfig.from_args(job.rpc, job.rpc_tracker, job.rpc_key, session_timeout_s=DEVICE_SESSION_TIMEOUT_S)
        runtime = device_runtime_for_profile(profile, rpc, threads=job.threads)
        runtime.info()  # unreachable, or not `autoprune device serve`: one line now, before any work
        return runtime
    _check_gpu_providers(profile)
    sensor = _sensor_here(profile, job.energy_sensor, echo)
    if profile.here == "cpu":
        from autoprune.profiling import get_runtime

        return get_runtime("onnxruntime", threads=job.threads, energy_sensor=sensor)
    return runtime_for_profile(profile, "onnxruntime", threads=job.threads, energy_sensor=sensor)


def _tvm_tuning(profile: HardwareProfile, job: ProfileJob) -> dict[str, Any]:
    """The TVM runtime's tuning options for ``job``: its target for this CPU and the tuning, or nothing when
    untuned kernels are allowed.

    Raises:
        ConfigError: Neither tuning nor ``allow_untuned``; tuning over RPC.
    """
    if not job.tvm_tune_trials:
        if job.allow_untuned:
            return {}
        raise ConfigError("--runtime tvm would calibrate on untuned TVM kernels (tens of times slower than ONNX "
                          "Runtime on a CPU; nobody deploys them): give --tvm-tune-trials N to tune each measured "
                          "model with MetaSchedule first, or --allow-untuned to calibrate on them anyway")
    if job.remote:
        raise ConfigError("--tvm-tune-trials measures its candidates on this machine, and tuning over RPC is not "
                          "supported: profile the device's untuned kernels with --allow-untuned instead")
    from autoprune.costmodel.calibration import calibration_name
    from autoprune.io import results_dir
    from autoprune.profiling.tvm_runtime import TvmTuning, for_this_cpu
    from autoprune.profiling.tvm_tune import tuning_dir

    spec = for_this_cpu(profile.runtime_options("tvm")["target"])
    root = results_dir() / "tvm-tuning"
    return {"target": spec, "tuning": TvmTuning(work_dir=tuning_dir(root, spec, calibration_name(job.model_ref)),
                                                trials=job.tvm_tune_trials, timeout_s=job.tvm_tune_timeout_s)}


def _check_gpu_providers(profile: HardwareProfile) -> None:
    """One line if the profile runs ONNX Runtime on GPU providers that this onnxruntime lacks."""
    from autoprune.registry import lazy_import

    options = profile.runtime_options("onnxruntime")
    wanted_gpu = [p for p in options.get("providers", ()) if p in GPU_PROVIDERS]
    if not wanted_gpu:
        return
    ort = lazy_import("onnxruntime")
    if not set(wanted_gpu) & set(ort.get_available_providers()):
        raise ConfigError(f"target {profile.name} runs ONNX Runtime on {', '.join(wanted_gpu)}, which onnxruntime "
                          f"{ort.__version__} here lacks (it has {', '.join(ort.get_available_providers())}); "
                          "on a machine with an NVIDIA GPU: pip uninstall -y onnxruntime && pip install "
                          "onnxruntime-gpu nvidia-ml-py (the two onnxruntime wheels cannot share an environment)")


def _sensor_here(profile: HardwareProfile, spec: str | None, echo: Callable[[str], None]) -> Any:
    """The energy sensor read on this machine: ``spec``'s, or by default NVML on a GPU here (else none)."""
    from autoprune.hardware.sensor_spec import sensor_from_spec

    if spec is None and profile.here == "gpu":
        from autoprune.errors import MissingDependencyError, ProfilingError

        try:
            return sensor_from_spec("nvml")
        except (MissingDependencyError, ProfilingError) as exc:
            echo(f"energy stays modelled: {str(exc).splitlines()[0]}")
            return None
    return sensor_from_spec(spec or "none")
