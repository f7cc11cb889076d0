"""Pick a Pareto point and export it for deployment.

Rebuild the plan from the dense checkpoint, fine-tune longer, report test-set
metrics, export ONNX (with the parity check) and a TVM module where it can be
built here, and write a per-layer latency chart and a JSON report to
``results/<study>/export-<trial>/``.
"""

from __future__ import annotations

import io
import time
from pathlib import Path
from typing import Any

from autoprune.errors import AutopruneError, ConfigError
from autoprune.io import atomic_write_bytes, results_dir, write_json
from autoprune.search.report import front_rows, plan_summary
from autoprune.search.study import SearchConfig


def pick_trial(study, config: SearchConfig, *, trial: int | None = None, max_latency_ms: float | None = None,
               min_accuracy: float | None = None) -> dict[str, Any]:
    """Choose the trial to export.

    With ``trial`` that trial (it must be COMPLETE); with ``max_latency_ms`` the most
    accurate front point under it; with ``min_accuracy`` the fastest front point
    above it; with both, the fastest point satisfying both.

    Raises:
        ConfigError: No such trial, no condition given, or no front point satisfies it.
    """
    rows, front, _ = front_rows(study, config)
    if trial is not None:
        match = [r for r in rows if r["number"] == trial]
        if not match:
            done = ", ".join(str(r["number"]) for r in rows[:20])
            raise ConfigError(f"trial {trial} is not a completed trial of {study.study_name!r} (completed: {done})")
        return match[0]
    if max_latency_ms is None and min_accuracy is None:
        raise ConfigError("say which point to export: --trial N, --max-latency-ms X or --min-accuracy A")
    ok = [r for r in front if (max_latency_ms is None or r["latency_ms"] <= max_latency_ms)
          and (min_accuracy is None or r["accuracy"] >= min_accuracy)]
    if not ok:
        raise ConfigError(
            f"no Pareto point of {study.study_name!r} has latency <= {max_latency_ms} ms and accuracy >= "
            f"{min_accuracy}; see `autoprune pareto --study {study.study_name}` for what is reachable")
    if min_accuracy is not None or max_latency_ms is None:
        return min(ok, key=lambda r: (r["latency_ms"], -r["accuracy"]))
    return max(ok, key=lambda r: (r["accuracy"], -r["latency_ms"]))


def build_tvm_module(onnx_path: Path, target: str, out_dir: Path) -> dict[str, Any]:
    """Compile the ONNX model with TVM Relax for the target's TVM target and export the library.

    Returns a record with ``path`` or the ``reason`` it could not be built here.
    """
    from autoprune.hardware import load_profile
    from autoprune.profiling.tvm_runtime import TvmRuntime, _cross_compiler, _target_triple

    spec = load_profile(target).tvm_target
    try:
        rt = TvmRuntime(target=spec)
        ex, _, _ = rt.compile(str(onnx_path))
        lib = out_dir / "model_tvm.so"
        triple = _target_triple(rt.target)
        import platform

        native = not triple or triple.startswith(platform.machine())
        fcompile = None if native else _cross_compiler(rt.target)
        ex.export_library(str(lib), fcompile=fcompile) if fcompile else ex.export_library(str(lib))
        return {"built": True, "path": str(lib), "target": spec, "bytes": lib.stat().st_size}
    except AutopruneError as exc:
        return {"built": False, "target": spec, "reason": str(exc)}
    except Exception as exc:  # noqa: BLE001 - TVM raises its own error types
        return {"built": False, "target": spec, "reason": f"{type(exc).__name__}: {str(exc).strip()[:300]}"}


def export_point(study, config: SearchConfig, row: dict[str, Any], *, epochs: int | None = None,
                 out_dir: Path | None = None, storage_url: str | None = None, progress: bool = True,
                 tvm: bool = True) -> dict[str, Any]:
    """Rebuild, fine-tune longer, evaluate on the test split and export one trial's plan."""
    from autoprune.pruning import PruningPlan
    from autoprune.search.runner import artifact_store, build_pipeline, study_space

    t0 = time.perf_counter()
    space = study_space(study, config)
    pipeline, dense_rec = build_pipeline(config, space, progress)
    plan = PruningPlan.from_dict(row["plan"])
    epochs = epochs if epochs is not None else 3 * pipeline.finetune_epochs
    trial = next(t for t in study.get_trials(deepcopy=False) if t.number == row["number"])
    kd = bool(trial.params.get("kd", space.distillation[0]))
    out_dir = Path(out_dir or results_dir() / study.study_name / f"export-{row['number']}")
    out_dir.mkdir(parents=True, exist_ok=True)
    onnx_path = out_dir / "model.onnx"
    result = pipeline.run(plan, kd=kd, split="test", epochs=epochs, onnx_path=onnx_path)
    dense_cost = pipeline.cost_model.predict(pipeline.dense)
    tvm_rec = build_tvm_module(onnx_path, config.target, out_dir) if tvm else {"built": False, "reason": "skipped"}
    chart = out_dir / "latency_per_layer.png"
    _layer_chart(dense_cost.per_kernel_ms, result.per_layer_ms, chart, config.target)
    report = {
        "study": study.study_name, "trial": row["number"], "target": config.target, "model": config.model,
        "plan_summary": plan_summary(row["plan"]), "plan": row["plan"], "finetune_epochs": epochs,
        "test": {"accuracy": result.accuracy, "precision_macro": result.precision_macro,
                 "recall_macro": result.recall_macro, "f1_macro": result.f1_macro},
        "dense_test_accuracy": dense_rec.test_accuracy,
        "predicted": {"latency_ms": result.latency_ms, "energy_mj": result.energy_mj,
                      "dense_latency_ms": dense_cost.latency_ms,
                      "speedup": dense_cost.latency_ms / result.latency_ms,
                      "provenance": result.latency_provenance, "energy": result.energy_method},
        "measured": {"latency_ms": result.measured_latency_ms, "runtime": result.measured_runtime}
        if result.measured_latency_ms is not None else None,
        "params": result.params, "macs": result.macs, "size_bytes": result.size_bytes,
        "sparse_size_bytes": result.sparse_size_bytes, "onnx": result.onnx, "tvm": tvm_rec,
        "files": [*sorted(p.name for p in out_dir.iterdir()), "report.json"],
        "seconds": round(time.perf_counter() - t0, 1),
    }
    write_json(out_dir / "report.json", report)
    if storage_url is not None:
        from optuna.artifacts import upload_artifact

        art = upload_artifact(artifact_store=artifact_store(storage_url), file_path=str(onnx_path),
                              study_or_trial=study, mimetype="application/octet-stream")
        study.set_user_attr(f"autoprune.export.{row['number']}", {"onnx_artifact_id": art, "dir": str(out_dir)})
    return {"dir": out_dir, "report": report}


def _layer_chart(dense: tuple, pruned: tuple, path: Path, target: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    names = [n for n, _ in dense]
    d = np.array([v for _, v in dense])
    pm = dict(pruned)
    p = np.array([pm.get(n, 0.0) for n in names])
    fig, ax = plt.subplots(figsize=(max(7, 0.28 * len(names)), 4.5), dpi=110)
    x = np.arange(len(names))
    ax.bar(x - 0.2, d, 0.4, label=f"dense ({d.sum():.3g} ms)")
    ax.bar(x + 0.2, p, 0.4, label=f"pruned ({p.sum():.3g} ms)")
    ax.set_xticks(x, [n or "(graph)" for n in names], rotation=90, fontsize=6)
    ax.set_ylabel(f"predicted latency on {target} (ms)")
    ax.set_title("where the time goes: per-kernel latency, dense vs pruned (predicted)")
    ax.legend()
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())
