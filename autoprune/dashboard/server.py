"""Serve optuna-dashboard with the autoprune controller in the same process.

The optuna-dashboard WSGI app is wrapped by :class:`ControlMiddleware`: every write (any method but GET,
HEAD, OPTIONS) first passes the one :class:`~autoprune.dashboard.guard.Guard` (Host, Origin, the per-run
token, a JSON body), then the edit policy (:mod:`autoprune.dashboard.policy`, lifted by ``--allow-edits``);
the form posts of control trials are answered by the controller (see :mod:`autoprune.dashboard.control`),
everything else goes to optuna-dashboard. It runs on a threaded server with read deadlines
(:mod:`autoprune.dashboard.httpd`).
"""

from __future__ import annotations

import json
import logging
import re
import signal
import sys
import threading
from typing import Any

from autoprune.dashboard.guard import (
    REFUSED_HEADER,
    SAFE_METHODS,
    Guard,
    RefusedError,
    is_loopback,
    new_token,
    read_json_body,
)
from autoprune.dashboard.policy import edit_refusal, match_route
from autoprune.errors import ConfigError

LOOPBACK = ("127.0.0.1", "localhost", "::1")
_USER_ATTRS = re.compile(r"^/api/trials/(\d+)/user-attrs$")
_TELL = re.compile(r"^/api/trials/(\d+)/tell$")
MAX_BODY_BYTES = 64 * 1024
#: Lock name (beside a SQLite file) held by the one dashboard that runs the controller.
CONTROLLER_LOCK = "autoprune-dashboard-controller"
#: Exceptions of optuna-dashboard's handlers that mean "this request's body did not fit" (a 400, not a 500).
_INPUT_ERRORS = (ValueError, TypeError, KeyError, AttributeError, IndexError, RecursionError)
_REASONS = {200: "OK", 204: "No Content", 400: "Bad Request", 403: "Forbidden", 404: "Not Found",
            408: "Request Timeout", 409: "Conflict", 411: "Length Required", 413: "Content Too Large",
            415: "Unsupported Media Type", 500: "Internal Server Error"}

__all__ = ["CONTROLLER_LOCK", "LOOPBACK", "MAX_BODY_BYTES", "ControlMiddleware", "check_host", "is_loopback",
           "serve"]


def _say(line: str) -> None:
    print(f"autoprune dashboard: {line}", flush=True)


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
    return (f"warning: serving on {host} with --allow-remote: anyone who can reach this port can read the studies, "
            "and anyone who also has the printed token link can start, stop and export searches on this machine; "
            "the token travels in clear text over http (prefer loopback and `ssh -L`)")


_LOCAL = threading.local()  # the optuna-dashboard handler error of the request this thread serves


class _OneLineLog(logging.Handler):
    """optuna-dashboard's own handler errors (logged with their traceback): one console line each, and the
    exception kept for the request being served (:meth:`ControlMiddleware._app` answers it)."""

    def emit(self, record: logging.LogRecord) -> None:
        exc = sys.exc_info()[1]  # logged inside its ``except`` block: still the exception being handled
        if exc is not None and getattr(_LOCAL, "serving", False):
            _LOCAL.exc = exc  # the request's answer says it, and its one line
            return
        first = record.getMessage().strip().splitlines()
        _say(f"optuna-dashboard: {first[0][:200] if first else record.levelname}"
             + (f" ({type(exc).__name__})" if exc is not None else ""))


def quiet_app_logging() -> None:
    """Send optuna-dashboard's log through :class:`_OneLineLog` (once per process)."""
    log = logging.getLogger("optuna_dashboard")
    if not any(isinstance(h, _OneLineLog) for h in log.handlers):
        log.addHandler(_OneLineLog(logging.WARNING))
        log.propagate = False


class _ErrorLog:
    """``wsgi.errors`` of one request: bottle writes a handler's traceback here; one line of it is printed."""

    def __init__(self) -> None:
        self.text = ""

    def write(self, text: str) -> None:
        self.text += text

    def writelines(self, lines: list[str]) -> None:
        self.text += "".join(lines)

    def flush(self) -> None:
        pass

    def last_line(self) -> str:
        lines = [ln.strip() for ln in self.text.splitlines() if ln.strip()]
        return lines[-1][:200] if lines else ""


class ControlMiddleware:
    """WSGI middleware: the guard on every write; control-form posts to the controller, the rest to the app.

    Args:
        app: The optuna-dashboard WSGI (bottle) app.
        controller: The :class:`~autoprune.dashboard.control.Controller` (``None``: no control forms).
        guard: The write guard (Host, Origin, token, body).
        storage: The storage (the edit policy tells autoprune studies from others by it).
        allow_edits: Let the UI delete, rename and create studies and edit autoprune studies' trials.
    """

    def __init__(self, app, controller, guard: Guard, storage=None, allow_edits: bool = False) -> None:
        self.app = app
        self.controller = controller
        self.guard = guard
        self.storage = storage
        self.allow_edits = allow_edits
        quiet_app_logging()

    def __call__(self, environ: dict[str, Any], start_response):
        method = environ.get("REQUEST_METHOD", "GET").upper()
        try:
            return self._route(method, environ, start_response)
        except RefusedError as r:
            if method not in SAFE_METHODS:
                _say(f"{method} {environ.get('PATH_INFO', '')[:80]!r}: {r.reason}")
            return _reply(start_response, r.status, {"reason": r.reason}, refused=r.kind)
        except Exception as exc:  # noqa: BLE001 - the last line of defence: one line, never a traceback
            _say(f"error on {method} {environ.get('PATH_INFO', '')[:80]!r}: {type(exc).__name__}: {str(exc)[:200]}")
            return _reply(start_response, 500, {"reason": f"internal error ({type(exc).__name__}); see the "
                                                "dashboard's console"}, exc_info=sys.exc_info())

    def _route(self, method: str, environ: dict[str, Any], start_response):
        if method in SAFE_METHODS:
            self.guard.check_read(environ)
            login = self.guard.login(environ)
            if login is not None:
                start_response(*login)
                return [b""]
            return self._app(method, environ, start_response)
        self.guard.check_write(environ)
        body = read_json_body(environ)
        path = environ.get("PATH_INFO", "").rstrip("/")
        if self.controller is not None:
            m = _USER_ATTRS.match(path)
            if m and self.controller.control_study_of_trial(int(m.group(1))) is not None:
                return self._control_post(environ, start_response, int(m.group(1)), body)
            m = _TELL.match(path)
            if m and self.controller.control_study_of_trial(int(m.group(1))) is not None:
                raise RefusedError(403, "refused: control trials are closed by autoprune; submit the form (action "
                                   "'stop' stops a running request)", kind="control")
        if not self.allow_edits:
            matched = match_route(self.app, environ)
            if matched is not None:
                reason = edit_refusal(self.storage, method, *matched)
                if reason is not None:
                    raise RefusedError(403, reason, kind="edits")
        return self._app(method, environ, start_response)

    def _control_post(self, environ, start_response, trial_id: int, body: Any):
        if len(environ["wsgi.input"].getvalue()) > MAX_BODY_BYTES:
            raise RefusedError(413, f"refused: a control form's body must be 1 to {MAX_BODY_BYTES} bytes")
        if not isinstance(body, dict) or not isinstance(body.get("user_attrs"), dict):
            raise RefusedError(400, 'refused: the body must be {"user_attrs": {...}}')
        status, reply = self.controller.submit(trial_id, body["user_attrs"])
        return _reply(start_response, status, reply)

    def _app(self, method: str, environ: dict[str, Any], start_response):
        """optuna-dashboard, its handler errors turned into one console line and a JSON answer."""
        from optuna.exceptions import UpdateFinishedTrialError

        errors = _ErrorLog()
        environ["wsgi.errors"] = errors
        held: list[BaseException] = []
        _LOCAL.serving, _LOCAL.exc = True, None

        def capture(status: str, headers, exc_info=None):
            exc = environ["bottle.exc_info"][1] if "bottle.exc_info" in environ else _LOCAL.exc
            if status.startswith("500") and exc is not None:
                held.append(exc)
                return lambda data: None
            return start_response(status, headers, exc_info)

        try:
            out = self.app(environ, capture)
        finally:
            _LOCAL.serving = False
        path = environ.get("PATH_INFO", "")[:80]
        if not held:
            if errors.text:
                _say(f"optuna-dashboard on {method} {path!r}: {errors.last_line()}")
            return out
        if hasattr(out, "close"):
            out.close()
        exc = held[0]
        what = f"{type(exc).__name__}: {str(exc).strip()[:120]}"
        _say(f"optuna-dashboard failed on {method} {path!r}: {what}")
        if method not in SAFE_METHODS and isinstance(exc, UpdateFinishedTrialError):
            return _reply(start_response, 409, {"reason": f"refused: {str(exc).strip()[:160]}"}, refused="guard")
        if method not in SAFE_METHODS and isinstance(exc, _INPUT_ERRORS):
            return _reply(start_response, 400, {"reason": f"refused: optuna-dashboard cannot use this request "
                                                f"({what})"}, refused="guard")
        return _reply(start_response, 500, {"reason": f"internal error in optuna-dashboard ({type(exc).__name__}); "
                                            "see the dashboard's console"})


def _reply(start_response, status: int, body: dict[str, Any], refused: str | None = None, exc_info=None):
    data = b"" if status == 204 else json.dumps(body).encode()
    headers = [("Content-Type", "application/json"), ("Content-Length", str(len(data)))]
    if refused:
        headers.append((REFUSED_HEADER, refused))
    start_response(f"{status} {_REASONS.get(status, 'Error')}", headers, exc_info)
    return [data]


def serve(storage, storage_url: str, *, host: str, port: int, artifact_store, control: bool = True,
          ready=None, token: str | None = None, allow_remote: bool = False, allow_edits: bool = False) -> int:
    """Serve optuna-dashboard (and the controller) until SIGINT/SIGTERM; running requests are stopped cleanly.

    Args:
        storage: The Optuna storage.
        storage_url: Its URL (children get it).
        host: Bind address (checked by the caller, see :func:`check_host`).
        port: TCP port.
        artifact_store: Optuna artifact store, shared with the children's uploads.
        control: Run the controller (``False``: plain optuna-dashboard).
        ready: Called with the controller (or ``None``) once the server listens.
        token: This run's write token (default: a new one; the caller prints the link that carries it).
        allow_remote: Accept any ``Host`` header (``--allow-remote``).
        allow_edits: Let the UI delete, rename and create studies and edit autoprune trials (``--allow-edits``).
    """
    from contextlib import ExitStack

    from optuna_dashboard import wsgi

    from autoprune.dashboard.control import Controller
    from autoprune.dashboard.httpd import DeadlineRequestHandler, ThreadingWSGIServer, ThreadingWSGIServer6
    from autoprune.errors import StorageError
    from autoprune.search.storage import redact_url, single_worker_lock

    server = (ThreadingWSGIServer6 if ":" in host else ThreadingWSGIServer)((host, port), DeadlineRequestHandler)
    guard = Guard(port=server.server_address[1], token=token or new_token(), bind_host=host,
                  allow_remote=allow_remote)
    app = ControlMiddleware(wsgi(storage, artifact_store=artifact_store), None, guard, storage=storage,
                            allow_edits=allow_edits)
    server.set_app(app)
    stopping = threading.Event()

    def _on_signal(signum, frame):
        # No exception in the main thread (it could land inside a database call): let the requests being
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
