"""Apply a :class:`~autoprune.pruning.plan.PruningPlan` to a model.

Channel pruning physically removes channels through Torch-Pruning's dependency
graph, so the result is a smaller dense model. Unstructured and N:M pruning put
zeros into the weights of exactly the group's members, kept by
``torch.nn.utils.prune`` masks (``weight = weight_orig * weight_mask``) that stay
enforced while fine-tuning; :meth:`PrunedModel.make_permanent` bakes them in.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.nn.utils import prune as torch_prune

from autoprune.compute import Compute
from autoprune.errors import PlanError
from autoprune.pruning.criteria import Criterion, get_criterion
from autoprune.pruning.faults import emptying_line, partial_layers, spare_units
from autoprune.pruning.groups import GroupIndex, PrunableGroup, build_index
from autoprune.pruning.plan import PruningPlan, kept_count, parse_nm
from autoprune.pruning.widths import stored_widths, sync_widths

NM_ATTR = "_autoprune_nm"  # module attribute: member name -> "N:M" of its mask


@dataclass
class PrunedModel:
    """The result of :func:`prune_model`.

    Attributes:
        module: The pruned model (physically smaller for ``channel`` groups; with
            active masks for ``unstructured``/``nm`` members until
            :meth:`make_permanent`).
        plan: The plan that was applied.
        groups: The dense model's groups.
        dense_channels: Group name → channel count before pruning.
        kept_channels: Group name → channel count after pruning.
        masks: Member name → boolean mask of its weight (True = kept).
        nm_members: Member name → its ``N:M`` pattern.
        steps_run: Number of prune steps executed (``iterative_steps`` or 1).
    """

    module: nn.Module
    plan: PruningPlan
    groups: tuple[PrunableGroup, ...]
    dense_channels: dict[str, int]
    kept_channels: dict[str, int]
    masks: dict[str, torch.Tensor] = field(default_factory=dict)
    nm_members: dict[str, str] = field(default_factory=dict)
    steps_run: int = 1

    def make_permanent(self) -> nn.Module:
        """Bake the masks into the weights (in place; ``masks`` still records the zeros) and return the module."""
        _remove_masks(self.module)
        return self.module

    def weight_sparsity(self) -> float:
        """Fraction of zeros over the masked members' weights (0.0 without masks)."""
        total, kept = sum(m.numel() for m in self.masks.values()), sum(int(m.sum()) for m in self.masks.values())
        return 0.0 if total == 0 else 1.0 - kept / total


def _masked_modules(model: nn.Module) -> Iterable[tuple[str, nn.Module]]:
    for name, m in model.named_modules():
        if hasattr(m, "weight_mask") and hasattr(m, "weight_orig"):
            yield name, m


def refresh_masked_weights(model: nn.Module) -> None:
    """Recompute every masked ``weight`` (= ``weight_orig * weight_mask``) without autograd history.

    ``torch.nn.utils.prune`` leaves the last computed ``weight`` as a non-leaf tensor after a forward pass with
    gradients, which ``copy.deepcopy`` refuses. The value is unchanged; the next forward recomputes it anyway.
    """
    with torch.no_grad():
        for _, m in _masked_modules(model):
            m.weight = m.weight_orig * m.weight_mask


def safe_deepcopy(model: nn.Module) -> nn.Module:
    """``copy.deepcopy`` that also works on models with active pruning masks."""
    refresh_masked_weights(model)
    return copy.deepcopy(model)


def _remove_masks(model: nn.Module) -> None:
    for _, m in list(_masked_modules(model)):
        torch_prune.remove(m, "weight")


def _nm_mask(scores: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """Keep the top-``n`` of every ``m`` consecutive weights along the input-channel dim.

    Where channel pruning upstream left the input channels short of a multiple of ``m``, the dimension is padded
    (as N:M kernels pad it) and the last block keeps its top ``n`` real weights.
    """
    w = scores.movedim(1, -1)  # [O, *k, I]
    width = w.shape[-1]
    pad = -width % m
    if pad:
        w = torch.nn.functional.pad(w, (0, pad), value=-math.inf)
    blocks = w.reshape(-1, m)
    keep = torch.zeros_like(blocks, dtype=torch.bool)
    keep.scatter_(1, blocks.topk(n, dim=1).indices, True)
    keep = keep.reshape(w.shape)[..., :width]
    return keep.movedim(-1, 1)


def _topk_mask(scores: torch.Tensor, n_keep: int) -> torch.Tensor:
    flat = scores.flatten()
    mask = torch.zeros_like(flat, dtype=torch.bool)
    if n_keep > 0:
        mask[flat.topk(min(n_keep, flat.numel())).indices] = True
    mask = mask.view_as(scores)
    # No output channel is ever emptied entirely: keep its best weight.
    rows = scores.flatten(1)
    dead = ~mask.flatten(1).any(1)
    if dead.any():
        best = rows.argmax(1)
        m2 = mask.flatten(1).clone()
        m2[dead, best[dead]] = True
        mask = m2.view_as(scores)
    return mask


class _Engine:
    """One pruning run on a private copy of the model."""

    def __init__(self, model, plan, example_input, calib_loader, compute: Compute) -> None:
        self.model = model
        self.compute = compute
        self.plan = plan
        self.settings = plan.settings
        self.index: GroupIndex = build_index(model, example_input)
        plan.validate(self.index.groups, needs_data_ok=calib_loader is not None)
        self.gplans = {g.name: plan.get(g.name) for g in self.index.groups}
        self.dense = {g.name: g.channels for g in self.index.groups}
        self.batches = self._take_batches(calib_loader)
        self.nm_members: dict[str, str] = {}
        self.widths = stored_widths(model)  # e.g. torchvision ViT's hidden_dim, kept in step with conv_proj

    def _take_batches(self, loader):
        needs = any(
            gp.structure != "keep" and get_criterion(gp.criterion).needs_data for gp in self.gplans.values()
        )
        if not needs or loader is None:
            return []
        out = []
        for i, batch in enumerate(loader):
            if i >= self.settings.calib_batches:
                break
            out.append((batch[0], batch[1]))
        return out

    def _criteria(self, structure: str, skip: Iterable[str] = ()) -> dict[str, Criterion]:
        """One prepared criterion per name used by groups of ``structure`` (but the groups in ``skip``)."""
        skip = set(skip)
        names = sorted({gp.criterion for name, gp in self.gplans.items() if gp.structure == structure
                        and name not in skip})
        crits = {}
        for name in names:
            c = get_criterion(name, seed=self.settings.seed)
            c.dg = self.index.dg
            c.compute = self.compute
            if c.needs_data:
                c.prepare(self.model, self.batches)
            crits[name] = c
        return crits

    def _members(self, group: PrunableGroup):
        return [(n, self.index.modules[n]) for n in group.members]

    # ------------------------------------------------------------- channels
    def channel_step(self, frac: float, cache: dict | None = None) -> None:
        """Prune channels toward ``frac`` of each group's target. ``cache`` (the first step of a run only, on the
        dense model) holds the channel scores by ``(criterion, group, seed, calib batches)``: they depend on the
        dense model, the criterion and the calibration batches alone, so the same pipeline's next plan reuses
        them instead of computing a data-driven criterion's gradients again."""
        groups = [g for g in self.index.groups if self.gplans[g.name].structure == "channel"]
        if not groups:
            return
        s = self.settings

        def key(g):
            return (self.gplans[g.name].criterion, g.name, s.seed, s.calib_batches)

        cached = {g.name for g in groups if cache is not None and key(g) in cache}
        crits = self._criteria("channel", skip=cached)
        scores, current, units = {}, {}, {}
        for g in groups:
            current[g.name] = self.index.current_channels(g.name)
            units[g.name] = self.index.units(g.name)
            if isinstance(units[g.name], str):
                raise PlanError(f"group {g.name!r} cannot be channel-pruned: {units[g.name]}")
            if g.name in cached:
                scores[g.name] = cache[key(g)]
                continue
            crit = crits[self.gplans[g.name].criterion]
            tp_group = self.index.tp_group(g.name)
            scores[g.name] = crit.channel_scores(tp_group, self._members(g), current[g.name])
            if cache is not None:
                cache[key(g)] = scores[g.name].detach().clone()
        if s.allocation == "global":
            targets = self._global_channel_targets(groups, scores, current, s.global_ratio * frac)
        else:
            targets = {
                g.name: kept_count(
                    self.dense[g.name], self.gplans[g.name].ratio * frac, s.round_to, s.min_channels,
                    g.channel_multiple,
                )
                for g in groups
            }
        for g in groups:
            n_remove = current[g.name] - targets[g.name]
            if n_remove <= 0:
                continue
            group_units = units[g.name]
            # Whole units go: a grouped layer keeps the same channels in each of its groups.
            unit_scores = torch.stack([scores[g.name][u].mean() for u in group_units])
            order = torch.argsort(unit_scores, stable=True).tolist()
            partial = partial_layers(self.index.dg, self.index.tp_group(g.name))
            idxs = sorted(i for k in spare_units(order, group_units, n_remove // len(group_units[0]), partial)
                          for i in group_units[k])
            if not idxs:
                continue
            tp_group = self.index.tp_group(g.name, idxs)
            if not self.index.dg.check_pruning_group(tp_group):
                raise PlanError(emptying_line(
                    lambda ix, n=g.name: self.index.dg.check_pruning_group(self.index.tp_group(n, ix)), g.name,
                    order[: n_remove // len(group_units[0])], group_units, self.dense[g.name], current[g.name]))
            tp_group.prune()
            sync_widths(self.widths)

    def _global_channel_targets(self, groups, scores, current, ratio):
        s = self.settings
        total_dense = sum(self.dense[g.name] for g in groups)
        target_total = total_dense - math.floor(ratio * total_dense + 0.5)
        n_remove = sum(current.values()) - target_total
        removed = {g.name: 0 for g in groups}
        if n_remove > 0:
            pool = torch.cat([scores[g.name] for g in groups])
            owner = [g.name for g in groups for _ in range(current[g.name])]
            for i in torch.argsort(pool, stable=True).tolist():
                if n_remove <= 0:
                    break
                name = owner[i]
                if current[name] - removed[name] - 1 < max(1, s.min_channels):
                    continue
                removed[name] += 1
                n_remove -= 1
        targets = {}
        for g in groups:
            keep = current[g.name] - removed[g.name]
            dense_ratio = 1.0 - keep / self.dense[g.name]
            targets[g.name] = kept_count(
                self.dense[g.name], dense_ratio, s.round_to, s.min_channels, g.channel_multiple
            )
        return targets

    # --------------------------------------------------------------- weights
    def weight_step(self, frac: float, last: bool) -> None:
        s = self.settings
        unst = [g for g in self.index.groups if self.gplans[g.name].structure == "unstructured"]
        nm = [g for g in self.index.groups if self.gplans[g.name].structure == "nm"] if last else []
        masks: dict[str, torch.Tensor] = {}
        if unst:
            crits = self._criteria("unstructured")
            entries = []  # (member name, module, scores)
            for g in unst:
                crit = crits[self.gplans[g.name].criterion]
                for name, mod in self._members(g):
                    sc = crit.weight_scores(name, mod).detach().float().clone()
                    sc[mod.weight.detach() == 0] = -math.inf  # pruned weights stay pruned
                    entries.append((g.name, name, mod, sc))
            if s.allocation == "global":
                numel = sum(e[3].numel() for e in entries)
                n_keep_total = numel - math.floor(s.global_ratio * frac * numel + 0.5)
                pool = torch.cat([e[3].flatten() for e in entries])
                if n_keep_total < numel:
                    thresh = pool.kthvalue(numel - n_keep_total).values
                    for _, name, _, sc in entries:
                        masks[name] = _topk_mask(sc, int((sc > thresh).sum()))
                else:
                    for _, name, _, sc in entries:
                        masks[name] = _topk_mask(sc, int(torch.isfinite(sc).sum()))
            else:
                for gname, name, _, sc in entries:
                    ratio = self.gplans[gname].ratio * frac
                    n_keep = sc.numel() - math.floor(ratio * sc.numel() + 0.5)
                    masks[name] = _topk_mask(sc, n_keep)
        if nm:
            crits = self._criteria("nm")
            for g in nm:
                gp = self.gplans[g.name]
                n, m = parse_nm(gp.nm)
                for name, mod in self._members(g):
                    sc = crits[gp.criterion].weight_scores(name, mod).detach().float()
                    masks[name] = _nm_mask(sc, n, m)
                    self.nm_members[name] = gp.nm
        for name, mask in masks.items():
            torch_prune.custom_from_mask(self.index.modules[name], "weight", mask.to(torch.float32))


def channel_importance(
    model: nn.Module,
    example_input: torch.Tensor,
    criterion: str,
    group_names: Iterable[str],
    calib_loader: Iterable | None = None,
    compute: Compute | None = None,
    seed: int = 0,
    calib_batches: int = 4,
) -> dict[str, torch.Tensor]:
    """Per-channel importance of the dense ``model``'s groups under ``criterion``.

    The scores are the ones a one-shot :func:`prune_model` ranks channels by (same criterion
    code, same calibration batches), so the lowest-scoring channels are the ones it removes.

    Args:
        model: The dense model; never modified.
        example_input: A tensor of the input shape (for tracing).
        criterion: A criterion name (:data:`~autoprune.pruning.criteria.CRITERIA`).
        group_names: Groups to score; each must allow ``channel``.
        calib_loader: ``(x, y)`` batches for data-driven criteria.
        compute: Where data-driven criteria compute their gradients (default: the CPU).
        seed: Seed for the ``random`` criterion.
        calib_batches: Batches drawn from ``calib_loader``.

    Returns:
        Group name → float tensor of one score per output channel (higher = more important).

    Raises:
        PlanError: An unknown group or criterion, a group that cannot be channel-pruned, or a
            data-driven criterion without ``calib_loader``.
    """
    from autoprune.pruning.plan import GroupPlan, PlanSettings

    work = safe_deepcopy(model)
    work.eval()
    plan = PruningPlan(tuple((n, GroupPlan("channel", 0.0, criterion)) for n in group_names),
                       PlanSettings(seed=seed, calib_batches=calib_batches))
    engine = _Engine(work, plan, example_input, calib_loader, compute or Compute())
    crit = engine._criteria("channel").get(criterion)
    out = {}
    for g in engine.index.groups:
        if crit is not None and engine.gplans[g.name].structure == "channel":
            sc = crit.channel_scores(engine.index.tp_group(g.name), engine._members(g),
                                     engine.index.current_channels(g.name))
            out[g.name] = sc.detach().float().cpu()
    return out


def prune_model(
    model: nn.Module,
    plan: PruningPlan,
    example_input: torch.Tensor,
    calib_loader: Iterable | None = None,
    finetune_fn: Callable[[nn.Module, int], None] | None = None,
    compute: Compute | None = None,
    score_cache: dict | None = None,
) -> PrunedModel:
    """Apply ``plan`` to a deep copy of ``model``.

    Args:
        model: The dense model; never modified.
        plan: The plan; validated against the model's groups before any work.
        example_input: A tensor of the input shape (for tracing).
        calib_loader: ``(x, y)`` batches for data-driven criteria
            (``settings.calib_batches`` of them are used).
        finetune_fn: For the ``iterative`` schedule, called as
            ``finetune_fn(model, step)`` after each prune step but the last
            (``step`` counts from 1); the final fine-tune is the caller's. The model it gets
            is on the CPU and must be there again when it returns.
        compute: Where data-driven criteria compute their gradients (default: the CPU). The
            surgery itself, and the returned model, stay on the CPU.
        score_cache: A dict kept by the caller across plans of the same dense ``model`` and calibration
            batches: the first step's channel scores are read from and written to it (one criterion's
            gradients computed once, not once per plan). Pass a new dict for another model or batches.

    Returns:
        A :class:`PrunedModel`.

    Raises:
        PlanError: If the plan does not fit the model (before anything is pruned).
    """
    work = safe_deepcopy(model)
    work.eval()
    engine = _Engine(work, plan, example_input, calib_loader, compute or Compute())
    s = plan.settings
    steps = s.iterative_steps if s.schedule == "iterative" else 1
    for step in range(1, steps + 1):
        frac = step / steps
        _remove_masks(work)  # bake: zeros from earlier steps stay zeros and are sliced with channels
        engine.channel_step(frac, cache=score_cache if step == 1 else None)
        engine.weight_step(frac, last=step == steps)
        if step < steps and finetune_fn is not None:
            finetune_fn(work, step)
    refresh_masked_weights(work)
    masks = {n: m.weight_mask.detach().bool().clone() for n, m in _masked_modules(work)}
    # Travels with the module (and its deep copies) so evaluate() can size N:M weights after
    # make_permanent().
    setattr(work, NM_ATTR, dict(engine.nm_members))
    kept = {g.name: engine.index.current_channels(g.name) for g in engine.index.groups}
    return PrunedModel(
        module=work,
        plan=plan,
        groups=tuple(engine.index.groups),
        dense_channels=dict(engine.dense),
        kept_channels=kept,
        masks=masks,
        nm_members=dict(engine.nm_members),
        steps_run=steps,
    )
