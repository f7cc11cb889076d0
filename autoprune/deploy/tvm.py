"""The TVM module of an export, built for the target's own TVM target (tuned with MetaSchedule when asked, with
the dense model tuned alike as its speed reference), and the command lines to time an export on a device where
it cannot be built here (``trtexec`` for a Jetson)."""

from __future__ import annotations

import platform
import shutil
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from autoprune.deploy import ReportPart, reason_line
from autoprune.errors import AutopruneError

#: ``tvm.reason`` of an export made with ``--no-tvm``.
TVM_SKIPPED = "skipped (--no-tvm)"
#: The tuned dense model an export with tuning writes beside ``model_tvm.so`` (its speed reference).
DENSE_TVM = "dense_tvm.so"
#: Default bound on each model's tuning, s.
TUNE_TIMEOUT_S = 600.0


@dataclass(frozen=True)
class TuningRecord(ReportPart):
    """The MetaSchedule tuning of an export's TVM modules (the pruned model, then the dense one).

    Attributes:
        trials: The trial budget per model (``--tvm-tune-trials``).
        timeout_s: The bound on each model's tuning.
        database: The database folder (``results/tvm-tuning/<target>/<model>``), reused by later exports.
        cost_model: ``xgb`` (xgboost installed) or ``random``.
        trials_run: Trials this export measured (0 where the database already covered the budget).
        records: Records in the database afterwards.
        seconds: Time spent tuning.
        stopped: ``timeout`` when the bound cut a model's tuning short (its tasks have fewer trials).
    """

    trials: int
    timeout_s: float
    database: str
    cost_model: str | None = None
    trials_run: int = 0
    records: int | None = None
    seconds: float = 0.0
    stopped: str | None = None

    def add(self, result: Any) -> TuningRecord:
        """This record with one more model's :class:`~autoprune.profiling.tvm_tune.TuningResult` counted in."""
        return replace(self, cost_model=result.cost_model, trials_run=self.trials_run + result.trials_run,
                       records=result.records, seconds=round(self.seconds + result.seconds, 1),
                       stopped=self.stopped or result.stopped)


@dataclass(frozen=True)
class TvmModule(ReportPart):
    """The TVM module built for the target's own TVM target (:func:`~autoprune.deploy.tvm.build_tvm_module`).

    Attributes:
        built: A module file was written.
        target: The TVM target (its JSON dict; ``None`` when the profile has no TVM runtime).
        native: It is linked for this machine (so it can run here).
        checked: It was loaded back here and its outputs matched ONNX Runtime's.
        kind: The target's kind (``llvm``, ``cuda``).
        host_arch: This machine's architecture, for a native module.
        format: ``so`` (a linked library) or ``tar`` (object files, linked on the board).
        path: The file written.
        bytes: Its size.
        max_abs_diff: Its outputs' largest difference from ONNX Runtime's (``None``: not finite).
        tolerance: The tolerance they were checked against.
        samples: Reference inputs it ran on.
        reason: What could not be done here (and why).
        tuned: Its kernels were tuned with MetaSchedule (``False``: untuned, tens of times slower than ONNX
            Runtime on a CPU; ``None`` in exports made before tuning existed, which were all untuned).
        tuning: The tuning (``None``: untuned).
        dense_path: The dense model built with the same tuning (``dense_tvm.so``), its speed reference.
        dense_bytes: Its size.
    """

    built: bool
    target: Mapping[str, Any] | None = None
    native: bool | None = None
    checked: bool | None = None
    kind: str | None = None
    host_arch: str | None = None
    format: str | None = None
    path: str | None = None
    bytes: int | None = None
    max_abs_diff: float | None = None
    tolerance: float | None = None
    samples: int | None = None
    reason: str | None = None
    tuned: bool | None = None
    tuning: TuningRecord | None = None
    dense_path: str | None = None
    dense_bytes: int | None = None

    @property
    def label(self) -> str:
        """``tuned`` or ``untuned``, as the export prints it."""
        return "tuned" if self.tuned else "untuned"

    @property
    def skipped(self) -> bool:
        """Not attempted (``--no-tvm``)."""
        return self.reason == TVM_SKIPPED

    def _written(self) -> Iterator[str]:
        compared = self.tolerance is not None  # its difference is written with the tolerance, even if None
        return (name for name in self._present("built", "target", *(["max_abs_diff"] if compared else []))
                if name != "target" or not self.skipped)


@dataclass(frozen=True)
class DeviceCommands(ReportPart):
    """How to time the export on a device it cannot be timed from here (a Jetson: ``trtexec``).

    Attributes:
        runtime: The runtime the commands use (as the target's calibration describes).
        commands: The command lines for ``model.onnx`` and ``dense.onnx``.
        note: Where and how to run them.
    """

    runtime: str
    commands: tuple[str, ...]
    note: str


def _cuda_blocker(profile_name: str, arch: str) -> str | None:
    """Why a CUDA module for ``arch`` (e.g. ``sm_53``) cannot be built here, or ``None`` when it can.

    Building one needs an ``nvcc`` that still compiles for ``arch`` (CUDA 13 dropped Maxwell's
    sm_5x, for instance) and a TVM with the CUDA runtime; without them TVM keeps the kernels as
    CUDA source, which no device can load.
    """
    import subprocess

    import tvm

    why = []
    nvcc = shutil.which("nvcc")
    if nvcc is None:
        why.append("no nvcc here")
    else:
        try:
            listed = subprocess.run([nvcc, "--list-gpu-arch"], capture_output=True, text=True, timeout=60).stdout
            version = subprocess.run([nvcc, "--version"], capture_output=True, text=True, timeout=60).stdout
        except (OSError, subprocess.SubprocessError) as exc:
            listed, version = "", str(exc)
        archs = listed.split()
        release = next((ln.split("release", 1)[1].split(",")[0].strip() for ln in version.splitlines()
                        if "release" in ln), "?")
        want = arch.replace("sm_", "compute_")
        if want not in archs:
            oldest = min(archs, key=lambda a: int("".join(c for c in a if c.isdigit()) or 0)) if archs else "?"
            why.append(f"the nvcc here (CUDA {release}) cannot compile for {arch} (its oldest is {oldest})")
    if not tvm.runtime.enabled("cuda"):
        why.append("this TVM has no CUDA runtime here")
    if not why:
        return None
    return (f"{profile_name}'s TVM target is CUDA ({arch}); building it needs NVIDIA's toolchain for {arch}: "
            + "; ".join(why))


def export_tuning(profile: Any, model_ref: str, trials: int, timeout_s: float = TUNE_TIMEOUT_S,
                  progress: bool = False) -> Any:
    """The tuning of an export's TVM modules on this machine: ``trials`` per model into the database of the
    target (its TVM target for this CPU, :func:`~autoprune.profiling.tvm_runtime.for_this_cpu`) and model,
    ``results/tvm-tuning/<target>/<model>``; ``None`` for ``trials`` 0 (untuned).

    Raises:
        ConfigError: ``trials`` below 0, or a target that is not this machine (tuning measures here).
    """
    from autoprune.costmodel.calibration import calibration_name
    from autoprune.errors import ConfigError
    from autoprune.io import results_dir

    if trials < 0:
        raise ConfigError(f"--tvm-tune-trials must be >= 0, got {trials}")
    if not trials:
        return None
    if not profile.is_here:
        raise ConfigError(f"--tvm-tune-trials tunes by measuring on this machine, and {profile.name} is not this "
                          "machine: tune on the device, or export without it (the TVM module is then untuned)")
    from autoprune.profiling.tvm_runtime import TvmTuning, for_this_cpu
    from autoprune.profiling.tvm_tune import tuning_dir

    spec = for_this_cpu(profile.runtime_options("tvm")["target"])
    return TvmTuning(work_dir=tuning_dir(results_dir() / "tvm-tuning", spec, calibration_name(model_ref)),
                     trials=int(trials), timeout_s=float(timeout_s), progress=progress)


def build_tvm_module(onnx_path: Path, profile: Any, out_dir: Path,
                     reference: tuple[Any, Any] | None = None, tuning: Any = None,
                     dense_onnx: Path | None = None) -> TvmModule:
    """Compile the ONNX model with TVM Relax for the target's own TVM target and export it.

    Args:
        onnx_path: The exported ONNX model.
        profile: The target's :class:`~autoprune.hardware.profile.HardwareProfile`.
        out_dir: Where ``model_tvm.so`` (or ``.tar``) is written.
        reference: ``(inputs, ONNX Runtime outputs)``: a library linked for this machine is
            loaded back, run on the inputs and compared with the outputs.
        tuning: A :class:`~autoprune.profiling.tvm_runtime.TvmTuning` (:func:`export_tuning`): the model is
            tuned for this CPU first, and ``dense_onnx`` is tuned and built alike as ``dense_tvm.so``.
        dense_onnx: The dense model (``dense.onnx``), built only with ``tuning``.

    Returns:
        The record: ``built``, ``target``, ``kind``, ``native``, ``path``/``bytes``/``format`` when a file was
        written, ``checked`` with ``max_abs_diff`` and ``tolerance`` when it was run here, and ``reason``
        whenever something could not be done here. It never raises.
    """
    try:
        spec = profile.runtime_options("tvm")["target"]
    except AutopruneError as exc:
        return TvmModule(built=False, target=None, reason=reason_line(exc))
    rec = TvmModule(built=False, target=spec, native=False, checked=False, tuned=tuning is not None)
    try:
        from autoprune.profiling.tvm_runtime import TvmRuntime, _cross_compiler, _target_triple, for_this_cpu

        if tuning is not None:
            spec = for_this_cpu(spec)
            rec = replace(rec, target=spec, tuning=TuningRecord(trials=tuning.trials, timeout_s=tuning.timeout_s,
                                                                database=str(tuning.work_dir)))
        rt = TvmRuntime(target=spec, threads=profile.runtime_options("tvm").get("threads"), tuning=tuning)
        rec = replace(rec, kind=rt.target.kind.name)
        if rec.kind == "cuda":
            blocker = _cuda_blocker(profile.name, str(rt.target.attrs.get("arch", "")) or "cuda")
            if blocker is not None:
                return replace(rec, reason=blocker)
            import tvm.support.nvcc  # noqa: F401 - registers the CUDA compile callback

        ex, _, _ = rt.compile(str(onnx_path))
        rec = replace(rec, tuning=rec.tuning.add(rt.tunings[-1])) if rec.tuning is not None else rec
        triple = _target_triple(rt.target)
        try:
            fcompile = _cross_compiler(rt.target)
        except AutopruneError:  # no cross linker: the objects still build, as a .tar
            return _export_objects(ex, out_dir, triple, rec)
        native = fcompile is None and rec.kind == "llvm"
        rec = replace(rec, native=native, host_arch=platform.machine() if native else None)
        lib = out_dir / "model_tvm.so"
        if fcompile is not None:
            ex.export_library(str(lib), fcompile=fcompile)
        else:
            ex.export_library(str(lib))
        rec = replace(rec, built=True, format="so", path=str(lib), bytes=lib.stat().st_size)
        if not native:
            what = f"cross-built for {triple}" if triple else f"built for {rec.kind}"
            return replace(rec, reason=f"{what} ({profile.name}), so not run here; "
                                       "`tvm.runtime.load_module` loads it on the board")
        rec = _check_native(rt, lib, reference, rec) if reference is not None else rec
        return _tuned_dense(rt, dense_onnx, out_dir, rec) if tuning is not None and dense_onnx else rec
    except Exception as exc:  # noqa: BLE001 - an optional step: TVM raises its own error types
        return replace(rec, reason=reason_line(exc))


def _tuned_dense(rt: Any, dense_onnx: Path, out_dir: Path, rec: TvmModule) -> TvmModule:
    """Tune and build the dense model as the pruned one was (``dense_tvm.so``): a tuned module's speedup is
    against a tuned dense, never an untuned one."""
    try:
        ex, _, _ = rt.compile(str(dense_onnx))
        rec = replace(rec, tuning=rec.tuning.add(rt.tunings[-1]))
        lib = out_dir / DENSE_TVM
        ex.export_library(str(lib))
    except Exception as exc:  # noqa: BLE001 - an optional step: TVM raises its own error types
        why = f"the tuned dense model ({DENSE_TVM}) was not built: {reason_line(exc)}"
        return replace(rec, reason=f"{rec.reason}; {why}" if rec.reason else why)
    return replace(rec, dense_path=str(lib), dense_bytes=lib.stat().st_size)


def _export_objects(ex: Any, out_dir: Path, triple: str, rec: TvmModule) -> TvmModule:
    """Write the target's object files as ``model_tvm.tar`` (no cross linker here to link them)."""
    lib = out_dir / "model_tvm.tar"
    ex.export_library(str(lib))
    return replace(rec, built=True, format="tar", path=str(lib), bytes=lib.stat().st_size,
                   reason=f"no {triple} cross compiler here (apt-get install g++-{triple}), so not linked: "
                          f"wrote {lib.name}, the {triple} object files; "
                          f"`tvm.runtime.load_module('{lib.name}')` links them on the board")


def _check_native(rt: Any, lib: Path, reference: tuple[Any, Any], rec: TvmModule) -> TvmModule:
    """Load the library linked for this machine back, run it on the reference inputs and compare."""
    from autoprune.deploy.reference import max_abs_diff, output_tolerance, tvm_outputs

    x, want = reference
    got = tvm_outputs(rt, lib, x)
    diff, tol = max_abs_diff(got, want), output_tolerance(want)
    rec = replace(rec, max_abs_diff=diff if diff != float("inf") else None, tolerance=tol, samples=len(x),
                  checked=diff <= tol)
    if rec.checked:
        return rec
    return replace(rec, reason=f"loaded back, but its outputs differ from ONNX Runtime's by {diff:.3g} > {tol:.1e} "
                               f"on {len(x)} test inputs: do not deploy {lib.name}")


def device_commands(profile: Any, provenance: Mapping[str, Any]) -> DeviceCommands | None:
    """What to run on a Jetson target to time the export there, or ``None`` for other targets.

    A Jetson is a target whose TVM target is an ``nvidia/jetson*`` tag. The command lines time
    ``model.onnx`` and ``dense.onnx`` with TensorRT's ``trtexec``, in FP16 unless the target's
    calibration describes TensorRT without FP16 (the Jetson Nano's describes TensorRT FP16).
    """
    try:
        spec = profile.runtime_options("tvm")["target"]
    except AutopruneError:
        return None
    if not str(spec.get("tag", "")).startswith("nvidia/jetson"):
        return None
    runtime = str(provenance.get("runtime", ""))
    fp16 = "fp16" in runtime.lower() or "TensorRT" not in runtime
    flags = " --fp16" if fp16 else ""

    def cmd(name: str) -> str:
        return (f"trtexec --onnx={name}{flags} --saveEngine={name.rsplit('.', 1)[0]}{'_fp16' if fp16 else ''}.engine "
                "--warmUp=500 --iterations=200 --avgRuns=100")

    mode = profile.default_power_mode
    return DeviceCommands(
        runtime="TensorRT" + (" FP16" if fp16 else ""),
        commands=(cmd("model.onnx"), cmd("dense.onnx")),
        note=(f"run on the {profile.name} in power mode {mode!r} (nvpmodel), as its calibration assumes "
              "(JetPack puts trtexec in /usr/src/tensorrt/bin); the speedup on the device is dense.onnx's "
              "mean GPU time over model.onnx's"),
    )
