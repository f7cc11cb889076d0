"""Data-driven criteria (``needs_data``): ``taylor``, ``snip``, ``obd`` and ``lrp``.

Their gradients are computed on the criterion's :class:`~autoprune.compute.Compute` (a working copy of
the model on its device, in full precision); the statistics come back to the CPU.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
import torch_pruning as tp
from torch import nn

from autoprune.compute import Compute
from autoprune.pruning.criteria.base import _EPS, Criterion, _register, _TPCriterion


# ----------------------------------------------------------- data-driven criteria
def _prunable(model: nn.Module):
    for name, m in model.named_modules():
        if isinstance(m, (nn.modules.conv._ConvNd, nn.Linear)) and isinstance(m.weight, torch.Tensor):
            yield name, m


def _batch_grads(model: nn.Module, batches, loss_of, compute: Compute):
    """Yield ``{module name: weight grad}`` for each batch (model in eval mode, on ``compute``'s device)."""
    was_training = model.training
    model.eval()
    try:
        for batch in batches:
            x, y = compute.batch(batch)
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
        stats, sum_grad = {}, {}
        with self.compute.working_copy(model) as work:
            mods = dict(_prunable(work))
            for grads in _batch_grads(work, batches, F.cross_entropy, self.compute):
                for n, g in grads.items():
                    w = mods[n].weight.detach()
                    stats[n] = stats.get(n, 0) + (w * g).pow(2)
                    sum_grad[n] = sum_grad.get(n, 0) + g
        self._stats, self._sum_grad = self.compute.cpu_tensors(stats), self.compute.cpu_tensors(sum_grad)
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


def _mean_over_batches(model: nn.Module, batches, stat, compute: Compute) -> dict[str, torch.Tensor]:
    """Mean over batches of ``stat(gradient)`` of the cross-entropy loss, per prunable weight."""
    total: dict[str, torch.Tensor] = {}
    n_b = 0
    for grads in _batch_grads(model, batches, F.cross_entropy, compute):
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
        with self.compute.working_copy(model) as work:
            mods = dict(_prunable(work))
            stats = {n: (mods[n].weight.detach() * g).abs()
                     for n, g in _mean_over_batches(work, batches, lambda g: g, self.compute).items()}
        self._stats = self.compute.cpu_tensors(stats)

    def weight_scores(self, name, module):
        return self._stats.get(name, torch.zeros_like(module.weight))


@_register
class OBD(Criterion):
    """Optimal Brain Damage saliency with a diagonal empirical-Fisher Hessian."""

    name = "obd"
    needs_data = True

    def prepare(self, model, batches):
        with self.compute.working_copy(model) as work:
            mods = dict(_prunable(work))
            fisher = _mean_over_batches(work, batches, lambda g: g.pow(2), self.compute)  # diagonal empirical Fisher
            stats = {n: 0.5 * f * mods[n].weight.detach().pow(2) for n, f in fisher.items()}
        self._stats = self.compute.cpu_tensors(stats)

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
        with self.compute.working_copy(model) as work:
            rel = self._relevance(work, batches)
        self._stats = self.compute.cpu_tensors(rel)

    def _relevance(self, model: nn.Module, batches) -> dict[str, torch.Tensor]:
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
            for grads in _batch_grads(model, batches, target_logit, self.compute):
                for n, g in grads.items():
                    rel[n] = rel.get(n, 0) + mods[n].weight.detach() * g
        finally:
            for h in handles:
                h.remove()
            for m, flag in inplace:
                m.inplace = flag
        return rel

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

