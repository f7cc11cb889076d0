"""Criteria, allocation, schedules, rounding, fine-tuning and masks."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from autoprune.pruning import (
    CRITERIA,
    FinetuneConfig,
    FinetuneDivergedError,
    GroupPlan,
    PlanSettings,
    PruningPlan,
    discover_groups,
    evaluate,
    finetune,
    prune_model,
    regularization_loss,
)


@pytest.fixture(scope="module")
def resnet20(model_factory):
    model, x = model_factory("resnet20")
    return model, x, discover_groups(model, x)


@pytest.fixture(scope="module")
def calib():
    g = torch.Generator().manual_seed(0)
    return [(torch.randn(8, 3, 32, 32, generator=g), torch.randint(0, 10, (8,), generator=g)) for _ in range(2)]


@pytest.mark.parametrize("structure", ["channel", "unstructured", "nm"])
@pytest.mark.parametrize("criterion", CRITERIA.names())
def test_every_criterion_gives_a_valid_result(criterion, structure, resnet20, calib):
    model, x, groups = resnet20
    plan = PruningPlan.uniform(groups, structure, 0.5, criterion=criterion)
    pruned = prune_model(model, plan, x, calib_loader=calib)
    out = pruned.module(x)
    assert out.shape == (1, 10) and torch.isfinite(out).all()
    if structure == "channel":
        assert pruned.kept_channels["layers.0.conv1"] == 8
    else:
        assert 0.45 < pruned.weight_sparsity() < 0.55


def test_criteria_rank_differently(resnet20, calib):
    model, x, groups = resnet20
    kept = {}
    for criterion in ("l1", "random", "taylor", "lrp"):
        plan = PruningPlan.uniform(groups, "unstructured", 0.5, criterion=criterion)
        kept[criterion] = prune_model(model, plan, x, calib_loader=calib).masks["layers.4.conv1"]
    assert not torch.equal(kept["l1"], kept["random"])
    assert not torch.equal(kept["taylor"], kept["lrp"])


def test_lrp_matches_a_hand_written_epsilon_rule():
    """The gradient trick reproduces the ε-LRP weight relevance computed layer by layer."""
    from autoprune.pruning.criteria import LRP

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.ReLU(), torch.nn.Linear(5, 3))
    x, y = torch.randn(4, 6), torch.tensor([0, 1, 2, 0])
    crit = LRP()
    crit.prepare(net, [(x, y)])
    with torch.no_grad():
        w1, b1, w2, b2 = net[0].weight, net[0].bias, net[2].weight, net[2].bias
        z1 = x @ w1.T + b1
        a1 = z1.clamp_min(0)
        z2 = a1 @ w2.T + b2

        def stab(z):
            eps = 0.25 * z.std()
            return z + torch.where(z >= 0, eps, -eps)

        r2 = torch.zeros_like(z2).scatter(1, y.view(-1, 1), z2.gather(1, y.view(-1, 1)))
        s2 = r2 / stab(z2)
        r_a1 = a1 * (s2 @ w2)  # ε-rule at layer 2; ReLU passes relevance unchanged
        s1 = r_a1 / stab(z1)
        ref = w1 * (s1.T @ x)  # relevance of each first-layer weight, summed over samples
        ref2 = w2 * (s2.T @ a1)
    torch.testing.assert_close(crit._stats["0"], ref, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(crit._stats["2"], ref2, rtol=1e-4, atol=1e-6)
    assert all(p.grad is None for p in net.parameters())  # prepare leaves no gradients behind


def test_global_and_local_allocation_differ(resnet20):
    model, x, groups = resnet20
    local = prune_model(model, PruningPlan.uniform(groups, "channel", 0.5), x)
    glob = prune_model(
        model,
        PruningPlan.uniform(groups, "channel", 0.5, settings=PlanSettings(allocation="global", global_ratio=0.5)),
        x,
    )
    ch = [g for g in groups if "channel" in g.allowed]
    ratios_local = {1 - local.kept_channels[g.name] / g.channels for g in ch}
    ratios_global = [1 - glob.kept_channels[g.name] / g.channels for g in ch]
    assert ratios_local == {0.5}  # local: every group exactly its ratio
    assert len({round(r, 3) for r in ratios_global}) > 1  # global: one threshold, uneven per group
    total = sum(g.channels for g in ch)
    assert abs(sum(glob.kept_channels[g.name] for g in ch) - total / 2) <= 1  # ... but the same total


def test_global_unstructured_uses_one_threshold(resnet20):
    model, x, groups = resnet20
    plan = PruningPlan.uniform(
        groups, "unstructured", 0.5, settings=PlanSettings(allocation="global", global_ratio=0.6)
    )
    pruned = prune_model(model, plan, x)
    per_member = [1 - m.float().mean().item() for m in pruned.masks.values()]
    assert abs(pruned.weight_sparsity() - 0.6) < 0.01
    assert max(per_member) - min(per_member) > 0.1
    # One magnitude threshold: every kept weight outweighs every pruned one (up to ties).
    pruned_max = max(
        dict(model.named_modules())[n].weight.detach().abs()[~m].max().item() for n, m in pruned.masks.items()
    )
    # (the one-weight-per-output-channel floor may keep a few weights below the threshold)
    small_kept = sum(
        int((dict(model.named_modules())[n].weight.detach().abs()[m] < pruned_max).sum())
        for n, m in pruned.masks.items()
    )
    assert small_kept <= sum(m.shape[0] for m in pruned.masks.values())


def test_round_to_and_min_channels(resnet20):
    model, x, groups = resnet20
    plan = PruningPlan.uniform(groups, "channel", 0.7, settings=PlanSettings(round_to=8, min_channels=1))
    pruned = prune_model(model, plan, x)
    for g in groups:
        if plan.get(g.name).structure == "channel":
            assert pruned.kept_channels[g.name] % 8 == 0 and pruned.kept_channels[g.name] >= 8
    plan = PruningPlan.uniform(groups, "channel", 0.95, settings=PlanSettings(min_channels=3))
    pruned = prune_model(model, plan, x)
    assert min(v for k, v in pruned.kept_channels.items() if k != "fc") == 3


def test_iterative_schedule_runs_k_steps(resnet20, calib):
    model, x, groups = resnet20
    seen = []

    def between(module, step):
        seen.append((step, module.layers[0].conv1.out_channels, module.layers[4].conv1.weight_mask.mean().item()))
        finetune(module, calib, FinetuneConfig(steps=1, lr=1e-3))

    plan = PruningPlan(
        tuple(
            (g.name, GroupPlan("channel", 0.75) if g.name.endswith("conv1") and g.name != "conv1" else
             GroupPlan("unstructured", 0.6) if g.name == "layers.4.conv2" else GroupPlan("keep"))
            for g in groups
        ),
        PlanSettings(schedule="iterative", iterative_steps=3),
    )
    plan = PruningPlan(
        tuple(
            (n, GroupPlan("unstructured", 0.6) if n == "layers.4.conv1" else gp)
            for n, gp in plan.groups
            if n != "layers.4.conv2"
        ),
        plan.settings,
    )
    pruned = prune_model(model, plan, x, finetune_fn=between)
    assert pruned.steps_run == 3
    assert [s for s, _, _ in seen] == [1, 2]  # fine-tuned between steps, not after the last
    assert [c for _, c, _ in seen] == [12, 8]  # 16 * (1 - 0.75 * s / 3)
    assert [round(1 - m, 2) for _, _, m in seen] == [0.2, 0.4]
    assert pruned.module.layers[0].conv1.out_channels == 4
    assert abs((1 - pruned.masks["layers.4.conv1"].float().mean().item()) - 0.6) < 0.01


def test_finetune_keeps_masks_enforced(resnet20, calib):
    model, x, groups = resnet20
    pruned = prune_model(model, PruningPlan.uniform(groups, "unstructured", 0.7), x)
    res = finetune(pruned.module, calib, FinetuneConfig(steps=4, lr=0.05, lr_schedule="one-cycle"))
    assert res.steps == 4 and math.isfinite(res.loss_last)
    for name, mod in pruned.module.named_modules():
        if name in pruned.masks:
            assert bool((mod.weight[~pruned.masks[name]] == 0).all()), name
    module = pruned.make_permanent()
    for name, mod in module.named_modules():
        if name in pruned.masks:
            assert not hasattr(mod, "weight_orig")
            assert bool((mod.weight.detach()[~pruned.masks[name]] == 0).all())
    ev = evaluate(module, calib, x)
    assert ev.nonzero_params < ev.params


def test_finetune_nan_loss_is_a_clear_error(resnet20, calib):
    model = resnet20[0]
    bad = [(torch.full_like(calib[0][0], float("nan")), calib[0][1])]
    with pytest.raises(FinetuneDivergedError, match="diverged"):
        finetune(copy.deepcopy(model), bad, FinetuneConfig(steps=2))


def test_regularization_terms(resnet20):
    model, _, _ = resnet20
    assert regularization_loss(model, "bn-l1") > 0
    assert regularization_loss(model, "group-lasso") > 0
    assert regularization_loss(model, "none") == 0


@pytest.mark.slow
def test_finetuning_recovers_accuracy(trained_resnet20, digits):
    x = digits.example_input(1)
    val = digits.loader("val", 256)
    dense_acc = evaluate(trained_resnet20, val, x).accuracy
    assert dense_acc > 0.9
    groups = discover_groups(trained_resnet20, x)
    pruned = prune_model(trained_resnet20, PruningPlan.uniform(groups, "channel", 0.5), x)
    before = evaluate(pruned, val, x).accuracy
    finetune(
        pruned.module,
        digits.loader("train", 64),
        FinetuneConfig(epochs=1, lr=0.05, kd_weight=0.5),
        teacher=trained_resnet20,
    )
    after = evaluate(pruned, val, x).accuracy
    assert after > before + 0.2, (dense_acc, before, after)


def test_masked_models_can_be_deep_copied(resnet20, calib):
    model, x, groups = resnet20
    pruned = prune_model(model, PruningPlan.uniform(groups, "unstructured", 0.5), x)
    copy.deepcopy(pruned.module)  # right after pruning
    finetune(pruned.module, calib, FinetuneConfig(steps=1, lr=1e-3))
    copy.deepcopy(pruned.module)  # and after training


@pytest.mark.parametrize("criterion", ["l1", "fpgm", "bn-scale", "random", "snip"])
def test_criteria_are_callables_on_torch_pruning_groups(criterion, resnet20, calib):
    from autoprune.pruning.groups import build_index

    model, x, _ = resnet20
    work = copy.deepcopy(model)
    index = build_index(work, x)
    crit = CRITERIA.get(criterion)()
    crit.dg = index.dg
    crit.prepare(work, calib)
    scores = crit(index.tp_group("conv1"))
    assert scores.shape == (16,) and torch.isfinite(scores).all()
    assert abs(scores.mean().item() - 1) < 1e-4  # normalised to mean 1


@pytest.mark.parametrize("criterion", ["taylor", "l1", "fpgm"])
def test_a_score_cache_gives_the_same_pruning_and_skips_a_criterions_gradients(criterion, resnet20, calib,
                                                                               monkeypatch):
    """prune_model's score_cache: the second plan of the same dense model reads the first's channel scores;
    masks and kept channels are the ones computed without it, and a data-driven criterion is not prepared."""
    from autoprune.pruning.criteria import get_criterion

    model, x, groups = resnet20
    cache: dict = {}
    first = PruningPlan.uniform(groups, "channel", 0.3, criterion)
    second = PruningPlan.uniform(groups, "channel", 0.6, criterion, settings=PlanSettings(allocation="global",
                                                                                         global_ratio=0.6))
    prune_model(model, first, x, calib_loader=calib, score_cache=cache)
    assert cache and all(k[0] == criterion for k in cache)
    prepared = []
    real_prepare = type(get_criterion(criterion)).prepare
    monkeypatch.setattr(type(get_criterion(criterion)), "prepare",
                        lambda self, m, b: (prepared.append(1), real_prepare(self, m, b))[1])
    cached = prune_model(model, second, x, calib_loader=calib, score_cache=cache)
    assert not prepared  # every group's scores came from the cache
    plain = prune_model(model, second, x, calib_loader=calib)
    assert cached.kept_channels == plain.kept_channels
    assert all(torch.equal(cached.masks[n], plain.masks[n]) for n in plain.masks)
