"""Atomic, checksummed, human-readable files (JSON and YAML, never pickle)."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

from autoprune.errors import CalibrationError, ConfigError


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` so that a crash never leaves a half-written file.

    The bytes go to a temporary file in the same folder, are fsynced, then
    ``os.replace``d over the target.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Atomically write UTF-8 text."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def _canonical(payload: Any) -> bytes:
    return json.dumps(payload, sort_keys=True, separators=(",", ":"), allow_nan=False).encode()


def write_json(path: str | os.PathLike, payload: Any, *, checksum: bool = False) -> Path:
    """Atomically write ``payload`` as indented JSON.

    Args:
        path: Destination file.
        payload: A JSON-serialisable object (NaN and infinities are refused).
        checksum: If true, ``payload`` must be a dict; a ``"sha256"`` field over the
            canonical form of the rest is added, and :func:`read_json` verifies it.
    """
    if checksum:
        if not isinstance(payload, dict):
            raise TypeError("checksummed JSON must be a dict")
        body = {k: v for k, v in payload.items() if k != "sha256"}
        payload = {**body, "sha256": hashlib.sha256(_canonical(body)).hexdigest()}
    text = json.dumps(payload, indent=2, sort_keys=False, allow_nan=False)
    return atomic_write_text(path, text + "\n")


def read_json(path: str | os.PathLike, *, checksum: bool = False, what: str = "file") -> Any:
    """Read JSON written by :func:`write_json`, with clear errors.

    Raises:
        CalibrationError: If the file is missing, not JSON, or fails its checksum.
    """
    path = Path(path)
    try:
        payload = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CalibrationError(f"{what} not found: {path}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CalibrationError(f"{what} {path} is corrupt or truncated ({exc.__class__.__name__}: {exc})") from None
    if checksum:
        if not isinstance(payload, dict) or "sha256" not in payload:
            raise CalibrationError(f"{what} {path} has no checksum; regenerate it")
        body = {k: v for k, v in payload.items() if k != "sha256"}
        if hashlib.sha256(_canonical(body)).hexdigest() != payload["sha256"]:
            raise CalibrationError(f"{what} {path} fails its checksum (edited or corrupt); regenerate it")
    return payload


def read_yaml(path: str | os.PathLike, *, what: str = "file") -> Any:
    """Read a YAML file safely (``yaml.safe_load``), with clear errors.

    Raises:
        ConfigError: If the file is missing or is not valid YAML.
    """
    import yaml

    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{what} not found: {path}") from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        first = str(exc).splitlines()[0] if str(exc) else exc.__class__.__name__
        raise ConfigError(f"{what} {path} is not valid YAML: {first}") from None


def file_sha256(path: str | os.PathLike) -> str:
    """Return the hex SHA-256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def safe_name(text: str, max_chars: int | None = None) -> str:
    """``text`` with every character but letters, digits, ``-``, ``_`` and ``.`` replaced by ``_``
    (cut to ``max_chars``): the one rule for names that become file names."""
    out = "".join(c if c.isalnum() or c in "-_." else "_" for c in str(text))
    return out if max_chars is None else out[:max_chars]


def results_dir() -> Path:
    """Return the results folder (``$AUTOPRUNE_RESULTS`` or ``./results``)."""
    return Path(os.environ.get("AUTOPRUNE_RESULTS", "results"))
