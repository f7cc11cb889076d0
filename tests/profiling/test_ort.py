"""ONNX Runtime measurements of a small real model on this CPU."""

from __future__ import annotations

import math

import pytest

from autoprune.errors import ConfigError, ProfilingError, UnknownNameError
from autoprune.profiling import RUNTIMES, get_runtime

# Behaviour tests, not noise tests: CI machines are shared (noise rejection is tested in test_protocol).
FAST = {"min_time_s": 0.05, "warmup": 2, "max_cv": 10.0, "retries": 1}


def test_registry_lists_runtimes():
    assert "onnxruntime" in RUNTIMES
    with pytest.raises(UnknownNameError, match=r"valid: .*onnxruntime"):
        get_runtime("tensorrt")


def test_ort_measures_small_model(tiny_onnx, tiny_onnx_path):
    rt = get_runtime("onnxruntime", threads=1)
    for model in (tiny_onnx, tiny_onnx_path):
        m = rt.measure(model, (1, 3, 16, 16), **FAST)
        assert m.latency_ms > 0 and math.isfinite(m.latency_ms)
        assert 0 <= m.cv <= FAST["max_cv"] and m.repeats >= 10 and m.iqr_ms >= 0
        assert m.runtime.startswith("onnxruntime-") and m.runtime.endswith("/CPUExecutionProvider")
        assert m.threads == 1 and m.method == "measured"


def test_ort_static_shapes_and_dict_shapes(tiny_onnx):
    rt = get_runtime("onnxruntime")
    assert rt.measure(tiny_onnx, None, **FAST).latency_ms > 0
    assert rt.measure(tiny_onnx, {"x": (1, 3, 16, 16)}, **FAST).latency_ms > 0
    with pytest.raises(ConfigError, match="unknown input"):
        rt.measure(tiny_onnx, {"nope": (1, 3, 16, 16)}, **FAST)


def test_missing_provider_falls_back_and_says_so(tiny_onnx):
    rt = get_runtime("onnxruntime", providers=["CUDAExecutionProvider", "CPUExecutionProvider"])
    with pytest.warns(RuntimeWarning, match="CUDAExecutionProvider"):
        m = rt.measure(tiny_onnx, **FAST)
    assert "fallback: CUDAExecutionProvider unavailable" in m.runtime


def test_bad_model_is_a_profiling_error(tmp_path):
    rt = get_runtime("onnxruntime")
    with pytest.raises(ProfilingError, match="not found"):
        rt.measure(tmp_path / "missing.onnx")
    with pytest.raises(ProfilingError, match="cannot load"):
        rt.measure(b"not an onnx model")


def test_runtime_for_profile_uses_profile_options(tiny_onnx):
    from autoprune.profiling import runtime_for_profile

    rt = runtime_for_profile("local", "onnxruntime", threads=1)
    assert rt.threads == 1 and rt.providers == ["CPUExecutionProvider"]
    nano = runtime_for_profile("jetson-nano", "onnxruntime")
    assert nano.providers[0] == "CUDAExecutionProvider" and nano.threads == 4
    with pytest.raises(UnknownNameError, match="no 'tensorrt' runtime"):
        runtime_for_profile("local", "tensorrt")
