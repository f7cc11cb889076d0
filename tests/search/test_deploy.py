"""`autoprune export` on its default flags, on every kind of shipped target, through the real CLI.

Studies are tiny (the tiny user CNN of tests/fixtures, 3 anchor trials, no fine-tuning budget);
``local`` needs a calibration of that model, measured here with the library (`calibrate`) on a
coarse grid, so no zoo model is involved; that calibration makes the two `local` tests slow.
"""

from __future__ import annotations

import json
import shutil
import statistics
import tarfile

import numpy as np
import pytest

from autoprune.cli import main
from autoprune.io import file_sha256
from tests.conftest import TINY_REF

FAST = ["--model", TINY_REF, "--finetune-epochs", "0", "--no-progress"]
EXPORT = ["--trial", "2", "--epochs", "0", "--no-progress"]  # trial 2: the uniform 0.5 anchor
ELF_AARCH64 = 183  # e_machine of an AArch64 ELF file


def _study(results_root, target: str, name: str) -> str:
    url = f"sqlite:///{results_root / (name + '.db')}"
    assert main(["search", *FAST, "--target", target, "--trials", "3", "--study", name, "--storage", url]) == 0
    return url


def _export(url, study, out, *extra):
    return main(["export", "--study", study, "--storage", url, *EXPORT, "--out", str(out), *extra])


def _report(out) -> dict:
    return json.loads((out / "report.json").read_text())


def _elf_machine(data: bytes) -> int:
    assert data[:4] == b"\x7fELF", "not an ELF file"
    return int.from_bytes(data[18:20], "little")


@pytest.fixture(scope="module")
def jetson_study(tiny_dense, results_root):
    return _study(results_root, "jetson-nano", "deploy-jetson")


@pytest.fixture(scope="module")
def pi_study(tiny_dense, results_root):
    return _study(results_root, "raspberry-pi-4", "deploy-pi")


@pytest.fixture(scope="module")
def local_study(tiny_dense, results_root):
    """A measured local calibration of the tiny CNN (coarse: 4 plans, 2 grid points), then a study."""
    import torch

    from autoprune.costmodel.builder import CalibrationOptions, calibrate
    from autoprune.costmodel.calibration import calibration_path, save_calibration

    model = tiny_dense[0]
    torch.manual_seed(0)
    res = calibrate("tiny_cnn", CalibrationOptions(plans=4, grid=(0.5, 1.0), input_size_px=32), model=model)
    save_calibration(res.model, calibration_path("local", TINY_REF, 32), model_name="tiny_cnn",
                     input_shape=(3, 32, 32), runtime=res.runtime, status="measured", error=res.error)
    return _study(results_root, "local", "deploy-local")


@pytest.mark.slow
@pytest.mark.tvm
def test_export_local_builds_runs_and_measures_tvm_then_verify_passes(local_study, tmp_path, capsys):
    out = tmp_path / "local"
    assert _export(local_study, "deploy-local", out) == 0
    printed = capsys.readouterr().out
    r = _report(out)
    # ONNX, parity-checked, with its checksum and the reference outputs
    for name in ("model.onnx", "dense.onnx", "reference.npz", "model_tvm.so", "latency_per_layer.png"):
        assert (out / name).is_file(), name
        assert r["checksums"][name] == file_sha256(out / name)
    assert r["onnx"]["max_abs_diff"] <= r["onnx"]["atol"]
    ref = np.load(out / "reference.npz")
    assert ref["x"].shape == (32, 3, 32, 32) and ref["outputs"].shape == (32, 10) and len(ref["y"]) == 32
    # the TVM module: built for the profile's own TVM target, loaded back, run and compared with ORT
    t = r["tvm"]
    assert t["built"] and t["native"] and t["checked"] and t["format"] == "so"
    assert t["target"]["kind"] == "llvm" and t["samples"] == 32
    assert 0 <= t["max_abs_diff"] <= t["tolerance"]
    assert "loaded back and run" in printed
    # ONNX Runtime timed against the dense model, the untuned TVM module against ONNX Runtime (no speedup
    # against an untuned dense), labelled as measured here
    m = r["measured"]
    assert m["where"] == "measured here" and m["host"]
    ort, tvm = m["runtimes"]["onnxruntime"], m["runtimes"]["tvm"]
    assert ort["runtime"].startswith("onnxruntime") and ort["pruned_ms"] > 0 and ort["dense_ms"] > 0
    assert ort["rounds"] >= 4 and ort["speedup"] > 0 and ort["threads"] >= 1
    assert t["tuned"] is False and tvm["tuned"] is False and tvm["runtime"].startswith("tvm-")
    assert tvm["speedup"] is None and tvm["dense_ms"] is None and not tvm["ok"]
    assert tvm["pruned_ms"] > 0 and tvm["onnxruntime_ms"] > 0 and tvm["vs_onnxruntime"] > 0
    assert "TVM module (untuned)" in printed and "UNTUNED" in printed
    assert m["runtimes"]["onnxruntime"]["threads"] == 1  # the local calibration's thread count
    want = 100 * (r["predicted"]["latency_ms"] / m["latency_ms"] - 1)
    assert m["prediction_error_pct"] == pytest.approx(want)
    assert "MEASURED here" in printed and "prediction error" in printed
    assert r["predicted"]["calibration"]["status"] == "measured"
    assert r["predicted"]["calibration"]["heldout_mape"] is not None
    # verify re-checks all of it, speed included (a generous fraction: tests check behaviour, not timings)
    code = main(["verify", str(out), "--min-speedup-fraction", "0.5", "--quiet"])
    printed = capsys.readouterr().out
    assert code == 0, printed
    for needle in ("model.onnx sha256", "outputs on 32 reference inputs", "test accuracy", "TVM module outputs",
                   "speedup vs dense, onnxruntime", "speedup vs dense, tvm", "PASS"):
        assert needle in printed, needle


@pytest.mark.tvm
def test_export_jetson_says_what_to_run_on_the_device(jetson_study, tmp_path, capsys):
    out = tmp_path / "jetson"
    assert _export(jetson_study, "deploy-jetson", out) == 0
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err
    r = _report(out)
    assert (out / "model.onnx").is_file() and r["checksums"]["model.onnx"] == file_sha256(out / "model.onnx")
    assert not r["tvm"]["built"] and "CUDA" in r["tvm"]["reason"] and "NVIDIA" in r["tvm"]["reason"]
    tvm_lines = [ln for ln in captured.out.splitlines() if "TVM module" in ln]
    assert len(tvm_lines) == 1 and "CUDA" in tvm_lines[0]
    cmds = r["device"]["commands"]
    assert cmds[0].startswith("trtexec --onnx=model.onnx --fp16") and "dense.onnx" in cmds[1]
    assert cmds[0] in captured.out
    assert r["measured"] is None  # a Jetson is not this machine
    p = r["predicted"]["calibration"]
    assert p["status"] == "published" and p["heldout_mape"] > 0 and p["n_heldout"] > 0
    assert "held-out MAPE" in captured.out
    # verify passes on the fresh export; speed is not this machine's to check
    assert main(["verify", str(out), "--quiet"]) == 0
    assert "not this machine" in capsys.readouterr().out


@pytest.mark.tvm
def test_export_raspberry_pi_cross_builds_or_says_why(pi_study, tmp_path, capsys):
    out = tmp_path / "pi"
    assert _export(pi_study, "deploy-pi", out) == 0
    printed = capsys.readouterr().out
    r = _report(out)
    assert (out / "model.onnx").is_file()
    t = r["tvm"]
    assert t["built"] and not t["native"] and t["target"]["mtriple"] == "aarch64-linux-gnu"
    if shutil.which("aarch64-linux-gnu-g++") or shutil.which("aarch64-linux-gnu-gcc"):
        assert t["format"] == "so" and _elf_machine((out / "model_tvm.so").read_bytes()) == ELF_AARCH64
    else:
        assert t["format"] == "tar" and "apt-get install g++-aarch64-linux-gnu" in t["reason"]
        with tarfile.open(out / "model_tvm.tar") as tar:
            members = [m for m in tar.getmembers() if m.name.endswith(".o")]
            assert members
            for m in members:
                assert _elf_machine(tar.extractfile(m).read()) == ELF_AARCH64, m.name
        assert sum("TVM module" in ln for ln in printed.splitlines()) == 1
    assert r["predicted"]["calibration"]["status"] == "prior"


@pytest.mark.tvm
def test_a_failing_tvm_build_still_lands_the_onnx(pi_study, tmp_path, capsys, monkeypatch):
    from autoprune.profiling.tvm_runtime import TvmRuntime

    def broken(self, model, input_shapes=None):
        raise RuntimeError("simulated TVM crash in the compiler")

    monkeypatch.setattr(TvmRuntime, "compile", broken)
    out = tmp_path / "broken"
    assert _export(pi_study, "deploy-pi", out) == 0
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err
    r = _report(out)
    assert (out / "model.onnx").is_file() and (out / "reference.npz").is_file()
    assert not r["tvm"]["built"] and "simulated TVM crash" in r["tvm"]["reason"]
    assert not (out / "model_tvm.so").exists() and not (out / "model_tvm.tar").exists()
    lines = [ln for ln in captured.out.splitlines() if "simulated TVM crash" in ln]
    assert len(lines) == 1 and lines[0].strip().startswith("TVM module not built here")


def test_repeats_report_mean_and_sd(jetson_study, tmp_path, capsys):
    out = tmp_path / "repeats"
    assert _export(jetson_study, "deploy-jetson", out, "--repeats", "2", "--no-tvm") == 0
    printed = capsys.readouterr().out
    rep = _report(out)["repeats"]
    assert rep["k"] == 2 and len(rep["accuracies"]) == 2 and rep["seeds"] == [0, 1]
    assert rep["mean"] == pytest.approx(statistics.fmean(rep["accuracies"]))
    assert rep["sd"] == pytest.approx(statistics.stdev(rep["accuracies"]))
    assert rep["accuracies"][0] == _report(out)["test"]["accuracy"]  # the exported model is the first seed's
    assert f"{rep['mean']:.4f} ± {rep['sd']:.4f} over 2 seeds" in printed


def test_verify_exit_codes(jetson_study, tmp_path, capsys):
    import onnx
    from onnx import numpy_helper

    out = tmp_path / "verify"
    assert _export(jetson_study, "deploy-jetson", out, "--no-tvm") == 0
    capsys.readouterr()
    assert main(["verify", str(out), "--quiet"]) == 0
    assert "PASS" in capsys.readouterr().out

    # tampered weights: the classifier's weights zeroed, saved with onnx
    bad = tmp_path / "tampered"
    shutil.copytree(out, bad)
    proto = onnx.load(str(bad / "model.onnx"))
    init = max(proto.graph.initializer, key=lambda i: (len(i.dims) == 2, i.name))
    init.CopyFrom(numpy_helper.from_array(np.zeros_like(numpy_helper.to_array(init)), init.name))
    onnx.save(proto, str(bad / "model.onnx"))
    assert main(["verify", str(bad), "--quiet"]) == 1
    printed = capsys.readouterr().out
    regressions = [ln for ln in printed.splitlines() if ln.startswith("REGRESSION")]
    assert any("sha256" in ln for ln in regressions)
    assert any("outputs on 32 reference inputs" in ln and "expected max |diff| <=" in ln for ln in regressions)
    assert any("test accuracy" in ln for ln in regressions)

    # bad input: one line, exit 2
    report = json.loads((out / "report.json").read_text())
    corrupt = tmp_path / "corrupt"
    shutil.copytree(out, corrupt)
    (corrupt / "report.json").write_text(json.dumps(report)[:-40])
    not_export = tmp_path / "empty"
    not_export.mkdir()
    for folder, needle in ((tmp_path / "missing", "not found"), (not_export, "not an autoprune export"),
                           (corrupt, "corrupt")):
        assert main(["verify", str(folder)]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and needle in err[0], err


@pytest.mark.slow
def test_a_too_noisy_measurement_is_one_line_and_verify_skips_it(local_study, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr("autoprune.deploy.speed.MAX_RATIO_SPREAD", -1.0)  # every interleaved run "too noisy"
    out = tmp_path / "noisy"
    assert _export(local_study, "deploy-local", out, "--no-tvm") == 0
    printed = capsys.readouterr().out
    rec = _report(out)["measured"]["runtimes"]["onnxruntime"]
    assert not rec["ok"] and rec["noisy"] and "too noisy" in rec["reason"] and rec["attempts"] == 3
    assert rec["speedup"] > 0  # the figures are kept, flagged
    assert sum("too noisy" in ln for ln in printed.splitlines()) == 1
    assert (out / "model.onnx").is_file()
    assert main(["verify", str(out), "--quiet"]) == 0
    assert "not measured at export" in capsys.readouterr().out


def test_export_out_refuses_a_folder_of_other_files_unless_forced(jetson_study, tmp_path, capsys):
    """``--out DIR`` holding a user's files is refused (nothing overwritten); ``--force`` writes the export there,
    and the report checksums and lists only the export's own files. A re-export of the same trial needs no flag."""
    out = tmp_path / "users"
    out.mkdir()
    (out / "model.onnx").write_bytes(b"the user's own model")
    (out / "notes.txt").write_text("mine")
    assert _export(jetson_study, "deploy-jetson", out, "--no-tvm") == 2
    err = capsys.readouterr().err
    assert "is not empty" in err and "--force" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert (out / "model.onnx").read_bytes() == b"the user's own model" and not (out / "report.json").exists()
    assert _export(jetson_study, "deploy-jetson", out, "--no-tvm", "--force") == 0
    r = _report(out)
    assert "notes.txt" not in r["checksums"] and "notes.txt" not in r["files"]
    assert (out / "notes.txt").read_text() == "mine"
    assert r["checksums"]["model.onnx"] == file_sha256(out / "model.onnx")
    assert _export(jetson_study, "deploy-jetson", out, "--no-tvm") == 0  # an earlier export of this trial: no flag
