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
timed in one interleaved run** (:func:`autoprune.costmodel.builder.measure_vs_reference`),
so that the host's drift (±20 % within minutes on a shared machine) cancels in the ratio.
"""

from __future__ import annotations

import platform
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from autoprune.deploy.reference import (
    REPORT_FORMAT,
    REPORT_VERSION,
    load_reference,
    max_abs_diff,
    onnx_accuracy,
    onnx_outputs,
    output_tolerance,
    tvm_outputs,
)
from autoprune.deploy.report import ExportReport
from autoprune.deploy.speed import Measured, local_runtimes, measure_speedup
from autoprune.errors import AutopruneError, CalibrationError, ConfigError
from autoprune.io import file_sha256

if TYPE_CHECKING:
    from autoprune.hardware import HardwareProfile


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


def read_report(folder: Path) -> ExportReport:
    """Read and validate an export folder's ``report.json``.

    Returns:
        Its record (keys it lacks read as ``None``: see :mod:`autoprune.deploy.report`).

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
    rec = ExportReport.from_dict(report)
    for name in ("model.onnx", "reference.npz"):
        if not isinstance(rec.checksums.get(name), str):
            raise ConfigError(f"{path} is corrupt: no sha256 of {name} under 'checksums'; re-run `autoprune export`")
    acc = rec.test.accuracy
    if not isinstance(acc, (int, float)) or not 0 <= acc <= 1:
        raise ConfigError(f"{path} is corrupt: test.accuracy is {acc!r}; re-run `autoprune export`")
    return rec


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

    folder = Path(folder)
    say = progress or (lambda _msg: None)
    report = read_report(folder)
    checks: list[Check] = []
    model = folder / "model.onnx"
    if not model.is_file():
        raise ConfigError(f"{model} is missing; this is not a complete autoprune export")
    ref_path = folder / "reference.npz"
    if not ref_path.is_file() or file_sha256(ref_path) != report.checksums["reference.npz"]:
        raise ConfigError(f"{ref_path} is missing or does not match its checksum in report.json; "
                          "re-run `autoprune export`")
    ref = load_reference(ref_path)

    # 1. the file is the one exported
    want = report.checksums["model.onnx"]
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
    profile = _TargetProfile(report.target)
    checks.append(_tvm_check(report, folder, ref, tol, profile))

    # 5. speed against the dense model
    checks.extend(_speed_checks(report, folder, min_speedup_fraction, speed, say, profile))
    return VerifyResult(str(folder), tuple(checks))


class _TargetProfile:
    """The report's target profile, loaded the first time a check needs it (once per verify)."""

    def __init__(self, target: str) -> None:
        self.target = target
        self._profile: HardwareProfile | None = None

    def get(self) -> HardwareProfile:
        """The loaded profile.

        Raises:
            AutopruneError: The target is unknown here or its profile is invalid.
        """
        if self._profile is None:
            from autoprune.hardware import load_profile

            self._profile = load_profile(self.target)
        return self._profile


def _accuracy_check(report: ExportReport, model: Path, max_drop: float, say: Callable[[str], None]) -> Check:
    from autoprune.data import load_data

    d = report.data
    try:
        size, seed = int(d.input_size), int(d.seed)
    except (TypeError, ValueError):
        size = seed = None
    if d.ref is None or d.key is None or size is None or seed is None:
        raise ConfigError("report.json is corrupt: data needs ref, input_size, seed and key; "
                          "re-run `autoprune export`")
    ref, key = d.ref, d.key
    say(f"re-evaluating test accuracy on {ref} ({size}px, split seed {seed})")
    data = load_data(ref, size=size, seed=seed, max_train_samples=d.max_train_samples,
                     max_eval_samples=d.max_eval_samples)
    if data.key != key:
        raise ConfigError(f"the data {ref!r} is not the data of the export (key {data.key!r}, report has {key!r}); "
                          "the test split would differ")
    expected = float(report.test.accuracy)
    bound = expected - max_drop
    name = "test accuracy (ONNX)"
    try:
        acc, n = onnx_accuracy(model, data)
    except AutopruneError as exc:
        return Check(name, "FAIL", f">= {bound:.4f}", "does not run", str(exc))
    return Check(f"{name}, {n} samples", "pass" if acc >= bound - 1e-12 else "FAIL",
                 f">= {bound:.4f} ({expected:.4f} - {max_drop:g})", f"{acc:.4f}")


def _native_library(report: ExportReport, folder: Path) -> Path | None:
    t = report.tvm
    lib = folder / "model_tvm.so"
    here = t is not None and t.host_arch in (None, platform.machine())
    return lib if t is not None and t.built and t.native and here and lib.is_file() else None


def _tvm_check(report: ExportReport, folder: Path, ref: dict[str, np.ndarray], tol: float,
               profile: _TargetProfile) -> Check:
    name = "TVM module outputs"
    lib = _native_library(report, folder)
    if lib is None:
        built_on = report.tvm.host_arch if report.tvm is not None else None
        if built_on and built_on != platform.machine():
            return Check(name, "skip", note=f"model_tvm.so is {built_on} code; this machine is {platform.machine()}")
        return Check(name, "skip", note="no TVM module linked for this machine (report.json: tvm.reason)")
    try:
        from autoprune.profiling import get_runtime

        opts = profile.get().runtime_options("tvm")
        rt = get_runtime("tvm", target=opts["target"], threads=opts.get("threads"))
        diff = max_abs_diff(tvm_outputs(rt, lib, ref["x"]), ref["outputs"])
    except ImportError:
        return Check(name, "skip", note="apache-tvm is not installed here")
    except AutopruneError as exc:
        return Check(name, "FAIL", f"max |diff| <= {tol:.1e}", "does not run", _short(str(exc)))
    return Check(name, "pass" if diff <= tol else "FAIL", f"max |diff| <= {tol:.1e}", f"{diff:.2e}")


def _speed_checks(report: ExportReport, folder: Path, fraction: float, speed: bool,
                  say: Callable[[str], None], profile: _TargetProfile) -> list[Check]:
    if not speed:
        return [Check("speedup vs dense", "skip", note="--no-speed")]
    if report.target != "local":
        return [Check("speedup vs dense", "skip", note=f"target {report.target} is not this machine")]
    measured = report.measured or Measured()
    runs = measured.runtimes
    dense = folder / "dense.onnx"
    if not (runs or measured.malformed) or not dense.is_file():
        return [Check("speedup vs dense", "skip", note="the report has no measured speedup (or dense.onnx is gone)")]
    shape = tuple(measured.input_shape or ())
    if measured.malformed or len(shape) != 4 \
            or any(r.ok and not isinstance(r.speedup, (int, float)) for r in runs.values()):
        raise ConfigError("report.json is corrupt: measured.runtimes/input_shape are malformed; "
                          "re-run `autoprune export`")
    cal = report.predicted.provenance.get("runtime", "") if report.predicted is not None else ""
    threads = {k: int(r.threads) for k, r in runs.items() if r.threads}
    available = local_runtimes(profile.get(), cal, _native_library(report, folder), threads)
    checks = []
    for name, rec in runs.items():
        label = f"speedup vs dense, {name}"
        if not rec.ok:
            checks.append(Check(label, "skip", note=f"not measured at export: {_short(rec.reason or '')}"))
            continue
        if name not in available:
            checks.append(Check(label, "skip", note=f"{name} cannot run this export here"))
            continue
        runtime, pruned = available[name]
        expected = float(rec.speedup)
        bound = fraction * expected
        say(f"timing {name}: pruned vs dense, interleaved")
        try:
            m = measure_speedup(runtime, str(folder / pruned), str(dense), shape)
            first = m.speedup
            if first < bound:  # this host drifts +-20 % within minutes: a miss is timed once more, the better kept
                say(f"timing {name} again: {_fmt_speed(first)} is below {_fmt_speed(bound)}")
                m = max(m, measure_speedup(runtime, str(folder / pruned), str(dense), shape), key=lambda r: r.speedup)
        except AutopruneError as exc:
            checks.append(Check(label, "FAIL", f">= {_fmt_speed(bound)}", "does not run", _short(str(exc))))
            continue
        note = "; ".join(n for n in (f"noisy: ratio spread {m.ratio_spread:.0%}" if m.noisy else "",
                                     f"timed twice, first {_fmt_speed(first)}" if first < bound else "") if n)
        checks.append(Check(label, "pass" if m.speedup >= bound else "FAIL",
                            f">= {_fmt_speed(bound)} ({fraction:g} x {_fmt_speed(expected)})",
                            _fmt_speed(m.speedup), note))
    return checks


def _short(text: str, limit: int = 160) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"
