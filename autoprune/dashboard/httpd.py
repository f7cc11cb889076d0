"""The dashboard's HTTP server: wsgiref made threaded, with read deadlines, so no client can stall another.

Each connection gets its own thread (at most :data:`MAX_CONNECTIONS` at once; past that a new one is closed
at once). The request line and headers must arrive within :data:`HEADER_TIMEOUT_S` of the connection, and
the body within :data:`BODY_TIMEOUT_S` after them: the deadline bounds every read of the connection's
socket, so a client that sends nothing, or a byte now and then, loses its connection instead of holding
the server. Errors of a connection (a client gone, a deadline passed) are one line, never a traceback.
"""

from __future__ import annotations

import io
import socket
import sys
import threading
import time
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import ServerHandler, WSGIRequestHandler, WSGIServer

HEADER_TIMEOUT_S = 5.0
BODY_TIMEOUT_S = 10.0
#: How long one send to a client may block (a slow reader of a large artifact).
WRITE_TIMEOUT_S = 30.0
MAX_CONNECTIONS = 64


def _say(line: str) -> None:
    print(f"autoprune dashboard: {line}", flush=True)


class DeadlineReader(io.RawIOBase):
    """A socket's reading side whose every read ends by :attr:`deadline` (``time.monotonic()``).

    Args:
        sock: The connection.
        deadline: When reading must be done (raise :class:`TimeoutError` after).
    """

    def __init__(self, sock: socket.socket, deadline: float) -> None:
        super().__init__()
        self.sock = sock
        self.deadline = deadline

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("the client did not send the request in time")
        self.sock.settimeout(left)
        try:
            return self.sock.recv_into(buffer)
        finally:
            self.sock.settimeout(WRITE_TIMEOUT_S)


class _ServerHandler(ServerHandler):
    def log_exception(self, exc_info: Any) -> None:  # one line, not wsgiref's traceback
        _say(f"HTTP response failed: {exc_info[0].__name__}: {str(exc_info[1])[:200]}")


class DeadlineRequestHandler(WSGIRequestHandler):
    """wsgiref's request handler with read deadlines and no access log."""

    header_timeout_s = HEADER_TIMEOUT_S
    body_timeout_s = BODY_TIMEOUT_S

    def setup(self) -> None:
        super().setup()
        self.rfile.close()
        self.reader = DeadlineReader(self.connection, time.monotonic() + self.header_timeout_s)
        self.rfile = io.BufferedReader(self.reader)
        self.connection.settimeout(WRITE_TIMEOUT_S)

    def handle(self) -> None:
        """One request per connection (as wsgiref), the body read under its own deadline."""
        self.raw_requestline = self.rfile.readline(65537)
        if len(self.raw_requestline) > 65536:
            self.requestline, self.request_version, self.command = "", "", ""
            self.send_error(414)
            return
        if not self.parse_request():
            return
        self.reader.deadline = time.monotonic() + self.body_timeout_s
        handler = _ServerHandler(self.rfile, self.wfile, self.get_stderr(), self.get_environ(), multithread=True)
        handler.request_handler = self
        handler.run(self.server.get_app())

    def log_message(self, format: str, *args: Any) -> None:
        pass


class ThreadingWSGIServer(ThreadingMixIn, WSGIServer):
    """wsgiref's server, one thread per connection, at most :data:`MAX_CONNECTIONS` at once."""

    daemon_threads = True
    block_on_close = False
    max_connections = MAX_CONNECTIONS

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._slots = threading.BoundedSemaphore(self.max_connections)
        super().__init__(*args, **kwargs)

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._slots.acquire(blocking=False):
            self.shutdown_request(request)  # too many open connections: this one is closed at once
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._slots.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        # ThreadingMixIn's own, with the slot given back *before* the socket is closed: a client that sees its
        # connection close may connect again at once and must find the slot free.
        try:
            self.finish_request(request, client_address)
        except Exception:  # noqa: BLE001 - socketserver's own contract: handle_error decides
            self.handle_error(request, client_address)
        finally:
            self._slots.release()
            self.shutdown_request(request)

    def handle_error(self, request: Any, client_address: Any) -> None:
        exc = sys.exc_info()[1]
        if isinstance(exc, (TimeoutError, ConnectionError)):
            return  # a slow or vanished client: its connection is closed, nothing else to say
        _say(f"connection error: {type(exc).__name__}: {str(exc)[:200]}")


class ThreadingWSGIServer6(ThreadingWSGIServer):
    """The same on IPv6."""

    address_family = socket.AF_INET6
