"""A tiny end-to-end LUT calibration on a very small model (real ONNX Runtime timings)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from autoprune.costmodel.builder import CalibrationOptions, calibrate, prune_random
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
    # Noise rejection is tested below with a runtime that is noisy on purpose; this one must calibrate
    # on a shared CI machine, where a 15 us graph can show a 50-80 % CV.
    res = calibrate("small", CalibrationOptions(input_size_px=32, plans=4, grid=(0.5, 1.0), round_to=8, max_cv=2.0),
                    model=model)
    assert res.error["kernel_protocol"]["max_cv"] == 2.0
    assert res.kernel_points >= 4 and res.model.provenance.status == "measured"
    example = torch.zeros(1, 3, 32, 32)
    pruned = prune_random(model, example, discover_groups(model, example), np.random.default_rng(7), round_to=8)
    measured = get_runtime("onnxruntime", threads=1).measure(
        export_onnx_bytes(pruned, example), None, min_time_s=0.2, max_cv=10.0).latency_ms
    predicted = res.model.predict(pruned).latency_ms
    # A behaviour check, not a fidelity figure (benchmarks/cost_model_fidelity.py has those): a unit or
    # bookkeeping bug is off by 10x or more, while a shared CI machine can swing timings by 2x.
    assert measured / 3 < predicted < measured * 3
    assert isinstance(res.error["rejected_points"], list)


class _NoisyFor:
    """The real ONNX Runtime, except that the first ``n`` isolated measurements are too noisy."""

    def __init__(self, n: int) -> None:
        from autoprune.profiling import get_runtime

        self.inner, self.left, self.threads = get_runtime("onnxruntime", threads=1), n, 1

    def measure(self, model, shapes=None, **settings):
        from autoprune.errors import NoisyMeasurementError

        if self.left > 0:
            self.left -= 1
            raise NoisyMeasurementError("measurement on fake: too noisy after 3 batch(es) (CV 80%); quiet it")
        return self.inner.measure(model, shapes, **settings)

    def runner(self, model, shapes=None):
        return self.inner.runner(model, shapes)

    def describe(self, *a):
        return "fake-noisy/" + self.inner.describe(*a)


def test_noisy_isolated_points_are_rejected_not_stored_and_too_many_fail():
    from autoprune.errors import ConfigError, NoisyMeasurementError

    # 2 noisy measurements (each is tried strict, then relaxed): the overhead graph is rejected.
    options = CalibrationOptions(input_size_px=32, plans=2, grid=(0.5, 1.0), round_to=8)
    res = calibrate("small", options, model=Small().eval(), runtime=_NoisyFor(2))
    assert res.error["rejected_points"][0].startswith("runtime overhead: too noisy")
    assert res.error["runtime_overhead_ms"] is None and res.kernel_points >= 4
    assert all(v > 0 for t in res.model.tables.values() for row in t["ms"] for v in row)
    with pytest.raises(ConfigError, match="max_cv must be a positive number"):
        calibrate("small", CalibrationOptions(max_cv=0.0), model=Small().eval(), runtime=_NoisyFor(0))
    with pytest.raises(NoisyMeasurementError, match=r"isolated measurements were too noisy.*profile again"):
        calibrate("small", options, model=Small().eval(), runtime=_NoisyFor(10**6))


def _wide(width: int) -> nn.Module:
    m = Small()
    m.conv1, m.bn1 = nn.Conv2d(3, width, 3, padding=1, bias=False), nn.BatchNorm2d(width)
    m.conv2, m.bn2 = nn.Conv2d(width, width, 3, padding=1, bias=False), nn.BatchNorm2d(width)
    m.fc = nn.Linear(width, 10)
    return m.eval()


def test_measure_vs_reference_orders_models_and_is_near_one_for_itself():
    from autoprune.costmodel.builder import measure_vs_reference
    from autoprune.profiling import get_runtime

    rt = get_runtime("onnxruntime", threads=1)
    example = torch.zeros(1, 3, 32, 32)
    small, big = export_onnx_bytes(_wide(8), example), export_onnx_bytes(_wide(96), example)
    ref = rt.runner(big)
    same = measure_vs_reference(rt, big, ref, {"rounds": 6})
    less = measure_vs_reference(rt, small, ref, {"rounds": 6})
    assert same.rounds == 6 and same.reference_ms > 0 and less.latency_ms > 0
    assert same.ratio == pytest.approx(1.0, rel=0.5)  # the same graph, another session, a noisy host
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
    # The smallest plan, where the known fixed overhead is a large share, is predicted too (the overhead
    # itself shares its value with the kernels no plan varies: only their sum is identified).
    tiny = tpl.shape_from_channels({"conv1": (3, 8), "conv2": (8, 8), "fc": (8, 10)})
    tiny_tab = cm._table_ms(tpl.arrays, np.asarray(tiny.cin, float), np.asarray(tiny.cout, float), tpl.keys)
    assert cm.predict(tiny).latency_ms == pytest.approx(float(tiny_tab @ true) + 0.05, rel=0.03)


def test_weight_streaming_fit_recovers_known_costs_and_is_deterministic():
    """Whole models built from known per-kernel scales, a cache size and a DRAM cost per MB of weights:
    the fit finds them again, predicts a fresh plan on both sides of the cache size, and two fits agree."""
    import numpy as np

    from autoprune.costmodel.lut import LutCostModel
    from autoprune.costmodel.targets import target_spec
    from autoprune.costmodel.template import ModelTemplate

    model = _wide(512)  # conv2 holds 9.4 MB of weights dense, 0.15 MB at 64 channels
    example = torch.zeros(1, 3, 8, 8)
    tpl = ModelTemplate.from_model(model, example, "wide")
    rng = np.random.default_rng(1)
    n = len(tpl.kernels)
    true_scale, cache_mb, beta, overhead = rng.uniform(0.5, 2.0, n), 4.0, 0.08, 0.02

    raw = LutCostModel(target_spec("local"), tpl)  # isolated-kernel times only (never fitted)

    def truth(s):
        wmb = tpl.arrays.costs(np.asarray(s.cin, float), np.asarray(s.cout, float))[2] / 1e6
        miss = max(0.0, 1.0 - cache_mb / wmb.sum())
        return float(raw._kernel_ms(s)[0] @ true_scale) + overhead + beta * wmb.sum() * miss

    def fitted():
        cm = LutCostModel(target_spec("local"), tpl)
        shapes = []
        for c1, c2 in rng.integers(1, 65, (60, 2)) * 8:
            shapes.append(tpl.shape_from_channels({"conv1": (3, int(c1)), "conv2": (int(c1), int(c2)),
                                                   "fc": (int(c2), 10)}))
        measured = [truth(s) for s in shapes]
        return cm, cm.fit_kernel_scales(shapes, measured, ridge=1e-6), shapes, measured

    cm, stats, shapes, measured = fitted()
    assert stats["cache_mb"] == cache_mb and stats["weight_stream_ms_per_mb"] == pytest.approx(beta, rel=0.05)
    assert stats["fit_mape"] < 0.01 and cm.memory_fit == {"ms_per_mb": stats["weight_stream_ms_per_mb"],
                                                           "cache_mb": cache_mb}
    conv2 = list(tpl.modules).index("conv2")
    assert cm.kernel_fit[conv2, 3] == pytest.approx(true_scale[conv2], rel=0.05)
    for c in (48, 480):  # 0.08 MB (all cached) and 8.3 MB (half streams) of conv2 weights
        fresh = tpl.shape_from_channels({"conv1": (3, c), "conv2": (c, c), "fc": (c, 10)})
        assert cm.predict(fresh).latency_ms == pytest.approx(truth(fresh), rel=0.03)
    # Deterministic: the same data fit again gives the same parameters, and they survive a save/load.
    again = LutCostModel(target_spec("local"), tpl)
    assert again.fit_kernel_scales(shapes, measured, ridge=1e-6) == stats
    np.testing.assert_array_equal(again.kernel_fit, cm.kernel_fit)
    loaded = LutCostModel(target_spec("local"), tpl)
    loaded.load_params(cm.params())
    assert loaded.memory_fit == cm.memory_fit
    assert loaded.predict(shapes[0]).latency_ms == pytest.approx(cm.predict(shapes[0]).latency_ms, rel=1e-12)


@pytest.mark.slow
def test_profile_command_writes_a_checked_calibration(tmp_path, monkeypatch, capsys):
    """`autoprune profile --target local` end to end on the smallest zoo model, then read back."""
    import json

    from autoprune.cli import main
    from autoprune.costmodel.calibration import calibration_path, load_calibration

    monkeypatch.setenv("AUTOPRUNE_RESULTS", str(tmp_path))
    rc = main(["profile", "--target", "local", "--model", "resnet20", "--grid", "1.0", "--plans", "2",
               "--max-cv", "2"])
    out = capsys.readouterr().out
    path = calibration_path("local", "resnet20", 32)
    assert rc == 0 and f"calibration written: {path}" in out and "held-out error on 1 plans" in out
    data = json.loads(path.read_text())
    assert data["status"] == "measured" and data["error"]["kernel_protocol"]["max_cv"] == 2.0
    # the sample the default search space produces: unaligned, 4 channels at least, ratios up to 0.95
    assert (data["round_to"], data["min_channels"], data["max_ratio"]) == (1, 4, 0.95)
    assert data["error"]["heldout_by_decile"][0]["n"] == 1
    model = load_calibration(path)
    assert model.provenance.status == "measured" and model.tables
    assert 0.3 <= model.alpha <= 3.0 and model.overhead_ms == 0.0  # few fit points: a scale only
