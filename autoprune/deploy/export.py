"""Pick a Pareto point and export it for deployment.

Rebuild the plan from the dense checkpoint, fine-tune longer (``repeats`` seeds), report
test-set metrics, and write to ``results/<study>/export-<trial>/`` (or ``out_dir``):

* ``model.onnx`` (parity-checked against PyTorch) and ``dense.onnx`` (the speed reference);
* ``reference.npz``: a fixed batch of test inputs and ``model.onnx``'s outputs on it, so that
  ``autoprune verify`` can re-check the file later (:mod:`autoprune.deploy.verify`);
* a TVM module for the target's own TVM target (``runtimes.tvm.target`` of its profile):
  ``model_tvm.so`` when it can be linked here (natively, or with a cross compiler), loaded
  back and run on the reference batch against ONNX Runtime's outputs where it is native;
  ``model_tvm.tar`` (the target's object files, linked on the board by
  ``tvm.runtime.load_module``) when no cross linker is installed; nothing, with the reason,
  for a CUDA target without NVIDIA's toolchain;
* on ``local``, the pruned and dense models timed against each other in one interleaved run
  per runtime (ONNX Runtime, and TVM where the module was built);
* for a CUDA (Jetson) target, the ``trtexec`` command lines to time both files on the device;
* ``latency_per_layer.png`` and ``report.json`` (with sha256 checksums of the files).

Only the ONNX export and the reference outputs are required: every other part that fails
(TVM build or run, a measurement, the chart) becomes a one-line ``notes`` entry and a field
in the report, and the export still lands.
"""

from __future__ import annotations

import io
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from autoprune.deploy import optional_step
from autoprune.deploy.speed import measure_local
from autoprune.deploy.tvm import build_tvm_module, device_commands
from autoprune.errors import ConfigError
from autoprune.io import atomic_write_bytes, file_sha256, results_dir, write_json
from autoprune.search.config import SearchConfig
from autoprune.search.report import front_rows, plan_summary

#: Files an export writes that a re-export to the same folder must not leave stale.
_ARTIFACTS = ("model_tvm.so", "model_tvm.tar", "dense.onnx", "reference.npz", "latency_per_layer.png",
              "report.json")


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


def _data_record(config: SearchConfig, data: Any) -> dict[str, Any]:
    ref = str(config.data)
    path = Path(ref)
    if ref != "digits" and path.exists():
        ref = str(path.resolve())
    return {"ref": ref, "input_size": int(data.input_shape[-1]), "input_shape": list(data.input_shape),
            "seed": int(config.data_seed), "key": data.key, "num_classes": int(data.num_classes)}


def export_point(study, config: SearchConfig, row: dict[str, Any], *, epochs: int | None = None,
                 out_dir: Path | None = None, storage_url: str | None = None, progress: bool = True,
                 tvm: bool = True, repeats: int = 1,
                 say: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Rebuild, fine-tune longer, evaluate on the test split and export one trial's plan.

    Args:
        study: The Optuna study.
        config: Its search configuration.
        row: The picked trial (from :func:`pick_trial`).
        epochs: Fine-tuning epochs (default: three times the search's).
        out_dir: Export folder (default ``results/<study>/export-<trial>``).
        storage_url: Attach ``model.onnx`` to the study as an Optuna artifact when given.
        progress: Progress bars while the dense model is loaded.
        tvm: Build the TVM module.
        repeats: Fine-tune the plan with this many seeds (``seed``, ``seed + 1``, ...) and report the
            test accuracy as mean ± sd; the exported model is the first seed's.
        say: Progress messages (one line each).

    Returns:
        ``{"dir": folder, "report": the report dict}`` (also written as ``report.json``).

    Raises:
        AutopruneError: The plan cannot be rebuilt, fine-tuned, evaluated or exported to ONNX.
    """
    from autoprune.deploy.reference import (
        REFERENCE_SAMPLES,
        REPORT_FORMAT,
        REPORT_VERSION,
        mean_sd,
        onnx_accuracy,
        onnx_outputs,
        reference_batch,
        save_reference,
    )
    from autoprune.hardware import load_profile
    from autoprune.pruning import PruningPlan, export_onnx
    from autoprune.search.objective import build_pipeline
    from autoprune.search.storage import get_storage
    from autoprune.search.study import study_space

    if repeats < 1:
        raise ConfigError(f"--repeats must be at least 1, got {repeats}")
    say = say or (lambda _msg: None)
    t0 = time.perf_counter()
    profile = load_profile(config.target)
    space = study_space(study, config)
    pipeline, dense_rec = build_pipeline(config, space, progress)
    pipeline.measure = False  # timed below, against the dense model in one interleaved run
    plan = PruningPlan.from_dict(row["plan"])
    epochs = epochs if epochs is not None else 3 * pipeline.finetune_epochs
    trial = next(t for t in study.get_trials(deepcopy=False) if t.number == row["number"])
    kd = bool(trial.params.get("kd", space.distillation[0]))
    out_dir = Path(out_dir or results_dir() / study.study_name / f"export-{row['number']}")
    out_dir.mkdir(parents=True, exist_ok=True)
    for name in _ARTIFACTS:
        (out_dir / name).unlink(missing_ok=True)
    onnx_path = out_dir / "model.onnx"
    notes: list[str] = []

    say(f"fine-tuning trial {row['number']} for {epochs} epoch(s), seed {pipeline.seed}, and exporting model.onnx")
    base_seed = pipeline.seed
    result = pipeline.run(plan, kd=kd, split="test", epochs=epochs, onnx_path=onnx_path)
    seeds, accs = [base_seed], [result.accuracy]
    for i in range(1, repeats):
        pipeline.seed = base_seed + i
        say(f"repeat {i + 1}/{repeats}: fine-tuning with seed {pipeline.seed}")
        accs.append(pipeline.run(plan, kd=kd, split="test", epochs=epochs).accuracy)
        seeds.append(pipeline.seed)
    pipeline.seed = base_seed
    mean, sd = mean_sd(accs)

    dense_onnx, dense_reason = optional_step(notes, "dense.onnx", lambda: export_onnx(
        pipeline.dense, out_dir / "dense.onnx", pipeline.example))
    x, y = reference_batch(pipeline.data, REFERENCE_SAMPLES)
    ref_out = onnx_outputs(onnx_path, x)
    save_reference(out_dir / "reference.npz", x, y, ref_out)
    onnx_acc, n_test = onnx_accuracy(onnx_path, pipeline.data)

    if tvm:
        say(f"building the TVM module for {config.target}")
        tvm_rec = build_tvm_module(onnx_path, profile, out_dir, reference=(x, ref_out))
        if tvm_rec.get("reason"):
            notes.append(f"TVM: {tvm_rec['reason']}")
    else:
        tvm_rec = {"built": False, "reason": "skipped (--no-tvm)"}

    dense_cost = pipeline.cost_model.predict(pipeline.dense)
    provenance = asdict(result.cost.provenance)
    ev = result.evaluation
    predicted_speedup = dense_cost.latency_ms / result.latency_ms
    measured = None
    if config.target == "local" and dense_onnx is None:
        measured = {"where": "measured here", "runtimes": {}, "reason": f"not measured: dense.onnx: {dense_reason}"}
    elif config.target == "local":
        say("timing pruned vs dense here (interleaved)")
        measured = measure_local(out_dir, profile, provenance, result.latency_ms, predicted_speedup,
                                  tuple(pipeline.example.shape), tvm_rec, notes)
    device = device_commands(profile, provenance)

    optional_step(notes, "per-layer chart", lambda: _layer_chart(dense_cost.per_kernel_ms, result.per_layer_ms,
                                                             out_dir / "latency_per_layer.png", config.target))
    checksums = {p.name: file_sha256(p) for p in sorted(out_dir.iterdir())
                 if p.is_file() and not p.name.startswith(".") and p.name != "report.json"}
    report = {
        "format": REPORT_FORMAT, "version": REPORT_VERSION,
        "study": study.study_name, "trial": row["number"], "target": config.target, "model": config.model,
        "seed": base_seed, "data": {**_data_record(config, pipeline.data), "test_samples": n_test},
        "plan_summary": plan_summary(row["plan"]), "plan": row["plan"], "finetune_epochs": epochs,
        "test": {"accuracy": ev.accuracy, "precision_macro": ev.precision_macro,
                 "recall_macro": ev.recall_macro, "f1_macro": ev.f1_macro, "onnx_accuracy": onnx_acc,
                 "samples": n_test},
        "repeats": {"k": repeats, "seeds": seeds, "accuracies": accs, "mean": mean, "sd": sd,
                    "exported_seed": base_seed},
        "dense_test_accuracy": dense_rec.test_accuracy,
        "predicted": {"latency_ms": result.latency_ms, "energy_mj": result.energy_mj,
                      "dense_latency_ms": dense_cost.latency_ms, "speedup": predicted_speedup,
                      "provenance": provenance, "energy": result.cost.provenance.energy,
                      "calibration": {k: provenance.get(k) for k in
                                      ("status", "calibration_id", "runtime", "heldout_mape", "heldout_spearman",
                                       "n_heldout", "note")}},
        "measured": measured,
        "params": ev.params, "macs": ev.macs, "size_bytes": ev.size_bytes,
        "sparse_size_bytes": ev.sparse_size_bytes,
        "onnx": {**(result.onnx or {}), "path": str(onnx_path), "sha256": checksums["model.onnx"]},
        "dense_onnx": {"path": str(out_dir / "dense.onnx"), "file_bytes": dense_onnx.file_bytes,
                       "max_abs_diff": dense_onnx.max_abs_diff, "atol": dense_onnx.atol}
        if dense_onnx is not None else {"path": None, "reason": dense_reason},
        "reference": {"file": "reference.npz", "samples": len(x), "split": "test",
                      "runtime": "onnxruntime CPUExecutionProvider, 1 thread"},
        "tvm": tvm_rec, "device": device, "notes": notes, "checksums": checksums,
        "files": [*sorted(p.name for p in out_dir.iterdir() if not p.name.startswith(".")), "report.json"],
        "seconds": round(time.perf_counter() - t0, 1),
    }
    write_json(out_dir / "report.json", report)
    if storage_url is not None:
        from optuna.artifacts import upload_artifact

        art = upload_artifact(artifact_store=get_storage(storage_url).artifacts, file_path=str(onnx_path),
                              study_or_trial=study, mimetype="application/octet-stream")
        study.set_user_attr(f"autoprune.export.{row['number']}", {"onnx_artifact_id": art, "dir": str(out_dir)})
        from autoprune.dashboard.note import update_study_note

        update_study_note(study, storage_url)
    return {"dir": out_dir, "report": report}


def _layer_chart(dense: tuple, pruned: tuple, path: Path, target: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

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
