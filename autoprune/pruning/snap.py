"""Fit a pruning plan to what each group can take: a pure function, no torch, no model.

The search proposes plans over every group and structure of its space;
:func:`snap_plan` turns one into the plan that will really be applied (structures a
group does not allow dropped, ratios clamped to what its check tested, grouped
convolutions' kept counts rounded to whole units), and that snapped plan is what a
trial records.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import replace
from typing import TYPE_CHECKING

from autoprune.errors import PlanError
from autoprune.pruning.plan import STRUCTURES, GroupPlan, PlanSettings, PruningPlan, kept_count, parse_nm

if TYPE_CHECKING:  # pragma: no cover
    from autoprune.pruning.groups import PrunableGroup


def snap_plan(plan: PruningPlan, groups: Iterable[PrunableGroup]) -> PruningPlan:
    """Fit ``plan`` to what each group can take (a pure function: no torch, no model).

    Per group plan:

    * a structure the group does not allow becomes ``keep``;
    * ``nm`` with a pattern the group cannot take (input channels not a multiple of
      ``M``) becomes ``unstructured`` at the pattern's sparsity where allowed, else ``keep``;
    * a ``channel`` or ``unstructured`` ratio above the group's ``max_ratio`` (the largest
      ratio its check tested) becomes that maximum;
    * a ``channel`` ratio of a group with a ``channel_multiple`` (grouped convolutions)
      becomes the exact ratio of the kept count :func:`kept_count` rounds it to, or
      ``keep`` when that count is the dense one.

    Entries :meth:`PruningPlan.validate` would reject for another reason (an unknown
    group, structure or a bad ratio) are left as they are, so that it still reports them.

    Args:
        plan: The plan to fit.
        groups: The model's groups (as checked by
            :func:`autoprune.pruning.check.check_groups`, or discovered).

    Returns:
        A new plan with the same settings; ``plan`` itself is unchanged.
    """
    by_name = {g.name: g for g in groups}
    out = []
    for name, gp in plan.groups:
        g = by_name.get(name)
        if g is not None and isinstance(gp, GroupPlan) and gp.structure in STRUCTURES:
            gp = _snap_group(gp, g, plan.settings)
        out.append((name, gp))
    return PruningPlan(tuple(out), plan.settings)


def _snap_group(gp: GroupPlan, g: PrunableGroup, settings: PlanSettings) -> GroupPlan:
    keep = replace(gp, structure="keep", ratio=0.0)
    if gp.structure == "keep":
        return gp
    if gp.structure == "nm":
        try:
            parse_nm(gp.nm)
        except PlanError:
            return gp  # validate() names the bad pattern
        if g.allows_nm(gp.nm):
            return gp
        if "unstructured" not in g.allowed:
            return keep
        gp = replace(gp, structure="unstructured", ratio=round(gp.effective_sparsity(), 6))
    if gp.structure not in g.allowed:
        return keep
    ratio = gp.ratio
    if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not 0.0 <= ratio < 1.0:
        return gp  # validate() names the bad ratio
    max_ratio = getattr(g, "max_ratio", None)
    if max_ratio is not None and ratio > max_ratio:
        ratio = float(max_ratio)
    multiple = getattr(g, "channel_multiple", 1)
    if gp.structure == "channel" and multiple > 1 and ratio > 0.0 and settings.allocation == "local":
        kept = kept_count(g.channels, ratio, settings.round_to, settings.min_channels, multiple)
        if kept >= g.channels:
            return keep
        ratio = round(1.0 - kept / g.channels, 6)
    return gp if ratio == gp.ratio else replace(gp, ratio=ratio)


__all__ = ["snap_plan"]
