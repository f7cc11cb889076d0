"""The export's TVM module, tuned or untuned (autoprune.deploy.tvm, autoprune.deploy.speed).

An untuned module is labelled so, timed against ONNX Runtime on the same pruned model and given no speedup (against
an untuned dense it would mean nothing); a tuned one is timed against the dense model tuned alike
(``dense_tvm.so``), and a second export of the same models reuses the tuning database. The report's new keys
round-trip, and reports written before tuning existed read and write back unchanged.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from autoprune.deploy.speed import RuntimeSpeed, measure_local
from autoprune.deploy.tvm import DENSE_TVM, TuningRecord, TvmModule, build_tvm_module, export_tuning
from autoprune.errors import ConfigError
from autoprune.hardware import load_profile
from tests.profiling.conftest import tiny_convnet_bytes

pytest.importorskip("tvm")

pytestmark = pytest.mark.tvm

SHAPE = (1, 3, 16, 16)
CALIBRATION = {"runtime": "onnxruntime-1.32.0/CPUExecutionProvider threads=1"}


@pytest.fixture
def folder(tmp_path):
    """An export folder's ONNX side: the pruned model (8 channels) and the dense one (16)."""
    out = tmp_path / "export"
    out.mkdir()
    (out / "model.onnx").write_bytes(tiny_convnet_bytes(channels=8))
    (out / "dense.onnx").write_bytes(tiny_convnet_bytes(channels=16))
    return out


def _reference(folder: Path) -> tuple[np.ndarray, np.ndarray]:
    from autoprune.deploy.reference import onnx_outputs

    x = np.random.default_rng(0).random((4, *SHAPE[1:]), dtype=np.float32)
    return x, onnx_outputs(folder / "model.onnx", x)


def test_an_untuned_module_is_timed_against_onnxruntime_and_gets_no_speedup(folder):
    local = load_profile("local")
    rec = build_tvm_module(folder / "model.onnx", local, folder, reference=_reference(folder),
                           dense_onnx=folder / "dense.onnx")
    assert rec.built and rec.checked and rec.tuned is False and rec.label == "untuned"
    assert rec.tuning is None and rec.dense_path is None and not (folder / DENSE_TVM).exists()
    assert rec.to_dict()["tuned"] is False and "tuning" not in rec.to_dict()
    notes: list[str] = []
    m = measure_local(folder, local, CALIBRATION, 0.1, 2.0, SHAPE, rec, notes)
    tvm = m.runtimes["tvm"]
    assert not tvm.ok and tvm.tuned is False and tvm.runtime.endswith("/untuned")
    assert tvm.speedup is None and tvm.dense_ms is None  # never against an untuned dense
    assert tvm.pruned_ms > 0 and tvm.onnxruntime_ms > 0 and tvm.vs_onnxruntime > 0
    assert "untuned" in tvm.reason and "no speedup against an untuned dense" in tvm.reason
    assert "--tvm-tune-trials" in tvm.reason
    assert m.runtimes["onnxruntime"].speedup > 0 and m.runtimes["onnxruntime"].tuned is None
    # re-anchored: the predicted share of the dense time (0.1 ms of a 0.2 ms dense) times the dense time now
    ort = m.runtimes["onnxruntime"]
    assert m.host_scale == pytest.approx(ort.dense_ms / 0.2)
    assert m.reanchored_ms == pytest.approx(0.5 * ort.dense_ms)
    assert m.reanchored_error_pct == pytest.approx(100 * (0.5 * ort.dense_ms / ort.pruned_ms - 1))
    written = tvm.to_dict()
    assert written["tuned"] is False and written["speedup"] is None and written["vs_onnxruntime"] > 0
    assert RuntimeSpeed.from_dict(written) == tvm


def test_reports_written_before_tuning_read_and_write_back_unchanged():
    old_tvm = {"built": True, "target": {"kind": "llvm", "num-cores": 2}, "native": True, "checked": True,
               "kind": "llvm", "host_arch": "x86_64", "format": "so", "path": "/e/model_tvm.so", "bytes": 10,
               "max_abs_diff": 0.0, "tolerance": 1e-4, "samples": 32}
    rec = TvmModule.from_dict(old_tvm)
    assert rec.tuned is None and rec.tuning is None and rec.label == "untuned"
    assert list(rec.to_dict().items()) == list(old_tvm.items())
    old_speed = {"ok": True, "runtime": "tvm-0.27.0/llvm/untuned", "threads": 2, "pruned_ms": 1.0, "dense_ms": 2.0,
                 "speedup": 2.0, "ratio_spread": 0.1, "rounds": 8, "attempts": 1, "noisy": False, "host": "h"}
    assert list(RuntimeSpeed.from_dict(old_speed).to_dict().items()) == list(old_speed.items())
    skipped = {"ok": False, "reason": "not measured: --no-tvm"}
    assert RuntimeSpeed.from_dict(skipped).to_dict() == skipped


def test_tuning_is_refused_where_it_cannot_measure():
    assert export_tuning(load_profile("local"), "resnet20", 0) is None
    with pytest.raises(ConfigError, match="jetson-nano is not this machine"):
        export_tuning(load_profile("jetson-nano"), "resnet20", 8)
    with pytest.raises(ConfigError, match=">= 0"):
        export_tuning(load_profile("local"), "resnet20", -1)


def test_the_tuning_database_is_kept_per_target_and_model(tmp_path, monkeypatch):
    monkeypatch.setenv("AUTOPRUNE_RESULTS", str(tmp_path))
    tuning = export_tuning(load_profile("local"), "tests/fixtures/usermodel.py:build", 8, 60.0)
    assert tuning.trials == 8 and tuning.timeout_s == 60.0
    assert tuning.work_dir.parent.parent == tmp_path / "tvm-tuning" and tuning.work_dir.name == "usermodel.build"
    assert "generic" not in tuning.work_dir.parent.name  # tuned for this CPU, named by LLVM


@pytest.mark.slow
def test_a_tuned_module_is_timed_against_the_dense_model_tuned_alike(folder, tmp_path, monkeypatch):
    from autoprune.profiling.tvm_runtime import TvmRuntime, TvmTuning

    local = load_profile("local")
    tuning = TvmTuning(work_dir=tmp_path / "tvm-tuning" / "tiny", trials=4, timeout_s=300)
    rec = build_tvm_module(folder / "model.onnx", local, folder, reference=_reference(folder), tuning=tuning,
                           dense_onnx=folder / "dense.onnx")
    assert rec.built and rec.checked and rec.tuned and rec.label == "tuned", rec.reason
    assert rec.target["mcpu"] not in ("", "generic", "native")
    assert Path(rec.dense_path) == folder / DENSE_TVM and rec.dense_bytes == (folder / DENSE_TVM).stat().st_size
    t = rec.tuning
    assert (t.trials, t.database, t.stopped) == (4, str(tuning.work_dir), None)
    assert t.trials_run > 0 and t.records > 0 and t.seconds > 0
    assert TvmModule.from_dict(rec.to_dict()) == rec and TuningRecord.from_dict(t.to_dict()) == t
    # timed: the tuned module against the tuned dense, never dense.onnx compiled untuned
    loaded, real = [], TvmRuntime.local_runner
    monkeypatch.setattr(TvmRuntime, "local_runner",
                        lambda self, model, *a, **k: loaded.append(Path(model).name) or real(self, model, *a, **k))
    m = measure_local(folder, local, CALIBRATION, 0.1, 2.0, SHAPE, rec, [])
    tvm = m.runtimes["tvm"]
    assert loaded == ["model_tvm.so", DENSE_TVM]
    assert tvm.tuned and tvm.speedup > 0 and tvm.dense_ms > 0 and "/tuned-4" in tvm.runtime
    assert tvm.vs_onnxruntime is None
    # a second export of the same models measures nothing: both were covered by the first
    again = tmp_path / "again"
    again.mkdir()
    rec2 = build_tvm_module(folder / "model.onnx", local, again, reference=_reference(folder), tuning=tuning,
                            dense_onnx=folder / "dense.onnx")
    assert rec2.checked and rec2.tuning.trials_run == 0 and rec2.tuning.records == t.records
