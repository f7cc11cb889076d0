"""The calibration measures where the search goes: the smallest plans a default space exports, unaligned."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from autoprune.costmodel.builder.calibrate import (
    UNIFORM_LADDER,
    CalibrationOptions,
    error_by_decile,
    kernel_grid,
    random_plan,
)
from autoprune.costmodel.template import ModelTemplate
from autoprune.errors import ConfigError
from autoprune.search.space import SearchSpace


class _Two(nn.Module):  # a foreign model: two convs and a head, 40 and 88 channels (not multiples of 16)
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 40, 3, padding=1)
        self.b = nn.Conv2d(40, 88, 3, padding=1)
        self.fc = nn.Linear(88, 10)

    def forward(self, x):
        return self.fc(torch.relu(self.b(torch.relu(self.a(x)))).mean((2, 3)))


def _template() -> ModelTemplate:
    return ModelTemplate.from_model(_Two().eval(), torch.zeros(1, 3, 16, 16), "two")


def test_the_defaults_match_the_default_search_space():
    space = SearchSpace.load("default")
    o = CalibrationOptions()
    assert o.round_to == (space.round_to or 1) and o.min_channels == space.min_channels
    assert o.max_ratio == pytest.approx(space.ratio.high)
    assert o.ladder[-1] == o.max_ratio and set(UNIFORM_LADDER) <= set(o.ladder)
    assert CalibrationOptions(max_ratio=0.9).ladder == UNIFORM_LADDER  # what profile measured before


@pytest.mark.parametrize("bad", [{"max_ratio": 1.0}, {"max_ratio": 0.0}, {"min_channels": 0}, {"round_to": 0}])
def test_bad_sample_options_are_one_config_error(bad):
    with pytest.raises(ConfigError):
        CalibrationOptions(**bad)


def test_every_layer_grid_reaches_the_fewest_channels_a_plan_keeps():
    tpl = _template()
    unaligned = kernel_grid(tpl, (0.25, 0.5, 1.0), round_to=1, min_channels=4)
    aligned = kernel_grid(tpl, (0.25, 0.5, 1.0), round_to=8, min_channels=4)
    b_key = next(k for k, f in zip(tpl.keys, tpl.features) if f.cout == 88)
    couts = sorted({co for _, _, co in unaligned[b_key]})
    assert couts[0] == 4 and 22 in couts and 88 in couts  # 4 = min_channels, 22 = 0.25 x 88, unrounded
    assert sorted({ci for _, ci, _ in unaligned[b_key]})[0] == 4
    assert sorted({co for _, _, co in aligned[b_key]})[0] == 8  # aligned: never below the alignment
    assert all(co % 8 == 0 for _, _, co in aligned[b_key])


def test_random_plans_keep_at_least_min_channels_and_reach_the_largest_ratio():
    from autoprune.pruning import discover_groups, prune_model

    model = _Two().eval()
    example = torch.zeros(1, 3, 16, 16)
    groups = discover_groups(model, example)
    rng = np.random.default_rng(0)
    ratios, kept = [], []
    for _ in range(30):
        plan = random_plan(groups, rng, max_ratio=0.95, min_channels=4, p_unstructured=0.0, p_keep=0.0)
        ratios += [gp.ratio for _, gp in plan.groups]
        pruned = prune_model(model, plan, example).make_permanent()
        kept += [m.out_channels for m in pruned.modules() if isinstance(m, nn.Conv2d)]
    assert max(ratios) > 0.9 and min(kept) >= 4
    assert min(kept) < 8  # unaligned: the small counts a default search exports are measured


def test_error_by_decile_puts_the_fastest_plans_first():
    measured = np.arange(1, 21, dtype=float)  # 20 plans, 1..20 ms
    predicted = measured * np.where(measured <= 2, 1.2, 1.0)  # the two fastest over-predicted by 20 %
    d = error_by_decile(predicted, measured)
    assert len(d) == 10 and d[0]["n"] == 2 and (d[0]["low_ms"], d[0]["high_ms"]) == (1.0, 2.0)
    assert d[0]["mape"] == pytest.approx(0.2) and d[0]["within_10pct"] == 0.0
    assert d[0]["mean_signed_pct"] == pytest.approx(20.0)
    assert all(x["mape"] == pytest.approx(0.0) for x in d[1:])
    assert len(error_by_decile([1.0, 2.0], [1.0, 2.0])) == 2 and error_by_decile([], []) == []
