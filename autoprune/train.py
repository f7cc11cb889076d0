"""Dense baseline training, cached under ``results/checkpoints/``.

A checkpoint is keyed by model, data set, seed and recipe, so ``search`` reuses the one
``train`` made (or trains it first when it is missing); the data set by its contents and subset
(:attr:`~autoprune.data.DataSplits.key`), so data replaced at the same path is trained on anew; the recipe
by what differs from :class:`TrainConfig`'s defaults, so ``train --epochs 3`` never loads a 15-epoch model.
A caller that names no recipe (``search``) takes the cached one (:func:`checkpoint_path`). Training runs on the
:class:`~autoprune.compute.Compute` it is given; the checkpoint holds CPU tensors and loads anywhere.

The model is traced for its prunable groups before any training (:func:`check_model_traces`); a trained or
loaded model has its BatchNorm statistics re-estimated where that evaluates better (:func:`reestimate_batchnorm`),
and one still at chance is refused before a search (:func:`check_above_chance`).
"""

from __future__ import annotations

import contextlib
import glob
import io
import itertools
import json
import math
import re
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from autoprune.compute import Compute
from autoprune.data import DataSplits
from autoprune.errors import AutopruneError, ConfigError
from autoprune.io import atomic_write_bytes, ensure_writable, results_dir, safe_name, write_json
from autoprune.models import build_model, load_checkpoint


@dataclass(frozen=True)
class TrainConfig:
    """Dense training recipe (SGD + momentum, cosine LR, light shift augmentation)."""

    epochs: int = 15
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 5e-4
    batch_size: int = 64
    seed: int = 0


@dataclass(frozen=True)
class DenseCheckpoint:
    """A trained dense model on disk and how it was made.

    Attributes:
        path: The state dict (``torch.save`` of tensors only).
        model: Model reference; data: data key; seed: training seed.
        val_accuracy, test_accuracy: Top-1 accuracy of the dense model, in [0, 1].
        train_seconds: Wall time of training now; ``None`` when loaded (a cache entry or a user's checkpoint).
        trained_on: The compute that trained it (e.g. ``cuda:0 (NVIDIA H100, bf16 autocast)``;
            empty for a user's checkpoint or a cache entry from before this was recorded).
        bn_reestimated: Its BatchNorm statistics are the re-estimated ones (:func:`reestimate_batchnorm`).
        bn_val_accuracy_before, bn_val_accuracy_after: Validation accuracy with the statistics as trained (or
            loaded) and as re-estimated; ``None`` without BatchNorm or unchecked (a cache entry from before).
    """

    path: str
    model: str
    data: str
    seed: int
    val_accuracy: float
    test_accuracy: float
    train_seconds: float | None
    trained_on: str = ""
    bn_reestimated: bool = False
    bn_val_accuracy_before: float | None = None
    bn_val_accuracy_after: float | None = None


#: Training samples whose batch statistics re-estimate a model's BatchNorm running statistics.
BN_SAMPLES = 320
#: A dense model whose validation accuracy is below this many times chance (1 / classes) is refused.
CHANCE_FACTOR = 1.5


#: TrainConfig field -> its tag in a checkpoint's name, where it differs from the default (the seed is named apart).
RECIPE_TAGS = {"epochs": "ep", "lr": "lr", "momentum": "m", "weight_decay": "wd", "batch_size": "bs"}


def recipe_tag(config: TrainConfig | None) -> str:
    """``-ep3-lr0.01``: the fields of ``config`` that differ from :class:`TrainConfig`'s defaults
    (empty for the default recipe, so its checkpoints keep their names)."""
    if config is None:
        return ""
    default = TrainConfig()
    return "".join(f"-{tag}{getattr(config, f):g}" for f, tag in RECIPE_TAGS.items()
                   if getattr(config, f) != getattr(default, f))


def checkpoint_path(model: str, data: DataSplits, seed: int, config: TrainConfig | None = None) -> Path:
    """Where the dense checkpoint of ``model`` on ``data`` with ``seed`` and recipe ``config`` lives.

    With no ``config``, the one cached of any recipe: the default recipe's, else the only other one (so
    ``search`` after ``train --epochs 3`` uses it), else where the default recipe's would go.

    The key names no device: the recipe (data order, seed, schedule) is the same on every
    device, and a GPU run differs from a CPU run only by floating-point rounding (and mixed
    precision, within it), not in what was trained. So a CPU re-run finds the checkpoint a
    GPU trained, and the reverse; the ``.json`` beside it records which compute trained it.

    Raises:
        ConfigError: No ``config``, no default recipe's checkpoint and several others (naming them).
    """
    folder, stem = results_dir() / "checkpoints", f"{safe_name(model)}-{data.key}-train{seed}"
    path = folder / f"{stem}{recipe_tag(config)}.pt"
    if config is not None or _cached(path) or not folder.is_dir():
        return path
    tags = re.compile(rf"(-({'|'.join(RECIPE_TAGS.values())})[-+.0-9e]+)+\.pt")
    others = sorted(p for p in folder.glob(f"{glob.escape(stem)}-*.pt")
                    if tags.fullmatch(p.name[len(stem):]) and _cached(p))
    if len(others) > 1:
        raise ConfigError(f"{len(others)} dense checkpoints of {model} on {data.key} (seed {seed}) were trained with "
                          f"other recipes ({', '.join(p.name for p in others)}); pick one with --checkpoint PATH")
    return others[0] if others else path


def _cached(path: Path) -> bool:
    return path.is_file() and path.with_suffix(".json").is_file()


@torch.no_grad()
def accuracy(model: nn.Module, loader, compute: Compute | None = None) -> float:
    """Top-1 accuracy of ``model`` (on ``compute``'s device, default the CPU) over ``loader``, in [0, 1]."""
    compute = compute or Compute()
    model.eval()
    correct = total = 0
    for batch in loader:
        x, y = compute.batch(batch)
        correct += int((model(x).argmax(1) == y).sum())
        total += int(y.numel())
    return correct / max(total, 1)


def _accuracy_on(model: nn.Module, data: DataSplits, split: str, compute: Compute) -> float:
    """The accuracy on ``split``, evaluated on ``compute``; the model is back on the CPU afterwards."""
    compute.place(model)
    try:
        return accuracy(model, data.loader(split, pin_memory=compute.pin_memory), compute)
    finally:
        compute.to_cpu(model)


def _batchnorms(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]


def reestimate_batchnorm(model: nn.Module, data: DataSplits, samples: int = BN_SAMPLES, seed: int = 0) -> int:
    """Re-estimate the BatchNorm running statistics of ``model`` (on the CPU) in place from ``samples`` train samples.

    Reset, then averaged (``momentum=None``) over the batches in train mode without gradients, by
    ``torch.optim.swa_utils.update_bn``: a short training with a small momentum (0.01 in torchvision's
    MobileNetV3) leaves them near their initial values, which can put the model at chance.

    Returns:
        How many BatchNorm layers were re-estimated (0: nothing changed).
    """
    from torch.optim.swa_utils import update_bn

    batches = itertools.islice(data.loader("train", 64, seed=seed), math.ceil(samples / 64))
    update_bn((b[0] for b in batches if len(b[0]) > 1), model)  # a batch of one has no batch variance
    return len(_batchnorms(model))


def _dense_record(module: nn.Module, splits: DataSplits, compute: Compute, **fields) -> DenseCheckpoint:
    """The record of ``module`` (left on the CPU, in eval mode) with ``fields``, its BatchNorm statistics
    re-estimated where that raises its validation accuracy."""
    before = after = _accuracy_on(module, splits, "val", compute)
    if bn := bool(_batchnorms(module)):
        saved = {k: v.clone() for k, v in module.state_dict().items()}
        reestimate_batchnorm(module, splits, seed=fields["seed"])
        if (after := _accuracy_on(module, splits, "val", compute)) <= before:
            module.load_state_dict(saved)
    return DenseCheckpoint(**fields, val_accuracy=max(before, after),  # accuracy() left it in eval mode
                           test_accuracy=_accuracy_on(module, splits, "test", compute), bn_reestimated=after > before,
                           bn_val_accuracy_before=before if bn else None, bn_val_accuracy_after=after if bn else None)


def check_above_chance(rec: DenseCheckpoint, num_classes: int) -> None:
    """Refuse (ConfigError, one line with the fixes) a dense model below :data:`CHANCE_FACTOR` times chance."""
    chance = 1.0 / max(num_classes, 1)
    if rec.val_accuracy < CHANCE_FACTOR * chance:
        raise ConfigError(
            f"the dense model {rec.path} is at chance: val accuracy {rec.val_accuracy:.4f}, chance "
            f"{chance:.4f} for {num_classes} classes (a search needs {CHANCE_FACTOR * chance:.4f} or more); "
            "train longer with `autoprune train --epochs N` and pass the checkpoint it prints with --checkpoint, "
            "check the data and its labels, or pass a trained --checkpoint")


def _shift(x: torch.Tensor, max_px: int, gen: torch.Generator) -> torch.Tensor:
    dx, dy = (int(v) for v in torch.randint(-max_px, max_px + 1, (2,), generator=gen))
    return torch.roll(x, shifts=(dy, dx), dims=(2, 3))


def train_dense(model: nn.Module, data: DataSplits, config: TrainConfig | None = None,
                progress: bool = True, compute: Compute | None = None) -> nn.Module:
    """Train ``model`` in place on ``data``'s train split and return it.

    Args:
        model: The model, already on ``compute``'s device.
        data: The data splits.
        config: The recipe.
        progress: Show a progress bar.
        compute: Where to train (default: the CPU), with mixed precision where it says so.

    Raises:
        AutopruneError: If the loss becomes NaN or infinite.
    """
    from tqdm import tqdm

    config = config or TrainConfig()
    compute = compute or Compute()
    torch.manual_seed(config.seed)
    gen = torch.Generator().manual_seed(config.seed)  # the shifts are drawn on the CPU: the same on every device
    loader = data.loader("train", config.batch_size, seed=config.seed, pin_memory=compute.pin_memory)
    opt = torch.optim.SGD(model.parameters(), lr=config.lr, momentum=config.momentum,
                          weight_decay=config.weight_decay, nesterov=True)
    steps = config.epochs * len(loader)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=config.lr, total_steps=steps, pct_start=0.15)
    loss_fn = nn.CrossEntropyLoss(label_smoothing=0.05)
    scaler = compute.grad_scaler()
    bar = tqdm(total=steps, desc="train dense", unit="step", disable=not progress, leave=False)
    for _epoch in range(config.epochs):
        model.train()
        for batch in loader:
            x, y = compute.batch(batch)
            with compute.autocast():
                loss = loss_fn(model(_shift(x, 2, gen)), y)
            if not math.isfinite(loss.item()):
                raise AutopruneError("dense training diverged (loss is NaN/inf); lower --lr")
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
            sched.step()
            bar.update()
            bar.set_postfix(loss=f"{loss.item():.3f}")
    bar.close()
    return model.eval()


def ensure_dense(model_ref: str, data: DataSplits, seed: int = 0, *, checkpoint: str | None = None,
                 config: TrainConfig | None = None, retrain: bool = False, progress: bool = True,
                 compute: Compute | None = None, strict: bool = True) -> tuple[nn.Module, DenseCheckpoint]:
    """Return the dense model (on the CPU) and its checkpoint record, training it (and caching it with its
    BatchNorm statistics as :func:`_dense_record` keeps them) if needed; a cache entry: :func:`_load_cached`.

    Args:
        model_ref: Zoo name or user model reference.
        data: The data splits.
        seed: Training seed (part of the cache key).
        checkpoint: A user checkpoint to load instead of the cache (the file is never rewritten).
        config: Training recipe, part of the cache key where it differs from the defaults (:func:`recipe_tag`);
            ``None``: the one cached of any recipe (:func:`checkpoint_path`), else :class:`TrainConfig` with ``seed``.
        retrain: Train again even if a cached checkpoint exists.
        progress: Show a progress bar while training.
        compute: Where to train and evaluate (default: the CPU); the model comes back on the CPU.
        strict: Refuse a model at chance (:func:`check_above_chance`), as a search must; ``train`` passes
            ``False`` (it caches and reports the model, with a warning).

    Raises:
        ConfigError: The model does not fit the data, cannot be traced, or (``strict``) is at chance.
    """
    compute = compute or Compute()
    model = build_model(model_ref, num_classes=data.num_classes, in_channels=data.input_shape[0],
                        input_size=int(data.input_shape[-1]))
    check_model_fits(model, data)
    if not (cached := checkpoint is None and not retrain and _cached(checkpoint_path(model_ref, data, seed, config))):
        check_model_traces(model, model_ref, data)  # a cache entry was traced before it was trained
    if checkpoint is not None:
        load_checkpoint(model, checkpoint)
        rec = _dense_record(model, data, compute, path=str(checkpoint), model=model_ref, data=data.key, seed=seed,
                            train_seconds=None)
    elif cached:
        rec = _load_cached(model, data, checkpoint_path(model_ref, data, seed, config), compute)
    else:
        config = config or TrainConfig(seed=seed)
        path = checkpoint_path(model_ref, data, seed, config)
        ensure_writable(path.parent)  # a folder the checkpoint cannot go to is refused now, not after training
        t0 = time.perf_counter()
        compute.place(model)
        try:
            train_dense(model, data, config, progress, compute)
        finally:
            compute.to_cpu(model)
        seconds = time.perf_counter() - t0  # not rounded: a tiny model's training can take under 5 ms
        rec = _dense_record(model, data, compute, path=str(path), model=model_ref, data=data.key, seed=seed,
                            train_seconds=seconds, trained_on=compute.describe())
        _save(model, path, {**asdict(rec), "config": asdict(config)})  # with the statistics kept
    if strict:
        check_above_chance(rec, data.num_classes)
    return model, rec


def _save(model: nn.Module, path: Path, meta: dict) -> None:
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    atomic_write_bytes(path, buf.getvalue())
    write_json(path.with_suffix(".json"), meta)


def _load_cached(model: nn.Module, data: DataSplits, path: Path, compute: Compute) -> DenseCheckpoint:
    """Load the cache entry ``path`` into ``model`` and return its record (unknown or missing keys tolerated);
    one recorded at chance before BatchNorm statistics were re-estimated is checked now, and rewritten if kept."""
    load_checkpoint(model, path)
    model.eval()
    meta = json.loads(path.with_suffix(".json").read_text())
    known = {k: meta[k] for k in DenseCheckpoint.__dataclass_fields__ if k in meta}
    rec = DenseCheckpoint(**{**known, "train_seconds": None})
    if "bn_reestimated" in meta or rec.val_accuracy >= CHANCE_FACTOR / max(data.num_classes, 1):
        return rec
    rec = _dense_record(model, data, compute, path=rec.path, model=rec.model, data=rec.data, seed=rec.seed,
                        train_seconds=None, trained_on=rec.trained_on)
    if rec.bn_reestimated:
        with contextlib.suppress(OSError):  # a read-only cache: they are re-estimated on every load instead
            _save(model, path, {**meta, **{k: v for k, v in asdict(rec).items() if k != "train_seconds"}})
    return rec


def check_model_traces(model: nn.Module, model_ref: str, data: DataSplits) -> None:
    """Trace ``model`` (in eval mode) for its prunable groups, in seconds, before minutes of training.

    Raises:
        ConfigError: One line naming the model (a :class:`~autoprune.errors.PlanError` where Torch-Pruning
            cannot trace it), else naming the error's type and first line.
    """
    from autoprune.pruning import discover_groups

    model.eval()
    try:
        discover_groups(model, data.example_input(1))
    except AutopruneError as exc:  # PlanError: Torch-Pruning cannot trace it
        raise type(exc)(f"model {model_ref}: {exc}") from None
    except Exception as exc:  # noqa: BLE001 - any error of a user's model under tracing
        first = (str(exc).strip().splitlines() or [""])[0][:200]
        raise ConfigError(f"model {model_ref}: finding its prunable groups failed ({type(exc).__name__}: "
                          f"{first}) before any training; check that the model runs on its example input "
                          "with gradients on, or report the architecture") from None


def check_model_fits(model: nn.Module, data: DataSplits) -> None:
    """Run one batch through ``model``; a shape that does not fit, or a wrong class count, is one line.

    Raises:
        ConfigError: Naming the shape and the model's error.
    """
    model.eval()
    try:
        with torch.no_grad():
            out = model(data.example_input(2))
    except Exception as exc:  # noqa: BLE001 - any shape error from user models
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else exc.__class__.__name__
        raise ConfigError(
            f"input shape {tuple(data.input_shape)} does not fit the model: {first}; "
            "pick a model for this input size or resize the data"
        ) from None
    if out.ndim != 2 or out.shape[1] != data.num_classes:
        raise ConfigError(
            f"model outputs shape {tuple(out.shape)} but the data has {data.num_classes} classes; "
            "build the model with num_classes"
        )
    check_input_size(model, data.input_shape)


#: The input side at which :func:`check_input_size` measures a model's downsampling.
PROBE_SIZE_PX = 128


def check_input_size(model: nn.Module, input_shape: tuple[int, ...]) -> None:
    """Refuse an input smaller than the model's downsampling, which would train at chance.

    A convolution padded on every side runs on any input, down to 1x1 px; below its downsampling
    factor ``D`` (the product of its strides), the last layers see less than one pixel of the
    input, so training "works" and reaches chance accuracy. ``D`` is measured, not read from the
    layers: the model runs once on a :data:`PROBE_SIZE_PX` input, and ``D`` is that side over the
    smallest feature map any layer outputs (adaptive pools left out: they make a fixed size of any
    input). A model that runs at no other size than its own, or has no 4-D feature map, is not checked.

    Raises:
        ConfigError: Naming the input side, the model's downsampling and the ``--input-size`` to use.
    """
    if len(input_shape) != 3 or min(input_shape[1:]) >= PROBE_SIZE_PX:
        return
    sides: list[tuple[int, int]] = []

    def record(module: nn.Module, inputs, output) -> None:  # not on a pooled 1x1 map (an SE block's convs)
        pooled = bool(inputs) and isinstance(x := inputs[0], torch.Tensor) and x.ndim == 4 and x[0, 0].numel() == 1
        if isinstance(output, torch.Tensor) and output.ndim == 4 and not pooled:
            sides.append((int(output.shape[2]), int(output.shape[3])))

    fixed = (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)
    hooks = [m.register_forward_hook(record) for m in model.modules()
             if not list(m.children()) and not isinstance(m, fixed)]
    probe = torch.zeros(1, input_shape[0], PROBE_SIZE_PX, PROBE_SIZE_PX)
    try:
        with torch.no_grad():
            model.eval()(probe)
    except Exception:  # noqa: BLE001 - a model made for one input size only
        return
    finally:
        for h in hooks:
            h.remove()
    if not sides:
        return
    factor = max(1, PROBE_SIZE_PX // max(1, min(min(hw) for hw in sides)))
    h, w = input_shape[1:]
    if min(h, w) < factor:
        raise ConfigError(
            f"input {h}x{w} px is too small for the model: it downsamples {factor}x (a {PROBE_SIZE_PX} px input "
            f"ends as {PROBE_SIZE_PX // factor} px before its classifier), so its last layers would see less "
            f"than one pixel and training would reach chance accuracy; use --input-size {factor} or more"
        )
