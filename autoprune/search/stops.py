"""Stop signals that never land inside a storage call.

SIGINT and SIGTERM stop a search cleanly: they raise :class:`StopRequested` (a KeyboardInterrupt) in the
main thread, the loop fails the trial in progress with the reason and enqueues it again. Where the
signal lands matters. Raised inside an Optuna storage call, it can abort SQLAlchemy's commit or its
session's close half-way: the connection stays checked out with its transaction open, SQLite's write
lock stays held, and the loop's own bookkeeping then waits on that lock (60 s, the busy timeout) instead
of stopping. A journal storage's lock file stays behind the same way.

So the handler (:func:`catching`) only records a stop while the main thread is inside :func:`deferred`,
and the outermost :func:`deferred` raises it on the way out. :func:`guard_storage` puts every database
call of a storage inside :func:`deferred`; the loop also wraps ``study.ask()``, so no stop falls between
a trial's row being created and the loop holding the trial.
"""

from __future__ import annotations

import functools
import signal
import threading
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

#: The signals that stop a search cleanly.
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)

class StopRequested(KeyboardInterrupt):
    """SIGINT/SIGTERM, raised in the main thread. A KeyboardInterrupt, not an Exception: a signal that lands
    inside a library's ``except Exception`` (SQLAlchemy wraps it as a StatementError, a pipeline guard as a
    failed candidate) must still reach the clean stop, not be recorded as a storage error or a failure."""


class _MainState(threading.local):
    def __init__(self) -> None:
        self.depth = 0
        self.pending: list[int] = []


_STATE = _MainState()


def _handle(signum: int, _frame: Any) -> None:
    """The stop handler: raise now, or, inside :func:`deferred`, once the block is done."""
    if _STATE.depth > 0:
        _STATE.pending.append(signum)
        return
    raise StopRequested(signal.Signals(signum).name)


def catch() -> dict[signal.Signals, Any]:
    """Install the stop handler for :data:`STOP_SIGNALS`; return the handlers they had (see :func:`restore`)."""
    return {s: signal.signal(s, _handle) for s in STOP_SIGNALS}


def restore(old: Mapping[signal.Signals, Any]) -> None:
    """Put back the handlers :func:`catch` returned."""
    for s, h in old.items():
        signal.signal(s, h)


@contextmanager
def catching() -> Iterator[None]:
    """SIGINT and SIGTERM raise :class:`StopRequested` inside the block, never inside a :func:`deferred` one."""
    old = catch()
    try:
        yield
    finally:
        restore(old)


@contextmanager
def deferred() -> Iterator[None]:
    """A stop signal inside the block is raised only once the block has finished (blocks nest).

    Only the handler :func:`catch` installs defers: masking the signal (``pthread_sigmask``) is not
    enough, since the mask is the main thread's and the kernel then delivers the signal to another
    thread (a heartbeat, OpenMP's workers), and CPython still runs the handler in the main thread. Other
    threads' blocks defer nothing: a handler only ever runs in the main thread.
    """
    state = _STATE
    state.depth += 1
    try:
        yield
    finally:
        state.depth -= 1
        if state.depth == 0 and state.pending:
            signum = state.pending[0]
            state.pending.clear()
            raise StopRequested(signal.Signals(signum).name)


def guard_storage(storage: Any, names: Iterable[str]) -> Any:
    """Put the database calls ``names`` of an Optuna storage inside :func:`deferred`, in place; returns ``storage``.

    A stop that arrives during a call is raised when the call has returned, so the call's transaction is
    committed or rolled back and its connection (or the journal's lock) given back first.

    Args:
        storage: An Optuna storage.
        names: Its methods that touch the database (:func:`autoprune.search.storage.db_methods`).
    """

    def wrap(method):
        @functools.wraps(method)
        def call(*args, **kwargs):
            with deferred():
                return method(*args, **kwargs)

        return call

    for name in names:
        setattr(storage, name, wrap(getattr(storage, name)))
    return storage


__all__ = ["STOP_SIGNALS", "StopRequested", "catch", "catching", "deferred", "guard_storage", "restore"]
