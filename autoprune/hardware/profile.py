"""Hardware profiles: versioned YAML files in ``hw_profiles/`` describing a target device.

A profile holds device facts (peak GFLOPS per precision, memory bandwidth, cores,
clocks), power figures per power mode, the runtimes to measure with, which kinds
of sparsity the target's kernels can exploit, a citation for every figure
(``sources:``), and the calibration status of its cost model:

* ``measured``: latency tables were profiled on the device (where, when, runtime);
* ``published``: fitted to cited published latencies;
* ``prior``: datasheet roofline only.

This module finds and loads profiles (the catalog of targets, a user's profiles folder first);
the pieces live beside it, one concept each:

* :mod:`.records`: the frozen records (:class:`HardwareProfile` and its parts);
* :mod:`.schema`: strict validation (a corrupt, incomplete, wrongly typed file, an unknown key or
  an uncited figure raises :class:`~autoprune.errors.ConfigError` naming the file and the dotted
  key) and the record it builds;
* :mod:`.detect`: the ``local`` profile's ``auto`` values, detected at load time (cores, CPU model,
  clock, FP32 peak from the CPU flags). Its status becomes ``measured`` once
  ``results/calibrations/local/`` holds a calibration file.

Example:
    >>> p = load_profile("jetson-nano")
    >>> p.device.gpu.peak_gflops["fp16"], p.calibration.status
    (472.0, 'published')
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from autoprune.errors import UnknownNameError
from autoprune.io import read_yaml

from .detect import detect_local
from .records import (
    SCHEMA_VERSION,
    CalibrationInfo,
    DeviceFacts,
    HardwareProfile,
    PowerMode,
    ProcessorFacts,
)
from .schema import parse_profile

__all__ = [
    "SCHEMA_VERSION",
    "TARGETS",
    "CalibrationInfo",
    "DeviceFacts",
    "HardwareProfile",
    "PowerMode",
    "ProcessorFacts",
    "ProfileCatalog",
    "detect_local",
    "list_profiles",
    "load_profile",
    "load_profile_file",
    "parse_profile",
    "profiles_dirs",
]

#: The shipped profiles.
SHIPPED_PROFILES = Path(__file__).resolve().parents[2] / "hw_profiles"


def profiles_dirs() -> list[Path]:
    """The folders searched for profiles, first match wins: the user's (``$AUTOPRUNE_HW_PROFILES``,
    several joined with ``os.pathsep``; the CLI's ``--profiles DIR`` sets it), then the shipped ones.

    A user adds a board, or overrides a shipped one, without editing the package.
    """
    env = [Path(p) for p in os.environ.get("AUTOPRUNE_HW_PROFILES", "").split(os.pathsep) if p]
    return [*env, SHIPPED_PROFILES]


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
