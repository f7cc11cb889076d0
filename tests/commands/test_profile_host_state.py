"""``autoprune profile`` records this machine's load over the calibration: a busy host is a ``warning:`` line
(the calibration is saved, with the host's state), and with ``--strict`` one line and exit 2, nothing saved."""

from __future__ import annotations

import json
from pathlib import Path

from autoprune.cli import main
from autoprune.commands.profile import _print_outcome
from autoprune.costmodel.builder import ProfileOutcome
from autoprune.hardware import host_state as hs
from autoprune.hardware.host_state import HostState
from tests.conftest import TINY_REF

#: The smallest real calibration: the tiny user CNN at 16 px, one grid point, two plans, a loose noise bound.
PROFILE = ["profile", "--target", "local", "--model", TINY_REF, "--input-size", "16", "--grid", "1.0", "--plans", "2",
           "--max-cv", "3"]


def test_a_busy_host_warns_and_strict_refuses_without_overwriting(tmp_path, monkeypatch, capsys):
    from autoprune.costmodel.calibration import calibration_name, calibration_path

    monkeypatch.setenv("AUTOPRUNE_RESULTS", str(tmp_path))
    # Only the load average is faked (far above the cores); /proc/stat, the monitor and the rule stay real.
    monkeypatch.setattr(hs, "read_load_avg_1min", lambda: 99.0)
    path = calibration_path("local", calibration_name(TINY_REF), 16)

    assert main(PROFILE) == 0
    out = capsys.readouterr().out
    assert "  host: load average 99.00 on " in out and " during calibration" in out
    warnings = [line for line in out.splitlines() if line.startswith("warning: ")]
    assert len(warnings) == 1 and "99.00" in warnings[0] and "quiet the machine (nothing else running)" in warnings[0]
    stored = json.loads(path.read_text())["error"]["host_state"]
    assert stored["describes"] == "target" and stored["load_avg_1min"] == 99.0 and stored["cpu_count"] >= 1
    assert 0 <= stored["busy_share"] <= 1 and stored["busy_reason"] in warnings[0]
    before = path.read_bytes()

    assert main([*PROFILE, "--strict"]) == 2
    captured = capsys.readouterr()
    lines = [line for line in captured.err.strip().splitlines() if not line.startswith("profile ")]  # no tqdm bar
    assert len(lines) == 1 and "Traceback" not in captured.err, captured.err
    assert "not saved (--strict)" in lines[0] and "99.00" in lines[0] and "profile again" in lines[0]
    assert "calibration written" not in captured.out
    assert path.read_bytes() == before  # the calibration stored before is untouched


def _outcome(**host) -> ProfileOutcome:
    return ProfileOutcome(
        path=Path("c.json"), target="local", runtime="onnxruntime", kernel_points=7, layer_configs=7, plans=2,
        calibration_s=5.0, rejected_points=(), class_scales=None, kernel_scale_range=None, alpha=1.0, power=1.0,
        overhead_ms=0.0, energy=None, dense_reference_ms=0.02, dense_reference_range_ms=(0.02, 0.03),
        heldout_plans=1, heldout_mape=0.05, heldout_within_10pct=1.0, heldout_spearman=None, **host)


def test_the_summary_labels_an_rpc_clients_numbers_as_this_machines(capsys):
    state = HostState(load_avg_1min=0.5, cpu_count=8, steal_share=0.001, busy_share=0.25, window_s=5.0)
    _print_outcome(_outcome(host_state=state, host_is_target=False))
    out = capsys.readouterr().out
    assert ("  host (this machine, the RPC client, not the device): load average 0.50 on 8 cores, steal 0.1 %, "
            "busy 25.0 % during calibration") in out
    assert "warning:" not in out
    _print_outcome(_outcome(host_state=HostState(None, None, None, None, 5.0)))
    assert "  host: load average n/a on n/a cores, steal n/a, busy n/a during calibration" in capsys.readouterr().out
