"""The published Jetson Nano calibration: roofline efficiencies fitted to public figures.

There is no Jetson Nano here. Instead, the regressor's per-class efficiency
factors (conv, depthwise conv, linear, elementwise, pooling) and a per-kernel
launch overhead are fitted, by non-negative least squares on relative error with
a weak pull toward datasheet priors, to published TensorRT FP16 batch-1 latencies
(MAXN) of seven reference networks. The leave-one-out error of every network is
stored with the fit. Regenerate the shipped file with::

    python -m autoprune.costmodel.builder.published

Sources (see /work/shared/reference/hardware-and-peers.md): NVIDIA-AI-IOT/torch2trt
``docs/benchmarks/jetson_nano.md`` (TensorRT column) and the play_with_tensorrt
README (MobileNetV2 FP16, MAXN + jetson_clocks); NVIDIA Jetson Nano datasheet
(FP16 472 GFLOPS, LPDDR4 25.6 GB/s).
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from scipy.stats import spearmanr

from ..calibration import published_path, save_calibration
from ..regressor import DEFAULT_EFFICIENCY, DEFAULT_OVERHEAD_MS, Regressor, fit_efficiencies, roofline_design
from ..targets import target_spec
from ..template import KernelArrays

__all__ = ["PRIOR_WEIGHT", "PUBLISHED_MS", "design_rows", "fit_published", "leave_one_out", "main"]

#: Published batch-1 TensorRT FP16 latencies on the Jetson Nano (MAXN), ms.
PUBLISHED_MS: dict[str, float] = {
    "resnet18": 11.4, "resnet34": 20.2, "resnet50": 29.8, "densenet121": 24.8,
    "squeezenet1_1": 4.34, "vgg16": 85.1, "mobilenet_v2": 17.7,
}
SOURCES = [
    "NVIDIA-AI-IOT/torch2trt docs/benchmarks/jetson_nano.md: TensorRT batch 1 224x224 FP16 MAXN "
    "(ResNet-18 11.4, ResNet-34 20.2, ResNet-50 29.8, DenseNet-121 24.8, SqueezeNet 1.1 4.34, VGG-16 85.1 ms)",
    "play_with_tensorrt README: MobileNetV2 TensorRT FP16 17.7 ms (MAXN, jetson_clocks)",
    "NVIDIA Jetson Nano datasheet: GPU FP16 472 GFLOPS, LPDDR4 25.6 GB/s",
]
RUNTIME = "TensorRT 8.x FP16 via torch2trt, batch 1, 224x224, nvpmodel MAXN (published figures)"
#: Pull toward the priors; chosen as a round value, not tuned on the leave-one-out error.
PRIOR_WEIGHT = 0.05
#: Prior efficiencies for a GPU running TensorRT FP16.
PRIOR_EFFICIENCY = {**DEFAULT_EFFICIENCY, "conv": 0.5, "dwconv": 0.1, "linear": 0.5}


def design_rows(names: Sequence[str] = tuple(PUBLISHED_MS)) -> dict[str, list[float]]:
    """Export each reference network once and return its roofline design row."""
    import torch

    from ..kernels import detect_kernels
    from ..template import export_onnx_bytes
    from .reference_nets import build_reference

    spec = target_spec("jetson-nano")
    rows = {}
    for name in names:
        net = build_reference(name)
        ks = detect_kernels(export_onnx_bytes(net, torch.zeros(1, 3, 224, 224)),
                            bytes_per_element=spec.bytes_per_element, with_weights=False)
        arrays = KernelArrays([k.features for k in ks], spec.bytes_per_element)
        rows[name] = roofline_design(spec, arrays, arrays.cin, arrays.cout).tolist()
    return rows


def fit_published(rows: dict[str, list[float]], names: Sequence[str] | None = None) -> tuple[dict[str, float], float]:
    """Fit efficiencies and overhead on ``names`` (default: all) of ``rows``."""
    names = list(names or rows)
    return fit_efficiencies(np.array([rows[n] for n in names]), np.array([PUBLISHED_MS[n] for n in names]),
                            PRIOR_EFFICIENCY, DEFAULT_OVERHEAD_MS, PRIOR_WEIGHT)


def _predict(row: Sequence[float], eff: dict[str, float], overhead_ms: float) -> float:
    cls = ("conv", "dwconv", "linear", "elementwise", "pooling")
    return float(sum(row[i] / eff[c] for i, c in enumerate(cls)) + row[-1] * overhead_ms)


def leave_one_out(rows: dict[str, list[float]]) -> dict[str, dict[str, float]]:
    """Refit without each network and predict it: ``{name: {published_ms, predicted_ms, error}}``."""
    out = {}
    for name in rows:
        eff, o = fit_published(rows, [n for n in rows if n != name])
        pred = _predict(rows[name], eff, o)
        out[name] = {"published_ms": PUBLISHED_MS[name], "predicted_ms": pred,
                     "error": pred / PUBLISHED_MS[name] - 1.0}
    return out


def build_payload(rows: dict[str, list[float]]) -> tuple[Regressor, dict[str, Any], dict[str, Any]]:
    """Fit on all networks; return the regressor, its error block and extra fields."""
    eff, o = fit_published(rows)
    reg = Regressor.from_roofline(target_spec("jetson-nano"), eff, o)
    loo = leave_one_out(rows)
    errs = np.array([abs(v["error"]) for v in loo.values()])
    rho = spearmanr([v["published_ms"] for v in loo.values()], [v["predicted_ms"] for v in loo.values()])[0]
    fit_err = {n: _predict(rows[n], eff, o) / PUBLISHED_MS[n] - 1.0 for n in rows}
    error = {
        "heldout_mape": float(errs.mean()), "heldout_spearman": float(rho), "n_heldout": len(loo),
        "note": f"leave-one-out over {len(loo)} published networks (whole-model latency, TensorRT FP16); "
                "not per-candidate pruned models, which were never measured on a Nano",
        "leave_one_out": loo, "in_sample_error": fit_err,
    }
    extra = {"efficiency": eff, "kernel_overhead_ms": o, "prior_efficiency": PRIOR_EFFICIENCY,
             "prior_weight": PRIOR_WEIGHT, "fit_data": {n: {"published_ms": PUBLISHED_MS[n], "design": rows[n]}
                                                         for n in rows},
             "design_columns": ["conv_ms@peak", "dwconv_ms@peak", "linear_ms@peak", "elementwise_ms@peak",
                                "pooling_ms@peak", "n_kernels"]}
    return reg, error, extra


def main(argv: Sequence[str] | None = None) -> int:
    """Regenerate the shipped ``jetson-nano`` calibration and print its leave-one-out errors."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=published_path("jetson-nano"))
    args = parser.parse_args(argv)
    rows = design_rows()
    reg, error, extra = build_payload(rows)
    save_calibration(reg, args.out, model_name="any", input_shape=(3, 224, 224), runtime=RUNTIME,
                     status="published", error={k: v for k, v in error.items()}, sources=SOURCES, extra=extra)
    print(f"wrote {args.out}")
    print("efficiency:", {k: round(v, 3) for k, v in extra["efficiency"].items()},
          f"kernel overhead {extra['kernel_overhead_ms'] * 1e3:.1f} us")
    for n, v in error["leave_one_out"].items():
        print(f"  {n:14s} published {v['published_ms']:6.2f} ms  LOO-predicted {v['predicted_ms']:6.2f} ms  "
              f"error {v['error']:+.1%}  (in-sample {error['in_sample_error'][n]:+.1%})")
    print(f"LOO MAPE {error['heldout_mape']:.1%}, Spearman {error['heldout_spearman']:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
