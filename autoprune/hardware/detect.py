"""Detection of the local machine: the figures a profile writes as ``auto``.

The ``local`` profile describes this machine; values written ``auto`` are detected at load time
(cores, CPU model, clock, FP32 peak from the CPU flags) by :func:`resolve_auto`.
"""

from __future__ import annotations

import os
import platform
from typing import Any

__all__ = ["detect_local", "resolve_auto"]


def _cpuinfo() -> dict[str, str]:
    info: dict[str, str] = {}
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if ":" in line:
                    k, v = line.split(":", 1)
                    info.setdefault(k.strip().lower(), v.strip())
    except OSError:
        pass
    return info


def detect_local() -> dict[str, Any]:
    """Detect this machine's CPU facts: model, cores, clock (MHz) and an FP32 peak estimate.

    The peak is cores × clock × FP32 FLOP per cycle from the CPU flags
    (AVX-512: 64, AVX2+FMA: 32, AVX: 16, SSE/NEON: 8); it is a roofline prior,
    not a measurement.
    """
    info = _cpuinfo()
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    model = info.get("model name") or info.get("hardware") or platform.processor() or platform.machine()
    clock = 0.0
    try:
        import psutil

        freq = psutil.cpu_freq()
        if freq:
            clock = float(freq.max or freq.current or 0.0)
    except (ImportError, OSError, RuntimeError):
        pass
    if not clock:
        try:
            clock = float(info.get("cpu mhz", 0.0))
        except ValueError:
            clock = 0.0
    clock = clock or 1000.0
    flags = set((info.get("flags") or info.get("features") or "").split())
    if "avx512f" in flags:
        per_cycle = 64
    elif {"avx2", "fma"} <= flags:
        per_cycle = 32
    elif "avx" in flags:
        per_cycle = 16
    else:
        per_cycle = 8
    return {
        "model": model,
        "cores": cores,
        "clock_mhz": round(clock, 1),
        "peak_gflops_fp32": round(cores * clock / 1e3 * per_cycle, 1),
        "flops_per_cycle": per_cycle,
    }


def resolve_auto(raw: dict[str, Any]) -> dict[str, Any]:
    """Replace every ``auto`` value of a loaded profile by the detected figure (others are kept)."""
    found = detect_local()

    def sub(value: Any, key: str) -> Any:
        if isinstance(value, dict):
            return {k: sub(v, f"{key}.{k}" if key else k) for k, v in value.items()}
        if isinstance(value, list):
            return [sub(v, key) for v in value]
        if value != "auto":
            return value
        leaf = key.rsplit(".", 1)[-1]
        if leaf in ("cores", "threads", "num-cores"):
            return found["cores"]
        if leaf == "model":
            return found["model"]
        if leaf == "clock_mhz":
            return found["clock_mhz"]
        if key.endswith("peak_gflops.fp32"):
            return found["peak_gflops_fp32"]
        return value

    return sub(raw, "")
