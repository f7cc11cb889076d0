"""Search quality: autoprune against the baselines a user would otherwise pick, at equal compute.

On one model, data set, fine-tuning budget and set of seeds, seven methods propose
pruned candidates; every candidate is really pruned, fine-tuned and evaluated by
the same :class:`~autoprune.pipeline.Pipeline`:

1. ``autoprune``: the product: default space (per-group ratios and structures, the criterion), TPE,
   early stopping at fine-tuning checkpoints. One study per target.
2. ``autoprune-knapsack``: the same search over the ``knapsack`` space (a latency budget and per-layer
   priorities resolved by the HALP-style knapsack).
3. ``uniform-l1``: the same channel ratio on every layer, L1 magnitude, swept.
4. ``global-l1``: one L1 threshold across all layers (Torch-Pruning global pruning), swept.
5. ``knapsack``: HALP's latency knapsack alone: L1 importances, every priority 1, swept over
   the latency budget (per target: the budget is the target's predicted latency).
6. ``random``: random search over the product's space (Optuna's RandomSampler).
7. ``hw-blind``: the product's search with MACs as the speed objective (AMC's FLOPs mode).

**Equal compute**: every method gets the same number of fine-tuning steps,
``--trials × --finetune-steps``. A sweep gets ``--trials`` points; a search runs until its
completed trials plus the part-fine-tuned trials it stopped early have used the budget (a
stopped trial costs the steps it ran), so early stopping buys it more candidates.

Each method's **front** is what it would hand its user: the Pareto set of its own
objectives (validation accuracy vs predicted target latency for the hardware-aware methods;
vs MACs for the hardware-blind ones). Every front point is then scored the same way:

* accuracy on the held-out **test** split, by re-running the candidate through the
  pipeline (the searches saw only validation accuracy; ``--quick`` uses validation);
* ``local``: latency **measured** end to end with ONNX Runtime (CPU, 1 thread,
  batch 1, the shared profiling protocol) on this machine;
* ``jetson-nano``: latency **predicted** by the published Jetson Nano calibration
  (no Nano here).

Per method and target: hypervolume of (accuracy, speedup over dense) with a shared
reference point (dense accuracy - 0.10, speedup 1.0), and the best speedup at <= 1 %
and <= 2 % accuracy drop from dense, as mean ± standard deviation over seeds. Also:
an **anytime curve** per method (HV of validation accuracy vs *predicted* speedup of the
candidates finished so far, against wall time), search throughput and its split between
pruning, fine-tuning, checkpoints, evaluation and the cost model.

    .venv/bin/python benchmarks/search_quality.py --quick     # 1 seed, 10-candidate budget, 6-step fine-tune
    .venv/bin/python benchmarks/search_quality.py             # 20-candidate budget, 8-step fine-tune, 3 seeds
    .venv/bin/python benchmarks/search_quality.py --model resnet56 --trials 12 --finetune-steps 20  # deeper: more steps

Phases (each resumable; studies and measurements are cached under
``results/benchmarks/search_quality-<model>[-quick]/``): ``--phase search`` (studies and
sweeps), ``--phase measure`` (test re-runs and ONNX Runtime measurements; run it alone on a
quiet machine), ``--phase report`` (tables, ``search_quality-<model>.csv``,
``..._summary.csv``, ``....png`` with the fronts and ``..._anytime.png``). The default runs all three.
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from autoprune.io import read_json, results_dir, write_json

METHODS = ("autoprune", "autoprune-knapsack", "uniform-l1", "global-l1", "knapsack", "random", "hw-blind")
SEARCHES = (("autoprune", "local"), ("autoprune", "jetson-nano"), ("autoprune-knapsack", "local"),
            ("autoprune-knapsack", "jetson-nano"), ("random", "jetson-nano"), ("hw-blind", "jetson-nano"))
#: Methods whose own speed objective is MACs (the rest: the target's predicted latency).
BLIND = ("uniform-l1", "global-l1", "hw-blind")
TARGETS = ("local", "jetson-nano")
HV_ACC_MARGIN = 0.10
MEASURE_PROTOCOL = {"warmup": 5, "min_time_s": 0.3, "min_repeats": 10, "max_cv": 0.1, "retries": 3}


# ---------------------------------------------------------------------------------------------- setup
def settings(args: argparse.Namespace) -> dict[str, Any]:
    quick = args.quick
    return {
        "model": args.model, "data": args.data,
        "trials": args.trials or (10 if quick else 20),
        "seeds": [int(s) for s in (args.seeds or ("0" if quick else "0,1,2")).split(",")],
        # Same for every method; the product's default space fine-tunes 1 epoch (17 steps on digits).
        "finetune_steps": args.finetune_steps or (6 if quick else 8),
        "accuracy_split": args.accuracy_split or ("val" if quick else "test"),
        "threads": 1,
        "fresh_latency": args.fresh_latency,
    }


def work_dir(model: str, quick: bool) -> Path:
    return results_dir() / "benchmarks" / f"search_quality-{model}{'-quick' if quick else ''}"


def sweep_points(cfg: dict[str, Any]) -> list[float]:
    """As many ratios (or budgets) as the fine-tuning budget buys, evenly over [0.1, 0.9]."""
    return [round(float(x), 3) for x in np.linspace(0.1, 0.9, cfg["trials"])]


def space_ref(cfg: dict[str, Any], root: Path, name: str = "default") -> str:
    """A shipped space with the benchmark's fine-tuning budget (the same steps for every method)."""
    import yaml

    from autoprune.search.space import SearchSpace

    raw, _ = SearchSpace.read(name)
    raw = dict(raw)
    raw["finetune"] = {**raw["finetune"], "steps": cfg["finetune_steps"]}
    path = root / f"space-{name}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return str(path)


def plan_key(plan: dict[str, Any], kd: bool, seed: int) -> str:
    blob = json.dumps({"plan": plan, "kd": kd, "seed": seed}, sort_keys=True)
    return hashlib.sha1(blob.encode()).hexdigest()[:16]


class Bench:
    """Pipelines (one per target) sharing one dense model, per seed."""

    def __init__(self, cfg: dict[str, Any], root: Path, seed: int) -> None:
        from autoprune.search.objective import build_pipeline
        from autoprune.search.space import SearchSpace
        self.cfg, self.root, self.seed = cfg, root, seed
        self.space_ref = space_ref(cfg, root)
        self.space = SearchSpace.load(self.space_ref)
        self.kd = bool(self.space.distillation[0])
        self.pipes = {}
        for target in TARGETS:
            conf = self.config(target, seed)
            pipe, rec = build_pipeline(conf, self.space, progress=True)
            self.dense_val_accuracy = float(rec.val_accuracy)
            pipe.measure = False  # the measure phase measures front points, once, on a quiet machine
            self.pipes[target] = pipe

    def config(self, target: str, seed: int, **kw: Any):
        from autoprune.search.config import SearchConfig

        kw = {"space": self.space_ref, "trials": self.cfg["trials"], **kw}
        return SearchConfig(model=self.cfg["model"], data=self.cfg["data"], target=target,
                            seed=seed, dense_seed=0, **kw)

    @property
    def groups(self):
        return self.pipes["local"].groups

    def architecture(self, plan_dict: dict[str, Any]):
        """The pruned module of a plan, not fine-tuned: enough for latency (weights do not matter)."""
        from autoprune.pruning import PruningPlan

        return self.pipes["local"].prune(PruningPlan.from_dict(plan_dict)).make_permanent()

    def predict(self, module) -> dict[str, float]:
        """Predicted latency of a pruned module on every target."""
        return {t: float(p.cost_model.predict(module).latency_ms) for t, p in self.pipes.items()}


# ---------------------------------------------------------------------------------------------- phase A
def storage_url(root: Path, seed: int) -> str:
    return f"sqlite:///{root / f'studies-s{seed}.db'}"


def steps_used(study, steps: int) -> float:
    """Fine-tuning steps a study has spent: all of each completed trial's, part of each stopped one's
    (the dense anchor is evaluated, never fine-tuned: it spends none)."""
    from optuna.trial import TrialState

    used = 0.0
    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)):
        if t.user_attrs.get("anchor") == "dense":
            continue
        if t.state == TrialState.COMPLETE:
            used += steps
        elif "stopped_reason" in t.user_attrs:
            used += steps * float(t.user_attrs.get("stopped_at", 0.0))
    return used


def run_study(bench: Bench, method: str, target: str) -> list[dict[str, Any]]:
    """Run (or resume) one study until it has spent the fine-tuning budget; return its candidates."""
    import optuna

    from autoprune.search.runner import run_search

    extra = {"random": {"sampler": "random"}, "hw-blind": {"objectives": ("accuracy", "macs")},
             "autoprune-knapsack": {"space": space_ref(bench.cfg, bench.root, "knapsack")}}.get(method, {})
    steps, budget = bench.cfg["finetune_steps"], bench.cfg["trials"] * bench.cfg["finetune_steps"]
    # The budget is in fine-tuning steps, and a stopped trial spends part of a trial's: run half of what is
    # left in completed trials at a time, until less than one trial's steps is left.
    conf = bench.config(target, bench.seed, trials=max(1, bench.cfg["trials"] // 2), **extra)
    name = f"sq-{method}-{target}-s{bench.seed}"
    url = storage_url(bench.root, bench.seed)
    t0 = time.perf_counter()
    run_search(conf, study_name=name, storage=url, given={}, progress=False)
    for _ in range(30):
        study = optuna.load_study(study_name=name, storage=url)
        left = (budget - steps_used(study, steps)) / steps
        if left < 1:
            break
        run_search(None, study_name=name, storage=url, given={}, more_trials=max(1, int(left // 2)), progress=False)
    study = optuna.load_study(study_name=name, storage=url)
    states = [t.state for t in study.get_trials(deepcopy=False)]
    print(f"  {name}: {time.perf_counter() - t0:.0f} s, {states.count(optuna.trial.TrialState.COMPLETE)} completed, "
          f"{states.count(optuna.trial.TrialState.PRUNED)} stopped early, steps used "
          f"{steps_used(study, steps):.0f}/{budget}", flush=True)
    rows = []
    for t in study.get_trials(deepcopy=False):
        a = t.user_attrs
        if t.state == optuna.trial.TrialState.PRUNED and "stopped_reason" in a:  # time spent, no candidate
            rows.append({"method": method, "study_target": target, "seed": bench.seed, "trial": t.number,
                         "stopped": True, "seconds": {}, "start": t.datetime_start.timestamp(),
                         "end": t.datetime_complete.timestamp()})
            continue
        if t.state != optuna.trial.TrialState.COMPLETE:
            continue
        rows.append({"method": method, "study_target": target, "seed": bench.seed, "trial": t.number,
                     "plan": a["plan"], "kd": bool(t.params.get("kd", bench.kd)), "val_accuracy": a["accuracy"],
                     "macs": a["macs"], "seconds": a.get("seconds", {}), "anchor": a.get("anchor"),
                     "start": t.datetime_start.timestamp(), "end": t.datetime_complete.timestamp()})
    return rows


def run_sweep(bench: Bench, method: str, cache: dict[str, Any], target: str = "jetson-nano"
              ) -> list[dict[str, Any]]:
    """Uniform or global L1 channel pruning (one candidate per ratio), or HALP's knapsack alone (one per
    latency budget on ``target``), with the same fine-tuning as the searches."""
    from autoprune.pruning import PlanSettings, PruningPlan
    from autoprune.search.knapsack import knapsack_plan

    ss = bench.space
    pipe = bench.pipes[target]
    rows = []
    for ratio in sweep_points(bench.cfg):
        if method == "uniform-l1":
            plan = PruningPlan.uniform(bench.groups, "channel", ratio, "l1",
                                       settings=PlanSettings(min_channels=ss.min_channels, round_to=ss.round_to,
                                                             seed=bench.seed))
        elif method == "global-l1":
            plan = PruningPlan.uniform(bench.groups, "channel", 0.5, "l1",
                                       settings=PlanSettings(allocation="global", global_ratio=ratio,
                                                             min_channels=ss.min_channels, round_to=ss.round_to,
                                                             seed=bench.seed))
        else:  # knapsack: the budget is a fraction of the dense model's predicted latency on the target
            plan, _ = knapsack_plan(pipe, ratio, criterion="l1", seed=bench.seed, space=ss, latency_weight=1.0,
                                    thinning=0.0)  # HALP as published: importance per ms, plain sum
        key = f"{method}:{target}:{ratio}:{plan_key(plan.to_dict(), bench.kd, bench.seed)}"
        if key not in cache:
            t0 = time.time()
            res = pipe.run(plan, kd=bench.kd)
            cache[key] = {"method": method, "study_target": target if method == "knapsack" else None,
                          "seed": bench.seed, "trial": None, "ratio": ratio, "plan": res.plan, "kd": bench.kd,
                          "val_accuracy": res.accuracy, "macs": res.evaluation.macs, "seconds": res.seconds,
                          "start": t0, "end": time.time()}
            print(f"  {method} {target if method == 'knapsack' else ''} {ratio}: val acc {res.accuracy:.4f}, "
                  f"MACs {res.evaluation.macs / 1e6:.1f} M", flush=True)
        rows.append(cache[key])
    return rows


def phase_search(cfg: dict[str, Any], root: Path, seed: int) -> None:
    bench = Bench(cfg, root, seed)
    path = root / f"candidates-s{seed}.json"
    sweeps = read_json(path, what="benchmark cache").get("sweeps", {}) if path.exists() else {}
    cands: list[dict[str, Any]] = []
    for method, target in SEARCHES:
        cands += run_study(bench, method, target)
    for method, target in (("uniform-l1", "jetson-nano"), ("global-l1", "jetson-nano"), ("knapsack", "local"),
                           ("knapsack", "jetson-nano")):
        cands += run_sweep(bench, method, sweeps, target)
        write_json(path, {"sweeps": sweeps}, checksum=True)
    preds = {}
    for c in cands:  # predicted latency of every candidate on every target (architecture only)
        if c.get("stopped"):
            continue
        k = plan_key(c["plan"], False, 0)
        if k not in preds:
            preds[k] = bench.predict(bench.architecture(c["plan"]))
        c["pred_ms"] = preds[k]
    from autoprune.pruning import PruningPlan

    dense_pred = bench.predict(bench.architecture(PruningPlan.dense(bench.groups).to_dict()))
    write_json(path, {"sweeps": sweeps, "candidates": cands, "dense_val_accuracy": bench.dense_val_accuracy,
                      "dense_pred_ms": dense_pred}, checksum=True)
    print(f"seed {seed}: {len(cands)} candidates -> {path}", flush=True)


# ---------------------------------------------------------------------------------------------- fronts
def method_rows(cands: list[dict[str, Any]], method: str, target: str) -> list[dict[str, Any]]:
    """A method's candidates for ``target`` (a target-independent sweep serves both)."""
    return [c for c in cands if c["method"] == method and not c.get("stopped")
            and c.get("study_target") in (target, None)]


def fronts(cands: list[dict[str, Any]]) -> dict[tuple[str, str], list[dict[str, Any]]]:
    """Each method's front per target, by the method's own objectives."""
    from autoprune.search.pareto import pareto_mask

    out = {}
    for target in TARGETS:
        for method in METHODS:
            rows = method_rows(cands, method, target)
            if not rows:
                continue
            speed = [c["macs"] if method in BLIND else c["pred_ms"][target] for c in rows]
            v = np.array([[c["val_accuracy"], s] for c, s in zip(rows, speed)], float)
            mask = pareto_mask(v, ["maximize", "minimize"])
            seen, front = set(), []
            for c, keep in zip(rows, mask):
                k = plan_key(c["plan"], c["kd"], c["seed"])
                if keep and k not in seen:
                    seen.add(k)
                    front.append(c)
            out[(method, target)] = front
    return out


def anytime(cands: list[dict[str, Any]], dense_acc: float, dense_ms: dict[str, float], method: str,
            target: str) -> list[tuple[float, float]]:
    """``(seconds since the method started, HV)`` after each of its candidates, on validation accuracy and
    *predicted* speedup on ``target`` (every candidate is scored; measuring them all would not fit)."""
    rows = sorted((c for c in cands if c["method"] == method and c.get("study_target") in (target, None)),
                  key=lambda c: c["end"])
    if not rows:
        return []
    t0 = min(c["start"] for c in rows)
    pts = [(c["end"] - t0, None if c.get("stopped") else (c["val_accuracy"], dense_ms[target] / c["pred_ms"][target]))
           for c in rows]
    from autoprune.search.pareto import hypervolume

    ref, seen, curve, hv = (dense_acc - HV_ACC_MARGIN, 1.0), [], [], 0.0
    for t, point in pts:
        if point is not None:
            seen.append(point)
            hv = hypervolume(np.array(seen), ref, ["maximize", "maximize"])
        curve.append((t, hv))
    return curve


# ---------------------------------------------------------------------------------------------- phase B
def measure_plan(bench: Bench, plan_dict: dict[str, Any]) -> dict[str, Any]:
    """Measure a plan's architecture with ONNX Runtime here, and predict it on every target."""
    from autoprune.costmodel.builder import measure_relaxed
    from autoprune.profiling import get_runtime
    from autoprune.pruning import export_onnx

    module = bench.architecture(plan_dict)
    runtime = get_runtime("onnxruntime", threads=bench.cfg["threads"])
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "c.onnx"
        export_onnx(copy.deepcopy(module), path, bench.pipes["local"].example)
        m = measure_relaxed(runtime, str(path), MEASURE_PROTOCOL)  # a busy host: kept, flagged, re-measured later
    return {"measured_ms": m.latency_ms, "cv": m.cv, "runtime": f"{m.runtime} on {m.device}",
            "noisy": m.cv > MEASURE_PROTOCOL["max_cv"], "pred_ms": bench.predict(module)}


def phase_measure(cfg: dict[str, Any], root: Path, seed: int) -> None:
    import torch

    from autoprune.pruning import PruningPlan

    torch.set_num_threads(1)
    bench = Bench(cfg, root, seed)
    data = read_json(root / f"candidates-s{seed}.json", what="benchmark cache")
    mpath = root / f"measured-s{seed}.json"
    cache = read_json(mpath, what="benchmark cache") if mpath.exists() else {"latency": {}, "accuracy": {}}
    if cfg["fresh_latency"]:  # keep the (slow) test re-runs, measure every latency again
        cache["latency"] = {}
    todo = {}
    for (_, _), front in fronts(data["candidates"]).items():
        for c in front:
            todo[plan_key(c["plan"], c["kd"], c["seed"])] = c
    dense = PruningPlan.dense(bench.groups).to_dict()
    todo["dense"] = {"plan": dense, "kd": False, "seed": seed, "val_accuracy": None}
    cache["dense_arch"] = plan_key(dense, False, 0)
    print(f"seed {seed}: {len(todo)} distinct front points", flush=True)
    for k, c in todo.items():
        if cfg["accuracy_split"] == "test" and k not in cache["accuracy"]:
            res = bench.pipes["jetson-nano"].run(PruningPlan.from_dict(c["plan"]), kd=c["kd"], split="test")
            cache["accuracy"][k] = res.accuracy
            write_json(mpath, cache, checksum=True)
        arch = plan_key(c["plan"], False, 0)
        if arch not in cache["latency"]:
            cache["latency"][arch] = measure_plan(bench, c["plan"])
            write_json(mpath, cache, checksum=True)
            lat = cache["latency"][arch]
            print(f"  {k}: measured {lat['measured_ms']:.3f} ms (CV {lat['cv']:.1%}), "
                  f"predicted local {lat['pred_ms']['local']:.3f} ms", flush=True)
    if cfg["accuracy_split"] == "val" and "dense" not in cache["accuracy"]:
        cache["accuracy"]["dense"] = bench.pipes["jetson-nano"].run(PruningPlan.from_dict(dense)).accuracy
    write_json(mpath, cache, checksum=True)


# ---------------------------------------------------------------------------------------------- phase C
def scored_points(cfg: dict[str, Any], root: Path, seed: int) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    data = read_json(root / f"candidates-s{seed}.json", what="benchmark cache")
    meas = read_json(root / f"measured-s{seed}.json", what="benchmark cache")
    dense_lat = meas["latency"][meas["dense_arch"]]
    dense_acc = meas["accuracy"].get("dense")
    points = []
    for (method, target), front in fronts(data["candidates"]).items():
        for c in front:
            k = plan_key(c["plan"], c["kd"], c["seed"])
            lat = meas["latency"][plan_key(c["plan"], False, 0)]
            acc = meas["accuracy"][k] if cfg["accuracy_split"] == "test" else c["val_accuracy"]
            if target == "local":
                ms, status = lat["measured_ms"], f"measured ({lat['runtime']}, 1 thread)"
            else:
                ms, status = c["pred_ms"][target], "predicted (published jetson-nano calibration)"
            points.append({"target": target, "method": method, "seed": seed, "trial": c["trial"],
                           "ratio": c.get("ratio"), "accuracy": acc, "val_accuracy": c["val_accuracy"],
                           "macs": c["macs"], "latency_ms": ms, "latency_status": status,
                           "predicted_local_ms": lat["pred_ms"]["local"], "plan_key": k,
                           "noisy": bool(lat.get("noisy")) if target == "local" else False})
    return points, {"dense_acc": dense_acc, "dense_lat": dense_lat}


def phase_report(cfg: dict[str, Any], root: Path) -> int:
    import csv

    from autoprune.search.pareto import best_within_drop, hypervolume

    out_dir = root.parent
    rows, summary, per_seed = [], [], {}
    for seed in cfg["seeds"]:
        pts, dense = scored_points(cfg, root, seed)
        lat = dense["dense_lat"]
        dense_ms = {"local": lat["measured_ms"], "jetson-nano": lat["pred_ms"]["jetson-nano"]}
        for p in pts:
            p["dense_accuracy"] = dense["dense_acc"]
            p["dense_latency_ms"] = dense_ms[p["target"]]
            p["speedup"] = dense_ms[p["target"]] / p["latency_ms"]
        rows += pts
        for target in TARGETS:
            for method in METHODS:
                sel = [p for p in pts if p["target"] == target and p["method"] == method]
                if not sel:
                    continue
                acc = np.array([p["accuracy"] for p in sel])
                sp = np.array([p["speedup"] for p in sel])
                ref = (dense["dense_acc"] - HV_ACC_MARGIN, 1.0)
                per_seed[(target, method, seed)] = {
                    "hv": hypervolume(np.c_[acc, sp], ref, ["maximize", "maximize"]),
                    "sp1": best_within_drop(acc, sp, dense["dense_acc"], 0.01),
                    "sp2": best_within_drop(acc, sp, dense["dense_acc"], 0.02),
                    "n": len(sel), "dense_acc": dense["dense_acc"], "dense_ms": dense_ms[target]}
    fields = ["target", "method", "seed", "trial", "ratio", "accuracy", "val_accuracy", "dense_accuracy", "macs",
              "latency_ms", "dense_latency_ms", "speedup", "latency_status", "predicted_local_ms", "plan_key",
              "noisy"]
    with open(out_dir / f"{root.name}.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=fields)
        w.writeheader()
        w.writerows(rows)

    def ms(vals: list[float]) -> str:
        v = [x for x in vals if np.isfinite(x)]
        if not v:
            return "n/a"
        return f"{statistics.mean(v):.2f} ± {statistics.stdev(v):.2f}" if len(v) > 1 else f"{v[0]:.2f}"

    split = cfg["accuracy_split"]
    noisy = sum(1 for r in rows if r["target"] == "local" and r.get("noisy"))
    if noisy:
        print(f"\nWARNING: {noisy} local front points were measured with CV > {MEASURE_PROTOCOL['max_cv']:.0%} "
              "(a busy host); re-measure with --phase measure --fresh-latency on a quiet machine")
    print(f"\nSearch quality: {cfg['model']} on {cfg['data']}, equal compute: {cfg['trials']} x "
          f"{cfg['finetune_steps']} fine-tuning steps per method (sweeps of {cfg['trials']}), seeds {cfg['seeds']}; "
          f"accuracy on the {split} split; "
          f"HV of (accuracy, speedup) with reference (dense acc - {HV_ACC_MARGIN}, 1.0x)")
    for target in TARGETS:
        what = "MEASURED, onnxruntime CPU 1 thread, this host" if target == "local" else \
            "PREDICTED, published jetson-nano calibration"
        print(f"\n[{target}] latency {what}")
        print(f"{'method':12s} {'HV':>14s} {'speedup@<=1%':>14s} {'speedup@<=2%':>14s} {'front':>6s}")
        for method in METHODS:
            recs = [per_seed[(target, method, s)] for s in cfg["seeds"] if (target, method, s) in per_seed]
            if not recs:
                continue
            row = {"target": target, "method": method, "seeds": len(recs),
                   "hv_mean": statistics.mean(r["hv"] for r in recs),
                   "hv_std": statistics.stdev([r["hv"] for r in recs]) if len(recs) > 1 else 0.0,
                   "hv_per_seed": " ".join(f"{r['hv']:.4f}" for r in recs),
                   "speedup_1pct": ms([r["sp1"] for r in recs]), "speedup_2pct": ms([r["sp2"] for r in recs]),
                   "speedup_1pct_per_seed": " ".join(f"{r['sp1']:.2f}" for r in recs),
                   "front_points_mean": statistics.mean(r["n"] for r in recs)}
            summary.append(row)
            print(f"{method:12s} {ms([r['hv'] for r in recs]):>14s} {row['speedup_1pct']:>14s} "
                  f"{row['speedup_2pct']:>14s} {row['front_points_mean']:6.1f}")
    with open(out_dir / f"{root.name}_summary.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(summary[0]))
        w.writeheader()
        w.writerows(summary)

    # targets of the issue
    def get(target: str, method: str, key: str) -> list[float]:
        return [per_seed[(target, method, s)][key] for s in cfg["seeds"] if (target, method, s) in per_seed]

    print("\nTargets (HV on local is measured; on jetson-nano predicted):")
    for target in TARGETS:
        a = get(target, "autoprune", "hv")
        for other in METHODS[1:]:
            o = get(target, other, "hv")
            if not o:
                continue
            wins = sum(x > y for x, y in zip(a, o))
            print(f"  {target:12s} HV beats {other:12s} on {wins}/{len(o)} seeds "
                  f"{'MET' if wins == len(o) else 'NOT MET'}")
    for target in TARGETS:
        a1, g1 = get(target, "autoprune", "sp1"), get(target, "global-l1", "sp1")
        ratio = np.nanmean(a1) / np.nanmean(g1) if g1 and np.isfinite(np.nanmean(g1)) else float("nan")
        print(f"  {target:12s} best speedup at <=1 % drop, autoprune / global-l1: {ratio:.2f}x (target >= 1.2x) "
              f"{'MET' if ratio >= 1.2 else 'NOT MET'}")
    anytime_report(cfg, root, out_dir)
    throughput(cfg, root)
    plot(rows, out_dir / f"{root.name}.png", cfg)
    print(f"\nwrote {out_dir / (root.name + '.csv')}, {out_dir / (root.name + '_summary.csv')}, "
          f"{out_dir / (root.name + '.png')}")
    return 0


def throughput(cfg: dict[str, Any], root: Path) -> None:
    """Trials per minute per search, and where the time of a trial goes."""
    print("\nThroughput (searches, this host, 1 process; stopped = ended early at a fine-tuning checkpoint):")
    split: dict[str, list[float]] = {}
    for method, target in SEARCHES:
        rates, stopped, done = [], 0, 0
        for seed in cfg["seeds"]:
            data = read_json(root / f"candidates-s{seed}.json", what="benchmark cache")
            rows = [c for c in data["candidates"] if c["method"] == method and c["study_target"] == target]
            if len(rows) < 2:
                continue
            span = max(c["end"] for c in rows) - min(c["start"] for c in rows)
            rates.append(len(rows) / span * 60)
            stopped += sum(1 for c in rows if c.get("stopped"))
            done += sum(1 for c in rows if not c.get("stopped"))
            for c in rows:
                for k, v in c["seconds"].items():
                    split.setdefault(k, []).append(v)
        if rates:
            print(f"  {method:11s} {target:12s} {statistics.mean(rates):5.1f} trials/min "
                  f"({done} completed, {stopped} stopped, over {len(rates)} seeds)")
    total = sum(statistics.mean(v) for v in split.values())
    print("  mean completed trial: " + ", ".join(
        f"{k[:-2]} {statistics.mean(v):.2f} s ({statistics.mean(v) / total:.0%})" for k, v in split.items()))


def anytime_report(cfg: dict[str, Any], root: Path, out_dir: Path) -> None:
    """The anytime curves (HV on validation accuracy and predicted speedup vs wall time), and how soon the
    product's search reaches the HV each other method ends with."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(cfg["seeds"]), figsize=(5 * len(cfg["seeds"]), 4), squeeze=False)
    print("\nAnytime (jetson-nano, predicted speedup, validation accuracy): when autoprune reaches the HV each "
          "method ends with, as a share of that method's wall time")
    for ax, seed in zip(axes[0], cfg["seeds"]):
        data = read_json(root / f"candidates-s{seed}.json", what="benchmark cache")
        curves = {m: anytime(data["candidates"], data["dense_val_accuracy"], data["dense_pred_ms"], m, "jetson-nano")
                  for m in METHODS}
        for m, curve in curves.items():
            if curve:
                ax.step([t / 60 for t, _ in curve], [h for _, h in curve], where="post", label=m)
        new = curves.get("autoprune")
        for m, ref in curves.items():
            if m == "autoprune" or not ref or not new:
                continue
            goal, t_ref = ref[-1][1], ref[-1][0]
            reach = next((t for t, h in new if h >= goal), None)
            text = (f"{reach / t_ref:.2f} of its time ({reach:.0f} s vs {t_ref:.0f} s)" if reach is not None
                    else f"not reached (autoprune ends at HV {new[-1][1]:.3f} < {goal:.3f})")
            print(f"  seed {seed}: {m:18s} HV {goal:.3f}: {text}")
        ax.set_title(f"{cfg['model']} seed {seed}: HV vs wall time (jetson-nano, predicted)", fontsize=9)
        ax.set_xlabel("minutes since the method started")
        ax.set_ylabel("HV (val accuracy, predicted speedup)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out_dir / f"{root.name}_anytime.png", dpi=110)
    plt.close(fig)


def plot(rows: list[dict[str, Any]], path: Path, cfg: dict[str, Any]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colors = dict(zip(METHODS, ("tab:red", "tab:pink", "tab:blue", "tab:green", "tab:purple", "tab:gray",
                                "tab:orange")))
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.8))
    for ax, target in zip(axes, TARGETS):
        for method in METHODS:
            for seed in cfg["seeds"]:
                sel = sorted((p for p in rows if p["target"] == target and p["method"] == method
                              and p["seed"] == seed), key=lambda p: p["speedup"])
                if not sel:
                    continue
                ax.plot([p["speedup"] for p in sel], [p["accuracy"] for p in sel], marker="o", ms=4,
                        color=colors[method], alpha=1.0 if seed == cfg["seeds"][0] else 0.35,
                        label=method if seed == cfg["seeds"][0] else None, lw=1)
        dense_acc = next((p["dense_accuracy"] for p in rows if p["target"] == target), None)
        if dense_acc is not None:
            ax.axhline(dense_acc - 0.01, color="k", ls=":", lw=0.8, label="dense - 1 %")
        kind = "measured (onnxruntime CPU, this host)" if target == "local" else "predicted (published calibration)"
        ax.set_title(f"{cfg['model']} on {target}: speedup {kind}", fontsize=9)
        ax.set_xlabel("speedup over dense (x)")
        ax.set_ylabel(f"{cfg['accuracy_split']} accuracy")
        low = max(0.0, (dense_acc or 1) - 0.12)
        ax.set_ylim(low, 1.005)
        visible = [p["speedup"] for p in rows if p["target"] == target and p["accuracy"] >= low]
        if visible:
            ax.set_xlim(0.9, max(visible) * 1.05)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(f"Fronts of each method (seed {cfg['seeds'][0]} solid, other seeds faint)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ---------------------------------------------------------------------------------------------- main
def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true",
                   help="1 seed, a budget of 10 fine-tunes per method, 6 steps each, val accuracy")
    p.add_argument("--model", default="vgg11")
    p.add_argument("--data", default="digits")
    p.add_argument("--trials", type=int, default=None,
                   help="fine-tuning budget per method, in candidates (x --finetune-steps steps; default 20, quick 10)")
    p.add_argument("--finetune-steps", type=int, default=None,
                   help="fine-tuning steps per candidate, every method (default 8; quick 6)")
    p.add_argument("--seeds", default=None, help="comma list (default 0,1,2; quick 0)")
    p.add_argument("--accuracy-split", choices=("test", "val"), default=None)
    p.add_argument("--phase", choices=("all", "search", "measure", "report"), default="all")
    p.add_argument("--fresh-latency", action="store_true",
                   help="measure phase: measure every latency again (e.g. on a quieter machine), keep accuracies")
    args = p.parse_args()
    import torch

    torch.set_num_threads(int(os.environ.get("AUTOPRUNE_BENCH_THREADS", "2")))  # fine-tuning threads
    cfg = settings(args)
    root = work_dir(cfg["model"], args.quick)
    root.mkdir(parents=True, exist_ok=True)
    ensure_local_calibration(cfg)
    t0 = time.perf_counter()
    for seed in cfg["seeds"]:
        if args.phase in ("all", "search"):
            print(f"== search phase, seed {seed}", flush=True)
            phase_search(cfg, root, seed)
    for seed in cfg["seeds"]:
        if args.phase in ("all", "measure"):
            print(f"== measure phase, seed {seed}", flush=True)
            phase_measure(cfg, root, seed)
    if args.phase in ("all", "report"):
        phase_report(cfg, root)
    print(f"\nwall time {time.perf_counter() - t0:.0f} s; host load average {os.getloadavg()[0]:.2f}")
    return 0


def ensure_local_calibration(cfg: dict[str, Any]) -> None:
    """The ``local`` target needs this host's calibration of the model; make it once (``autoprune profile``)."""
    from autoprune.costmodel.calibration import calibration_path
    from autoprune.models import ZOO

    size = ZOO.get(cfg["model"]).input_size
    if not calibration_path("local", cfg["model"], size).exists():
        import subprocess

        print(f"no local calibration for {cfg['model']}: running autoprune profile --target local", flush=True)
        subprocess.run([sys.executable, "-m", "autoprune", "profile", "--target", "local", "--model", cfg["model"]],
                       check=True)


if __name__ == "__main__":
    raise SystemExit(main())
