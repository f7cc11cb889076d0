"""``autoprune search``: run (or resume) a hardware-aware pruning search."""

from __future__ import annotations

import argparse
import time

from autoprune.commands.base import Command
from autoprune.commands.common import (
    add_compute_args,
    add_model_data_args,
    add_subset_args,
    fraction,
    non_negative_float,
    positive_float,
    positive_int,
    print_batchnorm_line,
)


class SearchCommand(Command):
    """Search per-group pruning plans for the accuracy/latency(/energy/size) Pareto front."""

    name = "search"
    help = "search pruning plans for the Pareto front of accuracy vs latency/energy on a target"

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        add_model_data_args(parser)
        add_subset_args(parser)
        for action in parser._actions:  # None = "not given", so a resume can tell what the user asked for
            if action.dest in ("model", "data", "seed"):
                action.default = None
        parser.add_argument("--target", default=None, help="target profile (see `autoprune targets`; "
                            "default: jetson-nano)")
        parser.add_argument("--space", default=None,
                            help="search space: default (per-group ratios), knapsack (a latency budget + layer "
                                 "priorities), structured-only, sparse, or a .yaml path (default: default)")
        parser.add_argument("--objectives", default=None,
                            help="comma list from accuracy, latency, energy, size, macs "
                            "(macs = hardware-blind; default: accuracy,latency)")
        parser.add_argument("--max-latency-ms", type=positive_float, default=None, help="latency constraint")
        parser.add_argument("--min-accuracy", type=fraction, default=None, help="accuracy floor, e.g. 0.97")
        parser.add_argument("--max-size-mb", type=positive_float, default=None, help="model size constraint")
        parser.add_argument("--sampler", default=None, help="tpe (default), nsga2, gp or random")
        parser.add_argument("--trials", type=positive_int, default=None,
                            help="new study: completed trials to run (default: 30); resume: this many more")
        parser.add_argument("--timeout", type=positive_float, default=None, help="time budget in seconds")
        parser.add_argument("--finetune-epochs", type=int, default=None,
                            help="fine-tuning epochs per candidate (default: the space's)")
        parser.add_argument("--study", default=None,
                            help="study name; an existing study resumes with no other arguments")
        parser.add_argument("--storage", default=None,
                            help="Optuna storage URL (default: sqlite:///results/autoprune.db; "
                            "postgresql://... or journal:///path.log for several workers)")
        parser.add_argument("--backend", choices=("optuna", "ray"), default="optuna",
                            help="optuna (this process) or ray (Ray Tune workers)")
        parser.add_argument("--address", default=None, help="Ray cluster address (with --backend ray)")
        parser.add_argument("--workers", type=positive_int, default=1, help="concurrent Ray trials")
        parser.add_argument("--gpus-per-trial", type=non_negative_float, default=None,
                            help="GPUs each Ray trial asks for; fractions share a GPU, e.g. 0.25 runs four trials "
                            "on one (default: 1 where --device is CUDA here, else 0)")
        parser.add_argument("--cpus-per-trial", type=positive_float, default=None,
                            help="CPUs each Ray trial asks for (default: 1)")
        add_compute_args(parser)
        parser.add_argument("--create-only", action="store_true",
                            help="create the study (validated, anchors enqueued) and run no trial: do this once "
                            "before starting several workers on a PostgreSQL study")
        parser.add_argument("--no-progress", action="store_true", help="no progress bars")

    def run(self, args: argparse.Namespace) -> int:
        from autoprune.errors import ConfigError
        from autoprune.io import check_study_name, ensure_writable, results_dir
        from autoprune.search.config import SearchConfig, default_study_name
        from autoprune.search.report import provenance_line, table
        from autoprune.search.storage import default_storage_url, redact_url

        if args.finetune_epochs is not None and args.finetune_epochs < 0:
            raise ConfigError(f"--finetune-epochs must be >= 0, got {args.finetune_epochs}")
        given = {
            "model": args.model, "data": args.data, "input_size": args.input_size, "checkpoint": args.checkpoint,
            "target": args.target, "space": args.space, "seed": args.seed,
            "objectives": tuple(o.strip() for o in args.objectives.split(",")) if args.objectives else None,
            "max_latency_ms": args.max_latency_ms, "min_accuracy": args.min_accuracy,
            "max_size_mb": args.max_size_mb, "sampler": args.sampler, "finetune_epochs": args.finetune_epochs,
            "max_train_samples": args.max_train_samples, "max_eval_samples": args.max_eval_samples,
        }
        _validate_early(given)
        # What the user did not give takes SearchConfig's defaults: the one place they are written.
        config = SearchConfig(**{k: v for k, v in given.items() if v is not None},
                              **({"trials": args.trials} if args.trials else {}))
        resume_only = args.study is not None and all(v is None for v in given.values())
        study_name = check_study_name(args.study or default_study_name(config))  # results/<study>: no escape
        storage = args.storage or default_storage_url()
        ensure_writable(results_dir())  # the front goes to results/<study>: refuse before any work
        from autoprune.dashboard.note import update_study_note
        from autoprune.search.runner import run_search

        t0 = time.perf_counter()
        out = run_search(None if resume_only else config, study_name=study_name, storage=storage,
                         given={k: v for k, v in given.items() if v is not None},
                         more_trials=args.trials,
                         timeout_s=args.timeout, progress=not args.no_progress, backend=args.backend,
                         workers=args.workers, address=args.address, create_only=args.create_only,
                         device=args.device, amp=not args.no_amp, gpus_per_trial=args.gpus_per_trial,
                         cpus_per_trial=args.cpus_per_trial)
        update_study_note(out.study, out.context.storage.url)  # the dashboard's view: config, front, commands
        if args.create_only:
            what = "created" if out.created else "already exists"
            print(f"study {study_name!r} {what} in {redact_url(storage)}: budget {out.config.trials} completed "
                  f"trials, {out.seeded} anchors enqueued; start each worker with "
                  f"`autoprune search --study {study_name} --storage URL`")
            return 0
        minutes = (time.perf_counter() - t0) / 60
        trial_min = out.trials_s / 60
        c = out.counts
        print(f"\nstudy {study_name!r} in {redact_url(storage)}: {c['completed']} trials completed here, "
              f"{c.get('stopped', 0)} stopped early (dominated at a fine-tuning checkpoint), "
              f"{c['failed']} failed, {c.get('stale_retried', 0)} stale retried, in {trial_min:.1f} min "
              f"({c['completed'] / max(trial_min, 1e-9):.1f} trials/min); {minutes:.1f} min in all with set-up "
              "(dense training when not cached, calibration loading)")
        from autoprune.search.screen_loop import screening_summary

        screened = screening_summary(out.study)
        if screened:
            print(screened)
        print(f"target {out.config.target}; dense accuracy {out.dense_checkpoint.val_accuracy:.4f} (val)")
        print_batchnorm_line(out.dense_checkpoint)
        _print_excluded(out.excluded_groups)
        if not out.front:
            print("no feasible point: no completed trial meets the constraints "
                  f"(max latency {out.config.max_latency_ms} ms, min accuracy {out.config.min_accuracy}, "
                  f"max size {out.config.max_size_mb} MB); relax them and resume with --trials")
            return 0
        print(table(out.front, out.dense))
        print(provenance_line(out.rows))
        print(f"front written to {out.dir}/pareto.{{csv,json,png,html}}; watch or resume: "
              f"`autoprune dashboard --study {study_name}`, `autoprune search --study {study_name}`")
        return 0


def _print_excluded(excluded: dict[str, str]) -> None:
    """The groups kept whole because their test prune at discovery failed, one line each."""
    if excluded:
        print(f"{len(excluded)} group(s) kept whole: they failed a test prune when the model's groups were found")
        for name, why in excluded.items():
            print(f"  {name}: {why}")


def _validate_early(given: dict) -> None:
    """Check names before any work (training, storage writes) is done."""
    from autoprune.models import ZOO

    if given["model"] is not None and ":" not in given["model"]:
        ZOO.get(given["model"])
    if given["space"] is not None:
        from autoprune.search.space import SearchSpace

        SearchSpace.load(given["space"])
