"""The contract every registered cost model keeps (one parametrised suite over ``COST_MODELS``).

Units are consistent (ms, mJ, bytes), NaN and ±inf never come back silently, and fitting and
predicting are deterministic. Kernel "measurements" here are synthetic but follow a roofline, so no
test depends on this machine's speed.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from torch import nn

from autoprune.costmodel import COST_MODELS, CostModel, FitSample, ModelTemplate, get_cost_model_class, target_spec
from autoprune.costmodel.builder import kernel_grid
from autoprune.costmodel.targets import energy_mj
from autoprune.costmodel.template import CandidateShape
from autoprune.errors import CalibrationError, ConfigError, UnknownNameError

NAMES = COST_MODELS.names()
BAD = [math.nan, math.inf, -math.inf]


class Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3, padding=1)
        self.conv2 = nn.Conv2d(16, 16, 3, padding=1)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(16, 10)

    def forward(self, x):
        x = torch.relu(self.conv2(torch.relu(self.conv1(x))))
        return self.fc(torch.flatten(self.pool(x), 1))


@pytest.fixture(scope="module")
def template() -> ModelTemplate:
    return ModelTemplate.from_model(Tiny().eval(), torch.zeros(1, 3, 16, 16), "tiny")


def _samples(template: ModelTemplate) -> list[FitSample]:
    """Isolated-kernel samples over the calibration grid, timed by a roofline (0.01 ms + MACs + bytes)."""
    out = []
    for key, points in kernel_grid(template, (0.25, 0.5, 0.75, 1.0), round_to=1).items():
        for f, ci, co in points:
            g = f.with_channels(ci, co)
            out.append(FitSample((g,), (key,), 0.01 + g.macs * 2e-8 + g.bytes_moved * 1e-8))
    return out


def _shape(template: ModelTemplate, c: int) -> CandidateShape:
    return template.shape_from_channels({"conv1": (3, c), "conv2": (c, c), "fc": (c, 10)})


def _fitted(name: str, template: ModelTemplate) -> CostModel:
    model = get_cost_model_class(name)(target_spec("jetson-nano"), template)
    model.fit(_samples(template))
    shapes = [_shape(template, c) for c in (4, 6, 8, 10, 12, 14, 16)]
    sums = np.array([model.predict(s).latency_ms for s in shapes])
    model.fit_correction(shapes, 1.3 * sums ** 1.1)  # a whole graph slower than its kernels, power != 1
    model.overhead_ms = 0.25  # as a calibration with a per-inference overhead stores it
    return model


def test_the_registry_lists_both_models_and_names_them_on_a_typo():
    assert {"lut", "regressor"} <= set(NAMES)
    with pytest.raises(UnknownNameError, match="lut"):
        get_cost_model_class("lutt")


@pytest.mark.parametrize("name", NAMES)
def test_a_prediction_is_in_consistent_units(name, template):
    model = _fitted(name, template)
    est = model.predict(_shape(template, 8))
    assert math.isfinite(est.latency_ms) and est.latency_ms > 0
    assert [m for m, _ in est.per_kernel_ms] == list(template.modules)
    assert all(math.isfinite(ms) and ms >= 0 for _, ms in est.per_kernel_ms)
    # per-kernel ms add up to the latency minus the per-inference overhead
    assert est.overhead_ms == 0.25
    assert sum(ms for _, ms in est.per_kernel_ms) == pytest.approx(est.latency_ms - est.overhead_ms, rel=1e-9)
    # energy in mJ from W x ms (+ pJ/byte x bytes), bytes and MACs as integers
    assert isinstance(est.macs, int) and isinstance(est.dram_bytes, int) and est.macs > 0 and est.dram_bytes > 0
    assert est.energy_mj == pytest.approx(energy_mj(model.target, est.latency_ms, est.dram_bytes))
    assert model.target.active_power_w is not None and est.energy_mj >= model.target.active_power_w * est.latency_ms
    assert est.provenance.cost_model == name
    dense = model.predict(template.dense_shape())
    assert dense.latency_ms > est.latency_ms and dense.macs > est.macs and dense.dram_bytes > est.dram_bytes


@pytest.mark.parametrize("name", NAMES)
def test_predicting_twice_or_from_saved_params_gives_the_same_estimate(name, template):
    model = _fitted(name, template)
    shape = _shape(template, 6)
    first = model.predict(shape)
    assert model.predict(shape) == first
    again = get_cost_model_class(name)(model.target, template)
    again.load_params(json.loads(json.dumps(model.params())))  # what a calibration file holds
    assert again.predict(shape).latency_ms == pytest.approx(first.latency_ms, rel=1e-12)


@pytest.mark.parametrize("name", NAMES)
def test_a_fit_on_the_same_samples_gives_the_same_params(name, template):
    a, b = _fitted(name, template), _fitted(name, template)
    assert json.dumps(a.params(), sort_keys=True) == json.dumps(b.params(), sort_keys=True)


@pytest.mark.parametrize("bad", BAD)
def test_a_non_finite_kernel_latency_is_refused(bad, template):
    f = template.features[0]
    with pytest.raises(ConfigError, match="positive finite"):
        FitSample((f,), (template.keys[0],), bad)


@pytest.mark.parametrize("bad", BAD)
@pytest.mark.parametrize("name", NAMES)
def test_a_non_finite_whole_model_latency_is_refused(name, bad, template):
    model = _fitted(name, template)
    before = model.params()
    shapes = [_shape(template, c) for c in (4, 8, 16)]
    with pytest.raises(ConfigError, match=r"latency #1 is .* ms"):
        model.fit_correction(shapes, [1.0, bad, 2.0])
    assert model.params() == before  # refused before anything was changed


@pytest.mark.parametrize("bad", BAD)
@pytest.mark.parametrize("name", NAMES)
def test_a_non_finite_candidate_is_refused(name, bad, template):
    model = _fitted(name, template)
    dense = template.dense_shape()
    n = len(dense.cin)
    with pytest.raises(ConfigError, match="not finite"):
        model.predict(CandidateShape(dense.cin, dense.cout, (bad,) * n, dense.nm_pattern))
    with pytest.raises(ConfigError, match="not finite"):
        model.predict(CandidateShape((bad, *dense.cin[1:]), dense.cout, dense.weight_density, dense.nm_pattern))


@pytest.mark.parametrize("bad", BAD)
@pytest.mark.parametrize("name", NAMES)
def test_non_finite_parameters_are_an_error_never_a_nan_latency(name, bad, template):
    model = _fitted(name, template)
    model.alpha = bad
    with pytest.raises(CalibrationError, match="not finite"):
        model.predict(_shape(template, 8))
