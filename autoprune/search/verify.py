"""Checks of an exported model: what ``autoprune export`` records and ``autoprune verify`` re-checks.

An export folder (``results/<study>/export-<trial>/`` or ``export --out DIR``) holds:

* ``model.onnx``: the pruned model (parity-checked against PyTorch at export);
* ``dense.onnx``: the dense model it was pruned from (the speed reference);
* ``reference.npz``: a fixed batch of test-split inputs (``x``), their labels (``y``) and
  ONNX Runtime's outputs of ``model.onnx`` on them (``outputs``);
* ``model_tvm.so`` (or ``model_tvm.tar`` of objects when it could not be linked here);
* ``report.json``: what was measured, predicted and checked, with sha256 checksums.

Both commands use the functions here, so the figures verify compares were produced the
same way at export: outputs by ONNX Runtime on CPU, test accuracy of the ONNX file itself
(not of PyTorch), and speedups as **the dense model's time over the pruned model's, both
timed in one interleaved run** (:func:`autoprune.costmodel.calibrate.measure_vs_reference`),
so that the host's drift (±20 % within minutes on a shared machine) cancels in the ratio.
"""

from __future__ import annotations

import math
import platform
import re
import statistics
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from autoprune.errors import AutopruneError, CalibrationError, ConfigError

__all__ = [
    "REPORT_FORMAT",
    "REPORT_VERSION",
    "Check",
    "SpeedMeasurement",
    "VerifyResult",
    "load_reference",
    "measure_speedup",
    "onnx_accuracy",
    "onnx_outputs",
    "output_tolerance",
    "read_report",
    "reference_batch",
    "save_reference",
    "threads_of",
    "tvm_outputs",
    "verify_export",
]

REPORT_FORMAT = "autoprune-export"
REPORT_VERSION = 2
#: Test samples whose outputs are stored in ``reference.npz``.
REFERENCE_SAMPLES = 32
#: Outputs match when ``max |a - b| <= OUTPUT_ATOL + OUTPUT_RTOL * max |reference|``.
OUTPUT_ATOL = 1e-4
OUTPUT_RTOL = 1e-4
#: An interleaved run whose per-round ratios spread more than this (IQR / median) is re-measured.
MAX_RATIO_SPREAD = 0.25
#: Interleaved runs tried before a measurement is reported as too noisy.
SPEED_ATTEMPTS = 3


# -- records -------------------------------------------------------------------------------------


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
class Check:
    """One line of ``autoprune verify``'s table.

    Attributes:
        name: What was checked.
        status: ``pass``, ``FAIL`` or ``skip``.
        expected: What the report promises (or the bound), as text.
        got: What was found now, as text.
        note: Why a check was skipped, or a detail.
    """

    name: str
    status: str
    expected: str = ""
    got: str = ""
    note: str = ""


@dataclass(frozen=True)
class VerifyResult:
    """All checks of one export folder."""

    folder: str
    checks: tuple[Check, ...]

    @property
    def passed(self) -> bool:
        """True when no check failed (skipped checks do not fail)."""
        return not any(c.status == "FAIL" for c in self.checks)

    def table(self) -> str:
        """The checks as an aligned text table."""
        rows = [("check", "expected", "got", "result")]
        rows += [(c.name, c.expected, c.got, c.status + (f" ({c.note})" if c.note else "")) for c in self.checks]
        widths = [max(len(r[i]) for r in rows) for i in range(3)]
        return "\n".join(f"{r[0]:<{widths[0]}}  {r[1]:<{widths[1]}}  {r[2]:<{widths[2]}}  {r[3]}".rstrip()
                         for r in rows)


# -- outputs and accuracy of an ONNX file ------------------------------------------------------------


def _session(model: Any):
    from autoprune.profiling.ort import create_session

    return create_session(model, threads=1, providers=["CPUExecutionProvider"])[0]


def onnx_outputs(model: Any, x: np.ndarray, session: Any = None) -> np.ndarray:
    """The first output of ``model`` on the batch ``x`` with ONNX Runtime (CPU, one thread).

    A graph exported for batch 1 (autoprune's exports are) is run one sample at a time.

    Raises:
        ProfilingError: If onnxruntime cannot load or run the model.
    """
    from autoprune.errors import ProfilingError

    sess = session or _session(model)
    inp = sess.get_inputs()[0]
    x = np.ascontiguousarray(x, dtype=np.float32)
    try:
        if inp.shape and inp.shape[0] == 1 and len(x) != 1:
            return np.concatenate([sess.run(None, {inp.name: x[i:i + 1]})[0] for i in range(len(x))])
        return sess.run(None, {inp.name: x})[0]
    except Exception as exc:  # noqa: BLE001 - foreign library errors become ProfilingError
        raise ProfilingError(f"onnxruntime failed to run the model: {str(exc).splitlines()[0]}") from None


def onnx_accuracy(model: Any, data: Any, split: str = "test") -> tuple[float, int]:
    """Top-1 accuracy of the ONNX file itself on ``split`` of ``data``: ``(accuracy, samples)``."""
    sess = _session(model)
    correct = total = 0
    for xb, yb in data.loader(split, 256, shuffle=False):
        pred = onnx_outputs(model, xb.numpy(), session=sess).argmax(axis=1)
        correct += int((pred == yb.numpy()).sum())
        total += len(yb)
    if total == 0:
        raise ConfigError(f"the {split} split of {data.name!r} is empty; nothing to evaluate")
    return correct / total, total


def reference_batch(data: Any, n: int = REFERENCE_SAMPLES) -> tuple[np.ndarray, np.ndarray]:
    """The first ``n`` samples of the (seeded, unshuffled) test split: ``(x, y)``."""
    xs, ys, have = [], [], 0
    for xb, yb in data.loader("test", n, shuffle=False):
        xs.append(xb.numpy())
        ys.append(yb.numpy())
        have += len(yb)
        if have >= n:
            break
    return np.concatenate(xs)[:n].astype(np.float32), np.concatenate(ys)[:n].astype(np.int64)


def output_tolerance(reference: np.ndarray) -> float:
    """The largest acceptable ``max |a - b|`` against ``reference`` outputs."""
    return OUTPUT_ATOL + OUTPUT_RTOL * float(np.max(np.abs(reference))) if reference.size else OUTPUT_ATOL


def max_abs_diff(a: np.ndarray, b: np.ndarray) -> float:
    """``max |a - b|`` in float64 (infinite on a shape mismatch or a NaN)."""
    if a.shape != b.shape:
        return math.inf
    d = float(np.max(np.abs(a.astype(np.float64) - b.astype(np.float64)))) if a.size else 0.0
    return d if math.isfinite(d) else math.inf


def save_reference(path: Path, x: np.ndarray, y: np.ndarray, outputs: np.ndarray) -> Path:
    """Write ``reference.npz`` (``x``, ``y``, ``outputs``) atomically."""
    import io

    from autoprune.io import atomic_write_bytes

    buf = io.BytesIO()
    np.savez(buf, x=x, y=y, outputs=outputs)
    return atomic_write_bytes(path, buf.getvalue())


def load_reference(path: Path) -> dict[str, np.ndarray]:
    """Read ``reference.npz``.

    Raises:
        ConfigError: If it is missing, unreadable or lacks ``x``/``outputs``.
    """
    if not path.is_file():
        raise ConfigError(f"{path} is missing; this is not a complete autoprune export (re-run `autoprune export`)")
    try:
        with np.load(path, allow_pickle=False) as f:
            arrays = {k: f[k] for k in f.files}
    except Exception as exc:  # noqa: BLE001 - numpy raises ValueError, OSError, zipfile errors
        raise ConfigError(f"{path} is corrupt ({type(exc).__name__}: {exc}); re-run `autoprune export`") from None
    if "x" not in arrays or "outputs" not in arrays or len(arrays["x"]) != len(arrays["outputs"]):
        raise ConfigError(f"{path} must hold arrays x and outputs of the same length; re-run `autoprune export`")
    return arrays


def tvm_outputs(runtime: Any, library: Path, x: np.ndarray) -> np.ndarray:
    """The first output of an exported TVM library on the batch ``x``, one sample at a time.

    Raises:
        ProfilingError: If the library cannot be loaded or run.
    """
    import tvm

    from autoprune.errors import ProfilingError

    vm, dev, _ = runtime.load(library)
    outs = []
    try:
        for i in range(len(x)):
            out = vm["main"](tvm.runtime.tensor(np.ascontiguousarray(x[i:i + 1], dtype=np.float32), dev))
            first = out if hasattr(out, "numpy") else out[0]
            outs.append(first.numpy())
    except Exception as exc:  # noqa: BLE001 - foreign library errors become ProfilingError
        lines = str(exc).strip().splitlines()
        raise ProfilingError(f"TVM failed to run {library.name}: {lines[-1] if lines else type(exc).__name__}") \
            from None
    return np.concatenate(outs)


# -- speed against the dense model ---------------------------------------------------------------------


class _Prepared:
    """A stand-in runtime for :func:`measure_vs_reference` whose runners were made beforehand."""

    @staticmethod
    def runner(model: Callable[[], object]) -> Callable[[], object]:
        return model


def threads_of(runtime_text: str | None) -> int | None:
    """The ``threads=N`` a runtime description names (a calibration's runtime), if any."""
    m = re.search(r"threads=(\d+)", runtime_text or "")
    return int(m.group(1)) if m else None


def measure_speedup(runtime: Any, model: Any, dense: Any, input_shape: tuple[int, ...], *,
                    attempts: int = SPEED_ATTEMPTS) -> SpeedMeasurement:
    """Time ``model`` against ``dense`` in interleaved rounds with ``runtime`` on this machine.

    Both are loaded once (``runtime.runner``) and alternate in batches
    (:data:`autoprune.costmodel.calibrate.RELATIVE_PROTOCOL`); a run whose per-round ratios
    spread more than :data:`MAX_RATIO_SPREAD` is repeated, up to ``attempts`` runs, and the
    least spread one is kept (``noisy`` says when even that one spread too much).

    Args:
        runtime: ONNX Runtime (``runner``) or TVM (``local_runner``) on this machine.
        model: The pruned model (ONNX path; for TVM also an exported ``.so``).
        dense: The dense model (ONNX path).
        input_shape: ``(1, C, H, W)``.
        attempts: Interleaved runs at most.

    Raises:
        ProfilingError: If either model cannot be loaded or run.
    """
    from autoprune.costmodel.calibrate import measure_vs_reference
    from autoprune.profiling.protocol import host_description

    make = getattr(runtime, "local_runner", None) or runtime.runner  # TVM: local_runner; ONNX Runtime: runner
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
                   threads: dict[str, int] | None = None) -> dict[str, Any]:
    """The runtimes that time an export on this machine: name → ``(runtime, pruned model file name)``.

    ONNX Runtime runs with the thread count the calibration was measured with (so the
    measured time is comparable with the prediction), else the profile's; TVM with the
    profile's TVM target and threads, on the exported library (only when one was built and
    linked here, and apache-tvm is installed). ``threads`` overrides either (verify passes
    the counts the report recorded).
    """
    from autoprune.profiling import get_runtime

    threads = threads or {}
    out: dict[str, Any] = {}
    ort_opts = profile.runtime_options("onnxruntime") if "onnxruntime" in profile.runtimes else {}
    n = threads.get("onnxruntime") or threads_of(calibration_runtime) or ort_opts.get("threads") or 1
    out["onnxruntime"] = (get_runtime("onnxruntime", threads=int(n), providers=ort_opts.get("providers")),
                          "model.onnx")
    if tvm_library is not None and tvm_library.suffix == ".so" and "tvm" in profile.runtimes:
        opts = profile.runtime_options("tvm")
        try:
            rt = get_runtime("tvm", target=opts["target"], threads=threads.get("tvm") or opts.get("threads"))
        except ImportError:  # apache-tvm missing: time what can be timed
            return out
        out["tvm"] = (rt, tvm_library.name)
    return out


# -- the report -----------------------------------------------------------------------------------------


def read_report(folder: Path) -> dict[str, Any]:
    """Read and validate an export folder's ``report.json``.

    Raises:
        ConfigError: Missing folder, not an export, or a corrupt/incomplete report (one line).
    """
    from autoprune.io import read_json

    if not folder.exists():
        raise ConfigError(f"export folder not found: {folder}; give the folder `autoprune export` wrote")
    if not folder.is_dir():
        raise ConfigError(f"{folder} is not a folder; give the folder `autoprune export` wrote")
    path = folder / "report.json"
    if not path.is_file():
        raise ConfigError(f"{folder} is not an autoprune export (no report.json); run `autoprune export` first")
    try:
        report = read_json(path, what="export report")
    except CalibrationError as exc:
        raise ConfigError(str(exc)) from None
    if not isinstance(report, dict) or report.get("format") != REPORT_FORMAT:
        raise ConfigError(f"{path} is not an autoprune export report (no \"format\": \"{REPORT_FORMAT}\"); "
                          "re-run `autoprune export` with this autoprune")
    if report.get("version") != REPORT_VERSION:
        raise ConfigError(f"{path} has report version {report.get('version')}, this autoprune reads "
                          f"{REPORT_VERSION}; re-run `autoprune export`")
    need = {"target": str, "test": dict, "data": dict, "checksums": dict, "reference": dict}
    for key, kind in need.items():
        if not isinstance(report.get(key), kind):
            raise ConfigError(f"{path} is corrupt: key {key!r} is missing or not a {kind.__name__}; "
                              "re-run `autoprune export`")
    for name in ("model.onnx", "reference.npz"):
        if not isinstance(report["checksums"].get(name), str):
            raise ConfigError(f"{path} is corrupt: no sha256 of {name} under 'checksums'; re-run `autoprune export`")
    acc = report["test"].get("accuracy")
    if not isinstance(acc, (int, float)) or not 0 <= acc <= 1:
        raise ConfigError(f"{path} is corrupt: test.accuracy is {acc!r}; re-run `autoprune export`")
    return report


def _fmt_speed(x: float) -> str:
    return f"{x:.2f}x"


def verify_export(folder: str | Path, *, max_accuracy_drop: float = 0.01, min_speedup_fraction: float = 0.8,
                  speed: bool = True, progress: Callable[[str], None] | None = None) -> VerifyResult:
    """Re-check an export folder against its report (what ``autoprune verify`` runs).

    Checks: ``model.onnx``'s sha256; its outputs on the stored reference batch; its test
    accuracy (the data is loaded from the reference stored in the report, and the ONNX file
    is evaluated with ONNX Runtime; no study, no training) against the report's minus
    ``max_accuracy_drop``; the TVM library's outputs where one was linked for this machine; and
    on ``local`` exports (unless ``speed`` is false) the speedup over ``dense.onnx`` per runtime,
    re-measured in one interleaved run, against ``min_speedup_fraction`` of the report's.

    Raises:
        ConfigError: Bad input (missing folder, not an export, corrupt report or reference,
            data that no longer matches the report's).
    """
    from autoprune.io import file_sha256

    folder = Path(folder)
    say = progress or (lambda _msg: None)
    report = read_report(folder)
    checks: list[Check] = []
    model = folder / "model.onnx"
    if not model.is_file():
        raise ConfigError(f"{model} is missing; this is not a complete autoprune export")
    ref_path = folder / "reference.npz"
    if not ref_path.is_file() or file_sha256(ref_path) != report["checksums"]["reference.npz"]:
        raise ConfigError(f"{ref_path} is missing or does not match its checksum in report.json; "
                          "re-run `autoprune export`")
    ref = load_reference(ref_path)

    # 1. the file is the one exported
    want = report["checksums"]["model.onnx"]
    got = file_sha256(model)
    checks.append(Check("model.onnx sha256", "pass" if got == want else "FAIL", want[:16], got[:16]))

    # 2. outputs on the reference batch
    say("re-checking outputs on the reference batch")
    tol = output_tolerance(ref["outputs"])
    name = f"outputs on {len(ref['x'])} reference inputs"
    try:
        diff = max_abs_diff(onnx_outputs(model, ref["x"]), ref["outputs"])
        checks.append(Check(name, "pass" if diff <= tol else "FAIL", f"max |diff| <= {tol:.1e}", f"{diff:.2e}"))
    except AutopruneError as exc:
        checks.append(Check(name, "FAIL", f"max |diff| <= {tol:.1e}", "does not run", str(exc)))

    # 3. test accuracy of the ONNX file
    checks.append(_accuracy_check(report, model, max_accuracy_drop, say))

    # 4. the TVM library, where it was linked for this machine
    checks.append(_tvm_check(report, folder, ref, tol))

    # 5. speed against the dense model
    checks.extend(_speed_checks(report, folder, min_speedup_fraction, speed, say))
    return VerifyResult(str(folder), tuple(checks))


def _accuracy_check(report: dict[str, Any], model: Path, max_drop: float, say: Callable[[str], None]) -> Check:
    from autoprune.data import load_data

    d = report["data"]
    try:
        ref, size, seed, key = d["ref"], int(d["input_size"]), int(d["seed"]), d["key"]
    except (KeyError, TypeError, ValueError):
        raise ConfigError("report.json is corrupt: data needs ref, input_size, seed and key; "
                          "re-run `autoprune export`") from None
    say(f"re-evaluating test accuracy on {ref} ({size}px, split seed {seed})")
    data = load_data(ref, size=size, seed=seed)
    if data.key != key:
        raise ConfigError(f"the data {ref!r} is not the data of the export (key {data.key!r}, report has {key!r}); "
                          "the test split would differ")
    expected = float(report["test"]["accuracy"])
    bound = expected - max_drop
    name = "test accuracy (ONNX)"
    try:
        acc, n = onnx_accuracy(model, data)
    except AutopruneError as exc:
        return Check(name, "FAIL", f">= {bound:.4f}", "does not run", str(exc))
    return Check(f"{name}, {n} samples", "pass" if acc >= bound - 1e-12 else "FAIL",
                 f">= {bound:.4f} ({expected:.4f} - {max_drop:g})", f"{acc:.4f}")


def _native_library(report: dict[str, Any], folder: Path) -> Path | None:
    t = report.get("tvm") or {}
    lib = folder / "model_tvm.so"
    here = t.get("host_arch") in (None, platform.machine())
    return lib if t.get("built") and t.get("native") and here and lib.is_file() else None


def _tvm_check(report: dict[str, Any], folder: Path, ref: dict[str, np.ndarray], tol: float) -> Check:
    name = "TVM module outputs"
    lib = _native_library(report, folder)
    if lib is None:
        built_on = (report.get("tvm") or {}).get("host_arch")
        if built_on and built_on != platform.machine():
            return Check(name, "skip", note=f"model_tvm.so is {built_on} code; this machine is {platform.machine()}")
        return Check(name, "skip", note="no TVM module linked for this machine (report.json: tvm.reason)")
    try:
        from autoprune.hardware import load_profile
        from autoprune.profiling import get_runtime

        opts = load_profile(report["target"]).runtime_options("tvm")
        rt = get_runtime("tvm", target=opts["target"], threads=opts.get("threads"))
        diff = max_abs_diff(tvm_outputs(rt, lib, ref["x"]), ref["outputs"])
    except ImportError:
        return Check(name, "skip", note="apache-tvm is not installed here")
    except AutopruneError as exc:
        return Check(name, "FAIL", f"max |diff| <= {tol:.1e}", "does not run", _short(str(exc)))
    return Check(name, "pass" if diff <= tol else "FAIL", f"max |diff| <= {tol:.1e}", f"{diff:.2e}")


def _speed_checks(report: dict[str, Any], folder: Path, fraction: float, speed: bool,
                  say: Callable[[str], None]) -> list[Check]:
    from autoprune.hardware import load_profile

    if not speed:
        return [Check("speedup vs dense", "skip", note="--no-speed")]
    if report["target"] != "local":
        return [Check("speedup vs dense", "skip", note=f"target {report['target']} is not this machine")]
    measured = report.get("measured") or {}
    runs = measured.get("runtimes") or {}
    dense = folder / "dense.onnx"
    if not runs or not dense.is_file():
        return [Check("speedup vs dense", "skip", note="the report has no measured speedup (or dense.onnx is gone)")]
    shape = tuple(measured.get("input_shape") or ())
    if not isinstance(runs, dict) or not all(isinstance(v, dict) for v in runs.values()) or len(shape) != 4 \
            or any(v.get("ok") and not isinstance(v.get("speedup"), (int, float)) for v in runs.values()):
        raise ConfigError("report.json is corrupt: measured.runtimes/input_shape are malformed; "
                          "re-run `autoprune export`")
    profile = load_profile("local")
    cal = (report.get("predicted") or {}).get("provenance", {}).get("runtime", "")
    threads = {k: int(v["threads"]) for k, v in runs.items() if isinstance(v, dict) and v.get("threads")}
    available = local_runtimes(profile, cal, _native_library(report, folder), threads)
    checks = []
    for name, rec in runs.items():
        label = f"speedup vs dense, {name}"
        if not rec.get("ok"):
            checks.append(Check(label, "skip", note=f"not measured at export: {_short(rec.get('reason', ''))}"))
            continue
        if name not in available:
            checks.append(Check(label, "skip", note=f"{name} cannot run this export here"))
            continue
        runtime, pruned = available[name]
        expected = float(rec["speedup"])
        bound = fraction * expected
        say(f"timing {name}: pruned vs dense, interleaved")
        try:
            m = measure_speedup(runtime, str(folder / pruned), str(dense), shape)
        except AutopruneError as exc:
            checks.append(Check(label, "FAIL", f">= {_fmt_speed(bound)}", "does not run", _short(str(exc))))
            continue
        note = f"noisy: ratio spread {m.ratio_spread:.0%}" if m.noisy else ""
        checks.append(Check(label, "pass" if m.speedup >= bound else "FAIL",
                            f">= {_fmt_speed(bound)} ({fraction:g} x {_fmt_speed(expected)})",
                            _fmt_speed(m.speedup), note))
    return checks


def _short(text: str, limit: int = 160) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def mean_sd(values: list[float]) -> tuple[float, float | None]:
    """Mean and sample standard deviation (``None`` for one value)."""
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else None)
