"""The one guard every write to the dashboard passes: Host, Origin, the per-run token, and a JSON body.

A *write* is any request whose method is not GET, HEAD or OPTIONS, whatever its route: autoprune's control
form and every write route of optuna-dashboard alike (:func:`write_routes` lists the installed release's).
:meth:`Guard.check_write` refuses one with a :class:`RefusedError` (a 4xx and a one-line reason) unless

* its ``Host`` is exactly one of this server's loopback addresses with its port (``localhost``,
  ``127.0.0.1``, ``[::1]``, the bind address), so a DNS-rebinding page (``Host: evil.example``) or a
  prefix spoof (``127.0.0.1.evil.example``) is refused; any ``Host`` with ``--allow-remote``;
* its ``Origin``, when a browser sends one, is ``http://`` + one of those hosts (scheme included: this
  port speaks plain http, so an ``https://`` origin is some other site);
* it carries this run's token (:func:`new_token`): the ``X-Autoprune-Token`` header, or the cookie that
  the link printed at start (``http://127.0.0.1:PORT/...?token=...``) sets (:meth:`Guard.login`), which
  the dashboard's own forms then send with every request;
* its body, if any, is a JSON object of bounded size and nesting (:func:`read_json_body`).

Reads get the Host check only, without the port (a page on ``evil.example`` cannot read the studies
through a rebound name, a forwarded port still works).
"""

from __future__ import annotations

import hmac
import io
import ipaddress
import json
import re
import secrets
from dataclasses import dataclass, field
from http.cookies import CookieError, SimpleCookie
from typing import Any
from urllib.parse import parse_qsl, quote, urlencode

#: Methods that change nothing (every other method is a write).
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
#: Loopback names a browser may put in ``Host`` (besides the bind address).
LOOPBACK_NAMES = ("localhost", "127.0.0.1", "[::1]")
TOKEN_HEADER = "X-Autoprune-Token"
#: The header every guard refusal carries (a client tells them from optuna-dashboard's own answers).
REFUSED_HEADER = "X-Autoprune-Refused"
#: The largest body of a write (optuna-dashboard's artifact uploads are JSON data URIs) and its nesting.
MAX_WRITE_BODY_BYTES = 1024 * 1024
MAX_JSON_DEPTH = 64
_HOST = re.compile(r"^(\[[0-9a-fA-F:.]+\]|[A-Za-z0-9._-]+)(:(\d{1,5}))?$")


class RefusedError(Exception):
    """A request refused before it changes anything: the HTTP status and the one-line reason."""

    def __init__(self, status: int, reason: str, kind: str = "guard") -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason
        self.kind = kind  # "guard" (Host, Origin, token, body) or "edits" (needs --allow-edits)


def new_token() -> str:
    """A fresh per-run token (43 URL-safe characters, 256 random bits)."""
    return secrets.token_urlsafe(32)


def is_loopback(host: str) -> bool:
    """True for ``localhost`` and loopback addresses (``127.0.0.0/8``, ``::1``; brackets allowed)."""
    host = host.strip().lower()
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def split_host(host: str) -> tuple[str, int | None] | None:
    """``(name, port)`` of a ``Host`` header (name lower-cased, IPv6 in brackets), ``None`` if malformed."""
    m = _HOST.match(host.strip())
    if m is None:
        return None
    port = int(m.group(3)) if m.group(3) else None
    return m.group(1).lower(), port


def _bracketed(host: str) -> str:
    return f"[{host.strip('[]')}]" if ":" in host else host.lower()


@dataclass
class Guard:
    """The write guard of one dashboard server.

    Args:
        port: The port the server listens on (``Host`` and ``Origin`` must name it).
        token: This run's token.
        bind_host: The bind address (also accepted in ``Host`` when it is loopback).
        allow_remote: Accept any ``Host`` (``--allow-remote``); ``Origin`` must then match ``Host``.
    """

    port: int
    token: str
    bind_host: str = "127.0.0.1"
    allow_remote: bool = False
    hosts: frozenset[str] = field(init=False)

    def __post_init__(self) -> None:
        names = set(LOOPBACK_NAMES)
        if is_loopback(self.bind_host):
            names.add(_bracketed(self.bind_host))
        hosts = {f"{n}:{self.port}" for n in names}
        if self.port == 80:
            hosts |= names
        self.hosts = frozenset(hosts)

    @property
    def cookie_name(self) -> str:
        """The token cookie's name (per port: cookies do not tell ports apart)."""
        return f"autoprune_token_{self.port}"

    def check_read(self, environ: dict[str, Any]) -> None:
        """Refuse a read whose ``Host`` names some other site (a rebound DNS name); any port is fine.

        Raises:
            RefusedError: 403 with the reason.
        """
        host = environ.get("HTTP_HOST")
        if self.allow_remote or host is None:
            return
        parsed = split_host(host)
        if parsed is None or not is_loopback(parsed[0]):
            raise RefusedError(403, f"refused: Host {host[:80]!r} is not a loopback name (this dashboard serves "
                               f"http://127.0.0.1:{self.port}; start it with --allow-remote to serve other names)")

    def check_write(self, environ: dict[str, Any]) -> None:
        """The Host, Origin, token and framing checks of a write (the body is read later).

        Raises:
            RefusedError: The first check that fails.
        """
        host = environ.get("HTTP_HOST", "")
        parsed = split_host(host)
        if parsed is None:
            raise RefusedError(400, f"refused: a write needs a valid Host header, got {host[:80]!r}")
        if not self.allow_remote and host.strip().lower() not in self.hosts:
            raise RefusedError(403, f"refused: Host {host[:80]!r} is not this dashboard's address (one of "
                               f"{', '.join(sorted(self.hosts))}); start it with --allow-remote to accept others")
        origin = environ.get("HTTP_ORIGIN")
        if origin is not None:
            allowed = {f"http://{host.strip().lower()}"} if self.allow_remote else {f"http://{h}" for h in self.hosts}
            if origin.strip().lower().rstrip("/") not in allowed:
                raise RefusedError(403, f"refused: a cross-origin request (Origin {origin[:80]!r}; this dashboard is "
                                   f"http://{host.strip()[:80]}, plain http)")
        if not self.token_ok(environ):
            raise RefusedError(403, "refused: this write needs the dashboard's token; open the link that `autoprune "
                               f"dashboard` printed (...?token=...), or send the {TOKEN_HEADER} header")
        if environ.get("HTTP_TRANSFER_ENCODING"):
            raise RefusedError(411, "refused: send the body with a Content-Length (no Transfer-Encoding)")

    def token_ok(self, environ: dict[str, Any]) -> bool:
        """Whether the request carries this run's token (header, else cookie)."""
        given = environ.get("HTTP_" + TOKEN_HEADER.upper().replace("-", "_"))
        if given is None:
            try:
                morsel = SimpleCookie(environ.get("HTTP_COOKIE", "")).get(self.cookie_name)
            except CookieError:
                morsel = None
            given = morsel.value if morsel is not None else None
        return given is not None and hmac.compare_digest(given.encode("utf-8", "replace"), self.token.encode())

    def login(self, environ: dict[str, Any]) -> tuple[str, list[tuple[str, str]]] | None:
        """A GET carrying ``?token=``: ``(status, headers)`` of the redirect that sets the cookie, else ``None``.

        The redirect drops the token from the address bar (and so from the browser's history).

        Raises:
            RefusedError: The token is wrong.
        """
        if environ.get("REQUEST_METHOD") != "GET":
            return None
        query = parse_qsl(environ.get("QUERY_STRING", ""), keep_blank_values=True)
        given = [v for k, v in query if k == "token"]
        if not given:
            return None
        if not hmac.compare_digest(given[-1].encode("utf-8", "replace"), self.token.encode()):
            raise RefusedError(403, "refused: wrong token; open the link that `autoprune dashboard` printed at start")
        rest = urlencode([(k, v) for k, v in query if k != "token"])
        path = quote((environ.get("PATH_INFO", "/") or "/").encode("latin-1", "replace"), safe="/:@!$'()*+,;=-._~")
        target = path + (f"?{rest}" if rest else "")
        if not target.startswith("/") or target.startswith("//"):
            target = "/"  # never a redirect to another site
        cookie = f"{self.cookie_name}={self.token}; Path=/; HttpOnly; SameSite=Strict"
        return "303 See Other", [("Location", target), ("Set-Cookie", cookie), ("Content-Length", "0"),
                                 ("Cache-Control", "no-store")]


def json_depth(value: Any) -> int:
    """The nesting depth of a parsed JSON value (a scalar is 0, ``[]`` is 1), without recursion."""
    depth, stack = 0, [(value, 0)]
    while stack:
        v, d = stack.pop()
        if isinstance(v, dict):
            stack.extend((x, d + 1) for x in v.values())
            depth = max(depth, d + 1)
        elif isinstance(v, list):
            stack.extend((x, d + 1) for x in v)
            depth = max(depth, d + 1)
    return depth


def content_length(environ: dict[str, Any]) -> int:
    """The declared body length (0 when absent).

    Raises:
        RefusedError: 400 for a malformed or negative ``Content-Length``.
    """
    raw = (environ.get("CONTENT_LENGTH") or "").strip()
    if not raw:
        return 0
    if not raw.isdigit() or len(raw) > 12:
        raise RefusedError(400, f"refused: malformed Content-Length {raw[:20]!r}")
    return int(raw)


def read_json_body(environ: dict[str, Any], limit: int = MAX_WRITE_BODY_BYTES) -> Any:
    """Read a write's body (at most ``limit`` bytes) and check that it is one JSON object; the input stream
    is replaced by the bytes read, so the app reads the same body. An empty body is ``None``.

    Raises:
        RefusedError: 413 too large, 408 not sent in time, 415 not JSON, 400 malformed, too deep or not an object.
    """
    length = content_length(environ)
    if length == 0:
        environ["wsgi.input"] = io.BytesIO(b"")
        return None
    if length > limit:
        raise RefusedError(413, f"refused: the body is {length} bytes; at most {limit} are accepted")
    media = environ.get("CONTENT_TYPE", "").split(";", 1)[0].strip().lower()
    if media != "application/json":
        raise RefusedError(415, "refused: the body must be JSON (Content-Type: application/json)")
    try:
        data = environ["wsgi.input"].read(length)
    except TimeoutError:
        raise RefusedError(408, "refused: the request body did not arrive in time") from None
    except OSError:
        raise RefusedError(400, "refused: the request body could not be read") from None
    if len(data) != length:
        raise RefusedError(400, f"refused: the body ended after {len(data)} of {length} bytes")
    environ["wsgi.input"] = io.BytesIO(data)
    too_deep = f"refused: the JSON body is nested too deep (at most {MAX_JSON_DEPTH} levels)"
    try:
        value = json.loads(data.decode("utf-8"))
    except RecursionError:
        raise RefusedError(400, too_deep) from None
    except (UnicodeDecodeError, ValueError) as exc:
        raise RefusedError(400, f"refused: the body is not valid JSON ({str(exc)[:80]})") from None
    if json_depth(value) > MAX_JSON_DEPTH:
        raise RefusedError(400, too_deep)
    if not isinstance(value, dict):
        raise RefusedError(400, f"refused: the JSON body must be an object, got {type(value).__name__}")
    return value


def write_routes(app: Any) -> list[tuple[str, str]]:
    """``(method, rule)`` of every route of a bottle app that is not GET/HEAD/OPTIONS, in its order."""
    return [(r.method.upper(), r.rule) for r in getattr(app, "routes", []) if r.method.upper() not in SAFE_METHODS]
