"""ONNX Runtime as a measuring runtime.

Sessions are created with a fixed number of intra-op threads, one inter-op
thread, sequential execution and every graph optimisation (``ORT_ENABLE_ALL``),
so that a latency means the same thing on every call. Providers the profile asks
for but this onnxruntime build lacks are dropped with a warning, and the fallback
is written into ``Measurement.runtime``.

Session creation is cheap (a few milliseconds for a single-layer graph), so the
lookup-table builder can call :meth:`OnnxRuntime.measure` on hundreds of small
graphs.

With an ``energy_sensor`` (:mod:`autoprune.hardware.energy`), :meth:`OnnxRuntime.measure_relative`
also reads the energy of the candidate around a run of it: the one energy path, used here (a local
GPU through NVML, RAPL on x86) and by the device server on a board (INA3221 rails).
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence
from typing import Any

from autoprune.errors import ConfigError, ProfilingError
from autoprune.profiling.base import RUNTIMES, Runtime, make_inputs, model_bytes, normalise_shapes
from autoprune.profiling.interleave import measure_interleaved
from autoprune.profiling.protocol import DEFAULT_PROTOCOL, Measurement, ProtocolSettings, measure_callable
from autoprune.registry import lazy_import

__all__ = ["OnnxRuntime", "create_session"]

log = logging.getLogger(__name__)

_ORT_TYPES = {
    "tensor(float)": "float32",
    "tensor(float16)": "float16",
    "tensor(double)": "float64",
    "tensor(int64)": "int64",
    "tensor(int32)": "int32",
    "tensor(int8)": "int8",
    "tensor(uint8)": "uint8",
    "tensor(bool)": "bool",
}


def _resolve_providers(requested: Sequence[str] | None) -> tuple[list[str], list[str]]:
    ort = lazy_import("onnxruntime")
    available = ort.get_available_providers()
    requested = list(requested or ["CPUExecutionProvider"])
    usable = [p for p in requested if p in available]
    missing = [p for p in requested if p not in available]
    if missing:
        warnings.warn(
            f"onnxruntime {ort.__version__} here lacks {', '.join(missing)}; "
            f"measuring with {', '.join(usable or ['CPUExecutionProvider'])} instead",
            RuntimeWarning,
            stacklevel=3,
        )
    if "CPUExecutionProvider" not in usable:
        usable.append("CPUExecutionProvider")
    return usable, missing


def create_session(
    model: Any,
    *,
    threads: int | None = 1,
    providers: Sequence[str] | None = None,
    optimization: str = "all",
):
    """Create an ``onnxruntime.InferenceSession`` with the measuring settings.

    Args:
        model: ONNX path, serialised bytes or ``onnx.ModelProto``.
        threads: Intra-op threads (``None``: onnxruntime's default).
        providers: Execution providers in priority order; unavailable ones are
            dropped with a warning and CPU is always appended as a fallback.
        optimization: ``"all"`` (default), ``"extended"``, ``"basic"`` or ``"disable"``.

    Returns:
        ``(session, providers_used, providers_missing)``.

    Raises:
        ProfilingError: If onnxruntime rejects the model.
    """
    ort = lazy_import("onnxruntime")
    levels = {
        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
        "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    }
    if optimization not in levels:
        raise ConfigError(f"unknown optimization level {optimization!r}; valid: {', '.join(levels)}")
    so = ort.SessionOptions()
    if threads is not None:
        so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = levels[optimization]
    so.log_severity_level = 3
    usable, missing = _resolve_providers(providers)
    try:
        sess = ort.InferenceSession(model_bytes(model), sess_options=so, providers=usable)
    except Exception as exc:  # noqa: BLE001 - foreign library errors become ProfilingError
        raise ProfilingError(f"onnxruntime cannot load the model: {str(exc).splitlines()[0]}") from None
    return sess, sess.get_providers(), missing


def _feeds(sess: Any, input_shapes: Any, seed: int) -> tuple[Any, dict[str, Any]]:
    """``(shapes, feeds)``: deterministic inputs for every input of an onnxruntime session."""
    inputs = [(i.name, tuple(d if isinstance(d, int) else None for d in i.shape),
               _ORT_TYPES.get(i.type, "float32")) for i in sess.get_inputs()]
    shapes = normalise_shapes(inputs, input_shapes)
    return shapes, make_inputs(inputs, shapes, seed=seed)


@RUNTIMES.register("onnxruntime")
class OnnxRuntime(Runtime):
    """Measure ONNX graphs with ONNX Runtime on this machine.

    Args:
        threads: Intra-op threads (default 1: deterministic, and what the
            per-layer tables use).
        providers: Execution providers in priority order (default CPU).
        optimization: Graph optimisation level (default ``"all"``).
        protocol: Measurement protocol settings.
        energy_sensor: A :class:`~autoprune.hardware.energy.EnergySensor` read around each
            :meth:`measure_relative` candidate (``None``: energy is not measured).
        energy_min_time_s: How long each energy reading runs the candidate.
    """

    name = "onnxruntime"

    def __init__(
        self,
        *,
        threads: int | None = 1,
        providers: Sequence[str] | None = None,
        optimization: str = "all",
        protocol: ProtocolSettings = DEFAULT_PROTOCOL,
        energy_sensor: Any = None,
        energy_min_time_s: float = 0.5,
    ) -> None:
        super().__init__(threads=threads, protocol=protocol)
        self.providers = list(providers or ["CPUExecutionProvider"])
        self.optimization = optimization
        if not energy_min_time_s > 0:
            raise ConfigError(f"energy_min_time_s must be positive seconds, got {energy_min_time_s!r}")
        self.energy_sensor = energy_sensor
        self.energy_min_time_s = float(energy_min_time_s)

    @property
    def energy_source(self) -> str | None:
        """The sensor read around measurements (e.g. ``ina3221:VDD_IN:...``), or ``None``."""
        return getattr(self.energy_sensor, "source", None) if self.energy_sensor is not None else None

    def describe(self, used: Sequence[str] | None = None, missing: Sequence[str] = ()) -> str:
        """Return ``onnxruntime-<version>/<providers used>[ (fallback: X unavailable)]``."""
        ort = lazy_import("onnxruntime")
        if used is None:
            used, missing = _resolve_providers(self.providers)
        # CPU is always appended as a fallback; name the provider that runs the graph.
        text = f"onnxruntime-{ort.__version__}/{used[0]}"
        if missing:
            text += f" (fallback: {', '.join(missing)} unavailable)"
        return text

    def measure(
        self,
        model: Any,
        input_shapes: dict[str, tuple[int, ...]] | tuple[int, ...] | None = None,
        *,
        seed: int = 0,
        **protocol_kwargs: Any,
    ) -> Measurement:
        """Measure one inference of ``model`` (see :meth:`Runtime.measure`)."""
        settings = self.settings(**protocol_kwargs)
        run, used, missing = self._load(model, input_shapes, seed)
        return measure_callable(
            run,
            **settings.callable_kwargs(),
            runtime=self.describe(used, missing),
            threads=self.threads,
        )

    def runner(
        self,
        model: Any,
        input_shapes: dict[str, tuple[int, ...]] | tuple[int, ...] | None = None,
        *,
        seed: int = 0,
    ) -> Any:
        """Load ``model`` once and return a zero-argument callable that runs one inference.

        For measurements that interleave several models in one time window (see
        :func:`autoprune.costmodel.builder.measure.measure_vs_reference`).

        Raises:
            ProfilingError: If the model cannot be loaded or run.
        """
        return self._load(model, input_shapes, seed)[0]

    def measure_relative(self, model: Any, reference: Any, settings: dict[str, Any] | None = None) -> dict[str, Any]:
        """Time ``model`` against ``reference`` in interleaved rounds (:func:`measure_interleaved`).

        Args:
            model: The candidate (ONNX path, bytes or proto).
            reference: The reference model, or a runner already made for it (:meth:`runner`).
            settings: ``rounds``, ``warmup``, ``min_time_s``, ``min_repeats``, ``timeout_s``.

        Returns:
            :func:`measure_interleaved`'s dict plus ``"energy"``: the candidate's
            :class:`~autoprune.hardware.energy.EnergyReading` as a dict when a sensor is set, else ``None``.

        Raises:
            ProfilingError: If a model cannot run, a timing is bad, or the sensor reading fails.
        """
        cfg = dict(settings or {})
        run_a = self.runner(model)
        run_b = reference if callable(reference) else self.runner(reference)
        keys = ("rounds", "warmup", "min_time_s", "min_repeats", "timeout_s")
        out: dict[str, Any] = measure_interleaved(run_a, run_b, **{k: cfg[k] for k in keys if k in cfg}).to_dict()
        out["energy"] = None
        if self.energy_sensor is not None:
            from autoprune.hardware.energy import measure_energy

            out["energy"] = measure_energy(run_a, self.energy_sensor, warmup=1,
                                           min_time_s=self.energy_min_time_s).to_dict()
        return out

    def _load(self, model: Any, input_shapes: Any, seed: int) -> tuple[Any, list[str], list[str]]:
        """``(run one inference, providers used, providers missing)``, after one checked run."""
        sess, used, missing = create_session(
            model, threads=self.threads, providers=self.providers, optimization=self.optimization
        )
        shapes, feeds = _feeds(sess, input_shapes, seed)
        run = sess.run
        try:
            run(None, feeds)
        except Exception as exc:  # noqa: BLE001 - foreign library errors become ProfilingError
            raise ProfilingError(
                f"onnxruntime failed to run the model with shapes {shapes}: {str(exc).splitlines()[0]}"
            ) from None
        return (lambda: run(None, feeds)), used, missing
