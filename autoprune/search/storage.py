"""Optuna storages: SQLite by default, PostgreSQL for many workers, a journal file.

URLs are redacted in every message (``postgresql://user:***@host/db``). A
SQLite study is guarded by a lock file so that only one worker uses it; RDB
storages run Optuna's heartbeat so a killed worker's trial is failed and retried.
"""

from __future__ import annotations

import os
import re
from contextlib import contextmanager
from pathlib import Path

from autoprune.errors import StorageError
from autoprune.io import results_dir

HEARTBEAT_INTERVAL_S = 10
GRACE_PERIOD_S = 30
MAX_RETRY = 2


def default_storage_url() -> str:
    """``sqlite:///results/autoprune.db`` (under ``$AUTOPRUNE_RESULTS`` if set)."""
    return f"sqlite:///{results_dir() / 'autoprune.db'}"


def redact_url(url: str) -> str:
    """Hide the password of a database URL: ``scheme://user:***@host``."""
    return re.sub(r"(://[^:/@]*:)[^@]*@", r"\1***@", str(url))


def redact_text(text: str, url: str) -> str:
    """Replace any appearance of ``url`` or its password in ``text`` with the redacted form."""
    text = str(text).replace(url, redact_url(url))
    m = re.search(r"://[^:/@]*:([^@]*)@", url)
    if m and m.group(1):
        text = text.replace(m.group(1), "***")
    return text


def is_sqlite(url: str) -> bool:
    """True for ``sqlite:`` URLs."""
    return url.startswith("sqlite:")


def sqlite_path(url: str) -> Path | None:
    """The database file of a SQLite URL (``None`` for in-memory or other URLs)."""
    if not is_sqlite(url):
        return None
    path = url.split(":///", 1)[1] if ":///" in url else ""
    return Path(path) if path and path != ":memory:" else None


def make_storage(url: str):
    """Open an Optuna storage for ``url``.

    Args:
        url: ``sqlite:///path.db``, ``postgresql://...``, any SQLAlchemy URL, or
            ``journal:///path.log`` / a path ending in ``.log`` for a journal file.

    Raises:
        StorageError: If the storage cannot be reached (the URL is redacted).
    """
    import warnings

    import optuna
    from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback
    from optuna.storages.journal import JournalFileBackend, JournalStorage

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    try:
        if url.startswith("journal:") or url.endswith(".log"):
            path = url.split(":///", 1)[1] if url.startswith("journal:") else url
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            return JournalStorage(JournalFileBackend(path))
        engine_kwargs: dict = {}
        db = sqlite_path(url)
        if db is not None:
            db.parent.mkdir(parents=True, exist_ok=True)
            engine_kwargs = {"connect_args": {"timeout": 60}}
        else:
            engine_kwargs = {"pool_pre_ping": True}
            if url.startswith("postgresql"):
                engine_kwargs["connect_args"] = {"connect_timeout": 10}
        return RDBStorage(
            url, engine_kwargs=engine_kwargs, heartbeat_interval=HEARTBEAT_INTERVAL_S,
            grace_period=GRACE_PERIOD_S,
            heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=MAX_RETRY),
        )
    except Exception as exc:  # noqa: BLE001 - SQLAlchemy and drivers raise many types
        first = redact_text(str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__, url)
        raise StorageError(
            f"cannot open study storage {redact_url(url)}: {first}; check that the database is reachable "
            "and the URL is right"
        ) from None


@contextmanager
def single_worker_lock(url: str, study_name: str):
    """Hold an exclusive lock while this process works on a SQLite study.

    SQLite is for one worker; a second ``autoprune search`` on the same study is
    refused with a pointer to PostgreSQL or a journal file. Other storages are
    not locked (their workers coordinate through the database).

    Raises:
        StorageError: If another process holds the lock.
    """
    db = sqlite_path(url)
    if db is None:
        yield False
        return
    import fcntl

    lock_path = db.with_name(f".{db.name}.{re.sub(r'[^A-Za-z0-9_.-]', '_', study_name)}.lock")
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise StorageError(
                f"study {study_name!r} is already being searched by another process on SQLite "
                f"({redact_url(url)}); SQLite takes one worker — use --storage postgresql://... or "
                "--storage journal:///path.log for several workers"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        yield True
    finally:
        os.close(fd)
