"""MetaSchedule tuning (autoprune.profiling.tvm_tune): the apache-tvm-ffi check, the database and its reuse,
tuned outputs against ONNX Runtime's.

The tuning tests skip, naming the fix, where apache-tvm-ffi cannot serialise TIR (0.1.15 with TVM 0.27).
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pytest

from autoprune.errors import ProfilingError

pytest.importorskip("tvm")

from autoprune.profiling import tvm_tune

pytestmark = pytest.mark.tvm

TARGET = {"kind": "llvm", "num-cores": 1}


def test_a_broken_tvm_ffi_is_refused_with_the_fix(monkeypatch):
    crashed = subprocess.CompletedProcess(args=[], returncode=-11, stdout="", stderr="!!! Segfault encountered !!!")
    monkeypatch.setattr(tvm_tune.subprocess, "run", lambda *a, **k: crashed)
    tvm_tune.check_tvm_ffi.cache_clear()
    try:
        with pytest.raises(ProfilingError, match=r"signal 11.*apache-tvm-ffi<0\.1\.15"):
            tvm_tune.check_tvm_ffi()
    finally:
        tvm_tune.check_tvm_ffi.cache_clear()


def test_tuning_dir_is_per_target_and_model(tmp_path):
    target = {"kind": "llvm", "mcpu": "znver4", "num-cores": 2}
    assert tvm_tune.tuning_dir(tmp_path, target, "resnet20") == tmp_path / "llvm-znver4-2c" / "resnet20"
    assert tvm_tune.tuning_dir(tmp_path, {"tag": "nvidia/jetson-nano"}, "m") == tmp_path / "nvidia-jetson-nano" / "m"


def test_host_cpu_target_names_the_cpu():
    import tvm

    spec = tvm_tune.host_cpu_target(2)
    assert spec["mcpu"] not in ("", "native", "generic") and spec["num-cores"] == 2
    assert tvm.target.Target(spec).attrs["mcpu"] == spec["mcpu"]


def test_a_line_cut_by_a_kill_is_dropped(tmp_path):
    (tmp_path / "database_workload.json").write_text('["2", "de')
    (tmp_path / "database_tuning_record.json").write_text('[0, [[[["GetSBlock"')
    assert len(tvm_tune._database(tmp_path)) == 0
    assert (tmp_path / "database_workload.json").read_text() == (tmp_path / "database_tuning_record.json").read_text()
    assert (tmp_path / "database_workload.json").read_text() == ""


@pytest.fixture(scope="module")
def relax_module(tiny_onnx_path):
    """The tiny conv net as a Relax module (skips where apache-tvm-ffi cannot serialise TIR)."""
    try:
        tvm_tune.check_tvm_ffi()
    except ProfilingError as exc:
        pytest.skip(str(exc))
    import onnx
    from tvm.relax.frontend.onnx import from_onnx

    return from_onnx(onnx.load(tiny_onnx_path), shape_dict={"x": [1, 3, 16, 16]})


@pytest.fixture(scope="module")
def tuned(relax_module, tmp_path_factory):
    work_dir = tmp_path_factory.mktemp("tvm-tuning") / "tiny"
    return tvm_tune.tune_relax_module(relax_module, TARGET, work_dir=work_dir, max_trials=4, timeout_s=300)


@pytest.mark.slow
def test_tuning_writes_a_database_that_a_second_run_reuses(relax_module, tuned):
    assert tuned.stopped is None and tuned.trials_run > 0 and tuned.records > 0
    assert tuned.database_path.is_file() and len(tuned.database_path.read_text().splitlines()) == tuned.records
    assert all(t.trials_run > 0 and t.trials_before == 0 for t in tuned.tasks)
    records = tuned.database_path.read_bytes()
    again = tvm_tune.tune_relax_module(relax_module, TARGET, work_dir=tuned.work_dir, max_trials=4, timeout_s=300)
    assert again.trials_run == 0 and again.records == tuned.records and again.stopped is None
    assert [t.trials_before for t in again.tasks] == [t.trials_run for t in tuned.tasks]
    assert tuned.database_path.read_bytes() == records
    manifest = json.loads((tuned.work_dir / "tuning.json").read_text())
    assert sorted(e["name"] for e in manifest["tasks"].values()) == sorted(t.name for t in tuned.tasks)


@pytest.mark.slow
def test_a_deadline_that_has_passed_measures_nothing(relax_module, tmp_path):
    res = tvm_tune.tune_relax_module(relax_module, TARGET, work_dir=tmp_path / "db", max_trials=50, timeout_s=0)
    assert res.stopped == "timeout" and res.trials_run == 0 and res.records == 0 and res.tasks


@pytest.mark.slow
def test_the_tuned_module_matches_onnxruntime(relax_module, tuned, tiny_onnx_path):
    ex = tvm_tune.build_tuned(relax_module, TARGET, tuned)
    rows = tvm_tune.time_against_onnxruntime(Path(tiny_onnx_path), {"tvm-tuned": ex}, tvm_threads=1,
                                             ort_threads=(1,), rounds=2, min_time_s=0.02)
    assert [r.name for r in rows] == ["tvm-tuned", "onnxruntime-1t"]
    assert rows[0].max_rel_diff < 1e-4 and rows[1].max_rel_diff == 0.0
    assert all(r.median_ms > 0 and r.q1_ms <= r.median_ms <= r.q3_ms for r in rows)
    import tvm
    from tvm import relax

    x = np.random.default_rng(1).random((1, 3, 16, 16), dtype=np.float32)
    got = relax.VirtualMachine(ex, tvm.cpu())["main"](tvm.runtime.tensor(x)).numpy()
    from autoprune.profiling.ort import create_session

    want = create_session(tiny_onnx_path, threads=1)[0].run(None, {"x": x})[0]
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5 * float(np.abs(want).max()))


@pytest.mark.slow
def test_a_record_tvm_cannot_read_back_is_set_aside(tuned, tmp_path):
    """A record TVM wrote but cannot load (seen on an RFactor trace) fails every later load; it is moved aside."""
    import shutil

    work_dir = tmp_path / "db"
    shutil.copytree(tuned.work_dir, work_dir)
    records = (work_dir / "database_tuning_record.json").read_text().splitlines()
    first = json.loads(records[0])
    assert first[1][0][0][0][0] == "GetSBlock"
    first[1][0][0][0][2][0] = "no_such_block"  # a trace that cannot be replayed on its task
    wrong = json.dumps(first, separators=(",", ":"))
    (work_dir / "database_tuning_record.json").write_text("\n".join([*records, wrong]) + "\n")
    assert len(tvm_tune._database(work_dir)) == len(records)
    assert (work_dir / "database_unreadable.json").read_text() == wrong + "\n"
    assert (work_dir / "database_tuning_record.json").read_text().splitlines() == records
