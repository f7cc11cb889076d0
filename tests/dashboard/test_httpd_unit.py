"""The threaded server with read deadlines, on a trivial app (short deadlines, so it takes about a second)."""

from __future__ import annotations

import socket
import threading
import time
import urllib.request

import pytest

from autoprune.dashboard.httpd import DeadlineRequestHandler, ThreadingWSGIServer


class _Quick(DeadlineRequestHandler):
    header_timeout_s = 0.5
    body_timeout_s = 0.5


def _app(environ, start_response):
    body = environ["wsgi.input"].read(int(environ.get("CONTENT_LENGTH") or 0)) if environ["REQUEST_METHOD"] == \
        "POST" else b"ok"
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]


class _OneSlot(ThreadingWSGIServer):
    max_connections = 1


def _serve(cls: type[ThreadingWSGIServer]):
    srv = cls(("127.0.0.1", 0), _Quick)
    srv.set_app(_app)
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield srv
    finally:
        srv.shutdown()
        srv.server_close()


@pytest.fixture
def server():
    yield from _serve(ThreadingWSGIServer)


@pytest.fixture
def one_slot_server():
    yield from _serve(_OneSlot)


def _get(port: int, timeout_s: float = 2) -> bytes:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=timeout_s) as r:
        return r.read()


def _wait_closed(s: socket.socket, timeout_s: float) -> float:
    """Seconds until the server closed ``s``."""
    t0 = time.monotonic()
    s.settimeout(timeout_s)
    try:
        while s.recv(1024):
            pass
    except ConnectionError:
        pass
    finally:
        s.close()
    return time.monotonic() - t0


def test_stalled_clients_block_no_one_and_lose_their_connection(server, capsys):
    port = server.server_address[1]
    idle = socket.create_connection(("127.0.0.1", port))
    drip = socket.create_connection(("127.0.0.1", port))
    drip.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{")
    for _ in range(10):
        t = time.monotonic()
        assert _get(port) == b"ok"
        assert time.monotonic() - t < 1
    assert _wait_closed(idle, 5) < 2  # the header deadline (0.5 s here)
    assert _wait_closed(drip, 5) < 2  # the body deadline
    out = capsys.readouterr()
    assert "Traceback" not in out.out + out.err


def test_a_byte_now_and_then_does_not_stretch_the_header_deadline(server):
    port = server.server_address[1]
    s = socket.create_connection(("127.0.0.1", port))
    t0 = time.monotonic()
    with pytest.raises((BrokenPipeError, ConnectionResetError)):
        for ch in b"GET / HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 40:
            s.sendall(bytes([ch]))
            time.sleep(0.1)
    assert time.monotonic() - t0 < 3
    s.close()


def test_past_the_connection_cap_a_new_connection_is_closed_at_once(one_slot_server):
    port = one_slot_server.server_address[1]
    hog = socket.create_connection(("127.0.0.1", port))
    time.sleep(0.1)
    extra = socket.create_connection(("127.0.0.1", port))
    assert _wait_closed(extra, 5) < 0.4  # closed at once, not after the deadline
    assert _wait_closed(hog, 5) < 2
    assert _get(port) == b"ok"  # a slot again
