"""A tiny end-to-end LUT calibration on a very small model (real ONNX Runtime timings)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from autoprune.costmodel.calibrate import calibrate, prune_random
from autoprune.costmodel.template import export_onnx_bytes

torch.set_num_threads(1)


class Small(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 32, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(32)
        self.conv2 = nn.Conv2d(32, 32, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(32)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(32, 10)

    def forward(self, x):
        x = torch.relu(self.bn1(self.conv1(x)))
        x = torch.relu(self.bn2(self.conv2(x)))
        return self.fc(self.pool(x).flatten(1))


@pytest.mark.slow
def test_tiny_lut_calibration_predicts_fresh_measurement():
    import numpy as np

    from autoprune.profiling import get_runtime
    from autoprune.pruning import discover_groups

    model = Small().eval()
    res = calibrate("small", model=model, input_size=32, plans=4, grid=(0.5, 1.0), round_to=8)
    assert res.kernel_points >= 4 and res.model.provenance.status == "measured"
    example = torch.zeros(1, 3, 32, 32)
    pruned = prune_random(model, example, discover_groups(model, example), np.random.default_rng(7), round_to=8)
    measured = get_runtime("onnxruntime", threads=1).measure(
        export_onnx_bytes(pruned, example), None, min_time_s=0.2, max_cv=0.5).latency_ms
    predicted = res.model.predict(pruned).latency_ms
    assert predicted == pytest.approx(measured, rel=0.6)  # loose: the test machine is shared and noisy


def _wide(width: int) -> nn.Module:
    m = Small()
    m.conv1, m.bn1 = nn.Conv2d(3, width, 3, padding=1, bias=False), nn.BatchNorm2d(width)
    m.conv2, m.bn2 = nn.Conv2d(width, width, 3, padding=1, bias=False), nn.BatchNorm2d(width)
    m.fc = nn.Linear(width, 10)
    return m.eval()


def test_measure_vs_reference_orders_models_and_is_near_one_for_itself():
    from autoprune.costmodel.calibrate import measure_vs_reference
    from autoprune.profiling import get_runtime

    rt = get_runtime("onnxruntime", threads=1)
    example = torch.zeros(1, 3, 32, 32)
    small, big = export_onnx_bytes(_wide(8), example), export_onnx_bytes(_wide(96), example)
    ref = rt.runner(big)
    same = measure_vs_reference(rt, big, ref, {"rounds": 6})
    less = measure_vs_reference(rt, small, ref, {"rounds": 6})
    assert same.rounds == 6 and same.reference_ms > 0 and less.latency_ms > 0
    assert same.ratio == pytest.approx(1.0, rel=0.35)  # the same graph, another session, a noisy host
    assert less.ratio < 0.5 * same.ratio  # 8 vs 96 channels: ~100x fewer MACs in conv2


def test_kernel_scales_recover_per_kernel_in_context_factors():
    """Whole-model latencies built from known per-kernel factors: the fit finds them again."""
    import numpy as np

    from autoprune.costmodel.lut import LutCostModel
    from autoprune.costmodel.targets import target_spec
    from autoprune.costmodel.template import ModelTemplate

    model = _wide(64)
    example = torch.zeros(1, 3, 32, 32)
    tpl = ModelTemplate.from_model(model, example, "wide")
    cm = LutCostModel(target_spec("local"), tpl)
    # A regressor-only model (no tables) is enough: give it a simple, positive kernel time.
    rng = np.random.default_rng(0)
    n = len(tpl.kernels)
    true = rng.uniform(0.5, 2.0, n)
    shapes, measured = [], []
    for _ in range(40):
        c1, c2 = (int(x) for x in rng.integers(1, 9, 2) * 8)
        s = tpl.shape_from_channels({"conv1": (3, c1), "conv2": (c1, c2), "fc": (c2, 10)})
        shapes.append(s)
        measured.append(float(cm._kernel_ms(s)[0] @ true) + 0.05)
    stats = cm.fit_kernel_scales(shapes, measured, ridge=1e-6)
    tab = np.stack([np.asarray(cm._table_ms(tpl.arrays, np.asarray(s.cin, float), np.asarray(s.cout, float),
                                            tpl.keys)) for s in shapes])
    # The convolutions: their time varies with the plans and is a large share of the total. (Kernels the
    # plans never vary are confounded with the overhead, and tiny ones barely move the fit.)
    big = (tab.std(axis=0) > 0.05 * tab.mean(axis=0)) & (tab.mean(axis=0) > 0.1 * np.mean(measured))
    assert big.sum() >= 2 and stats["fit_mape"] < 0.01
    np.testing.assert_allclose(cm.kernel_fit[big, 3], true[big], rtol=0.05)
    fresh = tpl.shape_from_channels({"conv1": (3, 40), "conv2": (40, 24), "fc": (24, 10)})
    fresh_tab = cm._table_ms(tpl.arrays, np.asarray(fresh.cin, float), np.asarray(fresh.cout, float), tpl.keys)
    assert cm.predict(fresh).latency_ms == pytest.approx(float(fresh_tab @ true) + 0.05, rel=0.02)
