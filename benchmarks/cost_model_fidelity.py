"""Cost-model fidelity on this machine: predicted vs measured latency of random pruned plans.

For each model: calibrate a ``lut`` cost model exactly as ``autoprune profile``
does (isolated per-layer tables, and a whole-model correction fitted on the dense
model, a uniform ladder and half of its own random plans, seed 0; ``--in-context``
adds per-kernel lines fitted on onnxruntime's node profiles of those models), then
draw *different* random plans (seed
1000+), prune each with the pruning engine, measure it end to end with ONNX
Runtime CPU at batch 1 (shared protocol), and predict it. Prints per model: share
within ±10 %, MAPE, Spearman ρ and Kendall τ, the same ρ for a FLOPs-only proxy,
time per prediction and time to calibrate. All latencies are **measured** on
this host with onnxruntime (CPUExecutionProvider, ``--threads``) or **predicted**
from the calibration fitted in the same run.

    .venv/bin/python benchmarks/cost_model_fidelity.py --quick      # vgg11, 12 plans
    .venv/bin/python benchmarks/cost_model_fidelity.py              # 3 models x 50 plans

Targets: >= 95 % within ±10 %, ρ >= 0.98 (nn-Meter: 99.0 % within ±10 % on a
mobile CPU; HELP: ρ 0.989 on a Xeon).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from autoprune.costmodel.calibrate import (
    MODEL_PROTOCOL,
    calibrate,
    error_metrics,
    measure_ms,
    prune_random,
)
from autoprune.costmodel.template import export_onnx_bytes
from autoprune.io import results_dir, write_json

SIZES = {"resnet20": 32, "vgg11": 32, "resnet18": 224, "mobilenet_v2": 224}


def run_model(name: str, plans: int, calib_plans: int, threads: int, round_to: int, in_context: bool = True) -> dict:
    from scipy.stats import spearmanr

    from autoprune.models import build_model
    from autoprune.profiling import get_runtime
    from autoprune.pruning import discover_groups

    size = SIZES[name]
    runtime = get_runtime("onnxruntime", threads=threads)
    t0 = time.perf_counter()
    cal = calibrate(name, runtime=runtime, plans=calib_plans, seed=0, round_to=round_to, in_context=in_context)
    calib_s = time.perf_counter() - t0
    cm = cal.model
    dense = build_model(name).eval()
    example = torch.zeros(1, 3, size, size)
    groups = discover_groups(dense, example)
    rng = np.random.default_rng(1000 + len(name))
    measured, predicted, macs, pred_us = [], [], [], []
    for i in range(plans):
        pruned = prune_random(dense, example, groups, rng, round_to=round_to)
        t1 = time.perf_counter()
        est = cm.predict(pruned)  # describe the module + predict
        pred_us.append((time.perf_counter() - t1) * 1e6)
        predicted.append(est.latency_ms)
        macs.append(est.macs)
        measured.append(measure_ms(runtime, export_onnx_bytes(pruned, example), MODEL_PROTOCOL))
        print(f"  {name} plan {i + 1}/{plans}: measured {measured[-1]:.3f} ms, predicted {predicted[-1]:.3f} ms",
              flush=True)
    shape = cm.template.dense_shape()
    t2 = time.perf_counter()
    for _ in range(200):
        cm.predict(shape)
    shape_us = (time.perf_counter() - t2) / 200 * 1e6
    m = error_metrics(predicted, measured)
    return {
        "model": name, "input_size": size, "plans": plans, **m,
        "flops_spearman": float(spearmanr(macs, measured)[0]),
        "predict_module_us_median": statistics.median(pred_us), "predict_shape_us": shape_us,
        "calibrate_s": calib_s, "calibration_heldout": {k: cal.error.get(k) for k in
                                                        ("heldout_mape", "heldout_spearman", "n_heldout")},
        "in_context": cal.error.get("in_context"), "alpha": cm.alpha, "overhead_ms": cm.overhead_ms,
        "measured_ms": measured, "predicted_ms": predicted, "macs": macs,
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="vgg11 (the default model) only, 12 evaluation plans")
    p.add_argument("--models", default="vgg11,resnet18,mobilenet_v2")
    p.add_argument("--plans", type=int, default=50, help="evaluation plans per model")
    p.add_argument("--calib-plans", type=int, default=12, help="end-to-end plans used by the calibration")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--round-to", type=int, default=8, help="channel alignment of all plans (1 = none)")
    p.add_argument("--out", type=Path, default=None)
    p.add_argument("--in-context", action="store_true",
                   help="also fit per-kernel in-context lines on onnxruntime's node profiles (an experiment)")
    args = p.parse_args()
    torch.set_num_threads(1)
    models = ["vgg11"] if args.quick else args.models.split(",")
    plans = 12 if args.quick else args.plans
    load_before = os.getloadavg()
    rows = []
    for name in models:
        rows.append(run_model(name, plans, args.calib_plans, args.threads, args.round_to, args.in_context))
    load_after = os.getloadavg()
    print(f"\nhost load average before {load_before[0]:.2f}, after {load_after[0]:.2f} "
          f"({os.cpu_count()} CPUs); runtime onnxruntime CPU, threads={args.threads}, batch 1, "
          f"round_to={args.round_to}")
    print(f"{'model':14s} {'n':>3s} {'±10%':>6s} {'MAPE':>6s} {'rho':>6s} {'tau':>6s} {'FLOPs rho':>9s} "
          f"{'pred(us)':>9s} {'calib(s)':>8s}")
    for r in rows:
        print(f"  {r['model']}: in-context fit {r['in_context']}, alpha {r['alpha']:.3f}, "
              f"overhead {r['overhead_ms']:.3f} ms")
    for r in rows:
        print(f"{r['model']:14s} {r['n']:3d} {r['within_10pct']:6.1%} {r['mape']:6.1%} {r.get('spearman', 0):6.3f} "
              f"{r.get('kendall', 0):6.3f} {r['flops_spearman']:9.3f} {r['predict_module_us_median']:9.0f} "
              f"{r['calibrate_s']:8.0f}")
    out = args.out or results_dir() / "benchmarks" / "cost_model_fidelity.json"
    write_json(out, {"rows": rows, "load_before": load_before, "load_after": load_after,
                     "threads": args.threads, "round_to": args.round_to}, checksum=True)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
