"""This machine's load over a window (:mod:`autoprune.hardware.host_state`): the busy rule on constructed
states, the monitor's arithmetic on scripted readings, and the monitor on this real machine, quiet and busy."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest

from autoprune.hardware import host_state as hs
from autoprune.hardware.host_state import CpuTimes, HostMonitor, HostState, host_busy_reason

LINUX = Path("/proc/stat").exists() and Path("/proc/loadavg").exists()


def _state(load: float | None = 0.2, cpus: int | None = 4, steal: float | None = 0.0,
           busy: float | None = 0.3) -> HostState:
    return HostState(load_avg_1min=load, cpu_count=cpus, steal_share=steal, busy_share=busy, window_s=12.0)


def test_a_quiet_host_is_not_busy():
    assert host_busy_reason(_state(), own_threads=1) is None
    assert host_busy_reason(_state(load=None, cpus=None, steal=None, busy=None), own_threads=1) is None  # no /proc


def test_busy_by_load_names_the_numbers_and_the_fix():
    reason = host_busy_reason(_state(load=3.5, cpus=4), own_threads=1)  # others 2.5 > 0.5 x 4
    assert reason is not None and "\n" not in reason
    assert "3.50" in reason and "4 cores" in reason and "2.50" in reason and "limit 2" in reason
    assert reason.endswith("quiet the machine (nothing else running) and profile again")


def test_the_measurements_own_threads_are_not_counted_as_other_work():
    assert host_busy_reason(_state(load=3.5, cpus=4), own_threads=2) is None  # others 1.5 <= 2
    assert host_busy_reason(_state(load=3.0, cpus=4), own_threads=1) is None  # exactly the limit: quiet
    assert host_busy_reason(_state(load=3.01, cpus=4), own_threads=1) is not None


def test_busy_by_steal():
    reason = host_busy_reason(_state(steal=0.08), own_threads=1)
    assert reason is not None and "8.0%" in reason and "stolen" in reason and "quiet the machine" in reason
    assert host_busy_reason(_state(steal=0.05), own_threads=1) is None


def test_busy_share_alone_is_not_judged():
    assert host_busy_reason(_state(busy=1.0), own_threads=1) is None  # includes the measurement's own work


def test_the_monitor_computes_shares_from_the_deltas(monkeypatch):
    cpu = iter([CpuTimes(total_ticks=1000, idle_ticks=600, steal_ticks=10, cpu_count=2),
                CpuTimes(total_ticks=1400, idle_ticks=700, steal_ticks=30, cpu_count=2)])
    load = iter([0.75, 1.5])
    monkeypatch.setattr(hs, "read_cpu_times", lambda: next(cpu))
    monkeypatch.setattr(hs, "read_load_avg_1min", lambda: next(load))
    with HostMonitor() as monitor:
        pass
    s = monitor.state
    assert s.load_avg_1min == 1.5 and s.cpu_count == 2  # the higher of start and end
    assert s.busy_share == pytest.approx(300 / 400) and s.steal_share == pytest.approx(20 / 400)
    assert s.to_dict() == {"load_avg_1min": 1.5, "cpu_count": 2, "steal_share": s.steal_share,
                           "busy_share": s.busy_share, "window_s": s.window_s}


def test_the_monitor_degrades_without_proc(monkeypatch):
    monkeypatch.setattr(hs, "read_cpu_times", lambda: None)
    monkeypatch.setattr(hs, "read_load_avg_1min", lambda: None)
    with HostMonitor() as monitor:
        pass
    s = monitor.state
    assert (s.load_avg_1min, s.steal_share, s.busy_share) == (None, None, None) and s.cpu_count == os.cpu_count()
    assert host_busy_reason(s, own_threads=1) is None


def test_proc_files_are_parsed_and_unreadable_ones_give_none(tmp_path):
    stat = tmp_path / "stat"
    stat.write_text("cpu  10 1 5 100 4 2 3 7 9 0\ncpu0 5 0 2 50 2 1 1 3 4 0\ncpu1 5 1 3 50 2 1 2 4 5 0\nintr 1\n")
    assert hs.read_cpu_times(stat) == CpuTimes(total_ticks=132, idle_ticks=104, steal_ticks=7, cpu_count=2)
    (tmp_path / "loadavg").write_text("1.25 0.80 0.40 2/102 5433\n")
    assert hs.read_load_avg_1min(tmp_path / "loadavg") == 1.25
    assert hs.read_cpu_times(tmp_path / "missing") is None and hs.read_load_avg_1min(tmp_path / "missing") is None
    (tmp_path / "bad").write_text("not a stat file\n")
    assert hs.read_cpu_times(tmp_path / "bad") is None and hs.read_load_avg_1min(tmp_path / "bad") is None


def test_the_state_before_the_window_closes_is_an_error():
    monitor = HostMonitor()
    with pytest.raises(RuntimeError):
        monitor.stop()
    with pytest.raises(RuntimeError):
        _ = monitor.start().state


@pytest.mark.skipif(not LINUX, reason="needs Linux /proc")
def test_the_monitor_on_this_machine_gives_sane_values():
    with HostMonitor() as monitor:
        time.sleep(0.3)
    s = monitor.state
    assert s.cpu_count is not None and s.cpu_count >= 1
    assert s.load_avg_1min is not None and s.load_avg_1min >= 0
    assert s.busy_share is not None and 0 <= s.busy_share <= 1
    assert s.steal_share is not None and 0 <= s.steal_share <= 1
    assert s.window_s >= 0.3


@pytest.mark.skipif(not LINUX, reason="needs Linux /proc")
def test_a_busy_window_is_busier_than_a_quiet_one():
    with HostMonitor() as quiet:
        time.sleep(1.5)
    procs: list[subprocess.Popen] = []
    try:
        with HostMonitor() as busy:
            procs = [subprocess.Popen(["yes"], stdout=subprocess.DEVNULL) for _ in range(2)]
            time.sleep(1.5)
    finally:
        for p in procs:
            p.kill()
            p.wait()
    q, b = quiet.state.busy_share, busy.state.busy_share
    assert q is not None and b is not None
    # A host already saturated (another job on every core) cannot get busier: then the window is nearly all busy.
    assert b > q or b > 0.95, (q, b)
