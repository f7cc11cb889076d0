"""Argument helpers shared by several commands."""

from __future__ import annotations

import argparse
import math


def positive_int(text: str) -> int:
    """argparse type: an integer ≥ 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} must be at least 1")
    return value


def positive_float(text: str) -> float:
    """argparse type: a finite float > 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"{text} must be a finite number above 0")
    return value


def fraction(text: str) -> float:
    """argparse type: a finite float in [0, 1] (accuracies)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not math.isfinite(value) or not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"{text} must be between 0 and 1 (e.g. 0.97 for 97 %)")
    return value


def add_model_data_args(parser: argparse.ArgumentParser) -> None:
    """``--model``, ``--data``, ``--checkpoint``, ``--seed``: the dense starting point."""
    parser.add_argument("--model", default="vgg11",
                        help="zoo name (resnet20, resnet56, resnet18, mobilenet_v2, vgg, vgg11), "
                        "torchvision.models:NAME, timm:NAME, package.module:function or file.py:function "
                        "(default: vgg11)")
    parser.add_argument("--data", default="digits",
                        help="digits (built in), fashion-mnist (the OS package dataset-fashion-mnist), a folder "
                        "of IDX files (MNIST, KMNIST, EMNIST), a .npz with x and y, an image folder, or "
                        "module:function (default: digits)")
    parser.add_argument("--input-size", type=positive_int, default=None,
                        help="square input side for digits, IDX sets and image folders (default: the model's, "
                        "32 for small models)")
    parser.add_argument("--checkpoint", default=None,
                        help="dense state dict to start from (loaded with weights_only=True); "
                        "default: the cached one under results/checkpoints, trained if missing")
    parser.add_argument("--seed", type=int, default=0, help="seed for splits, training and search (default: 0)")


def add_subset_args(parser: argparse.ArgumentParser) -> None:
    """``--max-train-samples``, ``--max-eval-samples``: a stratified, seeded subset of the data."""
    parser.add_argument("--max-train-samples", type=positive_int, default=None, metavar="N",
                        help="train on a stratified, seeded subset of N training samples (default: all); "
                        "part of the data's key, so it is its own checkpoint")
    parser.add_argument("--max-eval-samples", type=positive_int, default=None, metavar="N",
                        help="the same for the validation and the test split, N each (default: all)")


def load_data_for(args: argparse.Namespace):
    """The data of ``args`` at its input size and subset (see :func:`autoprune.data.load_data_for`)."""
    from autoprune.data import load_data_for as load

    return load(args.model, args.data, input_size=args.input_size, seed=args.seed,
                max_train_samples=getattr(args, "max_train_samples", None),
                max_eval_samples=getattr(args, "max_eval_samples", None))


def non_negative_float(text: str) -> float:
    """argparse type: a finite float >= 0 (GPUs per trial)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"{text} must be a finite number >= 0")
    return value


def add_compute_args(parser: argparse.ArgumentParser, amp: bool = True) -> None:
    """``--device`` (and ``--no-amp``): where training, fine-tuning and evaluation run (torch is not imported)."""
    parser.add_argument("--device", default="auto",
                        help="where to train, fine-tune and evaluate: auto (CUDA, then Apple MPS, then the CPU), cpu, "
                        "cuda, cuda:N or mps (default: auto); the --target's latency is predicted either way")
    if amp:
        parser.add_argument("--no-amp", action="store_true",
                            help="no mixed precision on CUDA (torch.autocast is on by default there, never on the CPU)")


def compute_of(args: argparse.Namespace):
    """The :class:`~autoprune.compute.Compute` that ``--device``/``--no-amp`` ask for (ConfigError if absent here)."""
    from autoprune.compute import Compute

    return Compute.resolve(args.device, amp=not getattr(args, "no_amp", False))


def print_batchnorm_line(rec) -> None:
    """Say so where the dense model's BatchNorm statistics were re-estimated after training or loading
    (``rec``: its :class:`~autoprune.train.DenseCheckpoint`)."""
    if rec.bn_reestimated:
        print(f"BatchNorm running statistics re-estimated on a few hundred training samples: val accuracy "
              f"{rec.bn_val_accuracy_before:.4f} -> {rec.bn_val_accuracy_after:.4f}")
