"""`autoprune targets` output (table and --json)."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

from autoprune.commands.targets import TargetsCommand


def _run(capsys, *argv):
    cmd = TargetsCommand()
    parser = argparse.ArgumentParser()
    cmd.add_arguments(parser)
    assert cmd.run(parser.parse_args(list(argv))) == 0
    return capsys.readouterr().out


def test_table_lists_every_target(capsys):
    out = _run(capsys)
    lines = out.splitlines()
    assert lines[0].split() == ["target", "device", "runtimes", "sparsity", "calibration"]
    nano = next(line for line in lines if line.startswith("jetson-nano "))
    assert "tvm[nvidia/jetson-nano]" in nano and "onnxruntime[CUDA+CPU]" in nano and "published" in nano
    assert any(line.startswith("raspberry-pi-4") and line.endswith("prior") for line in lines)
    assert any(line.startswith("local ") for line in lines)


def test_json_output(capsys):
    data = json.loads(_run(capsys, "--json"))
    by_name = {d["name"]: d for d in data}
    assert by_name["jetson-nano"]["calibration"]["status"] == "published"
    assert by_name["jetson-nano"]["runtimes"]["tvm"]["target"]["host"]["mtriple"] == "aarch64-linux-gnu"
    assert by_name["jetson-nano-5w"]["power_modes"]["5w"]["cpu_clock_mhz"] == 918
    assert by_name["local"]["sources"]["device.cpu"].startswith("detected at load time")


def test_via_the_cli():
    proc = subprocess.run([sys.executable, "-m", "autoprune", "targets", "--json"], capture_output=True,
                          text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr
    assert {d["name"] for d in json.loads(proc.stdout)} >= {"jetson-nano", "raspberry-pi-4", "local"}
