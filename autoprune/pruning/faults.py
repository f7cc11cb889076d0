"""Structural faults of a pruned model: what no plan may leave, checked the same way everywhere.

:func:`~autoprune.pruning.check_groups` refuses a test plan with one, and the zoo's tests and survey
(``tests/pruning/test_zoo.py``, ``benchmarks/zoo_survey.py``) look for them in every random plan.
"""

from __future__ import annotations

from torch import nn


def depthwise_names(model: nn.Module) -> frozenset[str]:
    """The names of ``model``'s depthwise convs (one group per channel, as many outputs as inputs)."""
    return frozenset(n for n, m in model.named_modules()
                     if isinstance(m, nn.modules.conv._ConvNd) and m.groups > 1
                     and m.groups == m.in_channels == m.out_channels)


def layer_faults(module: nn.Module, depthwise: frozenset[str] | set[str] = frozenset()) -> list[str]:
    """Every structural fault of ``module``, one line each, in module order.

    Args:
        module: A pruned model (after ``make_permanent``).
        depthwise: The names of the dense model's depthwise convs (:func:`depthwise_names`); each must still
            be depthwise.

    Returns:
        ``"<layer>: <fault>"`` for a zero-width conv or linear weight, a grouped conv whose channels do not
        split into its groups, and a depthwise conv that no longer is; empty when there is none.
    """
    faults = []
    for name, m in module.named_modules():
        is_conv = isinstance(m, nn.modules.conv._ConvNd)
        w = getattr(m, "weight", None)
        if (is_conv or isinstance(m, nn.Linear)) and w is not None and 0 in w.shape:
            faults.append(f"{name}: zero-width weight {tuple(w.shape)}")
        if is_conv and (m.in_channels % m.groups or m.out_channels % m.groups):
            faults.append(f"{name}: {m.in_channels}->{m.out_channels} channels, not divisible by groups={m.groups}")
        if name in depthwise and not (is_conv and m.groups == m.in_channels == m.out_channels):
            faults.append(f"{name}: no longer depthwise ({getattr(m, 'in_channels', '?')}->"
                          f"{getattr(m, 'out_channels', '?')}, groups={getattr(m, 'groups', '?')})")
    return faults


__all__ = ["depthwise_names", "layer_faults"]
