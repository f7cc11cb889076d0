"""Measured, not assumed: does pruning make ResNet-18 faster on this CPU?

ResNet-18 at 224×224, batch 1, ONNX Runtime CPU with a fixed thread count:
dense vs 50 % ``channel`` vs 50 % ``unstructured`` (both L1, local allocation).
Weights are the zoo's random initialisation (nothing is downloaded); latency of
dense kernels does not depend on weight values, which is the point of the
unstructured row.

Every latency is **measured** here with ONNX Runtime through
``autoprune.profiling.protocol.measure_callable`` (warm-up, then repeats until a
minimum time; median and IQR). To be fair under background load, the variants
are measured in interleaved rounds (dense, channel, unstructured, dense, ...):
the latency is the median of all of a variant's samples, and the speedup is the
median over rounds of the per-round ratio dense / variant, so slow drifts of the
machine's load hit every variant alike. Run it on a quiet machine; on a shared
one the spread (IQR, CV, ratio range) says how far to trust the numbers.

Usage::

    .venv/bin/python benchmarks/pruning_speedup.py --threads 2 [--min-time 3] [--json out.json]
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import tempfile
from pathlib import Path

import torch


def _session(path: Path, threads: int):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2, help="ONNX Runtime intra-op threads (default 2)")
    parser.add_argument("--ratio", type=float, default=0.5, help="pruning ratio (default 0.5)")
    parser.add_argument("--size", type=int, default=224, help="input side in pixels (default 224)")
    parser.add_argument("--min-time", type=float, default=3.0, help="seconds of timed runs per model (default 3)")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved measurement rounds (default 5)")
    parser.add_argument("--warmup", type=int, default=10, help="untimed runs first (default 10)")
    parser.add_argument("--max-cv", type=float, default=0.25, help="reject a batch noisier than this robust CV")
    parser.add_argument("--json", type=Path, default=None, help="also write the results as JSON here")
    args = parser.parse_args(argv)

    import onnxruntime as ort

    from autoprune.io import write_json
    from autoprune.models import build_model
    from autoprune.profiling.protocol import host_description, measure_callable, summarize_timings
    from autoprune.pruning import PruningPlan, discover_groups, evaluate, export_onnx, prune_model

    torch.manual_seed(0)
    torch.set_num_threads(max(1, args.threads))
    model = build_model("resnet18", num_classes=1000).eval()
    x = torch.randn(1, 3, args.size, args.size)
    groups = discover_groups(model, x)
    variants = {
        "dense": model,
        f"channel {args.ratio:.0%}": prune_model(model, PruningPlan.uniform(groups, "channel", args.ratio), x),
        f"unstructured {args.ratio:.0%}": prune_model(
            model, PruningPlan.uniform(groups, "unstructured", args.ratio), x
        ),
    }
    feed = {"input": x.numpy()}
    rows, sessions = [], {}
    runtime = f"onnxruntime-{ort.__version__} CPUExecutionProvider"
    with tempfile.TemporaryDirectory() as tmp:
        for name, variant in variants.items():
            path = Path(tmp) / f"{name.split()[0]}.onnx"
            exported = export_onnx(variant, path, x)
            ev = evaluate(variant, [], x)
            sessions[name] = _session(path, args.threads)
            rows.append(
                {
                    "variant": name,
                    "params": ev.params,
                    "nonzero_params": ev.nonzero_params,
                    "macs": ev.macs,
                    "onnx_bytes": exported.file_bytes,
                    "onnx_max_abs_diff": exported.max_abs_diff,
                }
            )
        per_round: dict[str, list[float]] = {name: [] for name in variants}
        samples: dict[str, list[float]] = {name: [] for name in variants}
        for r in range(max(1, args.rounds)):
            for name, sess in sessions.items():
                m = measure_callable(
                    lambda sess=sess: sess.run(None, feed),
                    warmup=args.warmup if r == 0 else 2,
                    min_time_s=args.min_time / max(1, args.rounds),
                    min_repeats=5,
                    max_cv=args.max_cv,
                    timeout_s=600,
                    runtime=runtime,
                    threads=args.threads,
                )
                per_round[name].append(m.latency_ms)
                samples[name].extend(m.samples_ms)
    dense_name = next(iter(variants))
    for row in rows:
        m = summarize_timings(samples[row["variant"]], runtime=runtime, threads=args.threads, max_cv=None)
        ratios = sorted(d / v for d, v in zip(per_round[dense_name], per_round[row["variant"]]))
        row.update(
            latency_ms=m.latency_ms,
            iqr_ms=m.iqr_ms,
            cv=m.cv,
            repeats=m.repeats,
            speedup=statistics.median(ratios),
            speedup_min=ratios[0],
            speedup_max=ratios[-1],
            round_medians_ms=per_round[row["variant"]],
        )
    print(f"ResNet-18 {args.size}x{args.size}, batch 1, measured with ONNX Runtime {ort.__version__} CPU, "
          f"{args.threads} thread(s), on {host_description()} (python {platform.python_version()})")
    header = f"{'variant':<18}{'median ms':>10}{'IQR ms':>9}{'CV':>7}{'n':>6}{'speedup (range)':>20}" \
             f"{'params':>12}{'nonzero':>12}{'MMACs':>9}{'ONNX bytes':>13}"
    print(header)
    print("-" * len(header))
    for r in rows:
        speedup = f"{r['speedup']:.2f}x ({r['speedup_min']:.2f}-{r['speedup_max']:.2f})"
        print(
            f"{r['variant']:<18}{r['latency_ms']:>10.2f}{r['iqr_ms']:>9.2f}{r['cv']:>7.3f}{r['repeats']:>6}"
            f"{speedup:>20}{r['params']:>12,}{r['nonzero_params']:>12,}{r['macs'] / 1e6:>9.0f}"
            f"{r['onnx_bytes']:>13,}"
        )
    if args.json:
        write_json(args.json, {"benchmark": "pruning_speedup", "threads": args.threads, "size": args.size,
                               "rounds": args.rounds, "device": host_description(), "method": "measured",
                               "rows": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
