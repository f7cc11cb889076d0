"""The plan: JSON round-trip, constructors, kept-channel arithmetic, and every rejection."""

from __future__ import annotations

import math

import pytest
import torch

from autoprune.errors import PlanError
from autoprune.pruning import (
    CRITERIA,
    GroupPlan,
    PlanSettings,
    PrunableGroup,
    PruningPlan,
    kept_count,
    prune_model,
)

GROUPS = [
    PrunableGroup("conv1", "conv", 16, ("conv1", "b.conv2"), ("keep", "channel", "unstructured"), (3, 16)),
    PrunableGroup("b.conv1", "conv", 16, ("b.conv1",), ("keep", "channel", "unstructured", "nm"), (16,)),
    PrunableGroup("odd", "conv", 6, ("odd",), ("keep", "channel", "unstructured", "nm"), (12,)),
    PrunableGroup("fc", "linear", 10, ("fc",), ("keep", "unstructured", "nm"), (64,)),
]


def test_plan_json_round_trip():
    plan = PruningPlan(
        (("conv1", GroupPlan("channel", 0.25, "taylor")), ("b.conv1", GroupPlan("nm", 0.0, "l2", "2:4"))),
        PlanSettings(allocation="global", global_ratio=0.3, schedule="iterative", iterative_steps=3,
                     round_to=8, min_channels=2, regularization="bn-l1", reg_strength=1e-4, seed=7),
    )
    again = PruningPlan.from_json(plan.to_json())
    assert again == plan
    assert PruningPlan.from_dict(plan.to_dict()) == plan
    assert again.get("fc") == GroupPlan("keep")


def test_plan_accepts_a_mapping_and_is_frozen():
    plan = PruningPlan({"conv1": GroupPlan("channel", 0.5)})
    assert plan.groups == (("conv1", GroupPlan("channel", 0.5)),)
    with pytest.raises(AttributeError):
        plan.groups = ()  # type: ignore[misc]


def test_uniform_keeps_groups_that_cannot_take_the_structure():
    plan = PruningPlan.uniform(GROUPS, "channel", 0.5)
    assert plan.get("fc").structure == "keep"  # the classifier is never channel-pruned
    assert plan.get("conv1") == GroupPlan("channel", 0.5)
    nm = PruningPlan.uniform(GROUPS, "nm", 0.0)
    assert nm.get("conv1").structure == "keep"  # 3 input channels: no 2:4
    assert nm.get("b.conv1").structure == "nm"
    nm.validate(GROUPS)
    assert PruningPlan.dense(GROUPS).get("conv1").structure == "keep"


def test_effective_sparsity():
    assert GroupPlan("nm", 0.0, nm="2:4").effective_sparsity() == 0.5
    assert GroupPlan("nm", 0.0, nm="1:4").effective_sparsity() == 0.75
    assert GroupPlan("keep", 0.3).effective_sparsity() == 0.0
    assert GroupPlan("unstructured", 0.3).effective_sparsity() == 0.3


@pytest.mark.parametrize(
    ("dense", "ratio", "round_to", "min_ch", "expected"),
    [(16, 0.5, None, 1, 8), (16, 0.99, None, 1, 1), (16, 0.99, None, 4, 4), (64, 0.3, 8, 1, 48),
     (64, 0.95, 8, 1, 8), (64, 0.9, 8, 12, 16), (6, 0.5, 8, 1, 3), (10, 0.0, 8, 1, 10)],
)
def test_kept_count(dense, ratio, round_to, min_ch, expected):
    assert kept_count(dense, ratio, round_to, min_ch) == expected


def _plan(name="b.conv1", **kw):
    return PruningPlan(((name, GroupPlan(**kw)),))


BAD_PLANS = {
    "ratio above one": (_plan(structure="channel", ratio=1.5), "outside [0, 1)"),
    "ratio one": (_plan(structure="channel", ratio=1.0), "outside [0, 1)"),
    "negative ratio": (_plan(structure="unstructured", ratio=-0.1), "outside [0, 1)"),
    "nan ratio": (_plan(structure="channel", ratio=math.nan), "outside [0, 1)"),
    "bool ratio": (_plan(structure="channel", ratio=True), "not a number"),
    "string ratio": (_plan(structure="channel", ratio="0.5"), "not a number"),
    "none ratio": (_plan(structure="channel", ratio=None), "not a number"),
    "unknown group": (_plan(name="nope", structure="channel", ratio=0.5), "unknown group 'nope'"),
    "unknown criterion": (_plan(structure="channel", ratio=0.5, criterion="l3"), "valid: bn-scale, fpgm"),
    "unknown structure": (_plan(structure="block", ratio=0.5), "unknown structure 'block'"),
    "channel on classifier": (_plan(name="fc", structure="channel", ratio=0.5), "cannot take structure"),
    "nm not allowed": (_plan(name="conv1", structure="nm"), "cannot take structure 'nm'"),
    "nm bad divisor": (_plan(name="odd", structure="nm", nm="2:8"), "not all multiples of 8"),
    "nm malformed": (_plan(structure="nm", nm="2-4"), "bad N:M pattern"),
    "nm n >= m": (_plan(structure="nm", nm="4:4"), "bad N:M pattern"),
    "duplicate group": (
        PruningPlan((("b.conv1", GroupPlan("channel", 0.1)), ("b.conv1", GroupPlan("keep"))),), "twice"
    ),
    "bad allocation": (PruningPlan((), PlanSettings(allocation="both")), "unknown allocation"),
    "bad schedule": (PruningPlan((), PlanSettings(schedule="cyclic")), "unknown schedule"),
    "bad global ratio": (PruningPlan((), PlanSettings(global_ratio=1.2)), "outside [0, 1)"),
    "zero min channels": (PruningPlan((), PlanSettings(min_channels=0)), "min_channels"),
    "zero steps": (PruningPlan((), PlanSettings(iterative_steps=0)), "iterative_steps"),
    "bad round_to": (PruningPlan((), PlanSettings(round_to=0)), "round_to"),
    "bad regularization": (PruningPlan((), PlanSettings(regularization="l0")), "unknown regularization"),
}


@pytest.mark.parametrize("case", sorted(BAD_PLANS))
def test_bad_plans_are_rejected(case):
    plan, message = BAD_PLANS[case]
    with pytest.raises(PlanError, match=message.replace("[", r"\[").replace("(", r"\(").replace(")", r"\)")):
        plan.validate(GROUPS)


def test_data_criterion_without_data_is_rejected():
    with pytest.raises(PlanError, match="needs data"):
        _plan(structure="channel", ratio=0.5, criterion="taylor").validate(GROUPS, needs_data_ok=False)


def test_bad_plan_is_rejected_before_any_work(model_factory):
    model, x = model_factory("resnet20")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    plan = PruningPlan((("conv1", GroupPlan("channel", 0.5)), ("fc", GroupPlan("channel", 0.5))))
    with pytest.raises(PlanError, match="fc"):
        prune_model(model, plan, x)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_malformed_json_is_a_plan_error():
    with pytest.raises(PlanError):
        PruningPlan.from_json("{")
    with pytest.raises(PlanError):
        PruningPlan.from_dict({"version": 99})
    with pytest.raises(PlanError):
        PruningPlan.from_dict({"version": 1, "groups": [{"name": "a", "bogus": 1}]})


def test_registry_lists_every_required_criterion():
    assert set(CRITERIA.names()) == {"l1", "l2", "taylor", "fpgm", "bn-scale", "obd", "snip", "lrp", "random"}
