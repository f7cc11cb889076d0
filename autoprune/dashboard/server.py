"""Serve optuna-dashboard with the autoprune controller in the same process.

The optuna-dashboard WSGI app is wrapped by :class:`ControlMiddleware`, which
answers the form posts of control trials itself (see :mod:`autoprune.dashboard.control`)
and passes every other request through unchanged.
"""

from __future__ import annotations

import json
import re
import signal
import socket
import threading
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from autoprune.errors import ConfigError

LOOPBACK = ("127.0.0.1", "localhost", "::1")
_USER_ATTRS = re.compile(r"^/api/trials/(\d+)/user-attrs$")
_TELL = re.compile(r"^/api/trials/(\d+)/tell$")
MAX_BODY_BYTES = 64 * 1024
#: Lock name (beside a SQLite file) held by the one dashboard that runs the controller.
CONTROLLER_LOCK = "autoprune-dashboard-controller"


def is_loopback(host: str) -> bool:
    """True for the loopback names and addresses."""
    return host in LOOPBACK or host.startswith("127.")


def check_host(host: str, allow_remote: bool) -> str | None:
    """Refuse a non-loopback bind address without ``--allow-remote``; return the warning to print, if any.

    Raises:
        ConfigError: ``host`` is not loopback and ``allow_remote`` is false.
    """
    if is_loopback(host):
        return None
    if not allow_remote:
        raise ConfigError(f"--host {host} would serve the studies, and the requests that start processes, to the "
                          "network; add --allow-remote if you mean it (loopback is the default)")
    return (f"warning: serving on {host} with --allow-remote: anyone who can reach this port can read and edit the "
            "studies and start, stop and export searches on this machine; there is no authentication")


class ControlMiddleware:
    """WSGI middleware: control-form posts go to the controller, the rest to optuna-dashboard.

    Args:
        app: The optuna-dashboard WSGI app.
        controller: The :class:`~autoprune.dashboard.control.Controller` (``None``: pass everything through).
        loopback_only: Accept control posts only with a loopback ``Host`` header (a DNS-rebinding guard).
    """

    def __init__(self, app, controller, loopback_only: bool = True) -> None:
        self.app = app
        self.controller = controller
        self.loopback_only = loopback_only

    def __call__(self, environ: dict[str, Any], start_response):
        path = environ.get("PATH_INFO", "").rstrip("/")
        method = environ.get("REQUEST_METHOD", "GET")
        if self.controller is not None and method == "POST":
            m = _USER_ATTRS.match(path)
            if m and self.controller.control_study_of_trial(int(m.group(1))) is not None:
                return self._control_post(environ, start_response, int(m.group(1)))
            m = _TELL.match(path)
            if m and self.controller.control_study_of_trial(int(m.group(1))) is not None:
                return _reply(start_response, 403, {"reason": "control trials are closed by autoprune; submit the "
                                                    "form (action 'stop' stops a running request)"})
        return self.app(environ, start_response)

    def _control_post(self, environ, start_response, trial_id: int):
        host = environ.get("HTTP_HOST", "")
        hostname = host.rsplit(":", 1)[0].strip("[]") if not host.startswith("[") else host[1:].split("]")[0]
        if self.loopback_only and not is_loopback(hostname):
            return _reply(start_response, 403, {"reason": f"refused: Host {host[:60]!r} is not loopback"})
        origin = environ.get("HTTP_ORIGIN")
        if origin and origin.split("://", 1)[-1].rstrip("/") != host:
            return _reply(start_response, 403, {"reason": "refused: a cross-origin request"})
        if not environ.get("CONTENT_TYPE", "").startswith("application/json"):
            return _reply(start_response, 400, {"reason": "the request must be JSON (Content-Type: application/json)"})
        try:
            length = int(environ.get("CONTENT_LENGTH") or 0)
        except ValueError:
            length = -1
        if not 0 < length <= MAX_BODY_BYTES:
            return _reply(start_response, 400, {"reason": f"the request body must be 1 to {MAX_BODY_BYTES} bytes"})
        try:
            payload = json.loads(environ["wsgi.input"].read(length))
            attrs = payload["user_attrs"]
        except (ValueError, KeyError, TypeError):
            return _reply(start_response, 400, {"reason": 'the body must be {"user_attrs": {...}}'})
        status, body = self.controller.submit(trial_id, attrs)
        return _reply(start_response, status, body)


def _reply(start_response, status: int, body: dict[str, Any]):
    reasons = {200: "OK", 204: "No Content", 400: "Bad Request", 403: "Forbidden", 404: "Not Found", 409: "Conflict"}
    data = b"" if status == 204 else json.dumps(body).encode()
    headers = [("Content-Type", "application/json"), ("Content-Length", str(len(data)))]
    start_response(f"{status} {reasons.get(status, 'OK')}", headers)
    return [data]


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


class _Server6(WSGIServer):
    address_family = socket.AF_INET6


def serve(storage, storage_url: str, *, host: str, port: int, artifact_store, control: bool = True,
          ready=None) -> int:
    """Serve optuna-dashboard (and the controller) until SIGINT/SIGTERM; running requests are stopped cleanly.

    Args:
        storage: The Optuna storage.
        storage_url: Its URL (children get it).
        host: Bind address (checked by the caller, see :func:`check_host`).
        port: TCP port.
        artifact_store: Optuna artifact store, shared with the children's uploads.
        control: Run the controller (``False``: plain optuna-dashboard).
        ready: Called with the controller (or ``None``) once the server listens.
    """
    from contextlib import ExitStack

    from optuna_dashboard import wsgi

    from autoprune.dashboard.control import Controller
    from autoprune.errors import StorageError
    from autoprune.search.storage import redact_url, single_worker_lock

    app = ControlMiddleware(wsgi(storage, artifact_store=artifact_store), None, loopback_only=is_loopback(host))
    server = make_server(host, port, app, server_class=_Server6 if ":" in host else WSGIServer,
                         handler_class=_QuietHandler)
    stopping = threading.Event()

    def _on_signal(signum, frame):
        # No exception in the main thread (it could land inside a database call): let the request being
        # served finish, then leave serve_forever (shutdown() must be called from another thread).
        if stopping.is_set():
            raise KeyboardInterrupt  # a second Ctrl-C: stop waiting for the children
        stopping.set()
        threading.Thread(target=server.shutdown, daemon=True).start()

    # Installed before any child starts: children then inherit the default SIGINT, so `stop` reaches them
    # even when this process was started with SIGINT ignored (in the background of a script).
    old = {s: signal.signal(s, _on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    controller = None
    try:
        with ExitStack() as stack:
            if control:
                try:
                    stack.enter_context(single_worker_lock(storage_url, CONTROLLER_LOCK))
                except StorageError:
                    raise StorageError(
                        f"another autoprune dashboard already drives the studies of {redact_url(storage_url)}; "
                        "open that one, or start this one with --no-control to watch only") from None
                controller = Controller(storage_url, storage, artifact_store)
                app.controller = controller
                controller.start()
            try:
                if ready is not None:
                    ready(controller)
                server.serve_forever(poll_interval=0.5)
            finally:
                if controller is not None:
                    if controller.jobs:
                        print("autoprune dashboard: stopping the running request(s) cleanly (SIGINT) ...",
                              flush=True)
                    controller.shutdown()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
        for s, h in old.items():
            signal.signal(s, h)
    return 0
