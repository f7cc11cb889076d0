"""What ``autoprune export`` prints about its TVM module: an untuned module is labelled ``untuned`` with its
slowdown against ONNX Runtime and no speedup against an untuned dense; a tuned one's speedup is against the dense
model tuned alike."""

from __future__ import annotations

import re

from autoprune.commands.export import summary_lines
from autoprune.deploy.report import ExportReport

ORT = {"ok": True, "runtime": "onnxruntime-1.32.0/CPUExecutionProvider", "threads": 1, "pruned_ms": 0.2,
       "dense_ms": 1.0, "speedup": 5.0, "ratio_spread": 0.05, "rounds": 8, "attempts": 1, "noisy": False,
       "host": "h/cpu"}
MODULE = {"built": True, "target": {"kind": "llvm", "num-cores": 2}, "native": True, "checked": True,
          "kind": "llvm", "format": "so", "path": "/e/model_tvm.so", "bytes": 10, "max_abs_diff": 1e-7,
          "tolerance": 1e-4, "samples": 32}


def _report(tvm: dict, tvm_speed: dict) -> ExportReport:
    return ExportReport.from_dict({
        "trial": 2, "plan_summary": "channel 50 %", "dense_test_accuracy": 0.97,
        "test": {"accuracy": 0.95, "f1_macro": 0.95, "onnx_accuracy": 0.95, "samples": 360},
        "repeats": {"k": 1, "seeds": [0], "accuracies": [0.95], "mean": 0.95, "exported_seed": 0},
        "predicted": {"latency_ms": 0.2, "energy_mj": 1.0, "dense_latency_ms": 1.0, "speedup": 5.0,
                      "calibration": {"status": "measured", "calibration_id": "c1"}},
        "measured": {"where": "measured here", "host": "h/cpu", "input_shape": [1, 3, 32, 32],
                     "runtimes": {"onnxruntime": ORT, "tvm": tvm_speed}},
        "onnx": {"path": "/e/model.onnx", "file_bytes": 100, "opset": 17, "max_abs_diff": 1e-6, "atol": 1e-4,
                 "sha256": "0" * 64},
        "reference": {"file": "reference.npz", "samples": 32}, "tvm": tvm, "notes": [],
    })


def test_an_untuned_export_prints_its_slowdown_and_no_speedup_against_an_untuned_dense():
    untuned = {"ok": False, "runtime": "tvm-0.27.0/llvm/untuned", "threads": 2, "pruned_ms": 7.0, "dense_ms": None,
               "speedup": None, "ratio_spread": 0.05, "rounds": 8, "attempts": 1, "noisy": False, "host": "h/cpu",
               "tuned": False, "onnxruntime_ms": 0.2, "vs_onnxruntime": 35.0, "reason": "untuned: ..."}
    lines = summary_lines(_report({**MODULE, "tuned": False}, untuned), "/e")
    tvm_lines = [ln for ln in lines if "tvm-" in ln or "TVM module" in ln]
    assert any("TVM module (untuned)" in ln for ln in tvm_lines)
    [timed] = [ln for ln in tvm_lines if "tvm-0.27.0" in ln]
    assert "UNTUNED" in timed and "35.00x ONNX Runtime's 0.2 ms" in timed and "--tvm-tune-trials" in timed
    speedups = [ln for ln in lines if re.search(r"speedup \d", ln)]
    assert speedups and all("onnxruntime-1.32.0" in ln for ln in speedups)  # ONNX Runtime's alone


def test_a_tuned_export_prints_its_speedup_against_the_tuned_dense():
    tuned = {**ORT, "runtime": "tvm-0.27.0/llvm:znver4/tuned-64", "threads": 2, "pruned_ms": 0.3, "dense_ms": 1.2,
             "speedup": 4.0, "tuned": True}
    module = {**MODULE, "tuned": True, "dense_path": "/e/dense_tvm.so", "dense_bytes": 20,
              "tuning": {"trials": 64, "timeout_s": 600.0, "database": "results/tvm-tuning/llvm-znver4-2c/m",
                         "cost_model": "xgb", "trials_run": 60, "records": 60, "seconds": 55.0}}
    lines = summary_lines(_report(module, tuned), "/e")
    assert any("TVM module (tuned)" in ln for ln in lines)
    [tuning] = [ln for ln in lines if "tuned with MetaSchedule" in ln]
    assert "64 trials per model" in tuning and "60 measured now" in tuning and "dense_tvm.so" in tuning
    i = next(i for i, ln in enumerate(lines) if "tuned-64" in ln)
    assert "speedup 4.00x" in lines[i] and "tuned vs tuned dense" in lines[i + 1]
    assert "1.50x ONNX Runtime's 0.2 ms" in lines[i + 1]
