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
