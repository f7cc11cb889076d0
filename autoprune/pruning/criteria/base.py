"""The criterion base, its registry, and the Torch-Pruning adapter the magnitude criteria share."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable
from typing import ClassVar

import torch
import torch_pruning as tp
from torch import nn

from autoprune.compute import Compute
from autoprune.registry import Registry

_EPS = 1e-12


class Criterion(ABC):
    """An importance criterion for channels and weights.

    Attributes:
        name: The registry name.
        needs_data: Whether :meth:`prepare` needs calibration batches.
        compute: Where :meth:`prepare` computes gradients (the engine sets it; default the CPU).
            Statistics come back to the CPU, where the model and the surgery stay.
    """

    name: ClassVar[str] = ""
    needs_data: ClassVar[bool] = False

    def __init__(self, seed: int = 0) -> None:
        self.seed = seed
        self.dg: tp.DependencyGraph | None = None  # the engine sets the live graph before scoring
        self.compute = Compute()
        self._stats: dict[str, torch.Tensor] = {}

    def prepare(self, model: nn.Module, batches: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
        """Collect the statistics the criterion needs (no-op for data-free ones).

        Args:
            model: The (CPU) model being pruned; data-driven criteria work on
                :meth:`~autoprune.compute.Compute.working_copy` of it on :attr:`compute`'s device.
            batches: ``(x, y)`` calibration batches on the CPU.
        """
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
