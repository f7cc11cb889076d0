"""Optuna storages: SQLite by default, PostgreSQL for many workers, a journal file.

URLs are redacted in every message (``postgresql://user:***@host/db``). A
SQLite study is guarded by a lock file so that only one worker uses it; RDB
storages run Optuna's heartbeat so a killed worker's trial is failed and retried.

A database server (PostgreSQL, MySQL) that drops the connection mid-study is
retried: each storage call that fails with a connection error is repeated with
exponential backoff (``AUTOPRUNE_DB_RETRIES`` times, first wait
``AUTOPRUNE_DB_RETRY_BACKOFF_S`` seconds, doubling; 5 and 0.5 s by default, so
about 15 s in all). If the server comes back in that window the search goes on;
otherwise the call raises :class:`~autoprune.errors.StorageError` (one line, URL
redacted) and the search stops. Finished trials are already committed, so none
is lost; ``autoprune search --study NAME`` resumes once the server is back.
"""

from __future__ import annotations

import functools
import os
import re
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path

from autoprune.errors import ConfigError, StorageError
from autoprune.io import results_dir
from autoprune.search.stops import guard_storage

HEARTBEAT_INTERVAL_S = 10
GRACE_PERIOD_S = 30
MAX_RETRY = 2
#: Connection retries per storage call, and the first backoff in seconds (doubles each retry).
DB_RETRIES = 5
DB_RETRY_BACKOFF_S = 0.5
#: RDBStorage methods that touch the database, besides public ``get_/set_/create_/delete_/record_`` ones.
_PRIVATE_DB_METHODS = ("_create_new_trial", "_get_trials", "_get_stale_trial_ids", "_get_best_trial_id",
                       "_set_trial_param")
_NO_DB_METHODS = {"get_heartbeat_interval", "get_heartbeat_stale_trial_callback", "get_failed_trial_callback",
                  "get_head_version", "get_all_versions"}


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
    db = sqlite_path(url)
    try:
        if url.startswith("journal:") or url.endswith(".log"):
            path = url.split(":///", 1)[1] if url.startswith("journal:") else url
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            journal = JournalStorage(JournalFileBackend(path))
            return guard_storage(journal, db_methods(journal))
        engine_kwargs: dict = {}
        if db is not None:
            db.parent.mkdir(parents=True, exist_ok=True)
            engine_kwargs = {"connect_args": {"timeout": 60}}
        else:
            engine_kwargs = {"pool_pre_ping": True}
            if url.startswith("postgresql"):
                engine_kwargs["connect_args"] = {"connect_timeout": 10}
        storage = RDBStorage(
            url, engine_kwargs=engine_kwargs, heartbeat_interval=HEARTBEAT_INTERVAL_S,
            grace_period=GRACE_PERIOD_S,
            heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=MAX_RETRY),
        )
    except Exception as exc:  # noqa: BLE001 - SQLAlchemy and drivers raise many types
        from autoprune.io import write_failure

        denied = write_failure(exc, database=db, database_elsewhere="pass another --storage URL")
        if denied:
            raise StorageError(denied) from None
        first = redact_text(str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__, url)
        raise StorageError(
            f"cannot open study storage {redact_url(url)}: {first}; check that the database is reachable "
            "and the URL is right"
        ) from None
    if db is None:
        return guard_with_retries(storage, url, *retry_policy())
    return guard_storage(storage, db_methods(storage))


def guard_with_retries(storage, url: str, retries: int, backoff_s: float):
    """Guard each database attempt against stop signals (:func:`~autoprune.search.stops.guard_storage`), then
    retry dropped connections around the guarded calls (:func:`with_connection_retries`), in place.

    In this order a stop is deferred only while a call is in the database and lands at once during a
    retry's back-off sleep; the other way round it was held through the whole back-off window (5 retries
    from 0.5 s: up to 15.5 s).
    """
    guard_storage(storage, db_methods(storage))
    return with_connection_retries(storage, url, retries, backoff_s)


def retry_policy() -> tuple[int, float]:
    """``(retries, first backoff in s)`` from ``AUTOPRUNE_DB_RETRIES`` / ``AUTOPRUNE_DB_RETRY_BACKOFF_S``.

    Raises:
        ConfigError: A value is not a number, or is negative.
    """
    out = []
    for name, default, kind in (("AUTOPRUNE_DB_RETRIES", DB_RETRIES, int),
                                ("AUTOPRUNE_DB_RETRY_BACKOFF_S", DB_RETRY_BACKOFF_S, float)):
        raw = os.environ.get(name, "").strip()
        try:
            value = kind(raw) if raw else default
        except ValueError:
            value = -1
        if not value >= 0:  # also catches NaN
            raise ConfigError(f"{name}={raw!r} must be a number >= 0; unset it for the default {default}")
        out.append(value)
    return int(out[0]), float(out[1])


def is_connection_error(exc: BaseException) -> bool:
    """True if ``exc`` (or an exception it was raised from) says the database connection failed."""
    from sqlalchemy import exc as sa_exc

    seen = 0
    while exc is not None and seen < 10:
        if isinstance(exc, (sa_exc.OperationalError, sa_exc.InterfaceError)):
            return True
        if isinstance(exc, sa_exc.DBAPIError) and exc.connection_invalidated:
            return True
        exc = exc.__cause__ or exc.__context__
        seen += 1
    return False


_RETRY_STATE = threading.local()
_SAY_LOCK = threading.Lock()


def db_methods(storage) -> list[str]:
    """The methods of an Optuna storage that touch its database (or a journal's file and lock).

    The public ``get_/set_/create_/delete_/record_`` ones, and the private ones Optuna's cached storage
    calls directly (:data:`_PRIVATE_DB_METHODS`); not those that only read settings (:data:`_NO_DB_METHODS`).
    """
    return [n for n in dir(type(storage))
            if (n.startswith(("get_", "set_", "create_", "delete_", "record_")) or n in _PRIVATE_DB_METHODS)
            and n not in _NO_DB_METHODS and callable(getattr(storage, n, None))]


def with_connection_retries(storage, url: str, retries: int, backoff_s: float):
    """Make each database call of an ``RDBStorage`` retry on connection errors, in place.

    A call that fails with a connection error (see :func:`is_connection_error`) is
    repeated after ``backoff_s``, ``2 * backoff_s``, ... seconds, ``retries`` times;
    a call made inside another retried call is not retried again. One line on
    stderr says when the connection was lost and when it came back.

    Args:
        storage: An ``optuna.storages.RDBStorage``.
        url: Its URL (only ever shown redacted).
        retries: Retries per call (0 = fail at once).
        backoff_s: The first wait, doubling after each retry.

    Returns:
        ``storage``, whose calls raise :class:`StorageError` when the retries run out.
    """
    names = db_methods(storage)
    window_s = backoff_s * (2 ** retries - 1)

    def wrap(method):
        @functools.wraps(method)
        def call(*args, **kwargs):
            if getattr(_RETRY_STATE, "active", False):
                return method(*args, **kwargs)
            _RETRY_STATE.active = True
            try:
                lost_at = None
                for attempt in range(retries + 1):
                    try:
                        out = method(*args, **kwargs)
                    except Exception as exc:  # only connection errors are retried
                        if not is_connection_error(exc):
                            raise
                        first = _first_line(exc, url)
                        if attempt == retries:
                            raise StorageError(
                                f"lost the connection to the study storage {redact_url(url)} ({first}); it did "
                                f"not come back in {retries} retries over {window_s:.1f} s. Finished trials "
                                "are safe in the database: when it is reachable again, resume with "
                                "`autoprune search --study NAME --storage URL`"
                            ) from None
                        if lost_at is None:
                            lost_at = time.monotonic()
                            _say(f"autoprune: the study storage {redact_url(url)} is unreachable ({first}); "
                                 f"retrying for up to {window_s:.1f} s")
                        time.sleep(backoff_s * 2 ** attempt)
                        continue
                    if lost_at is not None:
                        _say(f"autoprune: the study storage {redact_url(url)} is reachable again after "
                             f"{time.monotonic() - lost_at:.1f} s")
                    return out
                raise AssertionError("unreachable")  # pragma: no cover
            finally:
                _RETRY_STATE.active = False

        return call

    for name in names:
        setattr(storage, name, wrap(getattr(storage, name)))
    return storage


def _first_line(exc: BaseException, url: str) -> str:
    """The first line of the innermost driver message of ``exc``, redacted."""
    inner = exc
    while inner.__cause__ is not None:
        inner = inner.__cause__
    text = str(getattr(inner, "orig", None) or inner).strip()
    return redact_text(text.splitlines()[0] if text else type(inner).__name__, url)[:200]


def _say(line: str) -> None:
    with _SAY_LOCK:
        print(line, file=sys.stderr, flush=True)


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


class StudyStorage:
    """A study storage resolved once and passed down (as Optuna's ``get_storage`` does): its URL, the
    Optuna storage (opened on first use, with connection retries), the SQLite file if any, and the
    artifact store that the dashboard serves beside it.

    Args:
        url: ``sqlite:///path.db``, ``postgresql://...``, ``journal:///path.log`` (see :func:`make_storage`).
    """

    def __init__(self, url: str) -> None:
        self.url = url
        self.sqlite_path = sqlite_path(url)
        self._optuna = None
        self._artifacts = None

    @property
    def optuna(self):
        """The Optuna storage (opened once).

        Raises:
            StorageError: If it cannot be reached (the URL is redacted).
        """
        if self._optuna is None:
            self._optuna = make_storage(self.url)
        return self._optuna

    @property
    def redacted(self) -> str:
        """The URL with its password hidden."""
        return redact_url(self.url)

    @property
    def artifact_dir(self) -> Path:
        """The artifact folder: beside a SQLite file, else under ``results/``."""
        return (self.sqlite_path.parent if self.sqlite_path is not None else results_dir()) / "artifacts"

    @property
    def artifacts(self):
        """Optuna's file-system artifact store for this storage (shared with the dashboard)."""
        if self._artifacts is None:
            from optuna.artifacts import FileSystemArtifactStore

            self.artifact_dir.mkdir(parents=True, exist_ok=True)
            self._artifacts = FileSystemArtifactStore(str(self.artifact_dir))
        return self._artifacts

    def lock(self, study_name: str):
        """:func:`single_worker_lock` for a study of this storage."""
        return single_worker_lock(self.url, study_name)

    def __repr__(self) -> str:
        return f"StudyStorage({self.redacted!r})"


def get_storage(storage: str | StudyStorage | None) -> StudyStorage:
    """A :class:`StudyStorage` from a URL, an existing one, or ``None`` (the default SQLite file)."""
    if isinstance(storage, StudyStorage):
        return storage
    return StudyStorage(storage or default_storage_url())
