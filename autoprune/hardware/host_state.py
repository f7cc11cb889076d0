"""How busy this machine was while something was measured: load average and CPU steal.

A calibration measured while other work shares the cores (or, on a virtual machine, while the
hypervisor gives them to another guest) stores timings that are slower and noisier than the target's
own. :class:`HostMonitor` samples Linux's ``/proc/stat`` at the start and end of a window and
``/proc/loadavg`` at both ends, and gives a :class:`HostState`; :func:`host_busy_reason` judges it.

The rule (:func:`host_busy_reason`): the host was busy when

* the other work's load, ``load_avg_1min - own_threads`` (the 1-min load average counts the
  measurement's own runnable threads too), is above half the cores, ``0.5 x cpu_count``: other work
  wanted more than half of the machine, so the measurement's threads shared cores (and the caches
  and memory bandwidth) with it for much of the window; or
* the hypervisor stole more than 5 % of the CPU time over the window (``steal_share > 0.05``).

``busy_share`` is recorded and shown but not judged: it includes the measurement's own work, which
may use more cores than its runtime's threads (the model's build and export, Python itself).

Pure standard library. Away from Linux (no ``/proc``) every measured field is ``None`` and nothing
is judged busy.
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

__all__ = ["LOAD_SHARE_LIMIT", "STEAL_SHARE_LIMIT", "HostMonitor", "HostState", "host_busy_reason",
           "read_cpu_times", "read_load_avg_1min"]

#: Other work's load (the 1-min load average less the measurement's own threads) above this share
#: of the cores: busy.
LOAD_SHARE_LIMIT = 0.5
#: CPU time stolen by the hypervisor above this share of the window: busy.
STEAL_SHARE_LIMIT = 0.05
#: What to do about a busy host (the end of every reason).
QUIET_FIX = "quiet the machine (nothing else running) and profile again"

_PROC_STAT = Path("/proc/stat")
_PROC_LOADAVG = Path("/proc/loadavg")


@dataclass(frozen=True)
class CpuTimes:
    """The all-CPU line of ``/proc/stat`` reduced to what the shares need, in clock ticks.

    Attributes:
        total_ticks: user + nice + system + idle + iowait + irq + softirq + steal (guest time is
            already in user and nice).
        idle_ticks: idle + iowait.
        steal_ticks: Time the hypervisor ran something else while this machine wanted the CPU.
        cpu_count: CPUs with their own ``cpuN`` line.
    """

    total_ticks: int
    idle_ticks: int
    steal_ticks: int
    cpu_count: int


@dataclass(frozen=True)
class HostState:
    """This machine's load over a window (``None``: not readable here, e.g. no ``/proc``).

    Attributes:
        load_avg_1min: The higher of the 1-min load average at the window's start and end.
        cpu_count: Online CPUs (``/proc/stat``'s ``cpuN`` lines, else :func:`os.cpu_count`).
        steal_share: Share of the CPU time stolen by the hypervisor over the window, in [0, 1].
        busy_share: Share of the CPU time not idle over the window, all CPUs and all processes
            (the measurement's own included; steal counts as not idle), in [0, 1].
        window_s: Length of the window, s.
    """

    load_avg_1min: float | None
    cpu_count: int | None
    steal_share: float | None
    busy_share: float | None
    window_s: float

    def to_dict(self) -> dict[str, Any]:
        """The state as a JSON-ready dict (the field names, units in them)."""
        return asdict(self)


def read_cpu_times(path: Path = _PROC_STAT) -> CpuTimes | None:
    """The all-CPU times of ``/proc/stat`` now (``None``: unreadable or not in the Linux format)."""
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return None
    cpus = sum(1 for line in lines if line.startswith("cpu") and line[3:4].isdigit())
    for line in lines:
        parts = line.split()
        if parts and parts[0] == "cpu":
            try:
                ticks = [int(v) for v in parts[1:9]]
            except ValueError:
                return None
            ticks += [0] * (8 - len(ticks))  # old kernels lack steal (and irq/softirq)
            user, nice, system, idle, iowait, irq, softirq, steal = ticks
            return CpuTimes(total_ticks=user + nice + system + idle + iowait + irq + softirq + steal,
                            idle_ticks=idle + iowait, steal_ticks=steal, cpu_count=cpus or os.cpu_count() or 1)
    return None


def read_load_avg_1min(path: Path = _PROC_LOADAVG) -> float | None:
    """The 1-min load average now (``None``: unreadable)."""
    try:
        return float(path.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


class HostMonitor:
    """Samples this machine's CPU times and load over a window; use as a context manager.

    Example::

        monitor = HostMonitor()
        with monitor:
            measure()
        reason = host_busy_reason(monitor.state, own_threads=1)
    """

    def __init__(self) -> None:
        self._t0: float | None = None
        self._cpu0: CpuTimes | None = None
        self._load0: float | None = None
        self._state: HostState | None = None

    def start(self) -> HostMonitor:
        """Open the window: sample ``/proc/stat`` and ``/proc/loadavg`` now."""
        self._t0 = time.monotonic()
        self._cpu0 = read_cpu_times()
        self._load0 = read_load_avg_1min()
        self._state = None
        return self

    def stop(self) -> HostState:
        """Close the window: sample again and compute the :class:`HostState` (also :attr:`state`).

        Raises:
            RuntimeError: The window was never opened.
        """
        if self._t0 is None:
            raise RuntimeError("HostMonitor.stop() before start()")
        window_s = time.monotonic() - self._t0
        cpu1 = read_cpu_times()
        loads = [v for v in (self._load0, read_load_avg_1min()) if v is not None]
        steal = busy = None
        cpu_count = cpu1.cpu_count if cpu1 is not None else os.cpu_count()
        if self._cpu0 is not None and cpu1 is not None:
            total = cpu1.total_ticks - self._cpu0.total_ticks
            if total > 0:
                idle = cpu1.idle_ticks - self._cpu0.idle_ticks
                steal = _share(cpu1.steal_ticks - self._cpu0.steal_ticks, total)
                busy = _share(total - idle, total)
        self._state = HostState(load_avg_1min=max(loads) if loads else None, cpu_count=cpu_count,
                                steal_share=steal, busy_share=busy, window_s=window_s)
        return self._state

    @property
    def state(self) -> HostState:
        """The window's :class:`HostState`.

        Raises:
            RuntimeError: The window is still open (or was never opened).
        """
        if self._state is None:
            raise RuntimeError("HostMonitor.state before the window closed")
        return self._state

    def __enter__(self) -> HostMonitor:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()


def host_busy_reason(state: HostState, own_threads: int) -> str | None:
    """Why ``state`` describes a busy host, in one line (``None``: quiet, or nothing readable).

    Busy: other work's load (``load_avg_1min - own_threads``) above ``0.5 x cpu_count``, or a steal
    share above 5 % (see the module's docstring).

    Args:
        state: The window's host state.
        own_threads: Threads the measurement itself kept runnable (its runtime's intra-op threads).

    Returns:
        The numbers and the fix, or ``None``.
    """
    found = []
    if state.load_avg_1min is not None and state.cpu_count:
        others = max(state.load_avg_1min - max(own_threads, 0), 0.0)
        limit = LOAD_SHARE_LIMIT * state.cpu_count
        if others > limit:
            found.append(f"1-min load average {state.load_avg_1min:.2f} on {state.cpu_count} cores, {others:.2f} "
                         f"beyond this measurement's {own_threads} thread(s) (limit {limit:g}: half the cores)")
    if state.steal_share is not None and state.steal_share > STEAL_SHARE_LIMIT:
        found.append(f"{state.steal_share:.1%} of the CPU time stolen by the hypervisor "
                     f"(limit {STEAL_SHARE_LIMIT:.0%})")
    if not found:
        return None
    return f"the host was busy over the {state.window_s:.0f} s window: {'; '.join(found)}; {QUIET_FIX}"


def _share(part: int, total: int) -> float:
    """``part / total`` clamped to [0, 1] (a CPU going offline can skew one delta)."""
    return min(max(part / total, 0.0), 1.0)
