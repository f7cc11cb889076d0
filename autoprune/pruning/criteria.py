"""Importance criteria: which channels and weights matter least.

Every criterion is a :class:`Criterion` registered in :data:`CRITERIA`. It scores

* channels: :meth:`Criterion.channel_scores` takes a Torch-Pruning group over all
  current channels and returns one score per channel (higher = more important),
  normalised so that its mean is 1 (comparable across groups for global
  allocation);
* weights: :meth:`Criterion.weight_scores` returns a tensor shaped like a
  module's weight (used for ``unstructured`` and ``nm``).

Data-driven criteria (``needs_data = True``) first collect statistics in
:meth:`Criterion.prepare` from a few ``(x, y)`` batches; the model is run in eval
mode so BatchNorm statistics are not changed. Contract: ``prepare`` leaves the
model's parameters and buffers untouched and its gradients cleared.

Implemented:
    ``l1``, ``l2``: weight magnitude (Torch-Pruning ``GroupMagnitudeImportance``).
    ``taylor``: first-order Taylor (Molchanov et al., 2019): channels via
        ``GroupTaylorImportance`` on the summed gradient; weights ``Σ_b (w·g_b)²``.
    ``fpgm``: geometric-median distance of filters (``FPGMImportance``); weights
        ``|w|`` times their filter's normalised FPGM score.
    ``bn-scale``: network slimming, ``|γ|`` of the BatchNorm after a member
        (``BNScaleImportance``); weights ``|w| · |γ|`` of their output channel.
    ``obd``: Optimal-Brain-Damage saliency ``½ F w²`` with a diagonal empirical
        Fisher ``F = mean_b g_b²`` (batch gradients) as the Hessian approximation.
    ``snip``: connection sensitivity ``|w · ḡ|`` (Lee et al., 2019).
    ``lrp``: ε-rule layer-wise relevance (Yeom et al., "Pruning by explaining",
        2021), starting from the true-class logit. Implemented exactly by the
        gradient trick: the gradient arriving at each Conv/Linear/BatchNorm/
        AvgPool output ``z`` is multiplied by ``z / (z + ε·sign z)`` with
        ``ε = 0.25·std(z)``; then ``x ⊙ ∂/∂x`` is the ε-LRP relevance of every
        tensor and ``w ⊙ ∂/∂w`` that of every weight. ReLU and max-pool pass
        relevance as the gradient does; functional adds and concatenations use
        the ε = 0 (proportional) rule. Channel relevance is the summed relevance
        of the channel's weights; scores are ``|relevance|``.
    ``random``: a seeded control.

Channel scores of the criteria without a Torch-Pruning class (``obd``, ``snip``,
``lrp``) sum each member's per-weight scores over one output channel and average
over the group's members.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable
from typing import ClassVar

import torch
import torch.nn.functional as F
import torch_pruning as tp
from torch import nn

from autoprune.registry import Registry

_EPS = 1e-12


class Criterion(ABC):
    """An importance criterion for channels and weights.

    Attributes:
        name: The registry name.
        needs_data: Whether :meth:`prepare` needs calibration batches.
    """

    name: ClassVar[str] = ""
    needs_data: ClassVar[bool] = False

    def __init__(self, seed: int = 0) -> None:
        self.seed = seed
        self.dg: tp.DependencyGraph | None = None  # the engine sets the live graph before scoring
        self._stats: dict[str, torch.Tensor] = {}

    def prepare(self, model: nn.Module, batches: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
        """Collect the statistics the criterion needs (no-op for data-free ones)."""
        return None

    @abstractmethod
    def weight_scores(self, name: str, module: nn.Module) -> torch.Tensor:
        """Per-weight importance of ``module.weight`` (same shape, >= 0)."""

    def __call__(self, group) -> torch.Tensor:
        """Per-channel importance of a Torch-Pruning group over all current channels of its root.

        The members are the group's conv/linear layers whose output channels it prunes.
        """
        dg = group._DG
        root = group[0].dep.target.module
        members = [
            (dg._module2name.get(dep.target.module, str(i)), dep.target.module)
            for i, (dep, _) in enumerate(group)
            if isinstance(dep.target.module, (nn.modules.conv._ConvNd, nn.Linear))
            and dg.is_out_channel_pruning_fn(dep.handler)
        ]
        return self.channel_scores(group, members, int(dg.get_out_channels(root)))

    def channel_scores(self, group, members: Iterable[tuple[str, nn.Module]], channels: int) -> torch.Tensor:
        """Per-channel importance of a Torch-Pruning ``group`` (length ``channels``, mean 1).

        Args:
            group: A Torch-Pruning group over all current channels of the root.
            members: ``(name, module)`` of the group's output-channel members.
            channels: The group's current channel count.
        """
        return _normalise(self._reduce_members(members, channels))

    def _reduce_members(self, members: Iterable[tuple[str, nn.Module]], channels: int) -> torch.Tensor:
        total = torch.zeros(channels)
        count = 0
        for name, module in members:
            w = module.weight
            if w.shape[0] != channels:
                continue
            s = self.weight_scores(name, module).detach().float().flatten(1).sum(1).cpu()
            total += s / (s.mean() + _EPS)
            count += 1
        return total / max(count, 1)


def _normalise(scores: torch.Tensor | None) -> torch.Tensor | None:
    if scores is None:
        return None
    scores = scores.detach().float().cpu().clamp_min(0)
    return scores / (scores.mean() + _EPS)


CRITERIA: Registry[type[Criterion]] = Registry("criterion")


def get_criterion(name: str, seed: int = 0) -> Criterion:
    """Instantiate the criterion called ``name``.

    Raises:
        UnknownNameError: Listing the valid names.
    """
    return CRITERIA.get(name)(seed=seed)


def _register(cls: type[Criterion]) -> type[Criterion]:
    CRITERIA.register(cls.name, cls)
    return cls


class _TPCriterion(Criterion):
    """A criterion whose channel scores come from a Torch-Pruning importance."""

    def _tp_importance(self):  # pragma: no cover - abstract in practice
        raise NotImplementedError

    def channel_scores(self, group, members, channels):
        members = list(members)
        try:
            with torch.no_grad():
                scores = self._tp_importance()(group)
        except (RuntimeError, IndexError, ValueError, AttributeError):
            # Torch-Pruning's importances trip over some layers (FPGM on a grouped conv's
            # inputs); the members' own weights still rank the channels.
            scores = None
        if scores is None or scores.numel() != channels or not torch.isfinite(scores).all():
            return _normalise(self._reduce_members(members, channels))
        return _normalise(scores)


@_register
class L1(_TPCriterion):
    """Weight magnitude |w| (L1)."""

    name = "l1"

    def _tp_importance(self):
        return tp.importance.GroupMagnitudeImportance(p=1)

    def weight_scores(self, name, module):
        return module.weight.detach().abs()


@_register
class L2(_TPCriterion):
    """Squared weight magnitude w² (L2)."""

    name = "l2"

    def _tp_importance(self):
        return tp.importance.GroupMagnitudeImportance(p=2)

    def weight_scores(self, name, module):
        return module.weight.detach().pow(2)


@_register
class FPGM(_TPCriterion):
    """Filter pruning via geometric median."""

    name = "fpgm"

    def _tp_importance(self):
        return tp.importance.FPGMImportance()

    def weight_scores(self, name, module):
        w = module.weight.detach()
        flat = w.flatten(1)
        dist = torch.cdist(flat, flat).sum(1)  # distance of each filter to all others
        dist = dist / (dist.mean() + _EPS)
        return w.abs() * dist.view(-1, *([1] * (w.dim() - 1)))


def following_bn(dg: tp.DependencyGraph, module: nn.Module) -> nn.Module | None:
    """The BatchNorm that directly consumes ``module``'s output, if any."""
    node = dg.module2node.get(module)
    for nxt in node.outputs if node is not None else ():
        if isinstance(nxt.module, nn.modules.batchnorm._BatchNorm):
            return nxt.module
    return None


@_register
class BNScale(_TPCriterion):
    """Network slimming: |γ| of the BatchNorm after a layer."""

    name = "bn-scale"

    def _tp_importance(self):
        return tp.importance.BNScaleImportance()

    def weight_scores(self, name, module):
        w = module.weight.detach()
        bn = following_bn(self.dg, module) if self.dg is not None else None
        if bn is None or getattr(bn, "weight", None) is None or bn.weight.shape[0] != w.shape[0]:
            return w.abs()
        gamma = bn.weight.detach().abs()
        return w.abs() * gamma.view(-1, *([1] * (w.dim() - 1)))


@_register
class Random(Criterion):
    """Uniform random scores (a control)."""

    name = "random"

    def _gen(self, salt: str) -> torch.Generator:
        return torch.Generator().manual_seed(self.seed * 1_000_003 + sum(map(ord, salt)))

    def weight_scores(self, name, module):
        return torch.rand(module.weight.shape, generator=self._gen(name))

    def channel_scores(self, group, members, channels):
        return _normalise(torch.rand(channels, generator=self._gen(str(channels))) + 0.5)


# ----------------------------------------------------------- data-driven criteria
def _prunable(model: nn.Module):
    for name, m in model.named_modules():
        if isinstance(m, (nn.modules.conv._ConvNd, nn.Linear)) and isinstance(m.weight, torch.Tensor):
            yield name, m


def _batch_grads(model: nn.Module, batches, loss_of):
    """Yield ``{module name: weight grad}`` for each batch (model in eval mode)."""
    was_training = model.training
    model.eval()
    try:
        for x, y in batches:
            model.zero_grad(set_to_none=True)
            with torch.enable_grad():
                loss_of(model(x), y).backward()
            yield {
                n: m.weight.grad.detach().clone() for n, m in _prunable(model) if m.weight.grad is not None
            }
    finally:
        model.zero_grad(set_to_none=True)
        model.train(was_training)


@_register
class Taylor(_TPCriterion):
    """First-order Taylor expansion of the loss."""

    name = "taylor"
    needs_data = True

    def prepare(self, model, batches):
        self._stats, self._sum_grad = {}, {}
        for grads in _batch_grads(model, batches, F.cross_entropy):
            for n, g in grads.items():
                w = dict(_prunable(model))[n].weight.detach()
                self._stats[n] = self._stats.get(n, 0) + (w * g).pow(2)
                self._sum_grad[n] = self._sum_grad.get(n, 0) + g
        self._model = model

    def _tp_importance(self):
        return tp.importance.GroupTaylorImportance()

    def channel_scores(self, group, members, channels):
        mods = dict(_prunable(self._model))
        # Torch-Pruning reads .grad: restore the summed gradient while scoring.
        for n, g in self._sum_grad.items():
            mods[n].weight.grad = g.clone()
        # Parameters without a summed gradient (norm layers, attention) count as zero.
        for p in self._model.parameters():
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        try:
            return super().channel_scores(group, members, channels)
        finally:
            self._model.zero_grad(set_to_none=True)

    def weight_scores(self, name, module):
        return self._stats.get(name, torch.zeros_like(module.weight)).to(module.weight.dtype)


def _mean_over_batches(model: nn.Module, batches, stat) -> dict[str, torch.Tensor]:
    """Mean over batches of ``stat(gradient)`` of the cross-entropy loss, per prunable weight."""
    total: dict[str, torch.Tensor] = {}
    n_b = 0
    for grads in _batch_grads(model, batches, F.cross_entropy):
        n_b += 1
        for n, g in grads.items():
            total[n] = total.get(n, 0) + stat(g)
    return {n: t / max(n_b, 1) for n, t in total.items()}


@_register
class SNIP(Criterion):
    """Connection sensitivity |w · ḡ|."""

    name = "snip"
    needs_data = True

    def prepare(self, model, batches):
        mods = dict(_prunable(model))
        self._stats = {n: (mods[n].weight.detach() * g).abs()
                       for n, g in _mean_over_batches(model, batches, lambda g: g).items()}

    def weight_scores(self, name, module):
        return self._stats.get(name, torch.zeros_like(module.weight))


@_register
class OBD(Criterion):
    """Optimal Brain Damage saliency with a diagonal empirical-Fisher Hessian."""

    name = "obd"
    needs_data = True

    def prepare(self, model, batches):
        mods = dict(_prunable(model))
        fisher = _mean_over_batches(model, batches, lambda g: g.pow(2))  # diagonal empirical Fisher
        self._stats = {n: 0.5 * f * mods[n].weight.detach().pow(2) for n, f in fisher.items()}

    def weight_scores(self, name, module):
        return self._stats.get(name, torch.zeros_like(module.weight))


_LRP_LINEAR = (
    nn.modules.conv._ConvNd,
    nn.Linear,
    nn.modules.batchnorm._BatchNorm,
    nn.AvgPool1d,
    nn.AvgPool2d,
    nn.AvgPool3d,
    nn.AdaptiveAvgPool1d,
    nn.AdaptiveAvgPool2d,
    nn.AdaptiveAvgPool3d,
)


def _eps_hook(module, inputs, output):
    if not isinstance(output, torch.Tensor) or not output.requires_grad:
        return
    z = output.detach()
    eps = 0.25 * z.std() if z.numel() > 1 else z.new_tensor(0.0)
    denom = z + torch.where(z >= 0, eps, -eps)
    scale = torch.where(denom == 0, torch.zeros_like(z), z / denom.where(denom != 0, torch.ones_like(z)))
    output.register_hook(lambda g: g * scale)


@_register
class LRP(Criterion):
    """ε-rule layer-wise relevance propagation (see the module docstring)."""

    name = "lrp"
    needs_data = True

    def prepare(self, model, batches):
        inplace = [
            (m, m.inplace) for m in model.modules() if hasattr(m, "inplace") and isinstance(m.inplace, bool)
        ]
        for m, _ in inplace:
            m.inplace = False  # relevance hooks need the pre-activation tensors intact
        handles = [m.register_forward_hook(_eps_hook) for m in model.modules() if isinstance(m, _LRP_LINEAR)]
        rel: dict[str, torch.Tensor] = {}

        def target_logit(out, y):
            return out.gather(1, y.view(-1, 1)).sum()

        try:
            mods = dict(_prunable(model))
            for grads in _batch_grads(model, batches, target_logit):
                for n, g in grads.items():
                    rel[n] = rel.get(n, 0) + mods[n].weight.detach() * g
        finally:
            for h in handles:
                h.remove()
            for m, flag in inplace:
                m.inplace = flag
        self._stats = rel

    def weight_scores(self, name, module):
        return self._stats.get(name, torch.zeros_like(module.weight)).abs()

    def _reduce_members(self, members, channels):
        # Channel relevance is the signed sum of its weights' relevance, then |.|.
        total, count = torch.zeros(channels), 0
        for name, module in members:
            if module.weight.shape[0] != channels or name not in self._stats:
                continue
            s = self._stats[name].flatten(1).sum(1).abs().cpu()
            total += s / (s.mean() + _EPS)
            count += 1
        return total / max(count, 1)


__all__ = ["CRITERIA", "Criterion", "get_criterion"]
