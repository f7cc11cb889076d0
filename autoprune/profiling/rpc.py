"""TVM RPC: reaching a remote board, and loopback servers/trackers for tests.

A remote measurement must never hang the search. Three guards apply:

* the TCP address is probed with a plain socket and ``connect_timeout_s`` before
  TVM's own connect (which retries for a minute on a refused tracker);
* every session is opened with TVM's ``session_timeout`` so the server kills it;
* every blocking remote step runs under :func:`run_with_watchdog`, which gives up
  after its bound and raises :class:`~autoprune.errors.ProfilingError`.

Security: a TVM RPC server executes whatever code a client uploads. The helpers
here bind ``127.0.0.1`` unless told otherwise and log a warning when they start.
"""

from __future__ import annotations

import logging
import re
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from autoprune.errors import ConfigError, ProfilingError
from autoprune.registry import lazy_import

__all__ = [
    "LoopbackServer",
    "LoopbackTracker",
    "RPCConfig",
    "connect",
    "run_with_watchdog",
]

log = logging.getLogger(__name__)
T = TypeVar("T")

_ADDR = re.compile(r"^\[?(?P<host>[^\]]+?)\]?:(?P<port>\d{1,5})$")


def _parse_addr(text: str, flag: str) -> tuple[str, int]:
    m = _ADDR.match(text.strip())
    if not m or not 0 < int(m["port"]) < 65536:
        raise ConfigError(f"{flag} must be HOST:PORT (e.g. 192.168.1.20:9090), got {text!r}")
    return m["host"], int(m["port"])


@dataclass(frozen=True)
class RPCConfig:
    """Where and how to reach a remote TVM device.

    Attributes:
        host: Server or tracker host.
        port: Server or tracker port.
        key: Device key (required with a tracker; sent to a server as its match key).
        tracker: True if ``host:port`` is an RPC tracker, false for a direct server.
        session_timeout_s: The server kills a session older than this.
        connect_timeout_s: Bound on reaching the server/tracker and opening a session.
    """

    host: str
    port: int
    key: str = ""
    tracker: bool = False
    session_timeout_s: float = 120.0
    connect_timeout_s: float = 10.0

    def __post_init__(self) -> None:
        if self.tracker and not self.key:
            raise ConfigError("--rpc-tracker needs --rpc-key KEY (the device key the board registered with)")
        if self.session_timeout_s <= 0 or self.connect_timeout_s <= 0:
            raise ConfigError("RPC timeouts must be positive seconds")

    @classmethod
    def from_args(
        cls,
        rpc: str | None = None,
        tracker: str | None = None,
        key: str | None = None,
        **timeouts: float,
    ) -> RPCConfig | None:
        """Build a config from ``--rpc HOST:PORT`` or ``--rpc-tracker HOST:PORT --rpc-key KEY``.

        Returns:
            ``None`` when neither is given (measure locally).

        Raises:
            ConfigError: On both flags at once, a bad address, or a tracker without key.
        """
        if rpc and tracker:
            raise ConfigError("give either --rpc HOST:PORT or --rpc-tracker HOST:PORT, not both")
        if rpc:
            host, port = _parse_addr(rpc, "--rpc")
            return cls(host, port, key or "", tracker=False, **timeouts)
        if tracker:
            host, port = _parse_addr(tracker, "--rpc-tracker")
            return cls(host, port, key or "", tracker=True, **timeouts)
        if key:
            raise ConfigError("--rpc-key needs --rpc-tracker HOST:PORT")
        return None

    def describe(self) -> str:
        """Return ``rpc://host:port key=K`` or ``rpc-tracker://host:port key=K``."""
        scheme = "rpc-tracker" if self.tracker else "rpc"
        return f"{scheme}://{self.host}:{self.port}" + (f" key={self.key}" if self.key else "")


def _abandon(objs: tuple[Any, ...]) -> None:
    """Leak ``objs`` on purpose so that their destructors never run.

    Destroying a TVM RPC session (or a remote object) whose server hangs blocks
    *with the GIL held* while it says goodbye to the server, freezing the whole
    process. After a watchdog timeout the session is therefore never destroyed.
    """
    import ctypes

    for obj in objs:
        ctypes.pythonapi.Py_IncRef(ctypes.py_object(obj))


def run_with_watchdog(
    fn: Callable[[], T], timeout_s: float, what: str, keep_alive: tuple[Any, ...] = ()
) -> T:
    """Run ``fn`` in a daemon thread and wait at most ``timeout_s`` seconds.

    TVM's RPC calls release the GIL while they block, so a stuck remote cannot
    freeze the caller. On timeout the thread is abandoned, and ``fn`` plus
    ``keep_alive`` (pass the RPC session) are leaked on purpose: their destructors
    would block on the hung server with the GIL held.

    Raises:
        ProfilingError: If ``fn`` does not finish in time, or raises (TVM errors are
            wrapped with ``what`` in the message).
    """
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["value"] = fn()
        except BaseException as exc:  # noqa: BLE001 - re-raised in the caller's thread
            box["error"] = exc

    thread = threading.Thread(target=target, name=f"autoprune-rpc: {what}", daemon=True)
    thread.start()
    thread.join(timeout_s)
    if thread.is_alive():
        _abandon((fn, *keep_alive))
        raise ProfilingError(
            f"{what}: no answer within {timeout_s:g} s; check that the RPC server is alive "
            "and reachable, or raise the timeout"
        )
    if "error" in box:
        exc = box["error"]
        if isinstance(exc, ProfilingError | ConfigError):
            raise exc
        first = (str(exc).strip().splitlines() or [exc.__class__.__name__])[-1]
        raise ProfilingError(f"{what} failed: {first}") from exc
    return box["value"]


def _probe(host: str, port: int, timeout_s: float, what: str) -> None:
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            pass
    except OSError as exc:
        raise ProfilingError(
            f"cannot reach {what} at {host}:{port} within {timeout_s:g} s ({exc.strerror or exc}); "
            "check the address and that the server/tracker is running"
        ) from None


def connect(config: RPCConfig):
    """Open a TVM RPC session (directly or through a tracker), with timeouts.

    Raises:
        ProfilingError: If the server/tracker is unreachable, the key is unknown,
            or no session opens within ``config.connect_timeout_s``.
    """
    rpc = lazy_import("tvm.rpc", "apache-tvm")
    # A tracker is probed (TVM would retry a refused tracker for 60 s); a server is
    # not, since a probe would consume its single accept slot.
    if config.tracker:
        _probe(config.host, config.port, config.connect_timeout_s, "the RPC tracker")

    def open_session():
        if config.tracker:
            tracker = rpc.connect_tracker(config.host, config.port)
            summary = tracker.summary()
            keys = sorted(summary.get("queue_info", {}))
            if config.key not in keys:
                raise ProfilingError(
                    f"RPC tracker {config.host}:{config.port} has no device with key {config.key!r}; "
                    f"registered keys: {', '.join(keys) or '(none)'}"
                )
            return tracker.request(
                config.key, priority=1, session_timeout=int(config.session_timeout_s), max_retry=1
            )
        return rpc.connect(config.host, config.port, key=config.key,
                           session_timeout=int(config.session_timeout_s))

    return run_with_watchdog(open_session, config.connect_timeout_s, f"connecting to {config.describe()}")


def _warn_open_server(host: str, what: str) -> None:
    log.warning(
        "starting a TVM RPC %s on %s: an RPC server executes arbitrary code uploaded by any "
        "client that reaches it; keep it on loopback or a trusted network",
        what,
        host,
    )


class LoopbackTracker:
    """A TVM RPC tracker in a child process (for tests and local experiments).

    Use as a context manager; :attr:`port` is the bound port.

    Args:
        host: Address to bind (default loopback).
        port: First port to try; the next free one up to ``port_end`` is used.
    """

    def __init__(self, host: str = "127.0.0.1", port: int = 9190, port_end: int = 9290) -> None:
        tracker_mod = lazy_import("tvm.rpc.tracker", "tornado")
        _warn_open_server(host, "tracker")
        self.host = host
        self._tracker = tracker_mod.Tracker(host=host, port=port, port_end=port_end, silent=True)
        self.port: int = self._tracker.port

    @property
    def address(self) -> str:
        """``host:port``."""
        return f"{self.host}:{self.port}"

    def stop(self) -> None:
        """Terminate the tracker process (idempotent)."""
        if self._tracker is not None:
            self._tracker.terminate()
            self._tracker = None

    def __enter__(self) -> LoopbackTracker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


class LoopbackServer:
    """A TVM RPC server in a child process (for tests and local experiments).

    Args:
        host: Address to bind (default loopback; anything else is your decision).
        port: First port to try.
        key: Device key (registered with the tracker, if any).
        tracker: ``host:port`` of a tracker to register with.
    """

    def __init__(
        self, host: str = "127.0.0.1", port: int = 9300, port_end: int = 9400, key: str = "",
        tracker: str | None = None,
    ) -> None:
        rpc = lazy_import("tvm.rpc", "apache-tvm")
        _warn_open_server(host, "server")
        tracker_addr = _parse_addr(tracker, "tracker") if tracker else None
        self.host = host
        self.key = key
        self._server = rpc.Server(
            host=host, port=port, port_end=port_end, key=key, tracker_addr=tracker_addr, silent=True
        )
        self.port: int = self._server.port

    @property
    def address(self) -> str:
        """``host:port``."""
        return f"{self.host}:{self.port}"

    def stop(self) -> None:
        """Kill the server and its session processes (idempotent; needs psutil)."""
        if self._server is not None:
            server, self._server = self._server, None
            try:
                server.terminate()
            except AttributeError:
                # TVM's PopenWorker.kill checks its process, then kills it: when the process was already
                # reaped in between (a test killed it mid-measure), its handle is None. Nothing is left.
                pass

    def __enter__(self) -> LoopbackServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
