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
