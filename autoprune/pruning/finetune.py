"""Short fine-tuning of a pruned model, with masks enforced and optional distillation."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from autoprune.compute import Compute
from autoprune.errors import AutopruneError, ConfigError
from autoprune.pruning.apply import refresh_masked_weights
from autoprune.pruning.plan import REGULARIZATIONS, PlanSettings

LR_SCHEDULES = ("cosine", "one-cycle", "constant")


class FinetuneDivergedError(AutopruneError):
    """The fine-tuning loss became NaN or infinite (the trial should be marked failed)."""


@dataclass(frozen=True)
class FinetuneConfig:
    """How to fine-tune.

    Attributes:
        steps: Optimiser steps; if None, ``epochs`` decides.
        epochs: Passes over the loader (may be fractional) when ``steps`` is None.
        lr: Peak learning rate (SGD with Nesterov momentum).
        momentum: SGD momentum.
        weight_decay: L2 weight decay.
        lr_schedule: ``cosine`` (to 0), ``one-cycle`` or ``constant``.
        kd_weight: Weight of the distillation term in [0, 1] (needs a teacher).
        kd_temperature: Distillation temperature (> 0).
        regularization: ``none``, ``bn-l1`` (L1 on BN scales) or ``group-lasso``
            (sum of per-output-channel L2 norms of conv/linear weights).
        reg_strength: Weight of the regularisation term.
        max_grad_norm: Clip the gradient norm to this, or None.
        bn_recalibration_batches: After training, re-estimate BatchNorm running
            statistics as a plain average over this many training batches (0 to
            skip). Short fine-tunes otherwise leave running statistics dominated
            by the first, badly-scaled steps after pruning.
        seed: Seed for data order in dropout etc.
        checkpoints: Fractions of the steps in [0, 1) after which :func:`finetune`'s ``on_checkpoint``
            is called (0: before the first step); fractions that round to the same step are called once.
    """

    steps: int | None = None
    epochs: float | None = 1.0
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 5e-4
    lr_schedule: str = "cosine"
    kd_weight: float = 0.0
    kd_temperature: float = 4.0
    regularization: str = "none"
    reg_strength: float = 0.0
    max_grad_norm: float | None = 5.0
    bn_recalibration_batches: int = 8
    seed: int = 0
    checkpoints: tuple[float, ...] = ()

    @classmethod
    def from_settings(cls, settings: PlanSettings, **kwargs) -> FinetuneConfig:
        """A config that takes its regularisation from a plan's settings."""
        return cls(regularization=settings.regularization, reg_strength=settings.reg_strength, **kwargs)

    def validate(self) -> None:
        """Raises ConfigError naming the bad field."""
        if self.steps is None and (self.epochs is None or not self.epochs > 0):
            raise ConfigError("fine-tune budget missing: set steps (>0) or epochs (>0)")
        if self.steps is not None and (not isinstance(self.steps, int) or self.steps < 0):
            raise ConfigError(f"fine-tune steps must be an integer >= 0, got {self.steps!r}")
        if self.lr_schedule not in LR_SCHEDULES:
            raise ConfigError(f"unknown LR schedule {self.lr_schedule!r}; valid: {', '.join(LR_SCHEDULES)}")
        if self.regularization not in REGULARIZATIONS:
            raise ConfigError(
                f"unknown regularization {self.regularization!r}; valid: {', '.join(REGULARIZATIONS)}"
            )
        if not (0.0 <= self.kd_weight <= 1.0) or not self.kd_temperature > 0:
            raise ConfigError("kd_weight must be in [0, 1] and kd_temperature > 0")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise ConfigError(f"learning rate must be a finite number > 0, got {self.lr!r}")
        if not all(isinstance(f, (int, float)) and 0.0 <= f < 1.0 for f in self.checkpoints):
            raise ConfigError(f"fine-tune checkpoints must be fractions in [0, 1), got {self.checkpoints!r}")

    def checkpoint_steps(self, steps: int) -> dict[int, float]:
        """Step count → fraction of ``steps`` done there, for each checkpoint (those at the end dropped)."""
        out: dict[int, float] = {}
        for f in sorted(self.checkpoints):
            k = 0 if f == 0 else max(1, int(f * steps + 0.5))
            if k < steps:
                out.setdefault(k, round(k / steps, 4))
        return out


@dataclass(frozen=True)
class FinetuneResult:
    """A summary of one fine-tuning run.

    Attributes:
        steps: Optimiser steps taken.
        loss_first: Mean loss over the first up-to-10 steps.
        loss_last: Mean loss over the last up-to-10 steps.
        loss_curve: Mean loss over (up to) 20 equal chunks of the run.
        seconds: Wall time.
    """

    steps: int
    loss_first: float
    loss_last: float
    loss_curve: tuple[float, ...] = field(default_factory=tuple)
    seconds: float = 0.0

    def to_dict(self) -> dict:
        """A JSON-ready dict."""
        return asdict(self)


def regularization_loss(model: nn.Module, kind: str) -> torch.Tensor:
    """The ``bn-l1`` or ``group-lasso`` penalty of ``model`` (0 for ``none``)."""
    terms = []
    for m in model.modules():
        if kind == "bn-l1" and isinstance(m, nn.modules.batchnorm._BatchNorm) and m.weight is not None:
            terms.append(m.weight.abs().sum())
        elif kind == "group-lasso" and isinstance(m, (nn.modules.conv._ConvNd, nn.Linear)):
            terms.append(m.weight.flatten(1).norm(dim=1).sum())
    return torch.stack(terms).sum() if terms else torch.zeros(())


def recalibrate_bn(model: nn.Module, loader: Iterable, batches: int = 8, compute: Compute | None = None) -> int:
    """Re-estimate every BatchNorm's running statistics on ``batches`` batches.

    Statistics are reset and accumulated as a plain average (momentum None);
    weights do not change. The model is left in eval mode. It runs on ``compute``'s
    device (default the CPU), where the model already is, in full precision.

    Returns:
        The number of batches used.
    """
    compute = compute or Compute()
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not bns:
        return 0
    model.eval()
    saved = []
    for bn in bns:
        saved.append(bn.momentum)
        bn.reset_running_stats()
        bn.momentum = None
        bn.train()
    used = 0
    try:
        with torch.no_grad():
            for batch in loader:
                if used >= batches:
                    break
                model(compute.tensor(batch[0]))
                used += 1
    finally:
        for bn, momentum in zip(bns, saved):
            bn.momentum = momentum
        model.eval()
    return used


def _cycle(loader: Iterable):
    while True:
        empty = True
        for batch in loader:
            empty = False
            yield batch
        if empty:
            raise ConfigError("the fine-tuning loader yields no batches; give it training data")


def finetune(
    model: nn.Module,
    train_loader: Iterable,
    config: FinetuneConfig | None = None,
    teacher: nn.Module | None = None,
    compute: Compute | None = None,
    on_checkpoint: Callable[[float], None] | None = None,
) -> FinetuneResult:
    """Fine-tune ``model`` in place on ``(x, y)`` batches.

    Masks installed by :func:`~autoprune.pruning.prune_model` stay enforced: the
    forward pass uses ``weight_orig * weight_mask``, so pruned weights stay zero.

    Args:
        model: The model (or ``PrunedModel.module``), already on ``compute``'s device.
        train_loader: Training batches (on the CPU); cycled until the budget is spent.
        config: The budget and optimiser settings.
        teacher: The dense model for knowledge distillation (``kd_weight > 0``), on the same device.
        compute: Where the batches go (default: the CPU); its mixed precision covers the forward
            passes (the regularisation term is added in full precision).
        on_checkpoint: Called with the fraction of the steps done at each of ``config.checkpoints``
            (e.g. to evaluate and stop early: what it raises propagates); the model is put back in
            train mode afterwards.

    Returns:
        A :class:`FinetuneResult`.

    Raises:
        FinetuneDivergedError: If the loss becomes NaN or infinite.
        ConfigError: For a bad config (e.g. ``kd_weight > 0`` without a teacher).
    """
    config = config or FinetuneConfig()
    config.validate()
    if config.kd_weight > 0 and teacher is None:
        raise ConfigError("kd_weight > 0 needs a teacher model; pass teacher= or set kd_weight=0")
    steps = config.steps
    if steps is None:
        try:
            per_epoch = len(train_loader)  # type: ignore[arg-type]
        except TypeError:
            raise ConfigError("the loader has no length: give FinetuneConfig(steps=...)") from None
        steps = max(1, math.ceil(config.epochs * per_epoch))
    compute = compute or Compute()
    t0 = time.perf_counter()
    torch.manual_seed(config.seed)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.SGD(
        params, lr=config.lr, momentum=config.momentum, nesterov=True, weight_decay=config.weight_decay
    )
    if config.lr_schedule == "cosine":
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(steps, 1))
    elif config.lr_schedule == "one-cycle":
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=config.lr, total_steps=max(steps, 2))
    else:
        sched = None
    if teacher is not None:
        teacher.eval()
    model.train()
    losses: list[float] = []
    batches = _cycle(train_loader)
    scaler = compute.grad_scaler()
    marks = config.checkpoint_steps(steps) if on_checkpoint is not None else {}
    if 0 in marks:
        on_checkpoint(marks[0])
        model.train()
    for step in range(steps):
        x, y = compute.batch(next(batches))
        with compute.autocast():
            out = model(x)
            loss = F.cross_entropy(out, y)
            if config.kd_weight > 0:
                with torch.no_grad():
                    t_out = teacher(x)
                t = config.kd_temperature
                kd = F.kl_div(F.log_softmax(out / t, 1), F.softmax(t_out / t, 1), reduction="batchmean") * t * t
                loss = (1 - config.kd_weight) * loss + config.kd_weight * kd
        if config.regularization != "none" and config.reg_strength > 0:
            loss = loss + config.reg_strength * regularization_loss(model, config.regularization)
        if not torch.isfinite(loss):
            raise FinetuneDivergedError(
                f"fine-tuning diverged at step {step + 1}/{steps} (loss {loss.item()}); "
                "lower the learning rate or the pruning ratio"
            )
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        if config.max_grad_norm:
            scaler.unscale_(opt)
            torch.nn.utils.clip_grad_norm_(params, config.max_grad_norm)
        scaler.step(opt)
        scaler.update()
        if sched is not None:
            sched.step()
        losses.append(float(loss.detach()))
        if step + 1 in marks:
            on_checkpoint(marks[step + 1])
            model.train()
    if config.bn_recalibration_batches > 0:
        recalibrate_bn(model, train_loader, config.bn_recalibration_batches, compute)
    model.eval()
    refresh_masked_weights(model)  # keeps the model deep-copyable
    chunks = _chunk_means(losses, 20)
    head, tail = losses[:10], losses[-10:]
    return FinetuneResult(
        steps=steps,
        loss_first=sum(head) / len(head) if head else float("nan"),
        loss_last=sum(tail) / len(tail) if tail else float("nan"),
        loss_curve=tuple(chunks),
        seconds=time.perf_counter() - t0,
    )


def _chunk_means(values: list[float], n: int) -> list[float]:
    if not values:
        return []
    n = min(n, len(values))
    size = len(values) / n
    return [
        sum(values[int(i * size) : int((i + 1) * size)]) / len(values[int(i * size) : int((i + 1) * size)])
        for i in range(n)
    ]
