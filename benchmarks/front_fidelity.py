"""Measured: is the cost model right on the plans a user exports, the extreme ones at the front's fast end?

For each model (default: the journey's model, ``tests/fixtures/usermodel.py:build``, resnet20 and vgg11, batch 1,
32×32), two calibrations are taken back to back with the same number of plans:

* ``aligned-0.9``: what ``profile`` measured before (channel counts aligned to 8, the grid's smallest count 8,
  random plans up to ratio 0.9);
* ``search-matched``: the sample the default search spaces produce (no alignment, ``min_channels`` 4 measured in
  every layer's grid, random and uniform plans up to ratio 0.95).

Then ``--front-plans`` plans like the ones a search exports (uniform 0.8/0.9/0.95 and random per-group ratios in
[0.6, 0.95], no alignment, at least 4 channels) are each measured ``--repeats`` times against the dense model
in interleaved rounds (the calibration's own protocol), alternating plans between repeats. Both calibrations
predict the same measurements, so the comparison is fair whatever the host's speed does:

* ``speedup error``: predicted (dense / plan) against the measured ratio, which the host's drift cancels from;
* ``latency error``: predicted ms against the measured ratio × the dense model's time measured in the same
  rounds, i.e. against milliseconds now;
* ``floor``: the measurement's own noise, the median over plans of the spread of one plan's repeated ratios
  (median absolute deviation from its median, relative);
* ``in band``: whether the measured ms lie inside the prediction's uncertainty band
  (:mod:`autoprune.costmodel.uncertainty`, from the calibration's held-out residuals, as ``search`` shows it).

Usage::

    .venv/bin/python benchmarks/front_fidelity.py [--models resnet20,vgg11] [--plans 12] [--front-plans 8]
        [--repeats 3] [--out results/benchmarks/front_fidelity]   # writes <out>.csv and <out>.md
"""

from __future__ import annotations

import argparse
import csv
import platform
import sys
import time
from pathlib import Path

import numpy as np

DEFAULT_MODELS = ("tests/fixtures/usermodel.py:build", "resnet20", "vgg11")
VARIANTS = {
    "aligned-0.9": {"round_to": 8, "min_channels": 8, "max_ratio": 0.9},
    "search-matched": {"round_to": 1, "min_channels": 4, "max_ratio": 0.95},
}
COLUMNS = ("model", "calibration", "plan", "measured_ratio", "floor", "predicted_ratio", "speedup_error_pct",
           "measured_ms", "predicted_ms", "latency_error_pct", "band_ms", "in_band", "heldout_mape", "calibration_s")


def _front_plans(groups, n: int, rng: np.random.Generator):
    """Plans like the front's fast end: uniform 0.8/0.9/0.95, then random per-group ratios in [0.6, 0.95]."""
    from autoprune.pruning import GroupPlan, PlanSettings, PruningPlan

    settings = PlanSettings(min_channels=4)
    plans = [(f"uniform {r}", PruningPlan.uniform(groups, "channel", r, "l1", settings=settings))
             for r in (0.8, 0.9, 0.95)][:n]
    while len(plans) < n:
        pairs = tuple((g.name, GroupPlan("channel", float(rng.uniform(0.6, 0.95)), "l1") if "channel" in g.allowed
                       else GroupPlan("keep", 0.0, "l1")) for g in groups)
        plans.append((f"random {len(plans) - 2}", PruningPlan(pairs, settings)))
    return plans


def run_model(ref: str, args: argparse.Namespace) -> list[dict]:
    """Both calibrations of ``ref``, then the front plans measured and predicted by each."""
    import torch

    from autoprune.costmodel.builder.calibrate import CalibrationOptions, calibrate
    from autoprune.costmodel.builder.measure import measure_vs_reference
    from autoprune.costmodel.template import export_onnx_bytes
    from autoprune.costmodel.uncertainty import from_calibration
    from autoprune.models import build_model
    from autoprune.profiling import get_runtime
    from autoprune.pruning import check_groups, discover_groups, prune_model

    dense = build_model(ref, num_classes=10, in_channels=3).eval()
    example = torch.zeros(1, 3, 32, 32)
    runtime = get_runtime("onnxruntime", threads=1)
    fits = {}
    for name, kw in VARIANTS.items():
        t0 = time.perf_counter()
        result = calibrate(ref, CalibrationOptions(plans=args.plans, seed=args.seed, input_size_px=32, **kw),
                           runtime=runtime, model=dense)
        fits[name] = (result.model, result.error, time.perf_counter() - t0)
        print(f"  {ref} {name}: calibrated in {fits[name][2]:.0f} s, held-out MAPE {result.error['heldout_mape']:.1%}",
              flush=True)
    groups = list(check_groups(dense, example, discover_groups(dense, example), max_ratio=0.95,
                               structures=("keep", "channel")).groups)
    plans = _front_plans(groups, args.front_plans, np.random.default_rng(args.seed + 1))
    modules = [(label, prune_model(dense, plan, example).make_permanent()) for label, plan in plans]
    graphs = [export_onnx_bytes(m, example) for _, m in modules]
    reference = runtime.runner(export_onnx_bytes(dense, example))
    ratios: list[list[float]] = [[] for _ in modules]
    dense_ms: list[list[float]] = [[] for _ in modules]
    for _ in range(args.repeats):  # alternate the plans between repeats: drift spreads over all of them
        for i, graph in enumerate(graphs):
            m = measure_vs_reference(runtime, graph, reference)
            ratios[i].append(m.ratio)
            dense_ms[i].append(m.reference_ms)
    rows = []
    for name, (model, error, seconds) in fits.items():
        pred_dense = model.predict(dense).latency_ms
        uncertainty = from_calibration(error, input_size_px=32, status="measured")
        for (label, module), rs, ds in zip(modules, ratios, dense_ms):
            r = float(np.median(rs))
            floor = float(np.median(np.abs(np.asarray(rs) / r - 1.0)))
            pred = model.predict(module).latency_ms
            meas_ms = r * float(np.median(ds))
            band = uncertainty.band(pred, input_size_px=32) if uncertainty is not None else None
            rows.append({"model": ref, "calibration": name, "plan": label, "measured_ratio": r, "floor": floor,
                         "predicted_ratio": pred / pred_dense,
                         "speedup_error_pct": 100.0 * ((pred_dense / pred) / (1.0 / r) - 1.0),
                         "measured_ms": meas_ms, "predicted_ms": pred,
                         "latency_error_pct": 100.0 * (pred / meas_ms - 1.0),
                         "band_ms": band.half_width_ms if band else None,
                         "in_band": bool(band and band.low_ms <= meas_ms <= band.high_ms),
                         "heldout_mape": error.get("heldout_mape"), "calibration_s": seconds})
    return rows


def summarise(rows: list[dict]) -> list[str]:
    """One line per model and calibration: mean |error|, share within ±10 %, the floor."""
    out = ["| model | calibration | plans | mean abs speedup error | within ±10 % | mean signed latency error | "
           "within ±10 % | in band | floor (median) |", "|---|---|---|---|---|---|---|---|---|"]
    keys = sorted({(r["model"], r["calibration"]) for r in rows}, key=lambda k: (k[0], k[1]))
    for model, cal in keys:
        sub = [r for r in rows if r["model"] == model and r["calibration"] == cal]
        se = np.array([r["speedup_error_pct"] for r in sub])
        le = np.array([r["latency_error_pct"] for r in sub])
        fl = np.median([r["floor"] for r in sub])
        inside = np.mean([r["in_band"] for r in sub])
        out.append(f"| {model} | {cal} | {len(sub)} | {np.mean(np.abs(se)):.1f} % | {np.mean(np.abs(se) <= 10):.0%} "
                   f"| {np.mean(le):+.1f} % | {np.mean(np.abs(le) <= 10):.0%} | {inside:.0%} "
                   f"| {100 * fl:.1f} % |")
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", default=",".join(DEFAULT_MODELS))
    p.add_argument("--plans", type=int, default=12, help="random plans per calibration (the journey's --plans 12)")
    p.add_argument("--front-plans", type=int, default=8)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="results/benchmarks/front_fidelity")
    args = p.parse_args(argv)
    rows: list[dict] = []
    for ref in [m for m in args.models.split(",") if m]:
        print(f"{ref}:", flush=True)
        rows += run_model(ref, args)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.with_suffix(".csv").open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=COLUMNS)
        w.writeheader()
        w.writerows(rows)
    lines = [f"# Front fidelity, {time.strftime('%Y-%m-%d %H:%M')} on {platform.node()} ({platform.processor()})",
             "", f"`{' '.join([Path(sys.argv[0]).name, *(argv if argv is not None else sys.argv[1:])])}`", "",
             *summarise(rows)]
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
