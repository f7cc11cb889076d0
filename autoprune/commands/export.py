"""``autoprune export``: pick a Pareto point and export it for deployment."""

from __future__ import annotations

import argparse

from autoprune.commands.base import Command
from autoprune.commands.common import fraction, positive_float
from autoprune.commands.pareto import add_study_args, load_existing


class ExportCommand(Command):
    """Rebuild a trial's plan, fine-tune longer, test, and export ONNX (+ TVM module)."""

    name = "export"
    help = "export a Pareto point: ONNX (parity-checked), a TVM module, a report and a per-layer chart"

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        add_study_args(parser)
        parser.add_argument("--trial", type=int, default=None, help="trial number to export")
        parser.add_argument("--max-latency-ms", type=positive_float, default=None,
                            help="export the most accurate front point under this predicted latency")
        parser.add_argument("--min-accuracy", type=fraction, default=None,
                            help="export the fastest front point at or above this accuracy")
        parser.add_argument("--epochs", type=int, default=None,
                            help="fine-tuning epochs (default: 3x the search's budget)")
        parser.add_argument("--no-tvm", action="store_true", help="skip building the TVM module")
        parser.add_argument("--no-progress", action="store_true", help="no progress bars")

    def run(self, args: argparse.Namespace) -> int:
        from autoprune.errors import ConfigError
        from autoprune.search.deploy import export_point, pick_trial
        from autoprune.search.storage import default_storage_url

        if args.epochs is not None and args.epochs < 0:
            raise ConfigError(f"--epochs must be >= 0, got {args.epochs}")
        study, config, _storage = load_existing(args)
        row = pick_trial(study, config, trial=args.trial, max_latency_ms=args.max_latency_ms,
                         min_accuracy=args.min_accuracy)
        out = export_point(study, config, row, epochs=args.epochs, storage_url=args.storage or default_storage_url(),
                           progress=not args.no_progress, tvm=not args.no_tvm)
        r = out["report"]
        print(f"exported trial {r['trial']} ({r['plan_summary']}) to {out['dir']}")
        print(f"  test accuracy {r['test']['accuracy']:.4f} (dense {r['dense_test_accuracy']:.4f}), "
              f"macro F1 {r['test']['f1_macro']:.4f}")
        p = r["predicted"]
        print(f"  PREDICTED on {r['target']}: {p['latency_ms']:.4g} ms ({p['speedup']:.2f}x vs dense "
              f"{p['dense_latency_ms']:.4g} ms), {p['energy_mj']:.4g} mJ [{p['provenance'].get('status')} "
              f"calibration {p['provenance'].get('calibration_id')}]")
        if r["measured"]:
            print(f"  MEASURED here: {r['measured']['latency_ms']:.4g} ms with {r['measured']['runtime']}")
        o = r["onnx"]
        print(f"  ONNX: {o['file_bytes']} bytes, parity max |diff| {o['max_abs_diff']:.2e} <= atol {o['atol']:g}")
        t = r["tvm"]
        print(f"  TVM module: {t['path']}" if t.get("built") else f"  TVM module not built here: {t['reason']}")
        return 0
