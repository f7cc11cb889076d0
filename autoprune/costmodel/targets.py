"""The device facts a cost model needs, read from the hardware profile.

:func:`target_spec` asks :func:`autoprune.hardware.load_profile` when that module
is available and falls back to the built-in datasheet facts below (sources in
``/work/shared/reference/hardware-and-peers.md``) otherwise.

Energy model (documented decision): ``energy_mj = active_power_w × latency_ms +
dram_pj_per_byte × dram_bytes × 1e-9``. The first term is the board drawing its
active inference power while the model runs; the second is the DRAM access energy
of the bytes the kernels move (weights + activations). Sparse weights only
shrink ``dram_bytes`` on a target whose kernels read a compressed format
(``sparsity_support``); on a dense target zeros are still stored and moved.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from autoprune.errors import ConfigError

__all__ = ["TargetSpec", "energy_mj", "target_spec"]


@dataclass(frozen=True)
class TargetSpec:
    """Device facts used by the cost models.

    Attributes:
        name: Target name (``local``, ``jetson-nano``...).
        peak_gflops: Peak arithmetic throughput of the runtime's data type, GFLOP/s.
        bandwidth_gbps: DRAM bandwidth, GB/s.
        active_power_w: Board power while running inference, W.
        dram_pj_per_byte: DRAM access energy, pJ/byte.
        sparsity_support: Sparsity the target's kernels exploit (``none``,
            ``nm-2:4``, ``unstructured``).
        bytes_per_element: Element size of the runtime's data type.
        sources: Where the figures come from.
    """

    name: str
    peak_gflops: float
    bandwidth_gbps: float
    active_power_w: float
    dram_pj_per_byte: float = 20.0
    sparsity_support: tuple[str, ...] = ("none",)
    bytes_per_element: int = 4
    sources: tuple[str, ...] = ()


_BUILTIN = {
    "local": TargetSpec("local", 100.0, 20.0, 15.0, 20.0, ("none",), 4,
                        ("generic x86 host; regressor priors only, replaced by `autoprune profile`",)),
    "jetson-nano": TargetSpec("jetson-nano", 472.0, 25.6, 10.0, 20.0, ("none",), 2,
                              ("NVIDIA Jetson Nano datasheet: FP16 472 GFLOPS, LPDDR4 25.6 GB/s, MAXN 10 W",)),
    "jetson-nano-5w": TargetSpec("jetson-nano-5w", 472.0 * 640 / 921.6, 25.6, 5.0, 20.0, ("none",), 2,
                                 ("jetson-nano scaled to nvpmodel mode 1 (GPU 640 MHz, 2 cores at 918 MHz)",)),
    "raspberry-pi-4": TargetSpec("raspberry-pi-4", 48.0, 5.0, 6.4, 20.0, ("none",), 4,
                                 ("Raspberry Pi 4 product brief: 4x Cortex-A72 1.5 GHz (~48 GFLOPS FP32); "
                                  "~4-6 GB/s STREAM; ~6.4 W under load",)),
}


def _from_profile(name: str) -> TargetSpec | None:
    try:
        from autoprune.hardware import load_profile  # type: ignore[attr-defined]
    except ImportError:
        return None
    try:
        p = load_profile(name)
    except Exception:  # noqa: BLE001 - unknown to the profile set: use the built-in facts
        return None
    base = _BUILTIN.get(name, _BUILTIN["local"])

    def pick(*names, default):
        for n in names:
            v = getattr(p, n, None)
            if v is not None:
                return v
        return default

    support = pick("sparsity_support", default=base.sparsity_support)
    if isinstance(support, str):
        support = (support,)
    return replace(
        base, name=name,
        peak_gflops=float(pick("peak_gflops", "peak_gflops_fp16", "peak_gflops_fp32", default=base.peak_gflops)),
        bandwidth_gbps=float(pick("bandwidth_gbps", "memory_bandwidth_gbps", default=base.bandwidth_gbps)),
        sparsity_support=tuple(support),
    )


def target_spec(name: str) -> TargetSpec:
    """Return the facts of target ``name``.

    Raises:
        ConfigError: If the target is unknown to both the hardware profiles and the
            built-in table.
    """
    spec = _from_profile(name)
    if spec is not None:
        return spec
    if name in _BUILTIN:
        return _BUILTIN[name]
    raise ConfigError(f"unknown target {name!r} for the cost model; valid: {', '.join(sorted(_BUILTIN))} "
                      "(or add a hardware profile)")


def energy_mj(target: TargetSpec, latency_ms: float, dram_bytes: float) -> float:
    """Modelled energy of one inference in millijoules (see the module docstring)."""
    return target.active_power_w * latency_ms + target.dram_pj_per_byte * dram_bytes * 1e-9
