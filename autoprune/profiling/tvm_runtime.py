"""Apache TVM (Relax) as a measuring runtime, locally or on a remote board over RPC.

The path: ``tvm.relax.frontend.onnx.from_onnx`` → ``DecomposeOpsForInference`` →
``tvm.compile(mod, target=Target(<JSON dict>), relax_pipeline=<target's default>)``
→ ``relax.VirtualMachine`` → ``vm.time_evaluator`` with the stateful API
(``set_input`` + ``invoke_stateful``), whose per-repeat means go through
:func:`~autoprune.profiling.protocol.measure_samples`.

Code is untuned unless the runtime is given a :class:`TvmTuning`: then each model's tasks are
tuned with MetaSchedule into its database first (:mod:`autoprune.profiling.tvm_tune`; an untuned
CPU module is tens of times slower than ONNX Runtime). Targets are JSON dicts, never strings, so
that profiles stay explicit; two traps of TVM 0.27 are refused:

* ``{"kind": ..., "tag": ...}``: when ``kind`` is present TVM silently ignores the
  tag (``nvidia/jetson-nano`` would compile for sm_50 instead of sm_53); give the
  tag alone, e.g. ``{"tag": "nvidia/jetson-nano", "host": {...}}``.
* ``"mcpu": "native"``: TVM 0.27 quietly builds it as generic code; name the CPU
  (:func:`for_this_cpu`).

Over RPC the library is compiled here, exported with ``export_library`` (with
``<triple>-g++`` as cross compiler when the target triple is not this
machine's), uploaded, loaded and timed on the remote device.
"""

from __future__ import annotations

import os
import platform
import shutil
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from autoprune.errors import AutopruneError, ConfigError, ProfilingError
from autoprune.profiling.base import (
    RUNTIMES,
    Runtime,
    graph_inputs,
    load_onnx,
    make_inputs,
    normalise_shapes,
)
from autoprune.profiling.protocol import (
    DEFAULT_PROTOCOL,
    Measurement,
    ProtocolSettings,
    cpu_count,
    host_description,
    measure_samples,
)
from autoprune.profiling.rpc import RPCConfig, connect, run_with_watchdog
from autoprune.registry import lazy_import

__all__ = ["TvmRuntime", "TvmTuning", "for_this_cpu", "make_target"]

_HOST_ARCH = {"x86_64": "x86_64", "amd64": "x86_64", "aarch64": "aarch64", "arm64": "aarch64"}


@dataclass(frozen=True)
class TvmTuning:
    """MetaSchedule tuning of every model a :class:`TvmRuntime` compiles, before it is built.

    Attributes:
        work_dir: The database folder, one per target and model
            (:func:`~autoprune.profiling.tvm_tune.tuning_dir`): tasks it covers are not measured again.
        trials: About the trials per compiled model, shared out over its tasks by FLOPs.
        timeout_s: Bound on each model's tuning (the batch in flight at the deadline ends).
        progress: One line per measured batch on stderr.
    """

    work_dir: Path
    trials: int
    timeout_s: float = 600.0
    progress: bool = False


def for_this_cpu(spec: Mapping[str, Any]) -> dict[str, Any]:
    """``spec`` with this machine's CPU as ``mcpu`` when it is an ``llvm`` target that names none (its generic
    x86-64 code has no AVX: what a tuned module for this machine should not be)."""
    if spec.get("kind") != "llvm" or spec.get("mcpu") or spec.get("mtriple"):
        return dict(spec)
    tvm = lazy_import("tvm", "apache-tvm")
    return {**spec, "mcpu": str(tvm.target.codegen.llvm_get_system_cpu())}


def make_target(spec: Mapping[str, Any]):
    """Build a ``tvm.target.Target`` from a JSON dict (with an optional ``"host"`` dict).

    Raises:
        ConfigError: If ``spec`` is a string, mixes ``kind`` and ``tag``, uses
            ``mcpu: native``, or TVM rejects it.
    """
    if isinstance(spec, str) or not isinstance(spec, Mapping):
        raise ConfigError(f"TVM targets must be JSON dicts, e.g. {{\"kind\": \"llvm\", \"num-cores\": 2}}; "
                          f"got {spec!r}")
    for part in (spec, spec.get("host") if isinstance(spec.get("host"), Mapping) else {}):
        if "tag" in part and "kind" in part:
            raise ConfigError(f"TVM target {dict(part)} has both 'tag' and 'kind'; TVM 0.27 then ignores the tag. "
                              "Give the tag alone, e.g. {\"tag\": \"nvidia/jetson-nano\", \"host\": {...}}")
        if part.get("mcpu") == "native":
            raise ConfigError("TVM target uses mcpu=native (TVM 0.27 builds it as generic code, and it is not "
                              "reproducible); name the CPU")
    tvm = lazy_import("tvm", "apache-tvm")
    try:
        return tvm.target.Target(dict(spec))
    except Exception as exc:  # noqa: BLE001 - foreign library errors become ProfilingError
        raise ConfigError(f"TVM rejects target {dict(spec)}: {str(exc).strip().splitlines()[-1]}") from None


def _last_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[-1] if lines else type(exc).__name__


def _target_triple(target) -> str:
    host = target.host or target
    return str(host.attrs.get("mtriple", "")) if host.kind.name == "llvm" else ""


def _cross_compiler(target):
    """Return an ``fcompile`` for export, or ``None`` when the host compiler fits."""
    triple = _target_triple(target)
    arch = triple.split("-")[0] if triple else ""
    here = _HOST_ARCH.get(platform.machine().lower(), platform.machine().lower())
    if not arch or _HOST_ARCH.get(arch, arch) == here:
        return None
    prefix = "aarch64-linux-gnu" if arch in ("aarch64", "arm64") else "-".join(triple.split("-")[:3])
    compiler = shutil.which(f"{prefix}-g++") or shutil.which(f"{prefix}-gcc")
    if compiler is None:
        raise ProfilingError(f"target triple {triple} needs a cross compiler ({prefix}-g++) to export the library, "
                             f"and none is installed here; install one (`apt install g++-{prefix}`) or compile on "
                             "the board")
    cc = lazy_import("tvm.support.cc", "apache-tvm")
    return cc.cross_compiler(compiler)


@RUNTIMES.register("tvm")
class TvmRuntime(Runtime):
    """Measure ONNX graphs compiled by TVM Relax, here or on an RPC device.

    Args:
        target: TVM target as a JSON dict (default ``{"kind": "llvm", "num-cores": threads}``).
        threads: Runtime threads (TVM thread pool size; default: the target's
            ``num-cores`` or this machine's CPU count).
        rpc: Where to run remotely; ``None`` measures on this machine.
        protocol: Measurement settings.
        tuning: Tune each compiled model with MetaSchedule first (``None``: untuned); measured here, so
            not with ``rpc``. :attr:`tunings` collects what each tuning did.

    Raises:
        ConfigError: ``tuning`` with ``rpc``, or with fewer than 1 trial.
    """

    name = "tvm"

    def __init__(
        self,
        *,
        target: Mapping[str, Any] | None = None,
        threads: int | None = None,
        rpc: RPCConfig | None = None,
        protocol: ProtocolSettings = DEFAULT_PROTOCOL,
        tuning: TvmTuning | None = None,
    ) -> None:
        super().__init__(threads=threads, protocol=protocol)
        if tuning is not None and rpc is not None:
            raise ConfigError("TVM tuning measures its candidates on this machine, and tuning over RPC is not "
                              "supported: tune on the device itself, or give --allow-untuned")
        if tuning is not None and tuning.trials < 1:
            raise ConfigError(f"TVM tuning needs at least 1 trial, got {tuning.trials}")
        self.tuning, self.tunings = tuning, []
        if target is None:
            target = {"kind": "llvm", "num-cores": threads or cpu_count()}
        self.target_spec = dict(target)
        self.target = make_target(self.target_spec)
        if self.threads is None:
            cores = self.target.attrs.get("num-cores") if self.target.kind.name == "llvm" else None
            self.threads = int(cores) if cores else (None if rpc else cpu_count())
        self.rpc = rpc

    def describe(self) -> str:
        """Return ``tvm-<version>/<target kind>[:<tag or mcpu>]``."""
        tvm = lazy_import("tvm", "apache-tvm")
        t = self.target
        detail = str(t.attrs.get("tag", "") or t.attrs.get("mcpu", "") or "")
        if hasattr(t, "tag") and t.tag:
            detail = str(t.tag)
        tuned = f"/tuned-{self.tuning.trials}" if self.tuning is not None else "/untuned"
        return f"tvm-{tvm.__version__}/{t.kind.name}" + (f":{detail}" if detail else "") + tuned

    def compile(self, model: Any, input_shapes=None):
        """Import and compile ``model``; return ``(executable, inputs, shapes)``.

        With :attr:`tuning`, the model's tasks are tuned into its database first and the module is built
        with the database's schedules.

        Raises:
            ProfilingError: If the frontend or the compiler rejects the model, or tuning fails.
        """
        relax = lazy_import("tvm.relax", "apache-tvm")
        frontend = lazy_import("tvm.relax.frontend.onnx", "apache-tvm")
        proto = load_onnx(model)
        inputs = graph_inputs(proto)
        shapes = normalise_shapes(inputs, input_shapes)
        try:
            mod = frontend.from_onnx(
                proto, shape_dict={n: list(s) for n, s in shapes.items()},
                dtype_dict={n: dt for n, _, dt in inputs},
            )
            mod = relax.transform.DecomposeOpsForInference()(mod)
        except Exception as exc:  # noqa: BLE001 - foreign library errors become ProfilingError
            raise ProfilingError(f"TVM's ONNX frontend cannot import the model: {_last_line(exc)}") from None
        try:
            ex = self._build(mod)
        except AutopruneError:
            raise
        except Exception as exc:  # noqa: BLE001 - foreign library errors become ProfilingError
            what = "tune and compile" if self.tuning is not None else "compile"
            raise ProfilingError(f"TVM cannot {what} for {self.target_spec}: {_last_line(exc)}") from None
        return ex, inputs, shapes

    def _build(self, mod: Any) -> Any:
        """Compile the Relax module: untuned with the target's default pipeline, or tuned (:attr:`tuning`)."""
        if self.tuning is not None:
            from autoprune.profiling.tvm_tune import build_tuned, tune_relax_module

            t = self.tuning
            result = tune_relax_module(mod, self.target, work_dir=t.work_dir, max_trials=t.trials,
                                       timeout_s=t.timeout_s, progress=t.progress)
            self.tunings.append(result)
            return build_tuned(mod, self.target, result)
        tvm = lazy_import("tvm", "apache-tvm")
        relax = lazy_import("tvm.relax", "apache-tvm")
        try:
            pipeline = relax.get_default_pipeline(self.target)
        except ValueError:
            pipeline = "default"
        return tvm.compile(mod, target=self.target, relax_pipeline=pipeline)

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
        ex, inputs, shapes = self.compile(model, input_shapes)
        feeds = make_inputs(inputs, shapes, seed=seed)
        if self.rpc is None:
            return self._measure_local(ex, feeds, settings)
        return self._measure_remote(ex, feeds, settings)

    def load(self, model: Any, input_shapes: dict[str, tuple[int, ...]] | tuple[int, ...] | None = None):
        """Load ``model`` on this machine and return ``(vm, device, inputs)``.

        Args:
            model: An ONNX model (path, bytes or proto), compiled here for :attr:`target`, or the
                path of a library written by ``export_library`` (``.so``; a ``.tar`` of objects is
                linked by ``tvm.runtime.load_module`` with this machine's compiler).
            input_shapes: As in :meth:`measure`. For a library they name its inputs' shapes
                (float32 assumed); without them ``inputs`` is empty.

        Returns:
            ``(relax.VirtualMachine, tvm device, [(name, shape, numpy dtype), ...])``.

        Raises:
            ConfigError: On an RPC runtime (this loads locally).
            ProfilingError: If the model cannot be compiled, the library cannot be loaded, or
                the virtual machine cannot be created.
        """
        tvm = lazy_import("tvm", "apache-tvm")
        relax = lazy_import("tvm.relax", "apache-tvm")
        if self.rpc is not None:
            raise ConfigError("TvmRuntime.load runs the model on this machine; use measure() for an RPC device")
        if isinstance(model, (str, os.PathLike)) and str(model).endswith((".so", ".tar")):
            path = Path(model)
            if not path.is_file():
                raise ProfilingError(f"TVM library not found: {path}; export it first")
            try:
                ex = tvm.runtime.load_module(str(path))
            except Exception as exc:  # noqa: BLE001 - foreign library errors become ProfilingError
                raise ProfilingError(f"cannot load the TVM library {path}: {_last_line(exc)}") from None
            if input_shapes is None:
                inputs = []
            elif isinstance(input_shapes, Mapping):
                inputs = [(n, tuple(s), "float32") for n, s in input_shapes.items()]
            else:
                inputs = [("input", tuple(input_shapes), "float32")]
        else:
            ex, graph, shapes = self.compile(model, input_shapes)
            inputs = [(n, shapes[n], dt) for n, _, dt in graph]
        if self.threads:
            tvm.get_global_func("runtime.config_threadpool")(1, self.threads)
        dev = self._device()
        try:
            vm = relax.VirtualMachine(ex, dev)
        except Exception as exc:  # noqa: BLE001 - foreign library errors become ProfilingError
            raise ProfilingError(f"TVM cannot create a virtual machine for the model: {_last_line(exc)}") from None
        return vm, dev, inputs

    def local_runner(
        self,
        model: Any,
        input_shapes: dict[str, tuple[int, ...]] | tuple[int, ...] | None = None,
        *,
        seed: int = 0,
    ) -> Callable[[], None]:
        """Load ``model`` once on this machine (see :meth:`load`) and return a zero-argument callable
        that runs one inference on deterministic inputs, after one checked run.

        For measurements that interleave several models in one time window (the export's
        speedup over the dense model, :func:`autoprune.deploy.speed.measure_speedup`). It is
        deliberately not called ``runner``: :func:`~autoprune.costmodel.builder.measure.measure_vs_reference`
        takes a runtime with ``runner`` to be one that interleaves, and a TVM calibration (possibly
        over RPC) keeps timing with ``time_evaluator`` instead.

        Raises:
            ConfigError: A library without ``input_shapes``.
            ProfilingError: If the model cannot be loaded or run.
        """
        tvm = lazy_import("tvm", "apache-tvm")
        vm, dev, inputs = self.load(model, input_shapes)
        if not inputs:
            raise ConfigError(f"give input_shapes to time the TVM library {model}")
        feeds = make_inputs(inputs, {n: s for n, s, _ in inputs}, seed=seed)
        try:
            vm.set_input("main", *[tvm.runtime.tensor(v, dev) for v in feeds.values()])
            vm.invoke_stateful("main")
        except Exception as exc:  # noqa: BLE001 - foreign library errors become ProfilingError
            raise ProfilingError(f"TVM failed to run the model: {_last_line(exc)}") from None
        invoke = vm.invoke_stateful
        return lambda: invoke("main")

    # -- timing ---------------------------------------------------------------------------------

    def _timer(self, vm, dev, args, settings: ProtocolSettings):
        """Set inputs, warm up, and return a producer of per-repeat timings in ms."""
        vm.set_input("main", *args)
        if settings.warmup:
            vm.time_evaluator("invoke_stateful", dev, number=settings.warmup, repeat=1)("main")
        repeat = settings.min_repeats
        min_repeat_ms = max(1, int(settings.min_time_s * 1e3 / repeat))
        evaluator = vm.time_evaluator(
            "invoke_stateful", dev, number=1, repeat=repeat, min_repeat_ms=min_repeat_ms
        )
        return lambda: [r * 1e3 for r in evaluator("main").results]

    def _device(self, session=None):
        tvm = lazy_import("tvm", "apache-tvm")
        kind = self.target.kind.name
        kind = "cpu" if kind == "llvm" else kind
        return session.device(kind, 0) if session is not None else tvm.device(kind, 0)

    def _measure_local(self, ex, feeds, settings: ProtocolSettings) -> Measurement:
        tvm = lazy_import("tvm", "apache-tvm")
        relax = lazy_import("tvm.relax", "apache-tvm")
        if self.threads:
            tvm.get_global_func("runtime.config_threadpool")(1, self.threads)
        dev = self._device()
        try:
            vm = relax.VirtualMachine(ex, dev)
            args = [tvm.runtime.tensor(v, dev) for v in feeds.values()]
            produce = self._timer(vm, dev, args, settings)
        except Exception as exc:  # noqa: BLE001 - foreign library errors become ProfilingError
            raise ProfilingError(f"TVM failed to run the model: {_last_line(exc)}") from None
        return measure_samples(
            produce,
            runtime=self.describe(),
            device=host_description(),
            threads=self.threads,
            **settings.batch_kwargs(),
        )

    def _measure_remote(self, ex, feeds, settings: ProtocolSettings) -> Measurement:
        tvm = lazy_import("tvm", "apache-tvm")
        relax = lazy_import("tvm.relax", "apache-tvm")
        rpc = self.rpc
        fcompile = _cross_compiler(self.target)
        with tempfile.TemporaryDirectory(prefix="autoprune-tvm-") as tmp:
            lib_path = Path(tmp) / "model.so"
            try:
                if fcompile is None:
                    ex.export_library(str(lib_path))
                else:
                    ex.export_library(str(lib_path), fcompile=fcompile)
            except Exception as exc:  # noqa: BLE001 - foreign library errors become ProfilingError
                raise ProfilingError(f"cannot export the TVM library: {_last_line(exc)}") from None
            session = connect(rpc)
            bound = min(settings.timeout_s, rpc.session_timeout_s)
            where = rpc.describe()

            def prepare():
                session.upload(str(lib_path))
                rlib = session.load_module(lib_path.name)
                dev = self._device(session)
                if self.threads:
                    session.get_function("runtime.config_threadpool")(1, self.threads)
                vm = relax.VirtualMachine(rlib, dev)
                args = [tvm.runtime.tensor(v, dev) for v in feeds.values()]
                return self._timer(vm, dev, args, settings)

            produce = run_with_watchdog(prepare, bound, f"loading the model on {where}", (session,))

            def produce_guarded():
                return run_with_watchdog(produce, bound, f"timing on {where}", (session,))

            return measure_samples(
                produce_guarded,
                runtime=self.describe(),
                device=where,
                threads=self.threads,
                **settings.batch_kwargs(),
            )
