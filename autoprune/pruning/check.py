"""Check each prunable group once, when it is discovered, so that no later plan can break the model.

:func:`discover_groups` trusts Torch-Pruning's dependency graph, which can be wrong on a
model the zoo does not have in two ways:

* **Its channel mapping is wrong** (a channel shuffle: the pruned model runs but computes
  something else). The permutation probe (:mod:`autoprune.pruning.probe`) finds it.
* **A pruned model cannot run or export** (a ``view`` with a hard-coded size, a hand-written
  attention's ``reshape(b, n, heads, -1)``). Each allowed structure is test-pruned at the
  largest ratio the search space allows, and channel pruning also at its smallest step (one
  unit removed, which exposes divisibility constraints). The test plans prune all groups
  together (three plans, one forward pass and one ONNX export with the parity check each);
  only when one fails are the groups tried one at a time (forward passes first, exports only
  where those all pass) to find the culprits.

A group that fails keeps its other structures (or only ``keep``), and the reason is
recorded in :attr:`GroupCheck.excluded`. :func:`autoprune.pruning.snap_plan` then fits
every plan to the checked groups.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from autoprune.pruning.apply import prune_model, safe_deepcopy
from autoprune.pruning.faults import layer_faults
from autoprune.pruning.groups import PrunableGroup, build_index
from autoprune.pruning.plan import STRUCTURES, GroupPlan, PlanSettings, PruningPlan, kept_count, parse_nm
from autoprune.pruning.probe import first_tensor, mapping_faults

_REASON_CHARS = 240


@dataclass(frozen=True)
class GroupCheck:
    """The result of :func:`check_groups`.

    Attributes:
        groups: The groups with ``allowed`` narrowed to what passed, and ``max_ratio`` set
            to the tested ratio.
        excluded: Group name → one line: which structures it lost and why.
        test_prunes: Pruned models built (each with a forward pass; exports counted apart).
        exports: ONNX exports run (with the parity check).
        elapsed_s: Wall time of the check.
        dense_export_error: Set when the dense model itself does not export faithfully (then no
            group is blamed for export failures, and the exports are not tested).
        reinitialised: Output layers that were all zero (the model output 0 on any input) and got
            random weights in the check's copy, so that the probe and parity checks test something.
    """

    groups: tuple[PrunableGroup, ...]
    excluded: dict[str, str] = field(default_factory=dict)
    test_prunes: int = 0
    exports: int = 0
    elapsed_s: float = 0.0
    dense_export_error: str | None = None
    reinitialised: tuple[str, ...] = ()

    def refuse_unexportable(self, dense: nn.Module, input_shape: tuple[int, ...]) -> None:
        """Refuse, before a study starts, a dense model that cannot export: no candidate of it could.

        Raises:
            ConfigError: One line with the exporter's error and an input side that exports
                (:func:`~autoprune.pruning.export.dense_export_message`).
        """
        if self.dense_export_error is not None:
            from autoprune.errors import ConfigError
            from autoprune.pruning.export import dense_export_message

            raise ConfigError(dense_export_message(dense, input_shape, self.dense_export_error))


def check_groups(
    model: nn.Module,
    example_input: torch.Tensor,
    groups: Iterable[PrunableGroup] | None = None,
    *,
    max_ratio: float = 0.95,
    structures: Sequence[str] = STRUCTURES,
    nm_patterns: Sequence[str] = ("2:4",),
    settings: PlanSettings | None = None,
    atol: float = 1e-4,
) -> GroupCheck:
    """Test-prune every group once and keep whole what cannot be pruned safely.

    Args:
        model: The dense model (not modified).
        example_input: A tensor of the model's input shape (tracing, forward passes, export).
        groups: The groups from :func:`~autoprune.pruning.discover_groups` (discovered here
            when None); their ``allowed`` is only ever narrowed.
        max_ratio: The largest ratio the search may ask for (``channel`` and
            ``unstructured`` are tested there), in ``(0, 1)``.
        structures: The structures the search may use; others are left as they are, untested.
        nm_patterns: The ``N:M`` patterns the search may use.
        settings: ``min_channels`` and ``round_to`` of the search's plans (defaults: 1, none).
        atol: ONNX parity tolerance of the test exports, relative to the output's scale
            (``atol * max(1, max |output|)``): the check looks for exports that compute
            something else, not for rounding in an untrained model's large outputs.

    Returns:
        A :class:`GroupCheck`.

    Raises:
        ValueError: If ``groups`` names a group the model does not have, or ``max_ratio``
            is outside ``(0, 1)``.
    """
    if not 0.0 < max_ratio < 1.0:
        raise ValueError(f"max_ratio must be in (0, 1), got {max_ratio!r}")
    t0 = time.perf_counter()
    settings = settings or PlanSettings()
    work = safe_deepcopy(model).eval()
    index = build_index(work, example_input)
    reinitialised = _wake_zero_heads(work, index, example_input)
    found = {g.name: g for g in index.groups}
    given = list(groups) if groups is not None else list(index.groups)
    for g in given:
        if g.name not in found:
            raise ValueError(f"group {g.name!r} is not one of this model's groups")
    allowed = {g.name: [s for s in g.allowed if s in found[g.name].allowed] for g in given}
    excluded: dict[str, list[str]] = {}

    def drop(name: str, structure: str, reason: str) -> None:
        if structure in allowed[name]:
            allowed[name].remove(structure)
        excluded.setdefault(name, []).append(f"{structure}: {reason}")

    if "channel" in structures:
        for name, reason in index.unsafe.items():
            if name in allowed:
                drop(name, "channel", reason)
        probed = [n for n, a in allowed.items() if "channel" in a]
        for name, reason in mapping_faults(work, index, probed, example_input).items():
            drop(name, "channel", reason)

    runner = _Runner(work, example_input, atol)
    nm_of = {
        g.name: next((p for p in nm_patterns if _allows(g, allowed[g.name], p)), None) for g in given
    }
    for make in (_plan_max, _plan_step, _plan_nm):
        for _ in range(len(given) + 1):
            plan = make(given, allowed, nm_of, structures, max_ratio, settings)
            if not any(gp.structure != "keep" for _, gp in plan.groups):
                break
            if runner.fails(plan) is None:
                break
            culprits = runner.culprits(plan)
            for name, reason in culprits.items():
                drop(name, plan.get(name).structure, reason)
            if not culprits:  # the dense model itself does not export: nothing to blame
                break

    checked = []
    for g in given:
        tested = any(s in allowed[g.name] for s in ("channel", "unstructured") if s in structures)
        checked.append(replace(g, allowed=tuple(s for s in STRUCTURES if s in allowed[g.name]),
                               max_ratio=max_ratio if tested else g.max_ratio))
    return GroupCheck(
        groups=tuple(checked),
        excluded={n: "; ".join(r)[:_REASON_CHARS] for n, r in excluded.items()},
        test_prunes=runner.prunes,
        exports=runner.exports,
        elapsed_s=round(time.perf_counter() - t0, 3),
        dense_export_error=runner.dense_export_error,
        reinitialised=reinitialised,
    )


def _wake_zero_heads(work: nn.Module, index, x: torch.Tensor) -> tuple[str, ...]:
    """Give zero-initialised output layers random weights (in the check's own copy), so the checks test something.

    ViT-B/16 and gMLP initialise their classifier to exactly 0: the model outputs 0 whatever the layers before
    it compute, so the permutation probe and the export parity check would compare zeros with zeros. When the
    output is exactly 0, every output layer whose weight is all zero gets small random weights.
    """
    from autoprune.pruning.groups import _output_layers

    probe = torch.randn(x.shape, generator=torch.Generator().manual_seed(1)) if x.is_floating_point() else x
    with torch.no_grad():
        if bool(first_tensor(work(probe)).abs().max() > 0):
            return ()
        woken = []
        gen = torch.Generator().manual_seed(2)
        for module in _output_layers(index.dg):
            w = getattr(module, "weight", None)
            if isinstance(w, torch.Tensor) and not bool(w.abs().max() > 0):
                w.copy_(torch.randn(w.shape, generator=gen) * 0.02)
                woken.append(index.dg._module2name.get(module, type(module).__name__))
    return tuple(sorted(woken))


# ------------------------------------------------------------------------------ test plans
def _allows(g: PrunableGroup, allowed: list[str], nm: str) -> bool:
    if "nm" not in allowed:
        return False
    _, m = parse_nm(nm)
    return all(c % m == 0 for c in g.reduction_channels)


def _one_step_ratio(g: PrunableGroup, settings: PlanSettings) -> float | None:
    """The smallest ratio that removes channels at all (one unit, or one ``round_to`` step)."""
    for keep in range(g.channels - g.channel_multiple, 0, -g.channel_multiple):
        ratio = 1.0 - keep / g.channels
        if kept_count(g.channels, ratio, settings.round_to, settings.min_channels, g.channel_multiple) < g.channels:
            return round(ratio, 6)
    return None


def _plan_max(given, allowed, nm_of, structures, max_ratio, settings) -> PruningPlan:
    """Channel at the largest ratio where allowed, else unstructured at it."""
    out = []
    for g in given:
        a = allowed[g.name]
        if "channel" in a and "channel" in structures:
            out.append((g.name, GroupPlan("channel", max_ratio)))
        elif "unstructured" in a and "unstructured" in structures:
            out.append((g.name, GroupPlan("unstructured", max_ratio)))
        else:
            out.append((g.name, GroupPlan("keep")))
    return PruningPlan(tuple(out), settings)


def _plan_step(given, allowed, nm_of, structures, max_ratio, settings) -> PruningPlan:
    """Channel at its smallest step where allowed, else N:M, else keep."""
    out = []
    for g in given:
        a = allowed[g.name]
        step = _one_step_ratio(g, settings) if "channel" in a and "channel" in structures else None
        if step is not None:
            out.append((g.name, GroupPlan("channel", step)))
        elif nm_of[g.name] and "nm" in structures and _allows(g, a, nm_of[g.name]):
            out.append((g.name, GroupPlan("nm", 0.0, nm=nm_of[g.name])))
        else:
            out.append((g.name, GroupPlan("keep")))
    return PruningPlan(tuple(out), settings)


def _plan_nm(given, allowed, nm_of, structures, max_ratio, settings) -> PruningPlan:
    """N:M where allowed, else unstructured at the largest ratio, else keep."""
    out = []
    for g in given:
        a = allowed[g.name]
        if nm_of[g.name] and "nm" in structures and _allows(g, a, nm_of[g.name]):
            out.append((g.name, GroupPlan("nm", 0.0, nm=nm_of[g.name])))
        elif "unstructured" in a and "unstructured" in structures:
            out.append((g.name, GroupPlan("unstructured", max_ratio)))
        else:
            out.append((g.name, GroupPlan("keep")))
    return PruningPlan(tuple(out), settings)


class _Runner:
    """Builds test-pruned models and says why one fails."""

    def __init__(self, model: nn.Module, x: torch.Tensor, atol: float) -> None:
        self.model, self.x, self.atol = model, x, atol
        self.prunes = self.exports = 0
        with torch.no_grad():
            self.out_shape = tuple(first_tensor(model.eval()(x)).shape)
        self.dense_export_error: str | None = self._dense_export()

    def _dense_export(self) -> str | None:
        """Why the dense model itself does not export faithfully, or None: tested once, before any plan, so
        that no group is blamed for the exporter's limits and no test prune exports in vain."""
        from autoprune.pruning.export import export_onnx

        self.exports += 1
        try:
            with tempfile.TemporaryDirectory() as tmp:
                export_onnx(self.model, Path(tmp) / "dense.onnx", self.x, atol=self.atol)
        except Exception as exc:  # noqa: BLE001 - any failure is the finding
            text = (str(exc).strip().splitlines() or [""])[0]
            return f"{type(exc).__name__}: {text}"
        return None

    def fails(self, plan: PruningPlan, export: bool = True) -> str | None:
        """None if ``plan`` prunes, runs and (with ``export``) exports faithfully; else why not."""
        from autoprune.pruning.export import export_onnx

        self.prunes += 1
        try:
            module = prune_model(self.model, plan, self.x).make_permanent()
            bad = layer_faults(module)
            if bad:
                return f"layer {bad[0]}"
            with torch.no_grad():
                out = first_tensor(module(self.x))
            if tuple(out.shape) != self.out_shape:
                return f"the output shape changes from {self.out_shape} to {tuple(out.shape)}"
            if export and self.dense_export_error is None:
                self.exports += 1
                with tempfile.TemporaryDirectory() as tmp:
                    export_onnx(module, Path(tmp) / "check.onnx", self.x, atol=self.atol)
        except Exception as exc:  # noqa: BLE001 - any failure of a test prune is a finding
            text = (str(exc).strip().splitlines() or [""])[0]
            return f"{type(exc).__name__}: {text}"
        return None

    def culprits(self, plan: PruningPlan) -> dict[str, str]:
        """The entries of a failing ``plan`` that fail alone, or the one whose addition breaks it."""
        entries = [(n, gp) for n, gp in plan.groups if gp.structure != "keep"]
        dense = {n: GroupPlan("keep") for n, _ in plan.groups}

        def only(chosen: list[tuple[str, GroupPlan]]) -> PruningPlan:
            picked = dict(chosen)
            return PruningPlan(tuple((n, picked.get(n, dense[n])) for n, _ in plan.groups), plan.settings)

        def failing(chosen: list[tuple[str, GroupPlan]], export: bool) -> dict[str, str]:
            """The entries of ``chosen`` that fail alone, by bisection: a half that passes holds none."""
            why = self.fails(only(chosen), export=export)
            if why is None:
                return {}
            if len(chosen) == 1:
                return {chosen[0][0]: _reason(chosen[0][1], why)}
            mid = len(chosen) // 2
            return {**failing(chosen[:mid], export), **failing(chosen[mid:], export)}

        for export in (False, True):  # forward passes first: exports only where they all pass
            if export and self.dense_export_error is not None:  # not the groups' fault: exports are not tested
                return {}
            found = failing(entries, export)
            if found:
                return found
        # Each entry passes alone: add them one by one until the plan breaks.
        chosen: dict[str, GroupPlan] = {}
        for name, gp in entries:
            chosen[name] = gp
            trial = PruningPlan(tuple((n, chosen.get(n, dense[n])) for n, _ in plan.groups), plan.settings)
            why = self.fails(trial)
            if why is not None:
                return {name: _reason(gp, why + " (together with the groups before it)")}
        return {}


def _reason(gp: GroupPlan, why: str) -> str:
    at = f" {gp.nm}" if gp.structure == "nm" else f" at ratio {gp.ratio:g}"
    return f"pruning it{at} fails: {why}"


def check_options(space: Any, max_ratio: float | None) -> dict[str, Any]:
    """The :func:`~autoprune.pruning.check_groups` options a search space implies."""
    if space is None:
        return {"max_ratio": 0.95 if max_ratio is None else max_ratio}
    highs = [space.ratio.high, *(r.high for r in space.ratio_by_kind.values())]
    return {
        "max_ratio": max(max(highs), 0.05) if max_ratio is None else max_ratio,
        "structures": tuple(s for s in STRUCTURES if s in space.structures),
        "nm_patterns": tuple(space.nm_patterns),
        "settings": PlanSettings(min_channels=space.min_channels, round_to=space.round_to),
    }


__all__ = ["GroupCheck", "check_groups", "check_options"]
