"""``autoprune export``: pick a Pareto point and export it for deployment."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import TYPE_CHECKING

from autoprune.commands.base import Command
from autoprune.commands.common import add_compute_args, compute_of, fraction, positive_float, positive_int
from autoprune.commands.pareto import add_study_args, load_existing
from autoprune.deploy import plain as _plain

if TYPE_CHECKING:
    from autoprune.deploy.report import ExportReport, Predicted
    from autoprune.deploy.speed import Measured


class ExportCommand(Command):
    """Rebuild a trial's plan, fine-tune longer, test, and export ONNX (+ TVM module)."""

    name = "export"
    help = ("export a Pareto point: ONNX (parity-checked) with reference outputs, a TVM module for the target, "
            "latency measured against the dense model on `local`, a report and a per-layer chart")

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        add_study_args(parser)
        parser.add_argument("--trial", type=int, default=None, help="trial number to export")
        parser.add_argument("--max-latency-ms", type=positive_float, default=None,
                            help="export the most accurate front point under this predicted latency")
        parser.add_argument("--min-accuracy", type=fraction, default=None,
                            help="export the fastest front point at or above this accuracy")
        parser.add_argument("--epochs", type=int, default=None,
                            help="fine-tuning epochs (default: 3x the search's budget)")
        parser.add_argument("--repeats", type=positive_int, default=1,
                            help="fine-tune with this many seeds and report test accuracy as mean ± sd; "
                                 "the exported model is the first seed's (default: 1)")
        parser.add_argument("--out", default=None,
                            help="export folder (default: results/<study>/export-<trial>)")
        parser.add_argument("--force", action="store_true",
                            help="export into an --out folder that holds other files (those of the export's names "
                            "are replaced)")
        parser.add_argument("--no-tvm", action="store_true", help="skip building the TVM module")
        parser.add_argument("--tvm-tune-trials", type=positive_int, default=None, metavar="N",
                            help="tune the TVM module (and the dense model, its speed reference) with MetaSchedule "
                            "on this machine, about N trials per model, into results/tvm-tuning/<target>/<model> "
                            "(a later export reuses it); default: untuned, timed against ONNX Runtime only")
        parser.add_argument("--tvm-tune-timeout", type=positive_float, default=600.0, metavar="S",
                            help="bound on each model's tuning in seconds (default: 600)")
        add_compute_args(parser)
        parser.add_argument("--no-progress", action="store_true", help="no progress bars")

    def run(self, args: argparse.Namespace) -> int:
        from dataclasses import replace

        from autoprune.dashboard.note import update_study_note
        from autoprune.deploy.export import export_point, pick_trial
        from autoprune.errors import ConfigError
        from autoprune.search.context import StudyContext
        from autoprune.search.storage import default_storage_url

        compute = compute_of(args)  # fine-tuning and evaluation; the ONNX export stays on the CPU
        if args.epochs is not None and args.epochs < 0:
            raise ConfigError(f"--epochs must be >= 0, got {args.epochs}")
        study, config, _storage = load_existing(args)
        config = replace(config, device=args.device, amp=not args.no_amp)  # chosen here, not where it searched
        context = StudyContext.resolve(config, compute=compute)
        row = pick_trial(study, config, trial=args.trial, max_latency_ms=args.max_latency_ms,
                         min_accuracy=args.min_accuracy)

        def say(msg: str) -> None:
            if not args.no_progress:
                print(f"  ... {msg}", flush=True)

        say(f"fine-tuning and evaluating on {compute.describe()}")
        url = args.storage or default_storage_url()
        out = export_point(study, context, row, epochs=args.epochs, out_dir=args.out, storage_url=url,
                           progress=not args.no_progress, tvm=not args.no_tvm, repeats=args.repeats, force=args.force,
                           say=say, tvm_tune_trials=args.tvm_tune_trials or 0, tvm_tune_timeout_s=args.tvm_tune_timeout)
        update_study_note(study, url)  # the dashboard's view now lists the export
        for line in summary_lines(out.report, out.folder):
            print(line)
        return 0


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.0%}"


def summary_lines(r: ExportReport, folder: Path | str) -> list[str]:
    """What ``export`` prints: one line per figure, one line per part that could not be done here."""
    lines = [f"exported trial {r.trial} ({r.plan_summary}) to {folder}"]
    t, rep = r.test, r.repeats
    if rep.k > 1:
        lines.append(f"  test accuracy {rep.mean:.4f} ± {rep.sd:.4f} over {rep.k} seeds {list(rep.seeds)} "
                     f"(exported model: seed {rep.exported_seed}, {t.accuracy:.4f}; dense "
                     f"{r.dense_test_accuracy:.4f}), macro F1 {t.f1_macro:.4f}")
    else:
        lines.append(f"  test accuracy {t.accuracy:.4f} (dense {r.dense_test_accuracy:.4f}), "
                     f"macro F1 {t.f1_macro:.4f}; the ONNX file itself: {t.onnx_accuracy:.4f} "
                     f"on {t.samples} samples")
    lines.append(_predicted_line(r))
    if r.measured is not None:
        lines += _measured_lines(r.measured, r.predicted)
    o = r.onnx
    lines.append(f"  ONNX: model.onnx {o.file_bytes} bytes, parity max |diff| {o.max_abs_diff:.2e} <= atol "
                 f"{o.atol:g}, sha256 {o.sha256[:16]}…; reference outputs of {r.reference.samples} "
                 "test inputs in reference.npz")
    lines += _tvm_lines(r)
    d = r.device
    if d:
        lines.append(f"  on the device ({d.runtime}, as calibrated): {d.commands[0]}")
    for note in r.notes:
        if not note.startswith(("TVM:", "onnxruntime measurement", "tvm measurement")):
            lines.append(f"  not done: {note}")
    return lines


def _tvm_lines(r: ExportReport) -> list[str]:
    """The TVM module: tuned or untuned, where it was built and checked, and its tuning."""
    tv = r.tvm
    if tv is None or not tv.built:
        return [f"  TVM module not built here: {tv.reason if tv is not None else 'no record'}"]
    label = tv.label if tv.tuned is not None else "untuned"
    if tv.checked:
        lines = [f"  TVM module ({label}): model_tvm.so for {json.dumps(_plain(tv.target))}, loaded back and run: "
                 f"max |diff| vs ONNX Runtime {tv.max_abs_diff:.2e} <= {tv.tolerance:.1e}"]
    else:
        lines = [f"  TVM module ({label}): {tv.path} ({tv.reason})"]
    t = tv.tuning
    if t is not None:
        cut = f", cut by the {t.timeout_s:g} s bound" if t.stopped else ""
        dense = f"; the dense model tuned alike: {tv.dense_path}" if tv.dense_path else ""
        lines.append(f"    tuned with MetaSchedule ({t.cost_model} cost model): {t.trials} trials per model, "
                     f"{t.trials_run} measured now in {t.seconds:.0f} s{cut}, {t.records} records in {t.database}"
                     f"{dense}")
    return lines


def _predicted_line(r: ExportReport) -> str:
    """The prediction on the target, ± its uncertainty band (and how the band was obtained), with what its
    calibration is worth; a second line (in the same string) where the prediction lies outside the
    calibration's range."""
    p, c = r.predicted, r.predicted.calibration
    err = "error never measured against a device"
    if c.heldout_mape is not None:
        rho = f", Spearman {c.heldout_spearman:.2f}" if c.heldout_spearman is not None else ""
        err = f"held-out MAPE {_pct(c.heldout_mape)}{rho} (n={c.n_heldout})"
    band = ""
    if p.band_ms is not None:
        basis = (p.provenance or {}).get("band_basis")
        band = f" ±{p.band_ms:.2g} ms" + (f" ({basis})" if basis else "")
    line = (f"  PREDICTED on {r.target}: {p.latency_ms:.4g} ms{band} ({p.speedup:.2f}x vs dense "
            f"{p.dense_latency_ms:.4g} ms), {p.energy_mj:.4g} mJ [{c.status} calibration "
            f"{c.calibration_id}, {err}]")
    if p.band_ms is not None and p.outside_range:
        line += f"\n    outside the calibrated range, band widened: {p.outside_range}"
    return line


def _measured_lines(m: Measured, p: Predicted) -> list[str]:
    """The speedups measured here, per runtime, and the prediction's error against them."""
    host = m.host if m.host is not None else "this machine"
    lines = [f"  MEASURED here on {host}, pruned vs dense in one interleaved run:"]
    ort = m.runtimes.get("onnxruntime")
    for name, rec in m.runtimes.items():
        if rec.speedup is not None:
            flag = "" if rec.ok else "  (too noisy to trust)"
            lines.append(f"    {rec.runtime}, {rec.threads} thread(s): {rec.pruned_ms:.4g} ms vs dense "
                         f"{rec.dense_ms:.4g} ms, speedup {rec.speedup:.2f}x{flag}")
            if rec.tuned and ort is not None and ort.pruned_ms:
                lines.append(f"      (tuned vs tuned dense); {rec.pruned_ms / ort.pruned_ms:.2f}x ONNX Runtime's "
                             f"{ort.pruned_ms:.4g} ms (separate runs)")
        elif rec.vs_onnxruntime is not None:
            flag = "" if rec.noisy is False else "  (noisy)"
            lines.append(f"    {rec.runtime}, {rec.threads} thread(s): UNTUNED, {rec.pruned_ms:.4g} ms, "
                         f"{rec.vs_onnxruntime:.2f}x ONNX Runtime's {rec.onnxruntime_ms:.4g} ms in the same run"
                         f"{flag}; no speedup against an untuned dense: tune with --tvm-tune-trials N, or deploy "
                         "with ONNX Runtime")
        else:
            lines.append(f"    {name}: {rec.reason}")
    if m.prediction_error_pct is not None:
        lines.append(f"    prediction error: {m.prediction_error_pct:+.1f} % on latency "
                     f"({p.latency_ms:.4g} ms predicted), {m.speedup_prediction_error_pct:+.1f} % on "
                     f"speedup, against {m.compared_runtime}")
        if m.reanchored_ms is not None and m.host_scale is not None:
            lines.append(f"    re-anchored to the dense model timed in this run ({m.host_scale:.2f}x its time at "
                         f"calibration): {m.reanchored_ms:.4g} ms predicted, error {m.reanchored_error_pct:+.1f} %")
    elif m.reason:
        lines.append(f"    {m.reason}")
    return lines
