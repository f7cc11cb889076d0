"""The dashboard as a server, against the real process on loopback: every write route guarded (Host, Origin,
token, JSON body, --allow-edits), slow and idle clients that block no one, malformed input that is a 4xx."""

from __future__ import annotations

import json
import re
import socket
import time
import uuid
from types import SimpleNamespace

import pytest

from tests.dashboard.conftest import TOKEN_HEADER, Dashboard, get_json, make_study, post_form

SAFE = ("GET", "HEAD", "OPTIONS")
#: Writes the UI may make without --allow-edits: the study note (its user part is kept) and the LLM helpers.
FREE = {("PUT", "/api/studies/<study_id:int>/note")}


def installed_write_routes() -> list[tuple[str, str]]:
    """Every route of the installed optuna-dashboard's bottle app that is not GET/HEAD/OPTIONS."""
    import optuna
    from optuna_dashboard import wsgi

    app = wsgi(optuna.storages.InMemoryStorage())
    return [(r.method, r.rule) for r in app.routes if r.method not in SAFE]


def concrete(rule: str, study_id: int, trial_id: int) -> str:
    """A path of ``rule`` on these ids (other arguments get a plausible value)."""
    values = {"study_id": str(study_id), "trial_id": str(trial_id), "artifact_id": str(uuid.uuid4()),
              "history_id": "0"}
    return re.sub(r"<(\w+)(:[^>]*)?>", lambda m: values.get(m.group(1), "x"), rule)


def snapshot(url: str) -> str:
    """Everything a refused write must leave alone: every study, its attributes (notes included) and trials."""
    import optuna

    storage = optuna.storages.RDBStorage(url)
    out = []
    for s in sorted(storage.get_all_studies(), key=lambda s: s._study_id):
        trials = [(t.number, t.state.name, t.values, sorted(t.user_attrs.items()), sorted(t.system_attrs.items()))
                  for t in storage.get_all_trials(s._study_id)]
        out.append((s._study_id, s.study_name, sorted(s.user_attrs.items()),
                    sorted(storage.get_study_system_attrs(s._study_id).items()), trials))
    storage.engine.dispose()
    return json.dumps(out, sort_keys=True, default=str)


def new_running_trial(url: str, name: str) -> int:
    """Start (ask) one more trial of the plain study ``name`` from this process; its trial id."""
    import optuna

    storage = optuna.storages.RDBStorage(url)
    trial_id = optuna.load_study(study_name=name, storage=storage).ask()._trial_id
    storage.engine.dispose()
    return trial_id


def ids(dash: Dashboard, name: str) -> tuple[int, int, int | None]:
    """``(study id, a completed trial's id, a running trial's id or None)`` of study ``name``."""
    detail = dash.study(name)
    done = next(t["trial_id"] for t in detail["trials"] if t["state"] == "Complete")
    running = next((t["trial_id"] for t in detail["trials"] if t["state"] == "Running"), None)
    return dash.studies()[name]["study_id"], done, running


@pytest.fixture(scope="module")
def guarded(tiny_dense, results_root, tmp_path_factory):
    """An autoprune study ``g`` (2 trials), a plain Optuna study ``plain`` (1 complete, 1 running trial), and a
    dashboard with the default flags serving them."""
    pytest.importorskip("optuna_dashboard")
    import optuna

    folder = tmp_path_factory.mktemp("guarded")
    url = make_study(folder, "g", trials=2)
    storage = optuna.storages.RDBStorage(url)
    plain = optuna.create_study(study_name="plain", storage=storage)
    plain.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=1)
    plain.ask()
    storage.engine.dispose()
    dash = Dashboard(url, results_root, folder / "dashboard.log")
    try:
        yield SimpleNamespace(dash=dash, url=url, folder=folder, results_root=results_root)
    finally:
        dash.stop()


def bad_variants(dash: Dashboard) -> dict[str, dict[str, str]]:
    """The headers of writes the guard must refuse, by what is wrong with them."""
    spoof = f"127.0.0.1.evil.example:{dash.port}"
    return {
        "foreign Host": {"Host": "evil.example", "Origin": "http://evil.example", TOKEN_HEADER: dash.token},
        "prefix-spoofed Host": {"Host": spoof, "Origin": f"http://{spoof}", TOKEN_HEADER: dash.token},
        "wrong port": {"Host": "127.0.0.1:1", TOKEN_HEADER: dash.token},
        "missing token": {"Host": dash.host, "Origin": f"http://{dash.host}"},
        "wrong token": dash.auth(**{TOKEN_HEADER: "x" * 43}),
        "https Origin": {"Host": dash.host, "Origin": f"https://{dash.host}", TOKEN_HEADER: dash.token},
        "foreign Origin": {"Host": dash.host, "Origin": "http://evil.example", TOKEN_HEADER: dash.token},
    }


def assert_guard_refuses(dash: Dashboard, method: str, path: str, body) -> None:
    for what, headers in bad_variants(dash).items():
        status, reply, hdrs = dash.write(method, path, body, headers)
        assert status == 403 and hdrs.get("X-Autoprune-Refused") == "guard", (method, path, what, status, reply)
        assert reply["reason"].startswith("refused:") and "\n" not in reply["reason"], reply


def test_every_write_route_of_optuna_dashboard_is_guarded(guarded):
    from autoprune.dashboard.guard import write_routes

    dash, url = guarded.dash, guarded.url
    routes = installed_write_routes()
    import optuna
    from optuna_dashboard import wsgi

    assert write_routes(wsgi(optuna.storages.InMemoryStorage())) == routes
    assert {("DELETE", "/api/studies/<study_id:int>"), ("POST", "/api/studies"),
            ("POST", "/api/studies/<study_id:int>/rename"), ("POST", "/api/trials/<trial_id:int>/tell"),
            ("POST", "/api/trials/<trial_id:int>/user-attrs")} <= set(routes)
    g_id, g_trial, _ = ids(dash, "g")
    before = snapshot(url)
    for method, rule in routes:
        path = concrete(rule, g_id, g_trial)
        body = {"state": "Complete", "values": [0.999, 0.001]} if rule.endswith("/tell") else {}
        assert_guard_refuses(dash, method, path, body)
        # a good request passes the guard; on an autoprune study it still needs --allow-edits
        status, reply, hdrs = dash.write(method, path, body, dash.auth())
        if (method, rule) in FREE or rule.startswith("/api/llm/"):
            assert hdrs.get("X-Autoprune-Refused") != "edits" and status < 500, (method, rule, status, reply)
        else:
            assert status == 403 and hdrs.get("X-Autoprune-Refused") == "edits", (method, rule, status, reply)
            assert "--allow-edits" in reply["reason"]
    assert snapshot(url) == before  # nothing changed: g's trials, its control study, the plain study
    assert "Traceback" not in dash.text()

    # with --allow-edits (and no controller: the first dashboard drives the studies), good writes go through
    # to optuna-dashboard; the guard still refuses the bad ones
    edits = Dashboard(url, guarded.results_root, guarded.folder / "dashboard-edits.log",
                      ("--no-control", "--allow-edits"))
    try:
        p_id, _, p_running = ids(edits, "plain")
        for method, rule in routes:
            path = concrete(rule, p_id, p_running)
            assert_guard_refuses(edits, method, path, {})
            if (method, rule) != ("DELETE", "/api/studies/<study_id:int>"):
                status, reply, hdrs = edits.write(method, path, {}, edits.auth())
                assert "X-Autoprune-Refused" not in hdrs or status != 403, (method, rule, status, reply)
                assert status < 500, (method, rule, status, reply)
        status, _, _ = edits.write("POST", f"/api/trials/{p_running}/tell", {"state": "Complete", "values": [0.5]},
                                   edits.auth())
        assert status == 204
        status, reply, _ = edits.write("POST", "/api/studies", {"study_name": "made-in-ui", "directions":
                                                                ["minimize"]}, edits.auth())
        assert status == 201, reply
        status, _, _ = edits.write("DELETE", f"/api/studies/{reply['study_summary']['study_id']}", None,
                                   edits.auth())
        assert status == 204 and "made-in-ui" not in edits.studies()
        assert "Traceback" not in edits.text()
    finally:
        edits.stop()


def test_control_form_refuses_spoofed_host_foreign_origin_deep_json(guarded):
    dash = guarded.dash
    w = dash.waiting_trial("g")
    path = f"/api/trials/{w['trial_id']}/user-attrs"
    form = {"user_attrs": {"action": 1.0, "trials": "2", "timeout_s": "", "trial": ""}}
    assert_guard_refuses(dash, "POST", path, form)
    deep = ("[" * 20000 + "]" * 20000).encode()
    cases = [
        ({"user_attrs": {"action": 1.0, "trials": json.loads("[" * 60 + "]" * 60)}}, {}, 400, "holds a list"),
        (b'{"user_attrs": ' + deep + b"}", {}, 400, "nested too deep"),
        (deep, {}, 400, "nested too deep"),
        (json.dumps({"user_attrs": {"action": "x" * 70000}}).encode(), {}, 413, "bytes"),
        (b"action=1&trials=2", {"Content-Type": "application/x-www-form-urlencoded"}, 415, "JSON"),
        (b'{"user_attrs": {"action": 1.0', {}, 400, "not valid JSON"),
        (b'{"user_attrs": "\xff\xfe"}', {}, 400, "not valid JSON"),
        (b"[1, 2]", {}, 400, "must be an object"),
    ]
    for body, extra, status_expected, why in cases:
        status, reply, _ = dash.write("POST", path, body, dash.auth(**extra))
        assert status == status_expected and why in reply["reason"], (why, status, reply)
    # the controller still answers a good request (a refused one: N=0 changes nothing)
    status, reply = post_form(dash.base, w["trial_id"], {"action": 1.0, "trials": "0"})
    assert status == 400 and "N must be from 1" in reply["reason"]
    assert dash.waiting_trial("g")["trial_id"] == w["trial_id"] and "started (pid" not in dash.text()
    assert "Traceback" not in dash.text()


def _send_partial(port: int, data: bytes) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", port), timeout=30)
    if data:
        s.sendall(data)
    return s


def _closed_within(s: socket.socket, timeout_s: float) -> bytes | None:
    """What the server sent before closing ``s`` (``None``: still open after ``timeout_s``)."""
    s.settimeout(timeout_s)
    got = b""
    try:
        while True:
            chunk = s.recv(4096)
            if not chunk:
                return got
            got += chunk
    except TimeoutError:
        return None
    except ConnectionError:
        return got
    finally:
        s.close()


def test_idle_and_slow_clients_do_not_block_others(guarded):
    dash = guarded.dash
    idle = _send_partial(dash.port, b"")  # connects, sends nothing
    head = (f"POST /api/trials/1/user-attrs HTTP/1.1\r\nHost: {dash.host}\r\n{TOKEN_HEADER}: {dash.token}\r\n"
            "Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{").encode()
    slow = _send_partial(dash.port, head)  # 1 of 100 body bytes
    half = _send_partial(dash.port, b"GET /api/meta HTTP/1.1\r\nHo")  # half a header
    t0 = time.monotonic()
    times = []
    for _ in range(20):
        t = time.monotonic()
        assert "g" in {s["study_name"] for s in get_json(f"{dash.base}/api/studies", timeout_s=5)["study_summaries"]}
        times.append(time.monotonic() - t)
    assert max(times) < 5, times
    print(f"\n20 GETs beside 3 stalled connections: slowest {max(times):.2f} s, all {time.monotonic() - t0:.1f} s")
    # the server drops the stalled connections itself (header deadline 5 s, body deadline 10 s)
    assert _closed_within(idle, 15) == b""
    assert _closed_within(half, 15) == b""
    answer = _closed_within(slow, 20)
    assert answer is not None and answer.split(b"\r\n", 1)[0].split(b" ")[1] in (b"408", b"400"), answer
    assert "Traceback" not in dash.text()


def test_malformed_input_is_a_4xx_never_a_500(guarded):
    dash = guarded.dash
    p_id, p_done, _ = ids(dash, "plain")
    p_running = new_running_trial(guarded.url, "plain")
    deep = ("[" * 20000 + "]" * 20000).encode()
    note = f"/api/studies/{p_id}/note"
    cases = [
        ("PUT", note, deep, {}),
        ("PUT", note, b'{"version": ' + deep + b"}", {}),
        ("POST", "/api/studies", deep, {}),
        ("PUT", note, b"{}", {"Content-Length": "abc"}),
        ("PUT", note, b"{}", {"Content-Length": "-5"}),
        ("PUT", note, b'{"body": "x"}', {"Content-Type": "text/plain"}),
        ("PUT", note, b'{"body": "\xc3\x28"}', {}),
        ("POST", f"/api/trials/{p_running}/tell", {"state": ["Complete"]}, {}),  # optuna-dashboard trips on it
        ("POST", f"/api/trials/{p_done}/tell", {"state": "Complete", "values": [1.0]}, {}),  # already finished
        ("POST", f"/api/trials/{p_running}/user-attrs", {"user_attrs": 5}, {}),
        ("POST", "/api/trials/999999/tell", {"state": "Fail"}, {}),
    ]
    for method, path, body, extra in cases:
        status, reply, _ = dash.write(method, path, body, dash.auth(**extra))
        assert 400 <= status < 500 and reply.get("reason"), (method, path, str(body)[:60], status, reply)
        assert "\n" not in reply["reason"]
    status, reply, _ = dash.write("POST", "/api/studies/1/rename", b"{}", {**dash.auth(), "Transfer-Encoding":
                                                                           "chunked"})
    assert status in (400, 411), reply
    for raw in (b"GARBAGE\r\n\r\n", b"GET / HTTP/1.1\r\nX: " + b"a" * 70000 + b"\r\n\r\n",
                b"GET / HTTP/1.1\r\n" + b"X: 1\r\n" * 150 + b"\r\n", b"\x00\xff" * 50 + b"\r\n\r\n",
                b"GET /" + b"a" * 70000 + b" HTTP/1.1\r\n\r\n"):
        answer = _closed_within(_send_partial(dash.port, raw), 15)
        assert answer is not None, raw[:40]
        # a 4xx status line, or (a request line without a version is HTTP/0.9) the bare 4xx error page
        assert re.match(rb"HTTP/1\.[01] 4\d\d ", answer) or b"Error code: 4" in answer, answer[:200]
    import optuna

    storage = optuna.storages.RDBStorage(guarded.url)
    assert storage.get_trial(p_running).state == optuna.trial.TrialState.RUNNING  # the bad tells changed nothing
    storage.engine.dispose()
    assert "Traceback" not in dash.text() and " 500 " not in dash.text()


def test_printed_link_sets_the_cookie_that_authorises_the_forms(guarded):
    """The link printed at start (``...?token=...``) sets the cookie; a write with only that cookie passes, as the
    dashboard's own forms send it (``fetch`` on the same origin carries the page's cookies)."""
    dash = guarded.dash
    assert re.search(rf"http://127\.0\.0\.1:{dash.port}/dashboard/\?token={dash.token} ", dash.text())
    g_id = dash.studies()["g"]["study_id"]
    status, _, hdrs = dash.write("GET", f"/dashboard/studies/{g_id}?token={dash.token}", None, {"Host": dash.host})
    assert status == 303 and hdrs["Location"] == f"/dashboard/studies/{g_id}"  # the token leaves the address bar
    cookie = hdrs["Set-Cookie"].split(";", 1)[0]
    assert cookie == f"autoprune_token_{dash.port}={dash.token}" and "HttpOnly" in hdrs["Set-Cookie"]
    assert "SameSite=Strict" in hdrs["Set-Cookie"]
    assert dash.write("GET", "/dashboard?token=wrong", None, {"Host": dash.host})[0] == 403
    w = dash.waiting_trial("g")
    form = {"user_attrs": {"action": 1.0, "trials": "0", "timeout_s": "", "trial": ""}}
    headers = {"Host": dash.host, "Origin": f"http://{dash.host}", "Cookie": cookie}
    status, reply, _ = dash.write("POST", f"/api/trials/{w['trial_id']}/user-attrs", form, headers)
    assert status == 400 and "N must be from 1" in reply["reason"]  # past the guard: the controller answered
    bad = {**headers, "Cookie": f"autoprune_token_{dash.port}=nope"}
    assert dash.write("POST", f"/api/trials/{w['trial_id']}/user-attrs", form, bad)[0] == 403
    # reads need no token, but a rebound name is refused for them too
    assert dash.write("GET", "/api/meta", None, {"Host": f"localhost:{dash.port}"})[0] == 200
    assert dash.write("GET", "/api/studies", None, {"Host": "evil.example"})[0] == 403
