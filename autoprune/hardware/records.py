"""The frozen records of a hardware profile: device facts, power modes, calibration status.

:class:`HardwareProfile` is what :func:`autoprune.hardware.load_profile` returns; its mappings are
read-only views, and :meth:`HardwareProfile.runtime_options` hands out mutable copies.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from autoprune.errors import ConfigError, UnknownNameError

__all__ = ["GPU_PROVIDERS", "HERE_TARGETS", "SCHEMA_VERSION", "CalibrationInfo", "DeviceFacts", "HardwareProfile",
           "PowerMode", "ProcessorFacts", "freeze", "thaw"]

#: The profile file format this autoprune reads.
SCHEMA_VERSION = 1
#: The targets that are this machine, and which part of it: profiled and measured without ``--rpc``.
HERE_TARGETS = {"local": "cpu", "cuda": "gpu"}
#: ONNX Runtime execution providers that compute on an NVIDIA GPU, best first.
GPU_PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider")


@dataclass(frozen=True)
class ProcessorFacts:
    """One processor (CPU or GPU) of a device.

    Attributes:
        model: Human-readable model, e.g. ``"ARM Cortex-A57"``.
        cores: CPU cores, or GPU CUDA cores / SMs as the profile says.
        clock_mhz: Clock in MHz (the default power mode's).
        peak_gflops: Precision (``fp32``, ``fp16``, ``int8``) → peak GFLOPS.
    """

    model: str
    cores: int
    clock_mhz: float
    peak_gflops: Mapping[str, float]


@dataclass(frozen=True)
class DeviceFacts:
    """Datasheet facts of a device."""

    cpu: ProcessorFacts
    gpu: ProcessorFacts | None
    memory_bandwidth_gbs: float | None
    memory_gb: float | None


@dataclass(frozen=True)
class PowerMode:
    """Power figures of one power mode (e.g. Jetson ``nvpmodel`` modes).

    Attributes:
        name: Mode name, e.g. ``"maxn"``.
        active_w: Board power while running inference, in watts.
        idle_w: Board power at idle, in watts (``None`` if unknown).
        cpu_cores: CPU cores online in this mode.
        cpu_clock_mhz: CPU clock in this mode.
        gpu_clock_mhz: GPU clock in this mode.
    """

    name: str
    active_w: float
    idle_w: float | None = None
    cpu_cores: int | None = None
    cpu_clock_mhz: float | None = None
    gpu_clock_mhz: float | None = None


@dataclass(frozen=True)
class CalibrationInfo:
    """How the target's cost model is calibrated.

    Attributes:
        status: ``measured``, ``published`` or ``prior``.
        where: For ``measured``: the device/host measured on.
        when: For ``measured``: ISO date/time of the calibration.
        runtime: For ``measured``: the runtime used (e.g. ``onnxruntime-1.31.1/CPU...``).
        notes: Free text (what was fitted to which published figures).
        path: The calibration file, when one was found.
        derived_from: Another target whose calibration this one scales by the ratio of the two
            profiles' clocks (e.g. a power mode of the same board).
    """

    status: str
    where: str | None = None
    when: str | None = None
    runtime: str | None = None
    notes: str | None = None
    path: str | None = None
    derived_from: str | None = None


@dataclass(frozen=True)
class HardwareProfile:
    """A validated hardware profile (immutable).

    Attributes:
        name: Target name (``autoprune search --target NAME``).
        description: One line.
        device: Datasheet facts.
        power_modes: Mode name → :class:`PowerMode` (may be empty when unknown).
        default_power_mode: The mode used unless one is asked for (``None`` if no modes).
        runtimes: Runtime name → its options (``onnxruntime``: ``providers``,
            ``threads``; ``tvm``: ``target`` JSON dict with host, ``threads``).
        sparsity_support: Sparsity kinds the kernels exploit for speed.
        sources: Dotted figure key → citation.
        calibration: Calibration status.
        energy_pj_per_byte: Extra energy per byte moved from DRAM, if known.
        path: The YAML file it came from.
        schema_version: Always :data:`SCHEMA_VERSION`.
    """

    name: str
    description: str
    device: DeviceFacts
    power_modes: Mapping[str, PowerMode]
    default_power_mode: str | None
    runtimes: Mapping[str, Mapping[str, Any]]
    sparsity_support: frozenset[str]
    sources: Mapping[str, str]
    calibration: CalibrationInfo
    energy_pj_per_byte: float | None = None
    path: str | None = None
    schema_version: int = SCHEMA_VERSION

    @property
    def here(self) -> str | None:
        """``"cpu"`` (``local``) or ``"gpu"`` (``cuda``) where the target is part of this machine, else
        ``None`` (a device reached over RPC): the one answer to "is this target this machine?"."""
        return HERE_TARGETS.get(self.name)

    @property
    def is_here(self) -> bool:
        """The target is this machine (see :attr:`here`)."""
        return self.here is not None

    def power_mode(self, name: str | None = None) -> PowerMode:
        """Return power mode ``name`` (default: :attr:`default_power_mode`).

        Raises:
            ConfigError: If the profile has no power figures.
            UnknownNameError: If ``name`` is not one of its modes.
        """
        if not self.power_modes:
            raise ConfigError(
                f"hardware profile {self.name!r} has no power figures; add a `power:` section to {self.path} "
                "or measure energy on the device"
            )
        name = name or self.default_power_mode
        if name not in self.power_modes:
            raise UnknownNameError(
                f"unknown power mode {name!r} for {self.name}; valid: {', '.join(sorted(self.power_modes))}"
            )
        return self.power_modes[name]

    def runtime_options(self, runtime: str) -> dict[str, Any]:
        """Return a mutable copy of the options for ``runtime`` (for :func:`get_runtime`).

        Raises:
            UnknownNameError: If the profile does not configure that runtime.
        """
        if runtime not in self.runtimes:
            raise UnknownNameError(
                f"target {self.name!r} has no {runtime!r} runtime; valid: {', '.join(sorted(self.runtimes))}"
            )
        return thaw(self.runtimes[runtime])

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-serialisable summary (as ``autoprune targets --json`` prints)."""

        def proc(p: ProcessorFacts | None) -> dict[str, Any] | None:
            if p is None:
                return None
            return {"model": p.model, "cores": p.cores, "clock_mhz": p.clock_mhz,
                    "peak_gflops": dict(p.peak_gflops)}

        return {
            "name": self.name,
            "description": self.description,
            "schema_version": self.schema_version,
            "device": {
                "cpu": proc(self.device.cpu),
                "gpu": proc(self.device.gpu),
                "memory_bandwidth_gbs": self.device.memory_bandwidth_gbs,
                "memory_gb": self.device.memory_gb,
            },
            "power_modes": {k: vars(v).copy() for k, v in self.power_modes.items()},
            "default_power_mode": self.default_power_mode,
            "energy_pj_per_byte": self.energy_pj_per_byte,
            "runtimes": {k: thaw(v) for k, v in self.runtimes.items()},
            "sparsity_support": sorted(self.sparsity_support),
            "sources": dict(self.sources),
            "calibration": vars(self.calibration).copy(),
            "path": self.path,
        }


def freeze(value: Any) -> Any:
    """A read-only copy of loaded YAML: mappings become ``MappingProxyType``, lists tuples."""
    if isinstance(value, Mapping):
        return MappingProxyType({k: freeze(v) for k, v in value.items()})
    if isinstance(value, list):
        return tuple(freeze(v) for v in value)
    return value


def thaw(value: Any) -> Any:
    """The mutable copy of :func:`freeze`'s output (plain dicts and lists)."""
    if isinstance(value, Mapping):
        return {k: thaw(v) for k, v in value.items()}
    if isinstance(value, tuple):
        return [thaw(v) for v in value]
    return value
