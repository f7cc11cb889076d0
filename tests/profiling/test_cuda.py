"""The `cuda` target (an NVIDIA GPU in this machine): it builds here, and the GPU parts skip cleanly without one."""

from __future__ import annotations

import pytest

from autoprune.cli import main
from autoprune.hardware import load_profile


def _has_cuda_provider() -> bool:
    import onnxruntime as ort

    return "CUDAExecutionProvider" in ort.get_available_providers()


def _has_nvml_gpu() -> bool:
    try:
        import pynvml

        pynvml.nvmlInit()
        return pynvml.nvmlDeviceGetCount() > 0
    except Exception:  # noqa: BLE001 - no pynvml, no driver, no GPU
        return False


def test_cuda_profile_is_a_gpu_target_with_cited_figures():
    from autoprune.costmodel.targets import target_spec
    from autoprune.profiling.tvm_runtime import make_target

    p = load_profile("cuda")
    spec = target_spec("cuda")
    assert spec.processor == "gpu" and spec.precision == "fp32" and spec.peak_gflops == 66900
    assert p.runtime_options("onnxruntime")["providers"][0] == "CUDAExecutionProvider"
    assert {"device.gpu", "device.memory_bandwidth_gbs", "power.modes"} <= set(p.sources)
    target = make_target(p.runtime_options("tvm")["target"])
    assert target.kind.name == "cuda" and str(target.attrs["arch"]) == "sm_90"


@pytest.mark.skipif(_has_cuda_provider(), reason="this onnxruntime has the CUDA provider")
def test_profiling_cuda_without_the_gpu_wheel_is_one_line(capsys):
    assert main(["profile", "--target", "cuda", "--model", "resnet20", "--plans", "2"]) == 2
    err = capsys.readouterr().err
    assert "CUDAExecutionProvider" in err and "onnxruntime-gpu" in err and err.count("\n") == 1


@pytest.mark.skipif(not _has_cuda_provider(), reason="no CUDAExecutionProvider (pip install onnxruntime-gpu)")
def test_onnxruntime_measures_on_the_gpu(tiny_onnx):
    from autoprune.profiling import runtime_for_profile

    m = runtime_for_profile("cuda", "onnxruntime").measure(tiny_onnx, min_time_s=0.05, max_cv=5.0)
    assert m.runtime.endswith("/CUDAExecutionProvider") and m.latency_ms > 0


@pytest.mark.skipif(not _has_nvml_gpu(), reason="no NVIDIA GPU reachable through pynvml")
def test_nvml_reads_gpu_energy(tiny_onnx):
    from autoprune.hardware.energy import measure_energy
    from autoprune.hardware.sensor_spec import sensor_from_spec
    from autoprune.profiling.ort import OnnxRuntime

    run = OnnxRuntime(providers=["CUDAExecutionProvider"]).runner(tiny_onnx)
    r = measure_energy(run, sensor_from_spec("nvml"), min_time_s=1.0)
    assert r.source == "nvml:gpu0" and r.average_power_w > 0


@pytest.mark.tvm
def test_tvm_cuda_runs_where_a_gpu_exists(tiny_onnx):
    import tvm

    if not tvm.cuda(0).exist:
        pytest.skip("no CUDA device for TVM here")
    from autoprune.profiling import runtime_for_profile

    m = runtime_for_profile("cuda", "tvm").measure(tiny_onnx, min_time_s=0.05, max_cv=5.0)
    assert "/cuda" in m.runtime and m.latency_ms > 0
