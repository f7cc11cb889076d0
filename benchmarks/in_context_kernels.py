"""Kernels in context: each convolution's time inside whole pruned models, against its isolated table.

The cost model times every layer alone (isolated tables) and fits, on whole models measured end to
end, one in-context scale per kernel plus a weight-streaming term. This script checks that
decomposition against what ONNX Runtime's own profiler reports per node *inside* the whole model:

1. Load the model's ``local`` calibration (``autoprune profile --target local --model MODEL`` writes it).
2. Draw ``--plans`` random pruned plans (seed 2000), export each and run it with ONNX Runtime's
   profiler on (CPU, 1 thread, batch 1, ``--runs`` runs after a warm-up); take each Conv node's median
   time. Convolutions are matched to the template's conv kernels in execution order, which is exact
   for a chain (VGG); the script stops with a message where the counts differ.
3. ``--repeats`` plans are profiled again and again, for the run-to-run spread of each node.

Prints per conv kernel: its median in-context time, in-context / isolated table (median and the
10th-90th percentiles over plans), in-context / the fitted model's per-kernel time, the correlation
of the extra time with the kernel's weight MB, and the run-to-run CV. All times are **measured**
here with ONNX Runtime's profiler (which adds a little per-node overhead) or **read** from the
calibration's tables.

    .venv/bin/python benchmarks/in_context_kernels.py                 # vgg11, 30 plans
    .venv/bin/python benchmarks/in_context_kernels.py --plans 10 --repeats 1
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

SIZES = {"resnet20": 32, "vgg11": 32, "resnet18": 224, "mobilenet_v2": 224}


def profile_nodes(graph: bytes, shape: tuple[int, ...], runs: int, warmup: int = 50
                  ) -> tuple[list[tuple[str, float]], float]:
    """``([(op, median ms)] per node in execution order, median model_run ms)`` from ORT's profiler."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.enable_profiling = True
    so.profile_file_prefix = os.path.join(tempfile.mkdtemp(), "prof")
    sess = ort.InferenceSession(graph, so, providers=["CPUExecutionProvider"])
    feed = {sess.get_inputs()[0].name: np.zeros(shape, np.float32)}
    for _ in range(warmup + runs):
        sess.run(None, feed)
    path = sess.end_profiling()
    events = json.loads(Path(path).read_text())
    os.remove(path)
    per: dict[str, list[float]] = collections.defaultdict(list)
    ops: dict[str, str] = {}
    total: list[float] = []
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
            per[e["name"]].append(e["dur"] / 1000)
            ops[e["name"]] = e["args"].get("op_name", "")
        elif e.get("cat") == "Session" and e["name"] == "model_run":
            total.append(e["dur"] / 1000)
    nodes = [(ops[n], float(np.median(v[warmup:] if len(v) > warmup else v))) for n, v in per.items()]
    return nodes, float(np.median(total[warmup:] if len(total) > warmup else total))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="vgg11", choices=sorted(SIZES))
    p.add_argument("--plans", type=int, default=30)
    p.add_argument("--runs", type=int, default=200, help="profiled runs per plan")
    p.add_argument("--repeats", type=int, default=2, help="plans profiled 6 times each for the run-to-run CV")
    args = p.parse_args()
    torch.set_num_threads(1)

    from autoprune.costmodel import load_cost_model
    from autoprune.costmodel.builder import prune_random
    from autoprune.costmodel.lut import _weight_mb
    from autoprune.costmodel.template import export_onnx_bytes
    from autoprune.errors import AutopruneError
    from autoprune.models import build_model
    from autoprune.pruning import discover_groups

    size = SIZES[args.model]
    try:
        cm = load_cost_model("local", args.model, (3, size, size), allow_prior=False)
    except AutopruneError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    feats = cm.template.features
    conv = [i for i, f in enumerate(feats) if f.op_class == "conv"]
    dense = build_model(args.model).eval()
    example = torch.zeros(1, 3, size, size)
    groups = discover_groups(dense, example)
    rng = np.random.default_rng(2000)
    arrays, keys = cm.template.arrays, cm.template.keys
    in_ctx, table, fitted, wmb, sums = [], [], [], [], []
    repeat_rows: list[list[list[float]]] = []
    for i in range(args.plans):
        pruned = prune_random(dense, example, groups, rng, round_to=8)
        shape = cm.template.describe(pruned)
        graph = export_onnx_bytes(pruned, example)
        nodes, total = profile_nodes(graph, tuple(example.shape), args.runs)
        times = [ms for op, ms in nodes if op in ("Conv", "FusedConv")]
        if len(times) != len(conv):
            print(f"error: ONNX Runtime ran {len(times)} convolutions, the template has {len(conv)}; this script "
                  f"matches them in order, which needs a model without fused-away or split convolutions",
                  file=sys.stderr)
            return 2
        in_ctx.append(times)
        cin, cout = np.asarray(shape.cin, float), np.asarray(shape.cout, float)
        fitted.append(cm.dense_kernel_ms(arrays, cin, cout, keys)[conv])  # isolated table x fit + streaming
        table.append(cm._table_ms(arrays, cin, cout, keys)[conv])  # the isolated table alone
        wmb.append(_weight_mb(arrays, cin, cout)[conv])
        sums.append((sum(ms for _, ms in nodes), total, cm.predict(shape).latency_ms))
        if i < args.repeats:
            repeat_rows.append([[ms for op, ms in profile_nodes(graph, tuple(example.shape), args.runs)[0]
                                 if op in ("Conv", "FusedConv")] for _ in range(6)])
        print(f"  plan {i + 1}/{args.plans}: model_run {total:.3f} ms, convs {sum(times):.3f} ms, predicted "
              f"{sums[-1][2]:.3f} ms", flush=True)
    ctx, tab, fk, w = (np.array(a) for a in (in_ctx, table, fitted, wmb))
    cv = np.mean([np.std(r, axis=0) / np.mean(r, axis=0) for r in map(np.array, repeat_rows)], axis=0) \
        if repeat_rows else np.full(len(conv), np.nan)
    print(f"\n{args.model}: {args.plans} random plans, ONNX Runtime profiler, CPU 1 thread, {args.runs} runs each "
          f"(measured); tables and fit from {cm.provenance.calibration_path} (read)")
    print(f"{'conv':>4s} {'dense cin>cout':>15s} {'in-ctx ms':>9s} {'ctx/table':>9s} {'p10-p90':>11s} "
          f"{'ctx/fitted':>10s} {'p10-p90':>11s} {'r(extra,MB)':>11s} {'run CV':>6s}")
    for j, k in enumerate(conv):
        rt, rf = ctx[:, j] / tab[:, j], ctx[:, j] / np.maximum(fk[:, j], 1e-9)
        extra = ctx[:, j] - tab[:, j]
        r = float(np.corrcoef(extra, w[:, j])[0, 1]) if np.std(w[:, j]) > 0 else float("nan")
        print(f"{j:4d} {f'{feats[k].cin}>{feats[k].cout}':>15s} {np.median(ctx[:, j]):9.3f} {np.median(rt):9.2f} "
              f"{np.percentile(rt, 10):5.2f}-{np.percentile(rt, 90):<5.2f} {np.median(rf):10.2f} "
              f"{np.percentile(rf, 10):5.2f}-{np.percentile(rf, 90):<5.2f} {r:11.2f} {cv[j]:6.1%}")
    s = np.array(sums)
    print(f"model_run - sum of nodes: median {np.median(s[:, 1] - s[:, 0]):.3f} ms; "
          f"model_run / predicted: median {np.median(s[:, 1] / s[:, 2]):.3f}, "
          f"p10-p90 {np.percentile(s[:, 1] / s[:, 2], 10):.3f}-{np.percentile(s[:, 1] / s[:, 2], 90):.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
