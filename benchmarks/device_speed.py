"""CPU vs GPU for autoprune's own work: dense training time, trials per minute, and accuracy agreement.

This is the one script a lent GPU runs for ``--device`` (issue #17). For each workload (the default
model, ``vgg11`` on digits at 32 px, and ResNet-18 on digits upsampled to 224 px) it measures, on the
CPU and on the GPU:

1. **dense training**: seconds per step of :func:`autoprune.train.train_dense` itself (the real loop,
   with its data order, augmentation, schedule, and on CUDA mixed precision), timed in interleaved
   rounds (CPU block, GPU block, CPU block, ...) so that drift of the machine hits both; the speedup
   is the median of the per-round ratios, and the full 15-epoch recipe's time is projected from it;
2. **trials per minute**: :meth:`autoprune.pipeline.Pipeline.run` (prune, fine-tune, evaluate, cost
   model) on the same plans on both devices, interleaved plan by plan;
3. **accuracy agreement** (the default model): one plan fine-tuned with the same seed on the CPU and
   on the GPU from the same dense checkpoint; the test accuracies must agree within 1 % (absolute).

On a machine without a GPU it says so and measures the CPU only (the ratios and the agreement are
then "n/a"). Dense checkpoints are cached in their own results folder (``--results``), trained on
the fastest device present, so the figures never depend on a half-trained cache elsewhere.

Usage::

    .venv/bin/python benchmarks/device_speed.py [--models vgg11,resnet18-224] [--quick] [--json out.json]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

#: name -> model, input size (None: the model's own on digits), timed training steps per round,
#: fine-tuning steps per trial (None: the default search space's budget), dense epochs for the cache.
WORKLOADS = {
    "vgg11": {"model": "vgg11", "size": None, "train_steps": 30, "finetune_steps": None, "dense_epochs": 15},
    "resnet18-224": {"model": "resnet18", "size": 224, "train_steps": 6, "finetune_steps": 12, "dense_epochs": 4},
}
PLANS = [("channel", 0.3, "l1"), ("channel", 0.5, "taylor"), ("unstructured", 0.6, "l2"), ("nm", 0.5, "l1")]
AGREEMENT = 0.01


def _sync(compute) -> None:
    if compute.device.type == "cuda":
        torch.cuda.synchronize(compute.device)
    elif compute.device.type == "mps":
        torch.mps.synchronize()


def _subset(data, n: int):
    """``data`` with its train split cut to the first ``n`` samples (so an epoch is a known number of steps)."""
    from torch.utils.data import TensorDataset

    x, y = data.train.tensors
    return replace(data, train=TensorDataset(x[:n], y[:n]))


def time_training(model_ref: str, data, computes: dict, steps: int, rounds: int) -> dict:
    """Seconds per dense-training step on each compute, in interleaved rounds."""
    from autoprune.models import build_model
    from autoprune.train import TrainConfig, train_dense

    batch = TrainConfig().batch_size
    part = _subset(data, steps * batch)
    per: dict[str, list[float]] = {name: [] for name in computes}
    for r in range(rounds + 1):  # round 0 warms up (allocator, cuDNN autotuning) and is not counted
        for name, compute in (computes.items() if r % 2 == 0 else reversed(list(computes.items()))):
            model = compute.place(build_model(model_ref, num_classes=data.num_classes,
                                              in_channels=data.input_shape[0]))
            _sync(compute)
            t0 = time.perf_counter()
            train_dense(model, part if r else _subset(data, 2 * batch), TrainConfig(epochs=1), progress=False,
                        compute=compute)
            _sync(compute)
            if r:
                per[name].append((time.perf_counter() - t0) / steps)
    full_steps = TrainConfig().epochs * -(-len(data.train) // batch)
    out = {name: {"s_per_step": statistics.median(v), "images_per_s": batch / statistics.median(v),
                  "projected_full_recipe_min": statistics.median(v) * full_steps / 60} for name, v in per.items()}
    if "gpu" in per:
        out["speedup"] = statistics.median(c / g for c, g in zip(per["cpu"], per["gpu"]))
    return out


def time_trials(config, computes: dict, n_trials: int, finetune_steps: int | None) -> dict:
    """Trials per minute of the pipeline on each compute, interleaved plan by plan."""
    from autoprune.pruning import PruningPlan
    from autoprune.search.objective import build_pipeline
    from autoprune.search.space import SearchSpace

    space = SearchSpace.load(config.space)
    pipes = {}
    for name, compute in computes.items():
        pipe, _ = build_pipeline(replace(config, device=str(compute.device)), space, progress=False)
        if finetune_steps is not None:
            pipe.finetune_steps = finetune_steps
        pipes[name] = pipe
    kd = bool(space.distillation[0])
    seconds: dict[str, list[float]] = {name: [] for name in computes}
    first = next(iter(pipes.values()))
    for i in range(n_trials):
        structure, ratio, criterion = PLANS[i % len(PLANS)]
        plan = PruningPlan.uniform(first.groups, structure, ratio, criterion=criterion)
        for name in (list(pipes) if i % 2 == 0 else list(reversed(pipes))):
            t0 = time.perf_counter()
            pipes[name].run(plan, kd=kd)
            _sync(computes[name])
            seconds[name].append(time.perf_counter() - t0)
    out = {name: {"trials_per_min": 60 / statistics.mean(v), "s_per_trial": statistics.mean(v)}
           for name, v in seconds.items()}
    if "gpu" in out:
        out["speedup"] = out["gpu"]["trials_per_min"] / out["cpu"]["trials_per_min"]
    out["finetune_steps"] = finetune_steps if finetune_steps is not None else "search space budget"
    return out


def accuracy_agreement(config, computes: dict, seed: int) -> dict:
    """One plan, the same seed, fine-tuned with the export's budget on each compute: test accuracies."""
    from autoprune.pruning import PruningPlan
    from autoprune.search.objective import build_pipeline
    from autoprune.search.space import SearchSpace

    space = SearchSpace.load(config.space)
    acc = {}
    for name, compute in computes.items():
        pipe, _ = build_pipeline(replace(config, device=str(compute.device), seed=seed), space, progress=False)
        plan = PruningPlan.uniform(pipe.groups, "channel", 0.5, criterion="taylor")
        result = pipe.run(plan, kd=True, split="test", epochs=3 * pipe.finetune_epochs)
        acc[name] = result.accuracy
    out: dict = {"test_accuracy": acc, "plan": "uniform channel 50 %, taylor, distilled, 3x the search budget"}
    if "gpu" in acc:
        out["abs_diff"] = abs(acc["cpu"] - acc["gpu"])
        out["agrees_within_1pct"] = out["abs_diff"] <= AGREEMENT
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(WORKLOADS), help=f"comma list from {', '.join(WORKLOADS)}")
    parser.add_argument("--device", default="auto", help="the GPU to compare with the CPU (default: auto)")
    parser.add_argument("--no-amp", action="store_true", help="no mixed precision on the GPU")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved training rounds (default 3)")
    parser.add_argument("--trials", type=int, default=4, help="trials per device and workload (default 4)")
    parser.add_argument("--seed", type=int, default=0, help="fine-tuning seed of the agreement check")
    parser.add_argument("--quick", action="store_true",
                        help="a smoke run: fewer steps and trials, short dense training (figures are rough)")
    parser.add_argument("--results", default="results/device_speed", help="results folder for cached checkpoints")
    parser.add_argument("--json", type=Path, default=None, help="also write the results as JSON here")
    args = parser.parse_args(argv)
    os.environ["AUTOPRUNE_RESULTS"] = str(Path(args.results).resolve())

    from autoprune.compute import Compute, available_devices
    from autoprune.data import load_data_for
    from autoprune.io import write_json
    from autoprune.search.config import SearchConfig
    from autoprune.train import TrainConfig, ensure_dense

    names = [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = [m for m in names if m not in WORKLOADS]
    if unknown:
        print(f"unknown workload {unknown[0]!r}; valid: {', '.join(WORKLOADS)}", file=sys.stderr)
        return 2
    computes = {"cpu": Compute()}
    gpu = Compute.resolve(args.device, amp=not args.no_amp)
    if gpu.moves:
        computes["gpu"] = gpu
    else:
        print(f"no GPU present (this machine has: {', '.join(available_devices())}): CPU figures only; "
              "the CPU-vs-GPU ratios and the 1 % accuracy agreement need a GPU")
    print(f"torch {torch.__version__}, {platform.machine()}, {os.cpu_count()} CPUs, torch threads "
          f"{torch.get_num_threads()}; devices: " + ", ".join(f"{k} = {c.describe()}" for k, c in computes.items()))
    fastest = computes.get("gpu", computes["cpu"])
    report: dict = {"devices": {k: c.describe() for k, c in computes.items()}, "workloads": {}}
    for name in names:
        w = WORKLOADS[name]
        steps, trials, dense_epochs = w["train_steps"], args.trials, w["dense_epochs"]
        if args.quick:
            steps, trials, dense_epochs = max(2, steps // 5), min(trials, 2), 1
        data = load_data_for(w["model"], "digits", input_size=w["size"], seed=0)
        print(f"\n== {name}: {w['model']} on digits at {data.input_shape[-1]} px ==", flush=True)
        t0 = time.perf_counter()
        _, rec = ensure_dense(w["model"], data, 0, config=TrainConfig(epochs=dense_epochs), progress=False,
                              strict=False, compute=fastest)
        print(f"dense checkpoint: val accuracy {rec.val_accuracy:.4f} ({dense_epochs} epochs on "
              f"{rec.trained_on or 'an earlier run'}, {time.perf_counter() - t0:.0f} s)", flush=True)
        res: dict = {"dense": {"val_accuracy": rec.val_accuracy, "epochs": dense_epochs}}
        res["training"] = time_training(w["model"], data, computes, steps, args.rounds if not args.quick else 1)
        for dev in computes:
            t = res["training"][dev]
            print(f"dense training on {dev}: {t['s_per_step'] * 1e3:.1f} ms/step ({t['images_per_s']:.0f} images/s); "
                  f"the 15-epoch recipe ~ {t['projected_full_recipe_min']:.1f} min", flush=True)
        if "speedup" in res["training"]:
            print(f"dense training speedup GPU vs CPU: {res['training']['speedup']:.1f}x (median of rounds)")
        config = SearchConfig(model=w["model"], input_size=w["size"], target="jetson-nano", trials=1)
        res["trials"] = time_trials(config, computes, trials, w["finetune_steps"] if not args.quick else 2)
        for dev in computes:
            t = res["trials"][dev]
            print(f"search trials on {dev}: {t['trials_per_min']:.2f} trials/min ({t['s_per_trial']:.1f} s each, "
                  f"fine-tuning: {res['trials']['finetune_steps']})", flush=True)
        if "speedup" in res["trials"]:
            print(f"trials/min speedup GPU vs CPU: {res['trials']['speedup']:.1f}x")
        if name == "vgg11":
            res["agreement"] = accuracy_agreement(config, computes, args.seed)
            a = res["agreement"]
            line = ", ".join(f"{k} {v:.4f}" for k, v in a["test_accuracy"].items())
            verdict = (f"|diff| {a['abs_diff']:.4f}: {'PASS' if a['agrees_within_1pct'] else 'FAIL'} (<= 0.01)"
                       if "abs_diff" in a else "n/a without a GPU")
            print(f"accuracy after fine-tuning ({a['plan']}, seed {args.seed}): {line}; {verdict}", flush=True)
        report["workloads"][name] = res
    if args.json:
        write_json(args.json, report)
        print(f"\nwritten to {args.json}")
    failed = [n for n, r in report["workloads"].items() if r.get("agreement", {}).get("agrees_within_1pct") is False]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
