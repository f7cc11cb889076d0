"""The write guard and the edit policy without a server: Host, Origin, token, body, --allow-edits, and the
whole middleware called in-process on optuna-dashboard's app over an in-memory storage."""

from __future__ import annotations

import io
import json
from wsgiref.util import setup_testing_defaults

import pytest

from autoprune.dashboard.guard import (
    MAX_JSON_DEPTH,
    Guard,
    RefusedError,
    is_loopback,
    json_depth,
    read_json_body,
    split_host,
)
from autoprune.dashboard.server import check_host
from autoprune.errors import ConfigError

TOKEN = "t" * 43


def environ(method: str = "POST", path: str = "/api/studies", body: bytes = b"", **extra: str) -> dict:
    """A WSGI environ of one request (``extra``: more environ keys, e.g. ``QUERY_STRING``)."""
    env = {"REQUEST_METHOD": method, "PATH_INFO": path, "wsgi.input": io.BytesIO(body),
           "CONTENT_LENGTH": str(len(body)) if body else "", "CONTENT_TYPE": "application/json" if body else "",
           **extra}
    setup_testing_defaults(env)
    return env


def good(**extra: str) -> dict[str, str]:
    return {"HTTP_HOST": "127.0.0.1:8080", "HTTP_ORIGIN": "http://127.0.0.1:8080", "HTTP_X_AUTOPRUNE_TOKEN": TOKEN,
            **extra}


@pytest.mark.parametrize(("host", "loopback"), [
    ("127.0.0.1", True), ("127.1.2.3", True), ("::1", True), ("[::1]", True), ("localhost", True),
    ("LOCALHOST", True), ("127.0.0.1.evil.example", False), ("127.evil", False), ("0.0.0.0", False),
    ("evil.example", False), ("", False),
])
def test_loopback_is_an_address_or_localhost_not_a_prefix(host, loopback):
    assert is_loopback(host) is loopback


def test_a_prefix_spoofed_bind_address_needs_allow_remote():
    with pytest.raises(ConfigError, match="--allow-remote"):
        check_host("127.0.0.1.evil.example", False)


def test_split_host():
    assert split_host("127.0.0.1:8080") == ("127.0.0.1", 8080)
    assert split_host("[::1]:8080") == ("[::1]", 8080)
    assert split_host("LocalHost") == ("localhost", None)
    assert split_host("a b") is None and split_host("x:y") is None and split_host("") is None


@pytest.mark.parametrize(("headers", "status", "why"), [
    ({"HTTP_HOST": "evil.example"}, 403, "Host"),
    ({"HTTP_HOST": "127.0.0.1.evil.example:8080", "HTTP_ORIGIN": "http://127.0.0.1.evil.example:8080"}, 403, "Host"),
    ({"HTTP_HOST": "127.0.0.1:9999"}, 403, "Host"),
    ({"HTTP_HOST": "127.0.0.1:8080, evil.example"}, 400, "Host"),  # two Host headers, joined by wsgiref
    ({"HTTP_HOST": ""}, 400, "Host"),
    ({"HTTP_ORIGIN": "https://127.0.0.1:8080"}, 403, "cross-origin"),
    ({"HTTP_ORIGIN": "http://evil.example"}, 403, "cross-origin"),
    ({"HTTP_ORIGIN": "null"}, 403, "cross-origin"),
    ({"HTTP_X_AUTOPRUNE_TOKEN": "nope"}, 403, "token"),
    ({"HTTP_TRANSFER_ENCODING": "chunked"}, 411, "Content-Length"),
])
def test_the_guard_refuses_a_write(headers, status, why):
    guard = Guard(port=8080, token=TOKEN)
    with pytest.raises(RefusedError, match=why) as err:
        guard.check_write(good(**headers))
    assert err.value.status == status and err.value.kind == "guard"


def test_the_guard_accepts_loopback_names_with_the_port_and_the_token_by_header_or_cookie():
    guard = Guard(port=8080, token=TOKEN)
    for host in ("127.0.0.1:8080", "localhost:8080", "[::1]:8080", "LOCALHOST:8080"):
        guard.check_write(good(HTTP_HOST=host, HTTP_ORIGIN=f"http://{host.lower()}"))
    env = good(HTTP_COOKIE=f"other=1; autoprune_token_8080={TOKEN}")
    del env["HTTP_X_AUTOPRUNE_TOKEN"], env["HTTP_ORIGIN"]  # no Origin: not a browser
    guard.check_write(env)
    with pytest.raises(RefusedError, match="token"):  # another dashboard's cookie (another port)
        guard.check_write({"HTTP_HOST": "127.0.0.1:8080", "HTTP_COOKIE": f"autoprune_token_8081={TOKEN}"})
    assert Guard(port=8080, token=TOKEN, bind_host="127.0.0.2").hosts >= {"127.0.0.2:8080", "localhost:8080"}
    assert "localhost" in Guard(port=80, token=TOKEN).hosts


def test_allow_remote_accepts_any_host_but_origin_must_match_it_and_the_token_is_still_needed():
    guard = Guard(port=8080, token=TOKEN, bind_host="0.0.0.0", allow_remote=True)
    guard.check_write(good(HTTP_HOST="box.lan:8080", HTTP_ORIGIN="http://box.lan:8080"))
    with pytest.raises(RefusedError, match="cross-origin"):
        guard.check_write(good(HTTP_HOST="box.lan:8080", HTTP_ORIGIN="http://evil.example"))
    with pytest.raises(RefusedError, match="token"):
        guard.check_write({"HTTP_HOST": "box.lan:8080"})
    guard.check_read({"HTTP_HOST": "box.lan:8080"})


def test_reads_refuse_a_rebound_name_but_not_another_port():
    guard = Guard(port=8080, token=TOKEN)
    guard.check_read({"HTTP_HOST": "localhost:9000"})  # an ssh -L forward
    guard.check_read({})
    with pytest.raises(RefusedError, match="loopback"):
        guard.check_read({"HTTP_HOST": "evil.example:8080"})


def test_the_token_link_sets_the_cookie_and_leaves_the_address_bar():
    guard = Guard(port=8080, token=TOKEN)
    status, headers = guard.login(environ("GET", "/dashboard/studies/3", QUERY_STRING=f"token={TOKEN}&x=1"))
    h = dict(headers)
    assert status.startswith("303") and h["Location"] == "/dashboard/studies/3?x=1"
    assert h["Set-Cookie"] == f"autoprune_token_8080={TOKEN}; Path=/; HttpOnly; SameSite=Strict"
    assert dict(guard.login(environ("GET", "//evil.example", QUERY_STRING=f"token={TOKEN}"))[1])["Location"] == "/"
    assert "\n" not in dict(guard.login(environ("GET", "/a\r\nSet-Cookie: x", QUERY_STRING=f"token={TOKEN}"))[1])[
        "Location"]
    assert guard.login(environ("GET", "/dashboard")) is None
    with pytest.raises(RefusedError, match="wrong token"):
        guard.login(environ("GET", "/", QUERY_STRING="token=nope"))


@pytest.mark.parametrize(("body", "headers", "status", "why"), [
    (b"[" * 20000 + b"]" * 20000, {}, 400, "too deep"),
    (json.dumps({"a": json.loads("[" * (MAX_JSON_DEPTH + 1) + "]" * (MAX_JSON_DEPTH + 1))}).encode(), {}, 400,
     "too deep"),
    (b"[1]", {}, 400, "an object"),
    (b"{", {}, 400, "not valid JSON"),
    (b'{"a": "\xff"}', {}, 400, "not valid JSON"),
    (b"{}", {"CONTENT_TYPE": "text/plain"}, 415, "JSON"),
    (b"{}", {"CONTENT_LENGTH": "x1"}, 400, "Content-Length"),
    (b"{}", {"CONTENT_LENGTH": "-1"}, 400, "Content-Length"),
    (b"{}", {"CONTENT_LENGTH": "5"}, 400, "ended after 2 of 5"),
    (b"{}", {"CONTENT_LENGTH": str(10**9)}, 413, "at most"),
])
def test_bodies_are_bounded_json_objects(body, headers, status, why):
    env = {**environ(body=body), **headers}
    with pytest.raises(RefusedError, match=why) as err:
        read_json_body(env)
    assert err.value.status == status


def test_a_good_body_is_read_once_and_handed_on():
    env = environ(body=b'{"a": [1, {"b": 2}]}')
    assert read_json_body(env) == {"a": [1, {"b": 2}]}
    assert env["wsgi.input"].read() == b'{"a": [1, {"b": 2}]}'
    assert read_json_body(environ()) is None
    assert json_depth(1) == 0 and json_depth([]) == 1 and json_depth({"a": [[{}]]}) == 4


@pytest.fixture
def app():
    """The middleware on optuna-dashboard over an in-memory storage: an autoprune study, its control study,
    a plain study (each with a running trial); no controller."""
    import optuna
    from optuna_dashboard import wsgi

    from autoprune.dashboard.request import CONTROL_OF_ATTR
    from autoprune.dashboard.server import ControlMiddleware
    from autoprune.search.config import CONFIG_ATTR

    storage = optuna.storages.InMemoryStorage()
    ids = {}
    for name, attr in (("ap", CONFIG_ATTR), ("ap.control", CONTROL_OF_ATTR), ("plain", None)):
        study = optuna.create_study(study_name=name, storage=storage)
        if attr:
            study.set_user_attr(attr, "ap" if attr == CONTROL_OF_ATTR else {})
        ids[name] = (study._study_id, study.ask()._trial_id)
    mw = ControlMiddleware(wsgi(storage), None, Guard(port=8080, token=TOKEN), storage=storage)

    def call(method: str, path: str, body: dict | None = None, **headers: str) -> tuple[int, dict, dict]:
        raw = json.dumps(body).encode() if body is not None else b""
        env = {**environ(method, path, raw), **good(), **headers}
        got = {}

        def start_response(status, hdrs, exc_info=None):
            got["status"], got["headers"] = int(status.split()[0]), dict(hdrs)

        out = b"".join(mw(env, start_response))
        try:
            reply = json.loads(out) if out else {}
        except ValueError:
            reply = {}
        return got["status"], reply, got["headers"]

    return call, ids, mw


def test_allow_edits_guards_studies_and_autoprune_trials(app):
    call, ids, mw = app
    ap, ctrl, plain = ids["ap"], ids["ap.control"], ids["plain"]
    tell = {"state": "Complete", "values": [0.5]}
    refused = [("DELETE", f"/api/studies/{plain[0]}", None), ("POST", "/api/studies", {"study_name": "x"}),
               ("POST", f"/api/studies/{plain[0]}/rename", {"study_name": "y"}),
               ("POST", f"/api/trials/{ap[1]}/tell", tell), ("POST", f"/api/trials/{ctrl[1]}/tell", tell),
               ("POST", f"/api/trials/{ap[1]}/user-attrs", {"user_attrs": {"a": 1}}),
               ("PUT", f"/api/studies/{ap[0]}/{ap[1]}/note", {"version": 1, "body": "x"}),
               ("PUT", f"/api/studies/{plain[0]}/{ap[1]}/note", {"version": 1, "body": "x"}),
               ("POST", f"/api/artifacts/{ap[0]}/{ap[1]}", {"file": "data:,x"}),
               ("POST", "/incompatible-rdb-schema", None)]
    for method, path, body in refused:
        status, reply, headers = call(method, path, body)
        assert status == 403 and headers["X-Autoprune-Refused"] == "edits", (method, path, reply)
        assert "--allow-edits" in reply["reason"]
    # open: the study note of any study, and everything on a plain study
    assert call("PUT", f"/api/studies/{ap[0]}/note", {"version": 1, "body": "mine"})[0] == 204
    assert call("POST", f"/api/trials/{plain[1]}/user-attrs", {"user_attrs": {"a": 1}})[0] == 204
    assert call("POST", f"/api/trials/{plain[1]}/tell", tell)[0] == 204
    mw.allow_edits = True
    assert call("POST", f"/api/trials/{ap[1]}/tell", tell)[0] == 204
    assert call("DELETE", f"/api/studies/{plain[0]}")[0] == 204


def test_optuna_dashboards_own_errors_are_one_line_4xx(app, capsys):
    call, ids, _ = app
    plain = ids["plain"]
    status, reply, _ = call("POST", f"/api/trials/{plain[1]}/user-attrs", {"user_attrs": 5})  # AttributeError
    assert status == 400 and "cannot use this request (AttributeError" in reply["reason"]
    assert call("POST", f"/api/trials/{plain[1]}/tell", {"state": "Fail"})[0] == 204
    status, reply, _ = call("POST", f"/api/trials/{plain[1]}/tell", {"state": "Fail"})  # finished already
    assert status == 409 and "finished" in reply["reason"]
    out = capsys.readouterr()
    assert "Traceback" not in out.out + out.err
    assert call("GET", "/api/meta")[0] == 200
    assert call("GET", "/api/meta", HTTP_HOST="evil.example")[0] == 403
