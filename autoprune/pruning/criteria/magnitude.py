"""Data-free criteria: weight magnitude (``l1``, ``l2``), ``fpgm``, ``bn-scale`` and a seeded ``random`` control."""

from __future__ import annotations

import torch
import torch_pruning as tp
from torch import nn

from autoprune.pruning.criteria.base import _EPS, Criterion, _normalise, _register, _TPCriterion


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
