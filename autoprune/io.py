"""Atomic, checksummed, human-readable files (JSON and YAML, never pickle)."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
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
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise _renamed(exc, exc.filename or path.parent) from exc
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:  # name the file asked for, not the temporary one
        raise _renamed(exc, path) from exc
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        if isinstance(exc, OSError) and exc.errno is not None:
            raise _renamed(exc, path) from exc
        raise
    return path


def ensure_writable(folder: str | os.PathLike) -> Path:
    """Check that files can be created in ``folder`` (or, where it does not exist yet, that it can be
    made in its nearest existing parent) by creating one there: an unnamed temporary file, gone when
    closed. So a command refuses at its start, not after minutes of work, a folder its results could
    not be written to; nothing is left behind, not even the folder. Creating a file is the sure test
    (``os.access`` can say yes where a write fails, e.g. for root on a file system that squashes root).

    Raises:
        OSError: Naming the folder tried (:func:`write_failure` makes it one line).
    """
    folder = Path(folder)
    probe = folder
    while not probe.is_dir() and probe != probe.parent:
        probe = probe.parent
    try:
        with tempfile.TemporaryFile(dir=probe):
            pass
    except OSError as exc:
        raise _renamed(exc, probe) from exc
    return folder


def _renamed(exc: OSError, path: str | os.PathLike) -> OSError:
    """``exc`` again (same class and errno) naming ``path``."""
    return OSError(exc.errno, exc.strerror or os.strerror(exc.errno or 0), str(path))


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


#: Files up to this size are hashed whole by :func:`content_digest`; larger ones are sampled.
FULL_HASH_MAX_BYTES = 64 << 20
_SAMPLES, _SAMPLE_BYTES = 16, 1 << 16


def content_digest(path: str | os.PathLike, full_max_bytes: int = FULL_HASH_MAX_BYTES) -> str:
    """A short hex digest of a file's contents, not of its name (so a file replaced at the same path,
    or the same file moved, is told apart from, or matched with, what was there before).

    A file up to ``full_max_bytes`` is hashed whole (SHA-256). A larger one, where that would take
    seconds, is keyed by its size, its modification time (nanoseconds) and 16 sampled 64 KiB blocks
    spread over it, first and last included: any rewrite changes the time, any resize the size.
    """
    path = Path(path)
    st = path.stat()
    if st.st_size <= full_max_bytes:
        return file_sha256(path)[:16]
    h = hashlib.sha256(f"{st.st_size}:{st.st_mtime_ns}".encode())
    with open(path, "rb") as fh:
        for k in range(_SAMPLES):
            fh.seek((st.st_size - _SAMPLE_BYTES) * k // (_SAMPLES - 1))
            h.update(fh.read(_SAMPLE_BYTES))
    return h.hexdigest()[:16]


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


#: A study name that can be a folder name: letters, digits, ``-``, ``_``, ``.`` (not first), ≤ 120 characters.
STUDY_NAME = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,119}")


def check_study_name(name: str) -> str:
    """Return ``name`` if it can name a folder under ``results/``; else say which names can.

    Raises:
        ConfigError: For a name with anything but ASCII letters, digits, ``-``, ``_`` and ``.``, one
            starting with ``.`` (``..``, hidden folders), an empty one or one over 120 characters.
    """
    if not isinstance(name, str) or not STUDY_NAME.fullmatch(name):
        fix = safe_name(str(name).encode("ascii", "replace").decode()).lstrip(".")[:120] or "study"
        raise ConfigError(f"study name {name!r} cannot be a folder under results/: use only letters, digits, "
                          f"'-', '_' and '.' (not first), at most 120 characters, e.g. {fix!r}")
    return name


def study_dir(name: str) -> Path:
    """The folder of a study's files, ``results/<name>`` (refused unless :func:`check_study_name` allows it).

    Raises:
        ConfigError: If ``name`` would write outside ``results/`` or is not a plain folder name.
    """
    return results_dir() / check_study_name(name)


#: ``errno`` values that mean "this path cannot be written here": the user's to fix, not a bug.
WRITE_ERRNOS = {errno.EACCES: "permission denied", errno.EPERM: "operation not permitted",
                errno.EROFS: "read-only file system", errno.ENOSPC: "no space left on device",
                errno.EDQUOT: "disk quota exceeded"}
#: SQLite's messages for a database that cannot be written, and what they mean.
SQLITE_WRITE_ERRORS = {"attempt to write a readonly database": "read-only database",
                       "unable to open database file": "cannot be opened or created",
                       "database or disk is full": "no space left on device"}


def write_failure(exc: BaseException, *, database: str | os.PathLike | None = None, elsewhere: str = "",
                  database_elsewhere: str = "") -> str | None:
    """One line naming the path, the problem and the fix, if ``exc`` (or what it was raised from) is a
    permission, read-only or disk-full error: an ``OSError``, or SQLite's through SQLAlchemy and Optuna
    (``database`` is then the file named); ``None`` for any other error.

    Args:
        exc: The error.
        database: The study database's file, for SQLite's errors (which name no file).
        elsewhere: How to write files somewhere else instead, e.g. ``"pass --out DIR"`` (added to the fix).
        database_elsewhere: The same for the study database, e.g. ``"pass --storage URL"``.
    """
    seen = 0
    while exc is not None and seen < 10:
        if isinstance(exc, OSError) and exc.errno in WRITE_ERRNOS:
            where = exc.filename or "a file"
            if exc.errno in (errno.EACCES, errno.EPERM):  # a read, too, can be denied
                text, fix = f"cannot access {where}", "make it readable and writable for this user"
            else:
                full = exc.errno in (errno.ENOSPC, errno.EDQUOT)
                text, fix = f"cannot write {where}", "free some space" if full else "make it writable"
            return f"{text}: {WRITE_ERRNOS[exc.errno]}; {fix}" + (f", or {elsewhere}" if elsewhere else "")
        if type(exc).__name__ == "OperationalError":  # sqlite3's, or SQLAlchemy's wrapping it
            what = next((w for n, w in SQLITE_WRITE_ERRORS.items() if n in str(exc).lower()), None)
            if what is not None:
                fix = "free some space" if what.startswith("no space") else \
                    "make it and its folder writable for this user"
                return (f"cannot write the study database {database or '(sqlite)'}: {what}; {fix}"
                        + (f", or {database_elsewhere}" if database_elsewhere else ""))
        exc = exc.__cause__ or exc.__context__  # type: ignore[assignment]
        seen += 1
    return None
