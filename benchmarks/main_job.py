"""The main job, screened against unscreened: `autoprune search --target jetson-nano` (30 trials).

``--space screened`` (the default space with screening) and ``--space default`` run back to back per seed,
in one process, with the host load reported.

For each run: wall time (set-up excluded, as the CLI's "trials/min" counts it), final HV of (validation
accuracy, predicted Nano speedup) above (dense accuracy - 0.10, 1.0x), the front's size, and the anytime
curve; then when the screened search first reaches the unscreened search's final HV, as a share of the
unscreened search's wall time.

    .venv/bin/python benchmarks/main_job.py --seeds 0,1,2
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def run(space: str, seed: int, url: str, name: str, trials: int) -> dict:
    import optuna
    from optuna.trial import TrialState

    from autoprune.search.config import SearchConfig
    from autoprune.search.pareto import hypervolume, pareto_mask
    from autoprune.search.runner import run_search

    t0 = time.time()
    out = run_search(SearchConfig(target="jetson-nano", space=space, seed=seed, dense_seed=0, trials=trials),
                     study_name=name, storage=url, given={}, progress=False)
    wall = time.time() - t0
    study = optuna.load_study(study_name=name, storage=url)
    done = sorted((t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))),
                  key=lambda t: t.datetime_complete)
    dense = next(t for t in done if t.user_attrs.get("anchor") == "dense")
    d_acc, d_ms = dense.user_attrs["accuracy"], dense.user_attrs["latency_ms"]
    start = t0 + (wall - out.trials_s)  # the trials' start: set-up (pipeline, calibration) excluded
    pts, curve = [], []
    for t in done:
        pts.append((t.user_attrs["accuracy"], d_ms / t.user_attrs["latency_ms"]))
        curve.append((t.datetime_complete.timestamp() - start,
                      hypervolume(np.array(pts), (d_acc - 0.10, 1.0), ["maximize", "maximize"])))
    mask = pareto_mask(np.array([[a, -s] for a, s in pts]), ["maximize", "minimize"])
    return {"trials_s": out.trials_s, "hv": curve[-1][1], "front": int(mask.sum()), "curve": curve,
            "stopped": out.counts.get("stopped", 0), "load": os.getloadavg()[0]}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", default="0")
    p.add_argument("--trials", type=int, default=30)
    args = p.parse_args()
    import torch

    torch.set_num_threads(2)
    with tempfile.TemporaryDirectory() as tmp:
        url = f"sqlite:///{Path(tmp) / 'main-job.db'}"
        for seed in (int(s) for s in args.seeds.split(",")):
            new = run("screened", seed, url, f"screened-s{seed}", args.trials)
            old = run("default", seed, url, f"unscreened-s{seed}", args.trials)
            reach = next((t for t, h in new["curve"] if h >= old["hv"]), None)
            for label, r in (("--space screened", new), ("--space default", old)):
                print(f"seed {seed} {label:20s}: {r['trials_s']:.0f} s of trials, HV {r['hv']:.3f}, front "
                      f"{r['front']} points, {r['stopped']} stopped early, load {r['load']:.2f}")
            print(f"seed {seed}: the screened search reaches the unscreened final HV {old['hv']:.3f} "
                  + (f"after {reach:.0f} s = {reach / old['trials_s']:.2f} of its {old['trials_s']:.0f} s "
                     f"(target <= 0.50)" if reach is not None else f"never (it ends at {new['hv']:.3f})"),
                  flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
