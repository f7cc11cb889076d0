"""Measured: is a MetaSchedule-tuned TVM module within reach of ONNX Runtime on this CPU?

For each model (default: resnet20, vgg11 and the journey's model, ``tests/fixtures/usermodel.py:build``), at
batch 1 and 32×32 (the digits size ``search`` uses), dense and a pruned variant (``channel``, L1, uniform
ratio): export ONNX, tune the Relax module's tasks with MetaSchedule for this CPU
(:func:`autoprune.profiling.tvm_tune.tune_relax_module`, ``mcpu`` named by LLVM, one database per model as
``export --tvm-tune-trials`` keeps it), build it with the database, then time the tuned module against ONNX
Runtime (1 and 2 threads) in interleaved rounds in one process
(:func:`autoprune.profiling.tvm_tune.time_against_onnxruntime`), and check its outputs against ONNX Runtime's.

Each model's tuning is bounded by ``--tune-seconds`` (half for the dense model, the rest for the pruned one,
which also reuses the dense model's records of identical tasks). Weights are the zoo's random initialisation:
latency does not depend on their values. Without ``xgboost`` MetaSchedule samples schedules at random
(``cost model: random`` in the table); with it, an XGBoost cost model guides an evolutionary search.

Usage::

    .venv/bin/python benchmarks/tvm_vs_ort.py [--tune-seconds 180] [--trials 96] [--models resnet20,vgg11]
        [--out results/benchmarks/tvm_vs_ort]   # writes <out>.csv and <out>.md
"""

from __future__ import annotations

import argparse
import csv
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

DEFAULT_MODELS = ("resnet20", "vgg11", "tests/fixtures/usermodel.py:build")
COLUMNS = ("model", "variant", "params", "mmacs", "cost_model", "trials", "tune_s", "stopped", "tvm_ms", "tvm_q1_ms",
           "tvm_q3_ms", "ort1_ms", "ort2_ms", "tvm_over_ort", "max_rel_diff")


def _variants(ref: str, ratio: float, size: int, folder: Path) -> list[tuple[str, Path, int, float]]:
    """``(variant, ONNX path, params, MACs)`` for the dense model and its uniformly channel-pruned variant."""
    from autoprune.models import build_model
    from autoprune.pruning import PruningPlan, discover_groups, evaluate, export_onnx, prune_model

    torch.manual_seed(0)
    model = build_model(ref, num_classes=10, in_channels=3).eval()
    x = torch.randn(1, 3, size, size)
    pruned = prune_model(model, PruningPlan.uniform(discover_groups(model, x), "channel", ratio), x)
    out = []
    for name, variant in (("dense", model), (f"channel {ratio:.0%}", pruned)):
        path = folder / f"{name.split()[0]}.onnx"
        export_onnx(variant, path, x)
        ev = evaluate(variant, [], x)
        out.append((name, path, ev.params, ev.macs))
    return out


def _row(ref: str, variant: str, onnx_path: Path, params: int, macs: float, work_dir: Path, args, target) -> dict:
    import onnx
    from tvm.relax.frontend.onnx import from_onnx

    from autoprune.costmodel.calibration import calibration_name
    from autoprune.profiling.base import graph_inputs, load_onnx
    from autoprune.profiling.tvm_tune import build_tuned, time_against_onnxruntime, tune_relax_module

    name, shape, _ = graph_inputs(load_onnx(str(onnx_path)))[0]
    mod = from_onnx(onnx.load(str(onnx_path)), shape_dict={name: list(shape)})
    budget = args.tune_seconds / 2 if variant == "dense" else args.tune_seconds - args.dense_tune_s
    tuned = tune_relax_module(mod, target, work_dir=work_dir, max_trials=args.trials, timeout_s=max(budget, 0.0),
                              progress=args.progress)
    if variant == "dense":
        args.dense_tune_s = tuned.seconds
    ex = build_tuned(mod, target, tuned)
    tvm_row, ort1, ort2 = time_against_onnxruntime(onnx_path, {"tvm-tuned": ex}, tvm_threads=args.threads,
                                                   ort_threads=(1, 2), rounds=args.rounds, min_time_s=args.min_time)
    best_ort = min(ort1.median_ms, ort2.median_ms)
    return {"model": calibration_name(ref), "variant": variant, "params": params, "mmacs": round(macs / 1e6, 2),
            "cost_model": tuned.cost_model, "trials": sum(t.trials_before + t.trials_run for t in tuned.tasks),
            "tune_s": round(tuned.seconds, 1), "stopped": tuned.stopped or "", "tvm_ms": tvm_row.median_ms,
            "tvm_q1_ms": tvm_row.q1_ms, "tvm_q3_ms": tvm_row.q3_ms, "ort1_ms": ort1.median_ms,
            "ort2_ms": ort2.median_ms, "tvm_over_ort": tvm_row.median_ms / best_ort,
            "max_rel_diff": tvm_row.max_rel_diff}


def _markdown(rows: list[dict], header: str) -> str:
    lines = [header, "", "| model | variant | MMACs | tuning (trials, s) | TVM tuned ms (q1–q3) "
             "| ONNX Runtime ms, 1t / 2t | TVM / best ORT | max rel. diff |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        stop = ", cut by the bound" if r["stopped"] else ""
        lines.append(f"| {r['model']} | {r['variant']} | {r['mmacs']:.1f} | {r['trials']}, {r['tune_s']:.0f}{stop} | "
                     f"{r['tvm_ms']:.3f} ({r['tvm_q1_ms']:.3f}–{r['tvm_q3_ms']:.3f}) | {r['ort1_ms']:.3f} / "
                     f"{r['ort2_ms']:.3f} | **{r['tvm_over_ort']:.2f}×** | {r['max_rel_diff']:.1e} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(DEFAULT_MODELS), help="comma-separated model references")
    parser.add_argument("--ratio", type=float, default=0.5, help="channel pruning ratio of the variant (default 0.5)")
    parser.add_argument("--size", type=int, default=32, help="input side in pixels (default 32)")
    parser.add_argument("--tune-seconds", type=float, default=180.0,
                        help="tuning time bound per model, dense and pruned together (default 180)")
    parser.add_argument("--trials", type=int, default=96, help="trials per module, shared out by FLOPs (default 96)")
    parser.add_argument("--threads", type=int, default=2, help="TVM threads (default 2)")
    parser.add_argument("--rounds", type=int, default=10, help="interleaved rounds (default 10)")
    parser.add_argument("--min-time", type=float, default=0.2, help="seconds per timed batch (default 0.2)")
    parser.add_argument("--tuning-root", type=Path, default=None,
                        help="keep the databases here and resume them (default: a fresh temporary folder)")
    parser.add_argument("--out", type=Path, default=Path("results/benchmarks/tvm_vs_ort"),
                        help="write <out>.csv and <out>.md (default results/benchmarks/tvm_vs_ort)")
    parser.add_argument("--progress", action="store_true", help="one line per measured tuning batch on stderr")
    args = parser.parse_args(argv)

    import onnxruntime as ort
    import tvm

    from autoprune.costmodel.calibration import calibration_name
    from autoprune.profiling.protocol import host_description
    from autoprune.profiling.tvm_tune import host_cpu_target, tuning_dir

    torch.set_num_threads(max(1, args.threads))
    target, rows, t0 = host_cpu_target(args.threads), [], time.monotonic()
    with tempfile.TemporaryDirectory(prefix="tvm-vs-ort-") as tmp:
        root = args.tuning_root or Path(tmp) / "tvm-tuning"
        for ref in args.models.split(","):
            folder = Path(tmp) / calibration_name(ref)
            folder.mkdir(parents=True)
            args.dense_tune_s = 0.0
            for variant, path, params, macs in _variants(ref, args.ratio, args.size, folder):
                rows.append(_row(ref, variant, path, params, macs, tuning_dir(root, target, calibration_name(ref)),
                                 args, target))
                r = rows[-1]
                print(f"{ref} {variant}: tuned TVM {r['tvm_ms']:.3f} ms vs ONNX Runtime {r['ort1_ms']:.3f} (1t) / "
                      f"{r['ort2_ms']:.3f} (2t) ms: {r['tvm_over_ort']:.2f}x, {r['trials']} trials in "
                      f"{r['tune_s']:.0f} s", flush=True)
    header = (f"Batch 1, {args.size}×{args.size}, on {host_description()} (python {platform.python_version()}): "
              f"TVM {tvm.__version__} tuned for `{target['mcpu']}` with {args.threads} threads, ONNX Runtime "
              f"{ort.__version__} CPU; tuning bound {args.tune_seconds:g} s per model, {args.trials} trials per "
              f"module at most; {time.monotonic() - t0:.0f} s in all.")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with open(args.out.with_suffix(".csv"), "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    args.out.with_suffix(".md").write_text(_markdown(rows, header))
    print(_markdown(rows, header))
    return 0


if __name__ == "__main__":
    sys.exit(main())
