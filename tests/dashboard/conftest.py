"""A study made by ``autoprune search`` and an ``autoprune dashboard`` process serving it, with its controller."""

from __future__ import annotations

import http.client
import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import TINY_REF, cli_env, free_port

FAST = ["--model", TINY_REF, "--target", "jetson-nano", "--finetune-epochs", "0", "--no-progress"]
#: The write token each running test dashboard printed, by its base URL (``post_form`` sends it).
TOKENS: dict[str, str] = {}
TOKEN_HEADER = "X-Autoprune-Token"


def get_json(url: str, timeout_s: float = 10):
    with urllib.request.urlopen(url, timeout=timeout_s) as r:
        return json.loads(r.read())


def post_form(base: str, trial_id: int, fields: dict, headers: dict | None = None) -> tuple[int, dict]:
    """POST the control form exactly as optuna-dashboard's UI does: ``{"user_attrs": {...}}`` as JSON, with the
    token the dashboard at ``base`` printed (the UI sends it as the cookie its printed link set)."""
    auth = {TOKEN_HEADER: TOKENS[base]} if base in TOKENS else {}
    req = urllib.request.Request(f"{base}/api/trials/{trial_id}/user-attrs", method="POST",
                                 data=json.dumps({"user_attrs": fields}).encode(),
                                 headers={"Content-Type": "application/json", **auth, **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            body = r.read()
            return r.status, json.loads(body) if body else {}
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")


def request(port: int, method: str, path: str, body: bytes | dict | None = None, headers: dict | None = None,
            timeout_s: float = 10) -> tuple[int, dict, dict]:
    """One raw HTTP request to ``127.0.0.1:port`` with exactly these headers (``Host`` included, if given):
    ``(status, JSON body or {}, response headers)``."""
    data = json.dumps(body).encode() if isinstance(body, dict) else body
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout_s)
    try:
        hdrs = dict(headers or {})
        if data is not None and "Content-Type" not in hdrs:
            hdrs["Content-Type"] = "application/json"
        conn.request(method, path, body=data, headers=hdrs)
        r = conn.getresponse()
        raw = r.read()
        try:
            parsed = json.loads(raw) if raw else {}
        except ValueError:
            parsed = {"raw": raw[:200].decode(errors="replace")}
        return r.status, parsed if isinstance(parsed, dict) else {"value": parsed}, dict(r.getheaders())
    finally:
        conn.close()


def make_study(folder: Path, name: str, trials: int = 4) -> str:
    """A tiny study of ``trials`` completed trials in its own SQLite file in ``folder``; returns the storage URL."""
    from autoprune.cli import main

    url = f"sqlite:///{folder / f'{name}.db'}"
    assert main(["search", *FAST, "--trials", str(trials), "--study", name, "--storage", url]) == 0
    return url


class Dashboard:
    """An ``autoprune dashboard`` child process on a free loopback port."""

    def __init__(self, url: str, results_root: Path, log_path: Path, args: tuple[str, ...] = ()) -> None:
        self.url = url
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        self.log = open(log_path, "ab")  # noqa: SIM115 - closed in stop()
        self.token = ""
        self.host = f"127.0.0.1:{self.port}"
        cmd = [sys.executable, "-m", "autoprune", "dashboard", "--storage", url, "--port", str(self.port), *args]
        ready = "watch-only" if "--no-control" in args else "with the control forms"
        self.proc = subprocess.Popen(cmd, env=cli_env(results_root), stdout=self.log, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        deadline = time.time() + 60
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"dashboard exited with {self.proc.returncode}: {self.text()[-3000:]}")
            try:
                get_json(f"{self.base}/api/meta", timeout_s=2)
                if ready in self.text():
                    break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            if time.time() > deadline:
                raise RuntimeError(f"dashboard did not answer within 60 s: {self.text()[-3000:]}")
            time.sleep(0.3)
        # the link it printed carries this run's write token (like Jupyter's ...?token=...)
        link = re.search(rf"at (http://127\.0\.0\.1:{self.port}/\S*)\?token=([A-Za-z0-9_-]+)", self.text())
        if link:
            self.token = link.group(2)
            TOKENS[self.base] = self.token

    def auth(self, **extra: str) -> dict[str, str]:
        """The headers of a good write: this dashboard's Host, Origin and token (plus ``extra``)."""
        return {"Host": self.host, "Origin": f"http://{self.host}", TOKEN_HEADER: self.token, **extra}

    def write(self, method: str, path: str, body: bytes | dict | None = None, headers: dict | None = None,
              timeout_s: float = 10) -> tuple[int, dict, dict]:
        """A raw write to this dashboard (see :func:`request`)."""
        return request(self.port, method, path, body, headers, timeout_s)

    def text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def studies(self) -> dict[str, dict]:
        return {s["study_name"]: s for s in get_json(f"{self.base}/api/studies")["study_summaries"]}

    def study(self, name: str) -> dict:
        return get_json(f"{self.base}/api/studies/{self.studies()[name]['study_id']}")

    def waiting_trial(self, name: str, newer_than: int = -1, timeout_s: float = 15) -> dict:
        """The control study's one trial that carries the empty form (waits past the dashboard's 2 s cache)."""

        def find():
            ctrl = self.study(f"{name}.control")
            waiting = [t for t in ctrl["trials"] if t["state"] == "Running"
                       and {"key": "status", "value": "waiting"} in t["user_attrs"]]
            assert len(waiting) <= 1, ctrl["trials"]
            return waiting[0] if waiting and waiting[0]["number"] > newer_than else None

        return wait_for(find, timeout_s, f"a waiting form trial of {name}.control after #{newer_than}", 0.25)

    def stop(self, sig: int = signal.SIGTERM) -> None:
        TOKENS.pop(self.base, None)
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, sig)
            try:
                self.proc.wait(timeout=90)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self.log.close()


def attrs(trial: dict) -> dict[str, str]:
    return {a["key"]: a["value"] for a in trial["user_attrs"]}


def wait_for(pred, timeout_s: float, what: str, interval_s: float = 0.5):
    """Poll ``pred()`` until it returns something truthy; fail with ``what`` after ``timeout_s``."""
    deadline = time.time() + timeout_s
    while True:
        out = pred()
        if out:
            return out
        if time.time() > deadline:
            raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}")
        time.sleep(interval_s)


def n_complete(detail: dict) -> int:
    return sum(t["state"] == "Complete" for t in detail["trials"])


@pytest.fixture
def driven(tiny_dense, results_root, tmp_path):
    """A 4-trial study ``ctl`` and a dashboard driving it; yields the :class:`Dashboard`."""
    pytest.importorskip("optuna_dashboard")
    url = make_study(tmp_path, "ctl")
    dash = Dashboard(url, results_root, tmp_path / "dashboard.log")
    try:
        yield dash
    finally:
        dash.stop()
