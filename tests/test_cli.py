import subprocess
import sys
import time
from pathlib import Path

import pytest

from autoprune.cli import COMMANDS, main


def run_cli(*args, env=None, timeout=120):
    return subprocess.run([sys.executable, "-m", "autoprune", *args], capture_output=True, text=True,
                          env=env, timeout=timeout)


def test_help_is_fast_and_lists_commands():
    t0 = time.perf_counter()
    proc = run_cli("--help")
    assert time.perf_counter() - t0 < 2.0
    assert proc.returncode == 0
    for name in ("search", "profile", "targets", "pareto", "export", "dashboard", "train"):
        assert name in proc.stdout


def test_help_does_not_import_heavy_packages():
    code = ("import sys; from autoprune.cli import build_parser; build_parser(); "
            "print(sorted(m for m in ('torch', 'ray', 'tvm', 'onnxruntime', 'optuna') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_each_command_has_help(name, capsys):
    with pytest.raises(SystemExit) as exc:
        main([name, "--help"])
    assert exc.value.code == 0
    assert "usage: autoprune" in capsys.readouterr().out


def test_version():
    proc = run_cli("--version")
    assert proc.returncode == 0 and proc.stdout.startswith("autoprune ")


@pytest.mark.parametrize("args", [["search", "--trials", "0"], ["search", "--trials", "-3"],
                                  ["search", "--min-accuracy", "1.5"], ["nonsense"],
                                  ["search", "--max-latency-ms", "nan"]])
def test_bad_argument_is_one_line_exit_2(args):
    proc = run_cli(*args)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "error" in lines[0] and "Traceback" not in proc.stderr


@pytest.mark.parametrize("args,needle", [
    (["search", "--target", "jetson-xavier"], "valid: cuda, jetson-nano"),
    (["search", "--model", "resnet999"], "valid: mobilenet_v2"),
    (["search", "--space", "nope"], "valid: default"),
    (["search", "--study", "does-not-exist", "--storage", "sqlite:///{tmp}/x.db"], "no study named"),
])
def test_user_errors_are_one_clear_line(args, needle, tmp_path):
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    proc = run_cli(*args)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0], proc.stderr
    assert not (tmp_path / "x.db").exists() or "no study" in lines[0]


def _handles_sigterm(pid: int) -> bool:
    """True once the process has a SIGTERM handler of its own (``SigCgt`` in ``/proc/PID/status``)."""
    import signal

    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    caught = int(next(ln.split()[1] for ln in status.splitlines() if ln.startswith("SigCgt:")), 16)
    return bool(caught >> (signal.SIGTERM - 1) & 1)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc to know when the handler is set")
def test_sigterm_during_dense_training_is_a_clean_stop(tmp_path):
    """SIGTERM mid-training (``kill``, a scheduler's stop) unwinds as Ctrl-C: one line, exit 130, and no
    checkpoint, whole or half-written, is left (the next run trains from the start)."""
    import os
    import signal

    from tests.conftest import TINY_REF, cli_env

    results = tmp_path / "results"
    proc = subprocess.Popen([sys.executable, "-m", "autoprune", "train", "--model", TINY_REF, "--epochs", "500",
                             "--no-progress", "--device", "cpu"], env=cli_env(results), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not _handles_sigterm(proc.pid) and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.05)
        assert _handles_sigterm(proc.pid), "the CLI never set its SIGTERM handler"
        time.sleep(3.0)  # into the training loop (500 epochs take minutes)
        assert proc.poll() is None
        os.kill(proc.pid, signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert proc.returncode == 130, (proc.returncode, err[-2000:])
    assert "Traceback" not in err and lines == [
        "autoprune train: interrupted (SIGTERM), stopped cleanly"], err[-2000:]
    assert "checkpoint:" not in out
    assert not list((results / "checkpoints").glob("*")) if (results / "checkpoints").exists() else True


def test_the_sigterm_handler_is_put_back(monkeypatch):
    import signal

    before = signal.getsignal(signal.SIGTERM)
    assert main(["targets"]) == 0
    assert signal.getsignal(signal.SIGTERM) == before
