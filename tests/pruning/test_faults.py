"""The one structural check every pruned model goes through (check_groups, the zoo's tests and survey)."""

from __future__ import annotations

from torch import nn

from autoprune.pruning.faults import depthwise_names, layer_faults


def _model() -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(3, 8, 3), nn.Conv2d(8, 8, 3, groups=8), nn.Conv2d(8, 4, 1, groups=2),
                         nn.Flatten(), nn.Linear(4, 2))


def test_a_dense_model_has_no_fault_and_its_depthwise_convs_are_named():
    model = _model()
    assert depthwise_names(model) == {"1"}
    assert layer_faults(model, depthwise_names(model)) == []


def test_each_fault_is_one_line_naming_the_layer():
    model, depthwise = _model(), depthwise_names(_model())
    model[1] = nn.Conv2d(8, 6, 3, groups=2)  # pruned out of depthwise
    model[2].in_channels = 5  # 5 input channels do not split into 2 groups
    model[4] = nn.Linear(0, 2)
    faults = layer_faults(model, depthwise)
    assert faults == ["1: no longer depthwise (8->6, groups=2)",
                      "2: 5->4 channels, not divisible by groups=2",
                      "4: zero-width weight (2, 0)"]
    assert layer_faults(model) == faults[1:]  # without the dense model's names, depthwise is not checked


def test_the_emptying_line_says_how_many_channels_can_go_found_by_bisection():
    from autoprune.pruning.faults import emptying_line

    units = [[i] for i in range(10)]
    order = [3, 1, 4, 0, 9, 2, 6, 8]  # the refused removal: 8 of 10
    tried: list[int] = []

    def accepts(idxs: list[int]) -> bool:  # channel 9 is a slice's only input: it must stay
        tried.append(len(idxs))
        return 9 not in idxs

    line = emptying_line(accepts, "conv1", order, units, dense=10, current=10)
    assert line == ("group 'conv1': removing 8 of 10 channels would empty a layer that sees only some of them; "
                    "at most 4 can go, so lower its ratio to 0.40 or less")
    assert len(tried) <= 3  # bisection over 8 prefixes, not one try each
    assert emptying_line(lambda ix: False, "c", [0, 1], units, 10, 10).endswith(
        "none can go: keep it whole (structure 'keep')")


class _SplitNet(nn.Module):
    """A foreign model whose first conv feeds a 4 / 12 channel split: the 4-channel slice empties first."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3, padding=1)
        self.a, self.b = nn.Conv2d(4, 8, 1), nn.Conv2d(12, 8, 1)
        self.head = nn.Linear(16, 2)

    def forward(self, x):
        import torch

        a, b = torch.split(self.conv1(x), [4, 12], dim=1)
        return self.head(torch.cat([self.a(a), self.b(b)], 1).mean((2, 3)))


def test_a_plan_that_would_empty_a_slice_keeps_its_best_channel_and_removes_the_next_lowest():
    import torch

    from autoprune.pruning import PruningPlan, discover_groups, prune_model

    model = _SplitNet().eval()
    with torch.no_grad():
        model.conv1.weight[:4] *= 1e-3  # the slice's channels score lowest under L1: they would all go first
    x = torch.randn(1, 3, 8, 8)
    groups = discover_groups(model, x)
    conv1 = next(g for g in groups if g.name == "conv1")
    plan = PruningPlan.uniform([conv1], "channel", 0.5)
    plan = PruningPlan(tuple(plan.groups) + tuple((g.name, PruningPlan.dense([g]).groups[0][1]) for g in groups
                                                  if g.name != "conv1"), plan.settings)
    pruned = prune_model(model, plan, x)
    done = pruned.module
    assert pruned.kept_channels["conv1"] == done.conv1.out_channels == 8  # the 8 asked for went
    assert (done.a.in_channels, done.b.in_channels) == (1, 7)  # the slice kept one channel, the other gave 5
    assert not layer_faults(done)


def test_spare_units_skips_a_unit_that_would_empty_a_partial_layer():
    from autoprune.pruning.faults import spare_units

    units = [[0, 4], [1, 5], [2, 6], [3, 7]]
    partial = [frozenset({0, 1}), frozenset({2, 3, 6, 7})]
    assert spare_units([0, 1, 2, 3], units, 2, partial) == [0, 2]  # unit 1 would empty {0, 1}
    assert spare_units([0, 1, 2, 3], units, 4, partial) == [0, 2]  # no more can go
    assert spare_units([3, 2, 1, 0], units, 2, []) == [3, 2]
