"""``autoprune train``: train (or load) the dense baseline and cache it under results/."""

from __future__ import annotations

import argparse

from autoprune.commands.base import Command
from autoprune.commands.common import (
    add_compute_args,
    add_model_data_args,
    add_subset_args,
    compute_of,
    load_data_for,
    positive_float,
    positive_int,
    print_batchnorm_line,
)


class TrainCommand(Command):
    """Train the dense model once; ``search`` reuses the cached checkpoint."""

    name = "train"
    help = "train the dense baseline and cache its checkpoint under results/checkpoints"

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        add_model_data_args(parser)
        add_subset_args(parser)
        parser.add_argument("--epochs", type=positive_int, default=15,
                            help="training epochs (default: 15); another count is another checkpoint")
        parser.add_argument("--lr", type=positive_float, default=0.05, help="peak learning rate (default: 0.05)")
        parser.add_argument("--retrain", action="store_true", help="train again even if a checkpoint is cached")
        add_compute_args(parser)
        parser.add_argument("--no-progress", action="store_true", help="no progress bar")

    def run(self, args: argparse.Namespace) -> int:
        """Train (or load) the dense model and report it; one at chance is kept, with a ``warning:`` line
        (a search refuses it: :func:`autoprune.train.check_above_chance`), and the exit code is 0."""
        from autoprune.errors import ConfigError
        from autoprune.train import TrainConfig, check_above_chance, ensure_dense

        compute = compute_of(args)
        data = load_data_for(args)
        cfg = TrainConfig(epochs=args.epochs, lr=args.lr, seed=args.seed)
        _, rec = ensure_dense(args.model, data, args.seed, checkpoint=args.checkpoint, config=cfg,
                              retrain=args.retrain, progress=not args.no_progress, compute=compute, strict=False)
        if args.checkpoint is not None:
            how = "loaded from --checkpoint"
        elif rec.train_seconds is not None:
            how = f"trained in {rec.train_seconds:.0f} s on {rec.trained_on}"
        else:
            how = "loaded from cache" + (f", trained on {rec.trained_on}" if rec.trained_on else "")
        print(f"dense {args.model} on {args.data}: val accuracy {rec.val_accuracy:.4f}, "
              f"test accuracy {rec.test_accuracy:.4f} ({how})")
        print_batchnorm_line(rec)
        try:
            check_above_chance(rec, data.num_classes)
        except ConfigError as exc:
            print(f"warning: {exc}")
        print(f"checkpoint: {rec.path}")
        return 0
