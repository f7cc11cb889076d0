"""Screening at equal wall time: the screened search against the default one and the one-line baselines.

Four methods get the same wall-clock budget on the same machine, interleaved in slices (each method runs a
third of its budget in turn, so a drift of the host's speed hits all alike; a study resumes, a sweep goes on),
with the host load reported; every candidate is really pruned, fine-tuned (the default space's budget) and
evaluated by the same :class:`~autoprune.pipeline.Pipeline`:

1. ``autoprune``: the screened search (``--space screened``: screening rounds, then fully fine-tuned promoted
   candidates with early stopping);
2. ``tpe``: the same space without screening (``--space default``: TPE with anchors and early stopping);
3. ``global-l1``: one L1 threshold across all layers, swept coarse to fine (0.5, 0.3, 0.7, 0.2, ...) until
   the budget is spent;
4. ``uniform-l1``: the same ratio on every layer, swept the same way.

The searches optimise validation accuracy against the target's PREDICTED latency (``--target``, default
``jetson-nano``, the published calibration). Each method's front (its own validation accuracy vs predicted
latency) is then scored on the held-out **test** split (each front plan re-run: the same seeded fine-tune,
so the same model), as hypervolume of (test accuracy, predicted speedup) above (dense test accuracy - 0.10,
1.0x) and the best predicted speedup within 1 % of dense test accuracy. Also: the anytime curve (HV of
validation accuracy and predicted speedup against wall time), the screening's rank correlation with the
fine-tuned accuracy (Spearman, over the promoted candidates), trials per minute per rung, and the sample
passes each method used (forward = 1, backward = 2, a distillation teacher's forward = 1).

    .venv/bin/python benchmarks/screening.py --data fashion-mnist --max-train-samples 6000 \\
        --max-eval-samples 2000 --budget-s 600 --seeds 0

Results go to ``results/benchmarks/screening-<model>-<data>[-t<N>]/`` (a JSON per seed, resumable per method)
and ``results/benchmarks/screening-<model>-<data>[...].{csv,png}`` plus ``..._anytime.png``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from autoprune.io import read_json, results_dir, write_json

METHODS = ("autoprune", "tpe", "global-l1", "uniform-l1")
SWEEP_ORDER = (0.5, 0.3, 0.7, 0.2, 0.4, 0.6, 0.8, 0.1, 0.9, 0.25, 0.35, 0.45, 0.55, 0.65, 0.75, 0.85, 0.15, 0.05,
               0.95)
HV_ACC_MARGIN = 0.10


def work_dir(args: argparse.Namespace) -> Path:
    sub = f"-t{args.max_train_samples}" if args.max_train_samples else ""
    from autoprune.io import safe_name

    return results_dir() / "benchmarks" / safe_name(f"screening-{args.model}-{args.data}{sub}")


def config(args: argparse.Namespace, seed: int, space: str, trials: int = 1000):
    from autoprune.search.config import SearchConfig

    return SearchConfig(model=args.model, data=args.data, target=args.target, space=space, seed=seed, dense_seed=0,
                        trials=trials, max_train_samples=args.max_train_samples,
                        max_eval_samples=args.max_eval_samples)


def sample_passes(rec: dict[str, Any], batch: int, kd: bool, n_val: int) -> float:
    """Sample passes of one fully fine-tuned (or stopped) candidate: forward 1, backward 2, teacher 1."""
    steps = rec.get("steps_done", 0)
    per = 3 + (1 if kd else 0)
    return steps * batch * per + rec.get("evals", 1) * n_val


def study_slice(args, root: Path, seed: int, method: str, slice_s: float, first: bool) -> None:
    """Run (the first slice) or resume a method's study for ``slice_s`` seconds."""
    from autoprune.search.runner import run_search

    space = "screened" if method == "autoprune" else "default"
    url = f"sqlite:///{root / f'studies-s{seed}.db'}"
    run_search(config(args, seed, space) if first else None, study_name=f"{method}-s{seed}", storage=url, given={},
               progress=False, timeout_s=slice_s)


def collect_study(root: Path, seed: int, method: str, pipe) -> dict[str, Any]:
    """A method's candidates, stopped trials and screening rounds, from its study."""
    import optuna
    from optuna.trial import TrialState

    study = optuna.load_study(study_name=f"{method}-s{seed}", storage=f"sqlite:///{root / f'studies-s{seed}.db'}")
    rows, stopped = [], []
    steps = pipe.full_steps()
    for t in study.get_trials(deepcopy=False):
        a = t.user_attrs
        if t.state == TrialState.COMPLETE and "accuracy" in a:
            rows.append({"trial": t.number, "plan": a["plan"], "val_accuracy": a["accuracy"],
                         "latency_ms": a["latency_ms"], "start": t.datetime_start.timestamp(),
                         "end": t.datetime_complete.timestamp(), "seconds": a.get("seconds", {}),
                         "steps_done": 0 if a.get("anchor") == "dense" else steps,
                         "evals": 1 + len(a.get("curve", [])),
                         **{k: a.get(k) for k in ("rung0_accuracy", "rung1_accuracy", "screen_source",
                                                  "screen_latency_ms", "anchor")}})
        elif t.state == TrialState.PRUNED and "stopped_reason" in a:
            stopped.append({"trial": t.number, "steps_done": steps * float(a.get("stopped_at", 0.0)),
                            "evals": len(a.get("curve", [])), "end": t.datetime_complete.timestamp()})
    rounds, screened = [], {}
    from autoprune.search.screen import ScreenRound, rounds_of

    for n in rounds_of(study):
        r = ScreenRound(study, n)
        screened.update({x["plan_key"]: {"rung0": x["val_accuracy"], "predicted_ms": x["predicted_ms"]}
                         for x in r.rung0.values() if "plan_key" in x})
        for i, x in r.rung1.items():
            if "val_accuracy" in x and r.rung0[i].get("plan_key") in screened:
                screened[r.rung0[i]["plan_key"]]["rung1"] = x["val_accuracy"]
        rounds.append({"round": n, "rung0": len(r.rung0), "rung1": len(r.rung1), "promoted": len(r.promoted or []),
                       "seconds": r.seconds, "rung1_steps": max([x.get("steps", 0) for x in r.rung1.values()] or [0]),
                       "rung0_samples": max([x.get("samples", 0) for x in r.rung0.values()] or [0])})
    return {"method": method, "rows": rows, "stopped": stopped, "rounds": rounds, "screened": screened}


def sweep_slice(args, seed: int, method: str, slice_s: float, pipe, rows: list[dict[str, Any]]) -> None:
    """The baseline's plans (built as the screening builds its sweep candidates, so the plans are the same
    ones), coarse to fine, each fully fine-tuned, until the budget is spent."""
    from autoprune.search.candidates import sweep_candidates
    from autoprune.search.objective import candidate_plan
    from autoprune.search.space import SearchSpace

    space = SearchSpace.load("default")
    kd = bool(space.distillation[0])
    prefix = "global-l1-" if method == "global-l1" else "uniform-l1-"
    by_ratio = {float(c.source[len(prefix):]): c for c in sweep_candidates(space, pipe.groups)
                if c.source.startswith(prefix)}
    extra = [r for r in SWEEP_ORDER if r not in by_ratio]  # finer ratios than the screening's sweep
    for ratio in extra:
        by_ratio[ratio] = next(c for c in sweep_candidates(space, pipe.groups) if c.source == f"{prefix}0.5")
    cfg = config(args, seed, "default")
    t0 = time.time()
    for ratio in SWEEP_ORDER[len(rows):]:
        if time.time() - t0 > slice_s:
            break
        params = by_ratio[ratio].merged()
        if ratio in extra:  # the same plan at another ratio
            params = {k: (ratio if k == "global_ratio" else space.range_for(next(g for g in pipe.groups
                      if f"r:{g.name}" == k)).snap(ratio) if k.startswith("r:") else v) for k, v in params.items()}
        plan, _ = candidate_plan(pipe, space, cfg, params)
        s = time.time()
        res = pipe.run(plan, kd=kd)
        rows.append({"ratio": ratio, "plan": res.plan, "val_accuracy": res.accuracy, "latency_ms": res.latency_ms,
                     "start": s, "end": time.time(), "seconds": res.seconds, "steps_done": pipe.full_steps(),
                     "evals": 1 + len(res.curve)})
        print(f"  {method} {ratio}: val {res.accuracy:.4f}, {res.latency_ms:.3f} ms predicted", flush=True)


def front(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    from autoprune.search.pareto import pareto_mask

    if not rows:
        return []
    mask = pareto_mask(np.array([[r["val_accuracy"], r["latency_ms"]] for r in rows]), ["maximize", "minimize"])
    seen, out = set(), []
    for r, keep in zip(rows, mask):
        key = json.dumps(r["plan"], sort_keys=True)
        if keep and key not in seen:
            seen.add(key)
            out.append(r)
    return out


def method_time(ts: float, slices: list) -> float:
    """Seconds of a method's own (interleaved) slices up to the wall-clock time ``ts``."""
    elapsed = 0.0
    for a, b, _ in slices:
        if ts <= b:
            return elapsed + max(0.0, ts - a)
        elapsed += b - a
    return elapsed


def anytime(result: dict[str, Any], dense_acc: float, dense_ms: float) -> list[tuple[float, float]]:
    from autoprune.search.pareto import hypervolume

    pts, curve = [], []
    for r in sorted(result["rows"], key=lambda r: r["end"]):
        pts.append((r["val_accuracy"], dense_ms / r["latency_ms"]))
        curve.append((method_time(r["end"], result["slices"]),
                       hypervolume(np.array(pts), (dense_acc - HV_ACC_MARGIN, 1.0), ["maximize", "maximize"])))
    return curve


def forget(root: Path, seed: int, state: dict[str, Any], method: str) -> None:
    """Drop ``method``'s stored results, slices and study (``--fresh``), keeping the other methods'."""
    import optuna

    state["methods"].pop(method, None)
    state.get("slices", {})[method] = []
    if method in state.get("sweep_rows", {}):
        state["sweep_rows"][method] = []
    url = f"sqlite:///{root / f'studies-s{seed}.db'}"
    if (root / f"studies-s{seed}.db").exists() and f"{method}-s{seed}" in optuna.get_all_study_names(url):
        optuna.delete_study(study_name=f"{method}-s{seed}", storage=url)
    print(f"== seed {seed}: {method}'s stored results dropped (--fresh); the others' are kept", flush=True)


def run_seed(args, root: Path, seed: int) -> dict[str, Any]:
    from autoprune.pruning import PruningPlan
    from autoprune.search.objective import build_pipeline
    from autoprune.search.space import SearchSpace

    path = root / f"seed{seed}.json"
    state = read_json(path, what="benchmark results") if path.exists() else {"methods": {}, "test": {}}
    for method in args.fresh:  # rerun back to back with the other methods' stored results
        forget(root, seed, state, method)
    pipe, rec = build_pipeline(config(args, seed, "default"), SearchSpace.load("default"), progress=True,
                               measure=False)
    pipe = pipe.reseeded(seed)
    dense_plan = PruningPlan.dense(pipe.groups)
    state["dense_ms"] = float(pipe.cost_model.predict(pipe.dense).latency_ms)
    state["dense_val_accuracy"] = float(rec.val_accuracy)
    state["dense_test_accuracy"] = float(pipe.run(dense_plan, split="test").accuracy)
    state["sizes"] = pipe.data.sizes()
    state["full_steps"] = pipe.full_steps()
    # Interleaved: each method runs a slice in turn, so a drift of the host's speed hits every method alike.
    slices = state.setdefault("slices", {m: [] for m in METHODS})
    sweeps = state.setdefault("sweep_rows", {m: [] for m in METHODS if m not in ("autoprune", "tpe")})
    for k in range(args.slices):
        for method in args.methods:
            used = sum(b - a for a, b, _ in slices[method])
            if len(slices[method]) > k or used >= args.budget_s:
                continue
            left = min(args.budget_s / args.slices, args.budget_s - used)
            print(f"== seed {seed}: {method}, slice {k + 1}/{args.slices}, {left:.0f} s", flush=True)
            t0 = time.time()
            if method in ("autoprune", "tpe"):
                study_slice(args, root, seed, method, left, first=not slices[method])
            else:
                sweep_slice(args, seed, method, left, pipe, sweeps[method])
            slices[method].append((t0, time.time(), os.getloadavg()[0]))
            write_json(path, state, checksum=True)
    for method in args.methods:
        got = collect_study(root, seed, method, pipe) if method in ("autoprune", "tpe") else {
            "method": method, "rows": sweeps[method], "stopped": [], "rounds": []}
        sl = slices[method]
        state["methods"][method] = {**got, "slices": sl, "wall_s": sum(b - a for a, b, _ in sl),
                                    "load": statistics.mean(x for _, _, x in sl) if sl else 0.0}
    write_json(path, state, checksum=True)
    space = SearchSpace.load("default")
    kd = bool(space.distillation[0])
    for result in state["methods"].values():
        for r in front(result["rows"]):
            key = json.dumps(r["plan"], sort_keys=True)
            if key not in state["test"]:
                state["test"][key] = float(pipe.run(PruningPlan.from_dict(r["plan"]), kd=kd, split="test").accuracy)
                write_json(path, state, checksum=True)
    return state


def report(args, root: Path, states: dict[int, dict[str, Any]]) -> None:
    import csv

    from scipy.stats import spearmanr

    from autoprune.search.pareto import best_within_drop, hypervolume

    rows_out, table = [], {}
    for seed, st in states.items():
        ref_acc = st["dense_test_accuracy"]
        for method, res in st["methods"].items():
            fr = front(res["rows"])
            acc = np.array([st["test"][json.dumps(r["plan"], sort_keys=True)] for r in fr])
            sp = np.array([st["dense_ms"] / r["latency_ms"] for r in fr])
            hv = hypervolume(np.c_[acc, sp], (ref_acc - HV_ACC_MARGIN, 1.0), ["maximize", "maximize"]) if len(fr) \
                else 0.0
            sp1 = best_within_drop(acc, sp, ref_acc, 0.01) if len(fr) else float("nan")
            batch = 64
            passes = sum(sample_passes(r, batch, True, st["sizes"]["val"]) for r in res["rows"] + res["stopped"])
            for rnd in res["rounds"]:
                passes += rnd["rung0"] * (4 * batch + rnd["rung0_samples"]) + rnd["rung1"] * (
                    rnd["rung1_steps"] * batch * 4 + rnd["rung0_samples"])
            table[(seed, method)] = {"hv": hv, "sp1": sp1, "front": len(fr), "fine_tuned": len(res["rows"]),
                                     "stopped": len(res["stopped"]), "wall_s": res["wall_s"], "load": res["load"],
                                     "passes_m": passes / 1e6}
            for r, a, s in zip(fr, acc, sp):
                rows_out.append({"seed": seed, "method": method, "test_accuracy": a, "val_accuracy": r["val_accuracy"],
                                 "predicted_ms": r["latency_ms"], "predicted_speedup": s,
                                 "dense_test_accuracy": ref_acc})
    out = root.parent / root.name
    with open(f"{out}.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows_out[0]))
        w.writeheader()
        w.writerows(rows_out)
    print(f"\n## {args.model} on {args.data} (train {args.max_train_samples or 'all'}), target {args.target} "
          f"(latency PREDICTED by its calibration), {args.budget_s:.0f} s per method, test accuracy")
    print("\n| seed | method | HV | speedup at <=1 % drop | front | fine-tuned | stopped | wall s | load | "
          "sample passes (M) |\n|---|---|---|---|---|---|---|---|---|---|")
    for (seed, method), t in table.items():
        print(f"| {seed} | {method} | {t['hv']:.4f} | {t['sp1']:.2f}x | {t['front']} | {t['fine_tuned']} | "
              f"{t['stopped']} | {t['wall_s']:.0f} | {t['load']:.2f} | {t['passes_m']:.1f} |")
    for seed in states:
        a = table.get((seed, "autoprune"))
        if a is None:
            continue
        beats = [m for m in METHODS[1:] if (seed, m) in table and a["hv"] > table[(seed, m)]["hv"]]
        g = table.get((seed, "global-l1"), {}).get("sp1", float("nan"))
        print(f"\nseed {seed}: autoprune's HV beats {beats or 'none'} of {list(METHODS[1:])}; best speedup at "
              f"<=1 % drop {a['sp1']:.2f}x vs global-l1's {g:.2f}x ({a['sp1'] / g:.2f}x; target >= 1.2x)")
    # screening: rank correlation (every fully fine-tuned plan of any method that was also screened: the
    # sweeps' plans are screened in round 0) and throughput per rung
    from autoprune.search.promotion import plan_digest

    for seed, st in states.items():
        res = st["methods"].get("autoprune")
        if not res:
            continue
        screened = res.get("screened", {})
        pairs: dict[str, tuple[dict, float]] = {}
        for other in st["methods"].values():
            for r in other["rows"]:
                k = plan_digest(r["plan"])
                if k in screened:
                    pairs[k] = (screened[k], r["val_accuracy"])
        for rung in ("rung0", "rung1"):
            sel = [(a[rung], b) for a, b in pairs.values() if rung in a]
            if len(sel) >= 3:
                rho = spearmanr([x for x, _ in sel], [y for _, y in sel]).statistic
                print(f"seed {seed}: Spearman({rung} accuracy, fully fine-tuned val accuracy) = {rho:.2f} over "
                      f"{len(sel)} plans screened and fully fine-tuned (any method)")
        done = [r for r in res["rows"] if r.get("rung0_accuracy") is not None]
        for rung in ("rung0_accuracy", "rung1_accuracy"):
            pairs = [(r[rung], r["val_accuracy"]) for r in done if r.get(rung) is not None]
            if len(pairs) >= 3:
                rho = spearmanr([p[0] for p in pairs], [p[1] for p in pairs]).statistic
                fast = sorted(done, key=lambda r: r["latency_ms"])[: max(3, len(done) // 2)]
                fp = [(r[rung], r["val_accuracy"]) for r in fast if r.get(rung) is not None]
                rho_fast = spearmanr([p[0] for p in fp], [p[1] for p in fp]).statistic if len(fp) >= 3 else None
                print(f"seed {seed}: Spearman({rung}, fine-tuned val accuracy) = {rho:.2f} over {len(pairs)} promoted "
                      f"candidates; {rho_fast if rho_fast is None else round(rho_fast, 2)} over the faster half")
        for rnd in res["rounds"]:
            s = rnd["seconds"]
            r0 = s.get("rung0_explore", 0) + s.get("rung0_refine", 0)
            r1 = s.get("rung1_short-finetune", 0)
            print(f"seed {seed} round {rnd['round']}: rung 0 {rnd['rung0']} plans in {r0:.0f} s "
                  f"({rnd['rung0'] / max(r0, 1e-9) * 60:.0f}/min), rung 1 {rnd['rung1']} in {r1:.0f} s "
                  f"({rnd['rung1'] / max(r1, 1e-9) * 60:.0f}/min), {rnd['promoted']} promoted")
        full = [r for r in res["rows"] if r.get("anchor") != "dense"]
        span = sum(sum(r["seconds"].values()) for r in full)
        if full:
            print(f"seed {seed}: full fine-tunes {len(full)} in {span:.0f} s ({len(full) / span * 60:.1f}/min)")
    plot(args, root, states, out)


def plot(args, root: Path, states: dict[int, dict[str, Any]], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colors = dict(zip(METHODS, ("tab:red", "tab:orange", "tab:green", "tab:blue")))
    fig, axes = plt.subplots(1, len(states), figsize=(6 * len(states), 4.5), squeeze=False)
    fig2, axes2 = plt.subplots(1, len(states), figsize=(6 * len(states), 4.5), squeeze=False)
    for ax, ax2, (seed, st) in zip(axes[0], axes2[0], states.items()):
        for method, res in st["methods"].items():
            fr = sorted(front(res["rows"]), key=lambda r: r["latency_ms"])
            ax.plot([st["dense_ms"] / r["latency_ms"] for r in fr],
                    [st["test"][json.dumps(r["plan"], sort_keys=True)] for r in fr], marker="o", ms=4,
                    color=colors[method], label=method)
            curve = anytime(res, st["dense_val_accuracy"], st["dense_ms"])
            if curve:
                ax2.step([t / 60 for t, _ in curve], [h for _, h in curve], where="post", color=colors[method],
                         label=method)
        ax.axhline(st["dense_test_accuracy"] - 0.01, color="k", ls=":", lw=0.8, label="dense - 1 %")
        ax.set_title(f"{args.model}/{args.data} seed {seed}: fronts (test accuracy)", fontsize=9)
        ax.set_xlabel(f"predicted speedup on {args.target} (x)")
        ax.set_ylabel("test accuracy")
        ax.set_ylim(max(0.0, st["dense_test_accuracy"] - 0.15), st["dense_test_accuracy"] + 0.02)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        ax2.set_title(f"{args.model}/{args.data} seed {seed}: HV vs wall time (val accuracy, predicted)", fontsize=9)
        ax2.set_xlabel("minutes since the method started")
        ax2.set_ylabel("HV")
        ax2.grid(alpha=0.3)
        ax2.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(f"{out}.png", dpi=110)
    fig2.tight_layout()
    fig2.savefig(f"{out}_anytime.png", dpi=110)
    print(f"\nwrote {out}.csv, {out}.png, {out}_anytime.png")
    for seed, st in states.items():
        curves = {m: anytime(r, st["dense_val_accuracy"], st["dense_ms"]) for m, r in st["methods"].items()}
        new = curves.get("autoprune") or []
        for m, ref in curves.items():
            if m == "autoprune" or not ref or not new:
                continue
            goal, t_ref = ref[-1][1], ref[-1][0]
            reach = next((t for t, h in new if h >= goal), None)
            print(f"seed {seed}: autoprune reaches {m}'s final HV {goal:.3f} "
                  + (f"after {reach:.0f} s ({reach / t_ref:.2f} of {m}'s {t_ref:.0f} s)" if reach is not None
                     else f"never (it ends at {new[-1][1]:.3f})"))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="vgg11")
    p.add_argument("--data", default="fashion-mnist")
    p.add_argument("--target", default="jetson-nano")
    p.add_argument("--max-train-samples", type=int, default=None)
    p.add_argument("--max-eval-samples", type=int, default=None)
    p.add_argument("--budget-s", type=float, default=600.0, help="wall time per method (s)")
    p.add_argument("--seeds", default="0")
    p.add_argument("--slices", type=int, default=3, help="interleaved slices per method (default 3)")
    p.add_argument("--methods", default=",".join(METHODS), help=f"comma-separated, of {', '.join(METHODS)}")
    p.add_argument("--report-only", action="store_true")
    p.add_argument("--fresh", default="", help="comma-separated methods whose stored results are dropped and rerun "
                   "(back to back with the others' stored results)")
    args = p.parse_args()
    args.methods = [m for m in args.methods.split(",") if m]
    args.fresh = [m for m in args.fresh.split(",") if m]
    bad = [m for m in args.methods + args.fresh if m not in METHODS]
    if bad or not args.methods:
        p.error(f"--methods: unknown {', '.join(bad) or '(none given)'}; choose from {', '.join(METHODS)}")
    import torch

    torch.set_num_threads(int(os.environ.get("AUTOPRUNE_BENCH_THREADS", "2")))
    root = work_dir(args)
    root.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    states = {}
    for seed in [int(s) for s in args.seeds.split(",")]:
        path = root / f"seed{seed}.json"
        states[seed] = read_json(path, what="benchmark results") if args.report_only else run_seed(args, root, seed)
    report(args, root, states)
    print(f"\nwall time {time.perf_counter() - t0:.0f} s; host load average {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
