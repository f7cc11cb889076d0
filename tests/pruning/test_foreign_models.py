"""Pruning never breaks a model the zoo does not have.

Seven architectures (tests/models_foreign.py: DenseNet-style concatenation with depthwise-separable
and groups=4 convs, Inception branches, a ResNeXt bottleneck with a channel shuffle, a MobileNetV3
block, a tiny ViT with ``nn.MultiheadAttention`` and a hand-written attention, shared weights, and
the journey's user model) each take 30 random plans from the ``default`` and the ``sparse`` spaces,
drawn over the checked groups: every plan must prune, run, keep every layer non-empty and every
grouped conv divisible, and export to ONNX with parity. Around them, unit tests of
:func:`snap_plan`, :func:`check_groups`, grouped-conv units and the pipeline's wiring.
"""

from __future__ import annotations

import copy
import math

import optuna
import pytest
import torch
from torch import nn

from autoprune.pruning import (
    GroupPlan,
    PlanSettings,
    PrunableGroup,
    PruningPlan,
    check_groups,
    discover_groups,
    export_onnx,
    kept_count,
    prune_model,
    snap_plan,
)
from autoprune.pruning.faults import depthwise_names, layer_faults
from autoprune.search.space import SearchSpace, plan_from_params
from tests.models_foreign import FOREIGN_MODELS, ResNeXtShuffleNet

PLANS_PER_SPACE = 30
SPACES = ("default", "sparse")


@pytest.fixture(scope="module")
def checked():
    """``name -> (model, x, checked groups, GroupCheck)``, built once per model."""
    cache = {}

    def get(name: str):
        if name not in cache:
            model, x = FOREIGN_MODELS[name]()
            result = check_groups(model, x, discover_groups(model, x), max_ratio=0.95)
            cache[name] = (model, x, list(result.groups), result)
        return cache[name]

    return get


@pytest.mark.slow
@pytest.mark.parametrize("space_name", SPACES)
@pytest.mark.parametrize("name", sorted(FOREIGN_MODELS))
def test_random_plans_never_break(name, space_name, checked, tmp_path):
    model, x, groups, _ = checked(name)
    space = SearchSpace.load(space_name)
    gen = torch.Generator().manual_seed(3)
    calib = [(torch.randn((4, *x.shape[1:]), generator=gen), torch.randint(0, 10, (4,), generator=gen))]
    depthwise = depthwise_names(model)
    dense_params = sum(p.numel() for p in model.parameters())
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=11))
    failures, pruned_plans, smaller = [], 0, 0
    for i in range(PLANS_PER_SPACE):
        trial = study.ask()
        plan = plan_from_params(space, groups, space.suggest(trial, groups), seed=i)
        study.tell(trial, 0.0)
        assert snap_plan(plan, groups) == plan  # plans come out snapped (and snapping is idempotent)
        plan.validate(groups)
        pruned_plans += any(gp.structure != "keep" for _, gp in plan.groups)
        try:
            pruned = prune_model(model, plan, x, calib_loader=calib)
            for g in groups:
                if pruned.kept_channels[g.name] % g.channel_multiple:
                    failures.append(f"plan {i}: {g.name} keeps {pruned.kept_channels[g.name]} channels, "
                                    f"not a multiple of {g.channel_multiple}")
            module = pruned.make_permanent()
            failures += [f"plan {i}: {f}" for f in layer_faults(module, depthwise)]
            with torch.no_grad():
                assert module(x).shape == (1, 10)
            res = export_onnx(module, tmp_path / "m.onnx", x)
            assert res.max_abs_diff <= res.atol
            smaller += sum(p.numel() for p in module.parameters()) < dense_params
        except Exception as exc:  # noqa: BLE001 - every failure is collected and reported
            failures.append(f"plan {i}: {type(exc).__name__}: {str(exc).splitlines()[0][:160]}")
    assert not failures, f"{len(failures)} of {PLANS_PER_SPACE} plans broke {name}:\n" + "\n".join(failures)
    assert pruned_plans >= PLANS_PER_SPACE // 2  # random plans really prune
    if space_name == "default":
        assert smaller >= PLANS_PER_SPACE // 3  # ... and channel pruning really shrinks the model


# ---------------------------------------------------------------------------------- snap_plan
SNAP_GROUPS = [
    PrunableGroup("grouped", "conv", 64, ("grouped",), ("keep", "channel", "unstructured"), (8,),
                  channel_multiple=8, max_ratio=0.9),
    PrunableGroup("odd_nm", "conv", 16, ("odd_nm",), ("keep", "channel", "unstructured", "nm"), (6,)),
    PrunableGroup("no_sparse", "conv", 16, ("no_sparse",), ("keep", "channel"), (16,)),
    PrunableGroup("shuffled", "conv", 32, ("shuffled",), ("keep", "unstructured", "nm"), (16,), max_ratio=0.8),
    PrunableGroup("plain", "conv", 24, ("plain",), ("keep", "channel", "unstructured", "nm"), (16,)),
]


def test_snap_plan_fixes_each_bad_case():
    plan = PruningPlan(
        (
            ("grouped", GroupPlan("channel", 0.3, "l2")),  # 64 * 0.7 = 44.8 -> 48 (a multiple of 8)
            ("odd_nm", GroupPlan("nm", 0.5, nm="2:4")),  # 6 input channels: no 2:4 -> unstructured 50 %
            ("no_sparse", GroupPlan("nm", 0.5, nm="2:4")),  # no sparse structure at all -> keep
            ("shuffled", GroupPlan("channel", 0.5)),  # channel excluded at check -> keep
            ("plain", GroupPlan("channel", 0.35, "fpgm")),  # fine as it is
        ),
        PlanSettings(min_channels=4, seed=3),
    )
    before = copy.deepcopy(plan)
    snapped = snap_plan(plan, SNAP_GROUPS)
    assert plan == before  # pure: the input plan is untouched
    assert snapped.settings == plan.settings
    assert snapped.get("grouped") == GroupPlan("channel", 0.25, "l2")
    assert kept_count(64, 0.25, None, 4, 8) == 48
    assert snapped.get("odd_nm") == GroupPlan("unstructured", 0.5, nm="2:4")
    assert snapped.get("no_sparse").structure == "keep" and snapped.get("no_sparse").ratio == 0.0
    assert snapped.get("shuffled") == GroupPlan("keep", 0.0)
    assert snapped.get("plain") == GroupPlan("channel", 0.35, "fpgm")
    snapped.validate(SNAP_GROUPS)
    assert snap_plan(snapped, SNAP_GROUPS) == snapped  # idempotent
    assert snap_plan(plan, SNAP_GROUPS) == snapped  # deterministic


def test_snap_plan_clamps_to_max_ratio_and_drops_sub_unit_ratios():
    plan = PruningPlan((
        ("grouped", GroupPlan("channel", 0.95)),
        ("shuffled", GroupPlan("unstructured", 0.9)),
    ))
    snapped = snap_plan(plan, SNAP_GROUPS)
    g = snapped.get("grouped")
    assert g.structure == "channel" and g.ratio <= 0.9
    assert kept_count(64, g.ratio, None, 1, 8) % 8 == 0
    assert snapped.get("shuffled") == GroupPlan("unstructured", 0.8)
    # A ratio too small to remove one unit of 8 channels keeps the group dense.
    tiny = snap_plan(PruningPlan((("grouped", GroupPlan("channel", 0.05)),)), SNAP_GROUPS)
    assert tiny.get("grouped").structure == "keep"
    # Entries validate() must reject are left for it to name.
    odd = PruningPlan((("nowhere", GroupPlan("channel", 0.5)), ("plain", GroupPlan("channel", 1.5))))
    assert snap_plan(odd, SNAP_GROUPS) == odd


@pytest.mark.parametrize("dense,ratio,multiple,round_to,min_ch", [
    (64, 0.3, 8, None, 1), (64, 0.99, 8, None, 1), (96, 0.5, 8, 16, 1), (32, 0.9, 4, None, 10), (24, 0.5, 3, 8, 1),
])
def test_kept_count_respects_the_group_multiple(dense, ratio, multiple, round_to, min_ch):
    kept = kept_count(dense, ratio, round_to, min_ch, multiple)
    assert kept % multiple == 0 and multiple <= kept <= dense
    assert kept >= min(min_ch, dense)
    assert abs(kept - dense * (1 - ratio)) <= max(multiple, round_to or 1, min_ch)


# ------------------------------------------------------------------------------ check_groups
def test_check_groups_keeps_a_channel_shuffle_whole():
    torch.manual_seed(0)
    model, x = ResNeXtShuffleNet().eval(), torch.randn(1, 3, 16, 16)
    found = discover_groups(model, x)
    assert all("channel" in g.allowed for g in found if g.name != "fc")  # Torch-Pruning sees no problem
    result = check_groups(model, x, found, max_ratio=0.9)
    groups = {g.name: g for g in result.groups}
    assert set(result.excluded) == {"block1.grouped.0", "block2.grouped.0"}  # the convs before a shuffle
    for name, reason in result.excluded.items():
        assert reason.startswith("channel:") and "shuffle" in reason and "\n" not in reason
        assert "channel" not in groups[name].allowed and "unstructured" in groups[name].allowed
    # The groups Torch-Pruning maps correctly keep channel pruning, in whole units of the conv groups.
    assert "channel" in groups["block1.reduce.0"].allowed and groups["block1.reduce.0"].channel_multiple == 8
    assert "channel" in groups["block2.reduce.0"].allowed and groups["block2.reduce.0"].channel_multiple == 4
    assert "channel" in groups["stem.0"].allowed
    assert all(g.max_ratio == 0.9 for g in result.groups)
    assert result.test_prunes >= 2 and result.elapsed_s < 30


def test_the_shuffle_group_really_scrambles():
    """What the check guards against: Torch-Pruning maps the shuffled channels as if unshuffled."""
    torch.manual_seed(0)
    model, x = ResNeXtShuffleNet().eval(), torch.randn(2, 3, 16, 16)
    groups = discover_groups(model, x)
    plan = PruningPlan((("block1.grouped.0", GroupPlan("channel", 0.25)),))
    pruned = prune_model(model, plan, x).module
    # Silence exactly the channels that were removed: a faithful removal leaves the rest unchanged.
    dense = copy.deepcopy(model)
    kept_rows = _matching_rows(model.block1.grouped[0].weight, pruned.block1.grouped[0].weight)
    gone = sorted(set(range(32)) - set(kept_rows))
    with torch.no_grad():
        dense.block1.grouped[1].weight[gone] = 0
        dense.block1.grouped[1].bias[gone] = 0  # BN -> 0, hard-swish(0) = 0
        diff = (dense(x) - pruned(x)).abs().max().item()
    assert len(gone) == 8 and diff > 1e-3  # the consumer dropped other inputs than the removed channels
    assert "channel" not in {g.name: g for g in check_groups(model, x, groups).groups}["block1.grouped.0"].allowed


class _HardCodedView(nn.Module):
    """A user model that flattens with a hard-coded size: pruning conv2 breaks the view."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 16, 3, stride=2, padding=1)
        self.fc = nn.Linear(16 * 4 * 4, 10)

    def forward(self, x):
        x = torch.relu(self.conv2(torch.relu(self.conv1(x))))
        return self.fc(x.view(x.shape[0], 16 * 4 * 4))


def test_check_groups_excludes_a_group_whose_pruning_breaks_the_model():
    torch.manual_seed(0)
    model, x = _HardCodedView().eval(), torch.randn(1, 3, 8, 8)
    found = discover_groups(model, x)
    with pytest.raises(RuntimeError, match="invalid for input"):  # today's failure, unchecked
        prune_model(model, PruningPlan((("conv2", GroupPlan("channel", 0.5)),)), x).module(x)
    result = check_groups(model, x, found)
    groups = {g.name: g for g in result.groups}
    assert set(result.excluded) == {"conv2"}
    assert result.excluded["conv2"].startswith("channel: pruning it at ratio")
    assert "invalid for input" in result.excluded["conv2"]
    assert groups["conv2"].allowed == ("keep", "unstructured", "nm")
    assert "channel" in groups["conv1"].allowed
    # The snapped plan of what used to break now runs.
    plan = snap_plan(PruningPlan((("conv1", GroupPlan("channel", 0.5)), ("conv2", GroupPlan("channel", 0.5)))),
                     result.groups)
    assert plan.get("conv2").structure == "keep"
    assert prune_model(model, plan, x).module(x).shape == (1, 10)


def test_check_groups_rejects_foreign_groups_and_bad_ratios():
    model, x = _HardCodedView().eval(), torch.randn(1, 3, 8, 8)
    with pytest.raises(ValueError, match="max_ratio"):
        check_groups(model, x, max_ratio=1.0)
    with pytest.raises(ValueError, match="not one of this model's groups"):
        check_groups(model, x, SNAP_GROUPS)


# ------------------------------------------------------------------------ grouped and depthwise
def _matching_rows(dense_w: torch.Tensor, pruned_w: torch.Tensor) -> list[int]:
    """For each output row of a pruned weight, the dense row it was copied from (by its kept columns)."""
    rows = []
    for row in pruned_w:
        width = row.shape[0]
        match = [i for i in range(dense_w.shape[0]) if dense_w[i].shape == row.shape and torch.equal(dense_w[i], row)]
        if not match:  # input channels were pruned too: compare on the first kept columns
            match = [i for i in range(dense_w.shape[0]) if torch.equal(dense_w[i][:width], row)]
        rows.append(match[0])
    return rows


def test_grouped_conv_prunes_whole_units(checked):
    model, x, groups, _ = checked("usermodel")
    reduce = next(g for g in groups if g.name == "block1.reduce.0")
    assert reduce.channel_multiple == 8
    from autoprune.pruning.groups import build_index

    index = build_index(copy.deepcopy(model), x)
    units = index.units("block1.reduce.0")
    assert units == [[r + 8 * b for b in range(8)] for r in range(8)]  # the same offset in each conv group
    for ratio in (0.1, 0.3, 0.5, 0.8, 0.95):
        plan = snap_plan(PruningPlan((("block1.reduce.0", GroupPlan("channel", ratio)),)), groups)
        pruned = prune_model(model, plan, x)
        conv = pruned.module.block1.grouped[0]
        kept = pruned.kept_channels["block1.reduce.0"]
        assert kept % 8 == 0 and conv.in_channels == kept and conv.weight.shape[1] == kept // 8
        assert math.isclose(plan.get("block1.reduce.0").ratio, 1 - kept / 64) or kept == 64


def test_grouped_conv_pruning_is_faithful(checked):
    """Removing whole units equals silencing those channels in the dense model."""
    model, x, groups, _ = checked("usermodel")
    x = torch.randn(2, *x.shape[1:], generator=torch.Generator().manual_seed(5))
    plan = snap_plan(PruningPlan((("block1.reduce.0", GroupPlan("channel", 0.4)),)), groups)
    pruned = prune_model(model, plan, x).module
    kept_rows = _matching_rows(model.block1.reduce[0].weight, pruned.block1.reduce[0].weight)
    gone = sorted(set(range(64)) - set(kept_rows))
    assert len(gone) == 64 - pruned.block1.reduce[0].out_channels and len(gone) % 8 == 0
    dense = copy.deepcopy(model)
    with torch.no_grad():
        dense.block1.reduce[1].weight[gone] = 0
        dense.block1.reduce[1].bias[gone] = 0
        torch.testing.assert_close(pruned(x), dense(x), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", ["mobilenetv3", "densenet_sep"])
def test_depthwise_stays_depthwise(name, checked):
    model, x, groups, _ = checked(name)
    depthwise = depthwise_names(model)
    assert depthwise
    plan = snap_plan(PruningPlan.uniform(groups, "channel", 0.5), groups)
    pruned = prune_model(model, plan, x).make_permanent()
    assert not layer_faults(pruned, depthwise)
    if name == "mobilenetv3":  # (densenet_sep's depthwise convs all feed its groups=4 conv: kept whole)
        convs = dict(pruned.named_modules())
        assert any(convs[n].out_channels < dict(model.named_modules())[n].out_channels for n in depthwise)


def test_nm_after_channel_pruning_keeps_a_valid_pattern():
    """A consumer left with input channels short of a multiple of M still gets its N:M mask."""
    from autoprune.pruning.apply import _nm_mask

    scores = torch.rand(3, 6, 2, 2)
    mask = _nm_mask(scores, 2, 4)
    assert mask.shape == scores.shape
    blocks = mask.movedim(1, -1)
    assert bool((blocks[..., :4].sum(-1) == 2).all())  # the full block keeps 2 of 4
    assert bool(blocks[..., 4:].all())  # the 2-wide tail (padded to 4) keeps both


# ------------------------------------------------------------------------------------ pipeline
def test_pipeline_checks_groups_and_records_the_snapped_plan(monkeypatch):
    from autoprune.data import load_digits
    from autoprune.pipeline import Pipeline

    torch.manual_seed(0)
    data = load_digits(16)
    pipe = Pipeline(ResNeXtShuffleNet().eval(), data, "jetson-nano", "tests/models_foreign.py:ResNeXtShuffleNet",
                    finetune_steps=1, measure=False, space=SearchSpace.load("default"))
    assert set(pipe.excluded_groups) == {"block1.grouped.0", "block2.grouped.0"}
    assert all("channel" not in g.allowed for g in pipe.groups if g.name in pipe.excluded_groups)
    asked = PruningPlan((
        ("block1.reduce.0", GroupPlan("channel", 0.3)),  # 32 channels in units of 8: 22.4 -> 24
        ("block1.grouped.0", GroupPlan("channel", 0.5)),  # excluded: kept whole
    ))
    result = pipe.run(asked)
    recorded = PruningPlan.from_dict(result.plan)
    assert recorded.get("block1.reduce.0") == GroupPlan("channel", 0.25)
    assert recorded.get("block1.grouped.0").structure == "keep"
    assert recorded == snap_plan(asked, pipe.groups)


class _GhostNet(nn.Module):
    """A GhostNet-style module (not the zoo's): half the channels come from a conv, the other half are their
    depthwise "cheap" copies, concatenated; removing one primary channel removes its copy too."""

    def __init__(self) -> None:
        super().__init__()
        self.primary = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.cheap = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1, groups=8), nn.BatchNorm2d(8), nn.ReLU())
        self.mix = nn.Conv2d(16, 16, 3, padding=1, groups=16)
        self.head = nn.Linear(16, 3)

    def forward(self, x):
        p = self.primary(x)
        return self.head(self.mix(torch.cat([p, self.cheap(p)], 1)).mean((2, 3)))


def test_linked_channels_are_one_unit_so_the_ratio_asked_is_the_ratio_removed():
    model = _GhostNet().eval()
    x = torch.randn(1, 3, 8, 8)
    groups = discover_groups(model, x)
    linked = [g for g in groups if "primary.0" in g.members and "channel" in g.allowed]
    assert linked, [(g.name, g.members, g.allowed) for g in groups]
    g = linked[0]
    plan = PruningPlan(tuple((h.name, GroupPlan("channel", 0.25) if h.name == g.name else GroupPlan("keep"))
                             for h in groups))
    pruned = prune_model(model, plan, x)
    dense, kept = pruned.dense_channels[g.name], pruned.kept_channels[g.name]
    assert dense == 16 and kept == 12  # a quarter removed: 2 primary channels and their 2 copies, not 4 and 4
    assert pruned.module.primary[0].out_channels == 6 and pruned.module.cheap[0].out_channels == 6
    assert not layer_faults(pruned.module, depthwise_names(model)) and pruned.module(x).shape == (1, 3)
