"""The TVM module of an export, built for the target's own TVM target, and the command lines to time an
export on a device where it cannot be built here (``trtexec`` for a Jetson)."""

from __future__ import annotations

import platform
import shutil
from pathlib import Path
from typing import Any

from autoprune.deploy import reason_line
from autoprune.errors import AutopruneError


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


def build_tvm_module(onnx_path: Path, profile: Any, out_dir: Path,
                     reference: tuple[Any, Any] | None = None) -> dict[str, Any]:
    """Compile the ONNX model with TVM Relax for the target's own TVM target and export it.

    Args:
        onnx_path: The exported ONNX model.
        profile: The target's :class:`~autoprune.hardware.profile.HardwareProfile`.
        out_dir: Where ``model_tvm.so`` (or ``.tar``) is written.
        reference: ``(inputs, ONNX Runtime outputs)``: a library linked for this machine is
            loaded back, run on the inputs and compared with the outputs.

    Returns:
        A record: ``built``, ``target`` (the JSON dict), ``kind`` (``cuda``, ``llvm``), ``native``,
        ``path``/``bytes``/``format`` when a file was written, ``checked`` with ``max_abs_diff`` and
        ``tolerance`` when it was run here, and ``reason`` whenever something could not be done here.
        It never raises.
    """
    from autoprune.deploy.reference import max_abs_diff, output_tolerance, tvm_outputs

    try:
        spec = profile.runtime_options("tvm")["target"]
    except AutopruneError as exc:
        return {"built": False, "target": None, "reason": reason_line(exc)}
    rec: dict[str, Any] = {"built": False, "target": spec, "native": False, "checked": False}
    try:
        from autoprune.profiling.tvm_runtime import TvmRuntime, _cross_compiler, _target_triple

        rt = TvmRuntime(target=spec, threads=profile.runtime_options("tvm").get("threads"))
        kind = rec["kind"] = rt.target.kind.name
        if kind == "cuda":
            blocker = _cuda_blocker(profile.name, str(rt.target.attrs.get("arch", "")) or "cuda")
            if blocker is not None:
                rec["reason"] = blocker
                return rec
            import tvm.support.nvcc  # noqa: F401 - registers the CUDA compile callback

        ex, _, _ = rt.compile(str(onnx_path))
        triple = _target_triple(rt.target)
        try:
            fcompile = _cross_compiler(rt.target)
        except AutopruneError:  # no cross linker: the objects still build, as a .tar
            lib = out_dir / "model_tvm.tar"
            ex.export_library(str(lib))
            rec.update(built=True, format="tar", path=str(lib), bytes=lib.stat().st_size,
                       reason=f"no {triple} cross compiler here (apt-get install g++-{triple}), so not linked: "
                              f"wrote {lib.name}, the {triple} object files; "
                              f"`tvm.runtime.load_module('{lib.name}')` links them on the board")
            return rec
        rec["native"] = native = fcompile is None and kind == "llvm"
        if native:
            rec["host_arch"] = platform.machine()
        lib = out_dir / "model_tvm.so"
        if fcompile is not None:
            ex.export_library(str(lib), fcompile=fcompile)
        else:
            ex.export_library(str(lib))
        rec.update(built=True, format="so", path=str(lib), bytes=lib.stat().st_size)
        if not native:
            what = f"cross-built for {triple}" if triple else f"built for {kind}"
            rec["reason"] = f"{what} ({profile.name}), so not run here; `tvm.runtime.load_module` loads it on the board"
            return rec
        if reference is not None:
            x, want = reference
            got = tvm_outputs(rt, lib, x)
            diff, tol = max_abs_diff(got, want), output_tolerance(want)
            rec.update(max_abs_diff=diff if diff != float("inf") else None, tolerance=tol, samples=len(x))
            rec["checked"] = diff <= tol
            if not rec["checked"]:
                rec["reason"] = (f"loaded back, but its outputs differ from ONNX Runtime's by {diff:.3g} > {tol:.1e} "
                                 f"on {len(x)} test inputs: do not deploy {lib.name}")
        return rec
    except Exception as exc:  # noqa: BLE001 - an optional step: TVM raises its own error types
        rec["reason"] = reason_line(exc)
        return rec


def device_commands(profile: Any, provenance: dict[str, Any]) -> dict[str, Any] | None:
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
    return {
        "runtime": "TensorRT" + (" FP16" if fp16 else ""),
        "commands": [cmd("model.onnx"), cmd("dense.onnx")],
        "note": (f"run on the {profile.name} in power mode {mode!r} (nvpmodel), as its calibration assumes "
                 "(JetPack puts trtexec in /usr/src/tensorrt/bin); the speedup on the device is dense.onnx's "
                 "mean GPU time over model.onnx's"),
    }
