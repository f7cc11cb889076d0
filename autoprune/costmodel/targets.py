"""The device facts a cost model needs, read from the target's hardware profile.

Every figure comes from ``hw_profiles/<target>.yaml`` (or a user's profiles folder, see
:func:`autoprune.hardware.profile.profiles_dirs`) and nowhere else: :func:`target_spec`
picks the processor that runs inference and its precision, and reads its peak, the memory
bandwidth, the power mode's active power, the DRAM energy per byte and the sparsity the
kernels exploit. An edited or added profile changes the predictions.

Energy model (the one energy model; :func:`autoprune.costmodel.energy.model_energy` calls
:func:`energy_mj` too): ``energy_mj = active_power_w × latency_ms + pj_per_byte × dram_bytes ×
1e-9``. The first term is the board drawing its active inference power while the model runs;
the second, where the profile gives a pJ/byte figure, is the DRAM access energy of the bytes
the kernels move (weights + activations). Sparse weights only shrink ``dram_bytes`` on a target
whose kernels read a compressed format (``sparsity_support``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from autoprune.errors import ConfigError
from autoprune.hardware.records import GPU_PROVIDERS

__all__ = ["TargetSpec", "energy_mj", "spec_from_profile", "target_spec"]

#: Bytes per element of each precision named in a profile's ``peak_gflops``.
BYTES_PER_ELEMENT = {"fp32": 4, "fp16": 2, "int8": 1}


@dataclass(frozen=True)
class TargetSpec:
    """Device facts used by the cost models (all read from the hardware profile).

    Attributes:
        name: Target name (``local``, ``jetson-nano``...).
        peak_gflops: Peak arithmetic throughput of the inference processor at ``precision``, GFLOP/s.
        bandwidth_gbps: DRAM bandwidth, GB/s.
        active_power_w: Board power of ``power_mode`` while running inference, W (None: no figure).
        dram_pj_per_byte: DRAM access energy, pJ/byte (None: the profile gives none, not modelled).
        sparsity_support: Sparsity the target's kernels exploit (``none``, ``nm-2:4``, ``unstructured``).
        bytes_per_element: Element size of ``precision``.
        processor: ``cpu`` or ``gpu``: what runs inference (a GPU when the ONNX Runtime providers
            include CUDA or TensorRT and the profile lists a GPU).
        precision: ``fp16`` on a GPU that lists an FP16 peak, else ``fp32``.
        power_mode: The power mode the power figure is for.
        sources: Where the figures come from (the profile's ``sources:`` entries).
    """

    name: str
    peak_gflops: float
    bandwidth_gbps: float
    active_power_w: float | None
    dram_pj_per_byte: float | None = None
    sparsity_support: tuple[str, ...] = ("none",)
    bytes_per_element: int = 4
    processor: str = "cpu"
    precision: str = "fp32"
    power_mode: str | None = None
    sources: tuple[str, ...] = ()


def target_spec(name: str, power_mode: str | None = None) -> TargetSpec:
    """Return the cost-model facts of target ``name``, read from its hardware profile.

    Args:
        name: Target name (a profile).
        power_mode: Power mode for the power figure (default: the profile's default).

    Raises:
        UnknownNameError: For an unknown target (lists the valid ones).
        ConfigError: For a profile that lacks a figure the cost model needs (names the key).
    """
    from autoprune.hardware import load_profile

    return spec_from_profile(load_profile(name), power_mode)


def spec_from_profile(p: Any, power_mode: str | None = None) -> TargetSpec:
    """The :class:`TargetSpec` of a loaded :class:`~autoprune.hardware.HardwareProfile` (see :func:`target_spec`)."""
    providers = p.runtimes.get("onnxruntime", {}).get("providers", ())
    on_gpu = p.device.gpu is not None and any(pr in GPU_PROVIDERS for pr in providers)
    proc = p.device.gpu if on_gpu else p.device.cpu
    precision = "fp16" if on_gpu and "fp16" in proc.peak_gflops else "fp32"
    if precision not in proc.peak_gflops:
        raise ConfigError(f"hardware profile {p.path}: device.{'gpu' if on_gpu else 'cpu'}.peak_gflops has no "
                          f"{precision} figure, which the cost model needs; add it with its source")
    if p.device.memory_bandwidth_gbs is None:
        raise ConfigError(f"hardware profile {p.path}: device.memory_bandwidth_gbs is missing, which the cost "
                          "model needs; add it with its source")
    mode = p.power_mode(power_mode) if p.power_modes or power_mode else None
    return TargetSpec(
        name=p.name,
        peak_gflops=float(proc.peak_gflops[precision]),
        bandwidth_gbps=float(p.device.memory_bandwidth_gbs),
        active_power_w=None if mode is None else float(mode.active_w),
        dram_pj_per_byte=p.energy_pj_per_byte,
        sparsity_support=tuple(sorted(p.sparsity_support)),
        bytes_per_element=BYTES_PER_ELEMENT.get(precision, 4),
        processor="gpu" if on_gpu else "cpu",
        precision=precision,
        power_mode=None if mode is None else mode.name,
        sources=tuple(f"{k}: {v}" for k, v in p.sources.items() if k.split(".")[0] in ("device", "power")),
    )


def energy_mj(target: TargetSpec, latency_ms: float, dram_bytes: float = 0.0) -> float:
    """Modelled energy of one inference in millijoules (see the module docstring).

    NaN where the profile has no power figure (an energy objective then says so).
    """
    if target.active_power_w is None:
        return float("nan")
    data = target.dram_pj_per_byte * dram_bytes * 1e-9 if target.dram_pj_per_byte is not None else 0.0
    return target.active_power_w * latency_ms + data
