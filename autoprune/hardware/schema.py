"""Validation of a hardware profile file, and the :class:`~autoprune.hardware.records.HardwareProfile` it
describes.

Validation is strict: a corrupt, incomplete, wrongly typed file or an unknown key raises
:class:`~autoprune.errors.ConfigError` naming the file and the dotted key. Every numeric figure
under ``device`` and ``power`` needs a ``sources`` entry for its key or a parent key, and must be
a finite number (``.nan`` and ``.inf`` are refused).
"""

from __future__ import annotations

import math
from datetime import datetime, timezone
from pathlib import Path
from types import MappingProxyType
from typing import Any

from autoprune.errors import ConfigError
from autoprune.io import read_json, results_dir
from autoprune.structures import STRUCTURES, nm_support_kind

from .detect import resolve_auto
from .records import SCHEMA_VERSION, CalibrationInfo, DeviceFacts, HardwareProfile, PowerMode, ProcessorFacts, freeze

__all__ = ["CALIBRATION_STATUSES", "SPARSITY_KINDS", "parse_profile"]

SPARSITY_KINDS = ("none", nm_support_kind("2:4"), STRUCTURES.get("unstructured").sparsity_support)
CALIBRATION_STATUSES = ("measured", "published", "prior")

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
    if isinstance(value, float) and not math.isfinite(value):
        fail(f"key '{key}' must be a finite number, got {value!r}")


def _join(prefix: str, key: str) -> str:
    return f"{prefix}.{key}" if prefix else key


def _numeric_keys(value: Any, prefix: str) -> list[str]:
    if isinstance(value, dict):
        return [k for kk, v in value.items() for k in _numeric_keys(v, _join(prefix, str(kk)))]
    return [prefix] if isinstance(value, _NUM) and not isinstance(value, bool) else []


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
    raw = resolve_auto(raw)

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
        runtimes=freeze(raw["runtimes"]),
        sparsity_support=frozenset(sparsity),
        sources=MappingProxyType(dict(sources)),
        calibration=_calibration(raw["calibration"], raw["name"]),
        energy_pj_per_byte=float(power["energy_pj_per_byte"]) if "energy_pj_per_byte" in power else None,
        path=str(path),
    )
