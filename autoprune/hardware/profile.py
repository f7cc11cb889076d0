"""Hardware profiles: versioned YAML files in ``hw_profiles/`` describing a target device.

A profile holds device facts (peak GFLOPS per precision, memory bandwidth, cores,
clocks), power figures per power mode, the runtimes to measure with, which kinds
of sparsity the target's kernels can exploit, a citation for every figure
(``sources:``), and the calibration status of its cost model:

* ``measured``: latency tables were profiled on the device (where, when, runtime);
* ``published``: fitted to cited published latencies;
* ``prior``: datasheet roofline only.

Validation is strict: a corrupt, incomplete, wrongly typed file or an unknown key
raises :class:`~autoprune.errors.ConfigError` naming the file and the dotted key.
Every numeric figure under ``device`` and ``power`` needs a ``sources`` entry for
its key or a parent key.

The ``local`` profile describes this machine; values written ``auto`` are
detected at load time (cores, CPU model, clock, FP32 peak from the CPU flags), and
its status becomes ``measured`` once ``results/calibrations/local/`` holds a
calibration file.

Example:
    >>> p = load_profile("jetson-nano")
    >>> p.device.gpu.peak_gflops["fp16"], p.calibration.status
    (472.0, 'published')
"""

from __future__ import annotations

import os
import platform
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from types import MappingProxyType
from typing import Any

from autoprune.errors import ConfigError, UnknownNameError
from autoprune.io import read_json, read_yaml, results_dir

__all__ = [
    "SCHEMA_VERSION",
    "TARGETS",
    "CalibrationInfo",
    "DeviceFacts",
    "HardwareProfile",
    "PowerMode",
    "ProcessorFacts",
    "ProfileCatalog",
    "list_profiles",
    "load_profile",
    "profiles_dirs",
]

SCHEMA_VERSION = 1
SPARSITY_KINDS = ("none", "nm-2:4", "unstructured")
CALIBRATION_STATUSES = ("measured", "published", "prior")


#: The shipped profiles.
SHIPPED_PROFILES = Path(__file__).resolve().parents[2] / "hw_profiles"


def profiles_dirs() -> list[Path]:
    """The folders searched for profiles, first match wins: the user's (``$AUTOPRUNE_HW_PROFILES``,
    several joined with ``os.pathsep``; the CLI's ``--profiles DIR`` sets it), then the shipped ones.

    A user adds a board, or overrides a shipped one, without editing the package.
    """
    env = [Path(p) for p in os.environ.get("AUTOPRUNE_HW_PROFILES", "").split(os.pathsep) if p]
    return [*env, SHIPPED_PROFILES]


# -- frozen records --------------------------------------------------------------------------------


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
        return _thaw(self.runtimes[runtime])

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
            "runtimes": {k: _thaw(v) for k, v in self.runtimes.items()},
            "sparsity_support": sorted(self.sparsity_support),
            "sources": dict(self.sources),
            "calibration": vars(self.calibration).copy(),
            "path": self.path,
        }


def _freeze(value: Any) -> Any:
    if isinstance(value, Mapping):
        return MappingProxyType({k: _freeze(v) for k, v in value.items()})
    if isinstance(value, list):
        return tuple(_freeze(v) for v in value)
    return value


def _thaw(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {k: _thaw(v) for k, v in value.items()}
    if isinstance(value, tuple):
        return [_thaw(v) for v in value]
    return value


# -- validation --------------------------------------------------------------------------------------

# A schema node is {key: (type_spec, required)}; type_spec is a Python type, a tuple of
# types, a nested schema dict, or ("map", value_type_spec) for free-named keys.
_NUM = (int, float)
_PROC = {
    "model": (str, True),
    "cores": (int, True),
    "clock_mhz": (_NUM, True),
    "peak_gflops": (("map", _NUM), True),
}
_MODE = {
    "active_w": (_NUM, True),
    "idle_w": (_NUM, False),
    "cpu_cores": (int, False),
    "cpu_clock_mhz": (_NUM, False),
    "gpu_clock_mhz": (_NUM, False),
}
_SCHEMA = {
    "schema_version": (int, True),
    "name": (str, True),
    "description": (str, True),
    "device": (
        {
            "cpu": (_PROC, True),
            "gpu": (_PROC, False),
            "memory_bandwidth_gbs": (_NUM, False),
            "memory_gb": (_NUM, False),
        },
        True,
    ),
    "power": (
        {
            "modes": (("map", _MODE), True),
            "energy_pj_per_byte": (_NUM, False),
        },
        False,
    ),
    "default_power_mode": (str, False),
    "runtimes": (
        {
            "onnxruntime": ({"providers": (list, True), "threads": (int, False)}, False),
            "tvm": ({"target": (dict, True), "threads": (int, False)}, False),
        },
        True,
    ),
    "sparsity_support": (list, True),
    "sources": (("map", str), True),
    "calibration": (
        {
            "status": (str, True),
            "where": (str, False),
            "when": (str, False),
            "runtime": (str, False),
            "notes": (str, False),
            "upgrade_when_calibrated": (bool, False),
            "derived_from": (str, False),
        },
        True,
    ),
}


def _type_name(spec: Any) -> str:
    if isinstance(spec, dict):
        return "a mapping"
    if isinstance(spec, tuple) and spec and spec[0] == "map":
        return "a mapping"
    if spec is _NUM:
        return "a number"
    names = {int: "an integer", str: "a string", list: "a list", dict: "a mapping", bool: "true/false"}
    return names.get(spec, getattr(spec, "__name__", str(spec)))


def _check(value: Any, spec: Any, key: str, path: Path) -> None:
    def fail(msg: str) -> None:
        raise ConfigError(f"hardware profile {path}: {msg}; fix the file (see hw_profiles/jetson-nano.yaml)")

    if isinstance(spec, dict):
        if not isinstance(value, dict):
            fail(f"key '{key}' must be a mapping, got {type(value).__name__}")
        for k in value:
            if k not in spec:
                fail(f"unknown key '{_join(key, k)}' (valid: {', '.join(spec)})")
        for k, (sub, required) in spec.items():
            if k not in value:
                if required:
                    fail(f"missing required key '{_join(key, k)}'")
                continue
            _check(value[k], sub, _join(key, k), path)
        return
    if isinstance(spec, tuple) and spec and spec[0] == "map":
        if not isinstance(value, dict):
            fail(f"key '{key}' must be a mapping, got {type(value).__name__}")
        for k, v in value.items():
            _check(v, spec[1], _join(key, str(k)), path)
        return
    ok = isinstance(value, spec) and not (isinstance(value, bool) and spec is not bool)
    if value == "auto" and spec in (_NUM, int, str):
        ok = True  # resolved by detection (local profile)
    if not ok:
        fail(f"key '{key}' must be {_type_name(spec)}, got {value!r}")


def _join(prefix: str, key: str) -> str:
    return f"{prefix}.{key}" if prefix else key


def _numeric_keys(value: Any, prefix: str) -> list[str]:
    if isinstance(value, dict):
        return [k for kk, v in value.items() for k in _numeric_keys(v, _join(prefix, str(kk)))]
    return [prefix] if isinstance(value, _NUM) and not isinstance(value, bool) else []


# -- detection (local profile) -----------------------------------------------------------------------


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


def _resolve_auto(raw: dict[str, Any]) -> dict[str, Any]:
    found = detect_local()

    def sub(value: Any, key: str) -> Any:
        if isinstance(value, dict):
            return {k: sub(v, _join(key, k)) for k, v in value.items()}
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


# -- loading -----------------------------------------------------------------------------------------


def _calibration_file(name: str) -> Path | None:
    folder = results_dir() / "calibrations" / name
    files = sorted(folder.glob("*.json"), key=lambda p: p.stat().st_mtime) if folder.is_dir() else []
    return files[-1] if files else None


def _calibration(raw: dict[str, Any], name: str) -> CalibrationInfo:
    info = {k: v for k, v in raw.items() if k != "upgrade_when_calibrated"}
    if raw.get("upgrade_when_calibrated"):
        found = _calibration_file(name)
        if found is not None:
            try:
                meta = read_json(found, what="calibration file")
            except Exception:  # noqa: BLE001 - a broken calibration must not break `targets`
                meta = {}
            meta = meta if isinstance(meta, dict) else {}
            when = datetime.fromtimestamp(found.stat().st_mtime, timezone.utc).isoformat(timespec="seconds")
            info = {
                "status": "measured",
                "where": str(meta.get("device") or meta.get("where") or "this machine"),
                "when": str(meta.get("created") or meta.get("timestamp") or meta.get("when") or when),
                "runtime": str(meta.get("runtime")) if meta.get("runtime") else None,
                "notes": f"calibrated by {found.name}",
                "path": str(found),
            }
    return CalibrationInfo(**info)


def _proc(raw: dict[str, Any] | None) -> ProcessorFacts | None:
    if raw is None:
        return None
    return ProcessorFacts(
        model=raw["model"],
        cores=int(raw["cores"]),
        clock_mhz=float(raw["clock_mhz"]),
        peak_gflops=MappingProxyType({k: float(v) for k, v in raw["peak_gflops"].items()}),
    )


def parse_profile(raw: Any, path: Path) -> HardwareProfile:
    """Validate a loaded YAML document and build the :class:`HardwareProfile`.

    Raises:
        ConfigError: Naming ``path`` and the offending key.
    """
    if not isinstance(raw, dict):
        raise ConfigError(f"hardware profile {path} is empty or not a mapping; fix the file")
    if raw.get("schema_version") != SCHEMA_VERSION:
        raise ConfigError(
            f"hardware profile {path}: key 'schema_version' must be {SCHEMA_VERSION}, "
            f"got {raw.get('schema_version')!r}; update the file to the current schema"
        )
    _check(raw, _SCHEMA, "", path)
    raw = _resolve_auto(raw)

    def fail(msg: str) -> None:
        raise ConfigError(f"hardware profile {path}: {msg}")

    sparsity = raw["sparsity_support"]
    bad = [s for s in sparsity if s not in SPARSITY_KINDS]
    if bad:
        fail(f"key 'sparsity_support' has unknown kind(s) {bad}; valid: {', '.join(SPARSITY_KINDS)}")
    if raw["calibration"]["status"] not in CALIBRATION_STATUSES:
        fail(f"key 'calibration.status' must be one of {', '.join(CALIBRATION_STATUSES)}, "
             f"got {raw['calibration']['status']!r}")
    power = raw.get("power") or {"modes": {}}
    modes = {k: PowerMode(name=k, **{kk: v for kk, v in m.items()}) for k, m in power["modes"].items()}
    default_mode = raw.get("default_power_mode")
    if modes and default_mode not in modes:
        fail(f"key 'default_power_mode' must name one of the power modes ({', '.join(modes)}), "
             f"got {default_mode!r}")
    if default_mode and not modes:
        fail("key 'default_power_mode' is set but 'power.modes' is missing")
    tvm = raw["runtimes"].get("tvm")
    if tvm and "tag" in tvm["target"] and "kind" in tvm["target"]:
        fail("key 'runtimes.tvm.target' has both 'tag' and 'kind' (TVM 0.27 then ignores the tag); keep the tag")
    sources = raw["sources"]
    for key in _numeric_keys({"device": raw["device"], "power": power}, ""):
        if not any(key == s or key.startswith(s + ".") for s in sources):
            fail(f"figure '{key}' has no entry in 'sources'; cite where it comes from")
    expected = path.stem
    if raw["name"] != expected:
        fail(f"key 'name' is {raw['name']!r} but the file is {path.name}; make them match")
    dev = raw["device"]
    return HardwareProfile(
        name=raw["name"],
        description=raw["description"],
        device=DeviceFacts(
            cpu=_proc(dev["cpu"]),
            gpu=_proc(dev.get("gpu")),
            memory_bandwidth_gbs=float(dev["memory_bandwidth_gbs"]) if "memory_bandwidth_gbs" in dev else None,
            memory_gb=float(dev["memory_gb"]) if "memory_gb" in dev else None,
        ),
        power_modes=MappingProxyType(modes),
        default_power_mode=default_mode,
        runtimes=_freeze(raw["runtimes"]),
        sparsity_support=frozenset(sparsity),
        sources=MappingProxyType(dict(sources)),
        calibration=_calibration(raw["calibration"], raw["name"]),
        energy_pj_per_byte=float(power["energy_pj_per_byte"]) if "energy_pj_per_byte" in power else None,
        path=str(path),
    )


def load_profile_file(path: str | os.PathLike) -> HardwareProfile:
    """Load and validate one profile file.

    Raises:
        ConfigError: If it is missing, not YAML, or invalid (naming path and key).
    """
    path = Path(path)
    return parse_profile(read_yaml(path, what="hardware profile"), path)


@dataclass
class ProfileCatalog:
    """The targets: profile name → file in :func:`profiles_dirs` (scanned on each use; the first
    folder that has a name wins).

    ``get`` raises :class:`~autoprune.errors.UnknownNameError` listing the valid names.
    """

    folder: Path | None = None
    kind: str = field(default="target")

    def _dirs(self) -> list[Path]:
        return [self.folder] if self.folder else profiles_dirs()

    def _files(self) -> dict[str, Path]:
        found: dict[str, Path] = {}
        for d in self._dirs():
            for p in sorted(d.glob("*.yaml")) if d.is_dir() else []:
                found.setdefault(p.stem, p)
        return found

    def names(self) -> list[str]:
        """Return the target names, sorted."""
        return sorted(self._files())

    def get(self, name: str) -> HardwareProfile:
        """Load target ``name``.

        Raises:
            UnknownNameError: If no profile has that name.
            ConfigError: If the profile is invalid.
        """
        path = self._files().get(name)
        if path is None:
            where = ", ".join(str(d) for d in self._dirs())
            raise UnknownNameError(
                f"unknown {self.kind} {name!r}; valid: {', '.join(self.names()) or '(none)'} (profiles in {where})"
            )
        return load_profile_file(path)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name in self.names()

    def __iter__(self):
        return iter(self.names())


#: The shipped targets (``hw_profiles/*.yaml``).
TARGETS = ProfileCatalog()


def load_profile(name_or_path: str | os.PathLike) -> HardwareProfile:
    """Load a profile by target name (``"jetson-nano"``) or by YAML file path.

    Raises:
        UnknownNameError: For an unknown name (the message lists the valid ones).
        ConfigError: For an invalid file (naming the path and key).
    """
    text = os.fspath(name_or_path)
    if text.endswith((".yaml", ".yml")) or os.sep in text:
        return load_profile_file(text)
    return TARGETS.get(text)


def list_profiles() -> list[HardwareProfile]:
    """Load every shipped profile, sorted by name."""
    return [TARGETS.get(n) for n in TARGETS.names()]
