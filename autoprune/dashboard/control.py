"""The request channel: optuna-dashboard forms that resume, stop, export and verify a study.

optuna-dashboard cannot start a process, and Optuna refuses attributes on finished
trials, so requests travel through optuna-dashboard's own features:

* Each autoprune study ``S`` gets a companion **control study** ``S.control`` (marked
  by the study attribute ``autoprune.control_of``). Its form — a choice of action and
  three text fields, registered with ``register_user_attr_form_widgets`` — renders on
  its RUNNING trials. There is always one *waiting* trial that carries the empty form.
* Submitting the form posts the fields to ``/api/trials/<id>/user-attrs``. The
  dashboard process (:class:`ControlMiddleware`) answers that post itself: it
  validates the request against an allow-list; a refusal comes back as HTTP 400 with
  the reason (the dashboard shows it) and changes nothing. An accepted request
  turns the waiting trial into the request's trial, starts the command as a child
  process (``sys.executable -m autoprune ...``, an argument list, never a shell), and
  arms a new waiting trial.
* While the child runs, its trial shows its command, progress and log tail; the
  study's new trials appear in the study as usual. When it ends, the exit status, the
  log tail and (for an export) the report go into the trial's attributes and note;
  an export's ONNX file, TVM module, ``report.json`` and per-layer chart are attached
  to the trial as artifacts; the trial is told COMPLETE (value = exit status) or FAIL.
* One request per study at a time; ``stop`` sends SIGINT to the running child (the
  clean stop of ``autoprune search``). A study that another process is searching
  (its SQLite lock is held, or it has RUNNING trials with a live heartbeat) is refused.
* Children run in their own session, so a killed dashboard does not take them down:
  their finished trials are in the storage anyway. When the dashboard starts again it
  **adopts** a child that is still running (found by the pid and start time stored on
  its trial): it keeps reporting its progress, can stop it, and records its outcome.
  A child that ended while no dashboard ran is recorded from its log.

Forms submitted some other way (another optuna-dashboard on the same storage) are
picked up by polling; a refusal is then recorded on the trial, which is told FAIL.
"""

from __future__ import annotations

import json
import math
import os
import re
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from autoprune.errors import AutopruneError, StorageError

CONTROL_SUFFIX = ".control"
CONTROL_OF_ATTR = "autoprune.control_of"
CONTROL_LINK_ATTR = "autoprune.control_link"
#: Form fields (user attribute keys of the control trials).
KEY_ACTION, KEY_TRIALS, KEY_TIMEOUT, KEY_TRIAL = "action", "trials", "timeout_s", "trial"
FORM_KEYS = (KEY_ACTION, KEY_TRIALS, KEY_TIMEOUT, KEY_TRIAL)
#: The allow-list: action name -> the value its choice submits.
ACTIONS = {"resume": 1, "stop": 2, "export": 3, "verify": 4}
MAX_TRIALS = 1000
MAX_TIMEOUT_S = 7 * 24 * 3600.0
#: After SIGINT, how long a child gets before SIGTERM (and as long again before SIGKILL).
STOP_GRACE_S = 60.0
LOG_TAIL_CHARS = 2000
STATUS = "status"


class RequestError(AutopruneError):
    """A request that is refused; the message is the reason shown in the dashboard."""


@dataclass(frozen=True)
class Request:
    """One validated request from the control form."""

    action: str
    trials: int | None = None
    timeout_s: float | None = None
    trial: int | None = None

    def describe(self) -> str:
        """A short human description, e.g. ``resume 3 trials``."""
        if self.action == "resume":
            budget = f" within {self.timeout_s:g} s" if self.timeout_s is not None else ""
            return f"resume {self.trials} trials{budget}"
        if self.action in ("export", "verify"):
            return f"{self.action} trial {self.trial}"
        return self.action

    def form_values(self) -> dict[str, Any]:
        """The form fields as the dashboard stores them (the choice as its number, the rest as text)."""
        return {KEY_ACTION: float(ACTIONS[self.action]),
                KEY_TRIALS: "" if self.trials is None else str(self.trials),
                KEY_TIMEOUT: "" if self.timeout_s is None else f"{self.timeout_s:g}",
                KEY_TRIAL: "" if self.trial is None else str(self.trial)}


def form_widgets() -> list:
    """The control form: what to do, and the arguments it needs."""
    from optuna_dashboard import ChoiceWidget, TextInputWidget

    return [
        ChoiceWidget(choices=list(ACTIONS), values=[float(v) for v in ACTIONS.values()], user_attr_key=KEY_ACTION,
                     description="resume the search, stop it, export a trial, or verify an export"),
        TextInputWidget(user_attr_key=KEY_TRIALS, optional=True,
                        description=f"resume: N more completed trials (1-{MAX_TRIALS}; empty with a time "
                        f"budget = up to {MAX_TRIALS})"),
        TextInputWidget(user_attr_key=KEY_TIMEOUT, optional=True,
                        description="resume: time budget in seconds (optional)"),
        TextInputWidget(user_attr_key=KEY_TRIAL, optional=True,
                        description="export / verify: the trial number (click a point of the study's "
                        "Pareto front to find it)"),
    ]


_INT = re.compile(r"^\s*\+?(\d{1,9})\s*$")
_NUM = re.compile(r"^\s*\+?(\d{1,9}(\.\d*)?|\.\d+)\s*$")


def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise RequestError(f"a form field holds a {type(value).__name__}; send text or a number")
    if isinstance(value, float):
        if not math.isfinite(value):
            raise RequestError("a form field holds a non-finite number")
        return f"{value:g}" if value != int(value) else str(int(value))
    return str(value)


def _int_field(attrs: dict[str, Any], key: str, what: str) -> int | None:
    raw = _text(attrs.get(key)).strip()
    if not raw:
        return None
    m = _INT.match(raw)
    if not m:
        raise RequestError(f"{what} must be a whole number, got {raw[:40]!r}")
    return int(m.group(1))


def parse_request(attrs: dict[str, Any]) -> Request:
    """Validate the submitted form fields (syntax and ranges; the study is checked later).

    Args:
        attrs: The ``user_attrs`` the dashboard posts: ``action`` (a choice value or name),
            ``trials``, ``timeout_s``, ``trial`` (text; empty = not given).

    Raises:
        RequestError: The reason, in words the dashboard shows.
    """
    if not isinstance(attrs, dict):
        raise RequestError("the request must be a JSON object of form fields")
    unknown = sorted(k for k in attrs if k not in FORM_KEYS)
    if unknown:
        raise RequestError(f"unknown form field {str(unknown[0])[:40]!r}; the form has {', '.join(FORM_KEYS)}")
    raw = attrs.get(KEY_ACTION)
    by_value = {float(v): k for k, v in ACTIONS.items()}
    action = None
    if isinstance(raw, (int, float)) and not isinstance(raw, bool):
        action = by_value.get(float(raw))
    elif isinstance(raw, str):
        action = raw.strip().lower() if raw.strip().lower() in ACTIONS else None
        if action is None and _NUM.match(raw):
            action = by_value.get(float(raw))
    if action is None:
        raise RequestError(f"unknown action {str(raw)[:40]!r}; allowed: {', '.join(ACTIONS)}")
    if action == "stop":
        return Request("stop")
    if action == "resume":
        n = _int_field(attrs, KEY_TRIALS, "N (trials)")
        raw_t = _text(attrs.get(KEY_TIMEOUT)).strip()
        timeout = None
        if raw_t:
            if not _NUM.match(raw_t):
                raise RequestError(f"the time budget must be a number of seconds, got {raw_t[:40]!r}")
            timeout = float(raw_t)
            if not 0 < timeout <= MAX_TIMEOUT_S:
                raise RequestError(f"the time budget must be more than 0 and at most {MAX_TIMEOUT_S:g} s, "
                                   f"got {raw_t}")
        if n is None and timeout is None:
            raise RequestError("resume needs N (more trials) or a time budget in seconds")
        if n is None:
            n = MAX_TRIALS
        if not 1 <= n <= MAX_TRIALS:
            raise RequestError(f"N must be from 1 to {MAX_TRIALS}, got {n}")
        return Request("resume", trials=n, timeout_s=timeout)
    number = _int_field(attrs, KEY_TRIAL, "the trial number")
    if number is None:
        raise RequestError(f"{action} needs a trial number (click a point of the Pareto front to find it)")
    return Request(action, trial=number)


def control_name(study_name: str) -> str:
    """The name of a study's control study."""
    return f"{study_name}{CONTROL_SUFFIX}"


def study_link(study_id: int, trial_number: int | None = None) -> str:
    """Dashboard path of a study (or of one trial in its trial list)."""
    return f"/dashboard/studies/{study_id}" + (f"/trials?numbers={trial_number}" if trial_number is not None else "")


def _tail(path: Path, chars: int = LOG_TAIL_CHARS) -> str:
    try:
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            fh.seek(max(0, size - 4 * chars))
            text = fh.read().decode("utf-8", "replace")
    except OSError:
        return ""
    text = text.replace("\r", "\n")
    return text[-chars:]


def inferred_exit_status(log_tail: str) -> int:
    """The exit status of an adopted child, read from the last lines the CLI prints.

    ``autoprune`` ends an error with ``autoprune CMD: error: ...`` (exit 2) and an
    interrupt with ``autoprune CMD: interrupted`` (130); a traceback means 1.
    """
    last = [ln for ln in log_tail.strip().splitlines() if ln.strip()][-3:]
    text = "\n".join(last)
    if re.search(r"^autoprune \w+: interrupted", text, re.M):
        return 130
    if re.search(r"^autoprune \w+: error:", text, re.M):
        return 2
    if "Traceback" in log_tail or re.search(r"^\w*(Error|Exception)\b", text, re.M):
        return 1
    return 0


@dataclass
class Job:
    """A request whose child process is running."""

    study_name: str
    control_id: int
    trial_id: int
    number: int
    request: Request
    log: Path
    started: float
    complete0: int
    proc: Any  # subprocess.Popen, or psutil.Process when adopted
    adopted: bool = False
    stop_requested: float | None = None
    stop_signals: list[str] = field(default_factory=list)
    last_progress: str = ""
    last_complete: int = -1

    @property
    def pid(self) -> int:
        return self.proc.pid

    def poll(self) -> int | None:
        """The exit status once the child has ended, else ``None``."""
        if not self.adopted:
            return self.proc.poll()
        import psutil

        try:
            if self.proc.is_running() and self.proc.status() != psutil.STATUS_ZOMBIE:
                return None
        except psutil.NoSuchProcess:
            pass
        return inferred_exit_status(_tail(self.log))

    def signal(self, sig: int) -> None:
        try:
            os.kill(self.pid, sig)
            self.stop_signals.append(signal.Signals(sig).name)
        except ProcessLookupError:
            pass


class Controller:
    """Carries out the requests submitted on control studies; one per dashboard process.

    Args:
        storage_url: The storage URL (children get it as ``--storage``).
        storage: The dashboard's storage object (shared with the web app).
        artifact_store: Where export artifacts are uploaded.
        cwd: Working folder of the children (default: this process's).
    """

    def __init__(self, storage_url: str, storage, artifact_store, cwd: str | None = None) -> None:
        self.url = storage_url
        self.storage = storage
        self.store = artifact_store
        self.cwd = cwd or os.getcwd()
        self.jobs: dict[str, Job] = {}
        self._lock = threading.RLock()
        self._trial_to_study: dict[int, str] = {}
        self._controls: dict[str, int] = {}  # autoprune study name -> control study id
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._note_state: dict[str, tuple] = {}
        self.log_lines: list[str] = []

    # -- set-up ------------------------------------------------------------------------------------
    def say(self, line: str) -> None:
        """Print one line on the dashboard's console."""
        self.log_lines.append(line)
        print(f"autoprune dashboard: {line}", flush=True)

    def _load(self, name: str):
        import optuna

        return optuna.load_study(study_name=name, storage=self.storage)

    def sync(self) -> None:
        """Give every autoprune study a control study with one waiting form trial; adopt orphans."""
        from autoprune.search.study import CONFIG_ATTR

        with self._lock:
            studies = self.storage.get_all_studies()
            by_name = {s.study_name: s for s in studies}
            for s in studies:
                if CONFIG_ATTR not in s.user_attrs or CONTROL_OF_ATTR in s.user_attrs:
                    continue
                ctrl = by_name.get(control_name(s.study_name))
                if ctrl is not None and ctrl.user_attrs.get(CONTROL_OF_ATTR) != s.study_name:
                    continue  # a study of that name that is not ours: leave the study undriven
                try:
                    self._sync_one(s, ctrl)
                except AutopruneError as exc:
                    self.say(f"study {s.study_name!r}: {exc}")

    def _sync_one(self, frozen, ctrl) -> None:
        import optuna
        from optuna_dashboard import register_user_attr_form_widgets

        name = frozen.study_name
        if ctrl is None:
            try:
                study = optuna.create_study(study_name=control_name(name), storage=self.storage,
                                            direction="minimize")
            except optuna.exceptions.DuplicatedStudyError:
                study = self._load(control_name(name))
            study.set_user_attr(CONTROL_OF_ATTR, name)
            study.set_metric_names(["exit status"])
            register_user_attr_form_widgets(study, form_widgets())
            cid = study._study_id
            self.say(f"created the control study {control_name(name)!r} for {name!r}")
        else:
            cid = ctrl._study_id
        self._controls[name] = cid
        trials = self.storage.get_all_trials(cid, deepcopy=False)
        for t in trials:
            self._trial_to_study[t._trial_id] = name
        from optuna.trial import TrialState

        running = [t for t in trials if t.state == TrialState.RUNNING]
        job = self.jobs.get(name)
        for t in running:
            status = t.user_attrs.get(STATUS)
            if status == "running" and (job is None or job.trial_id != t._trial_id):
                self._adopt(name, cid, t)
            elif status == "waiting" and KEY_ACTION in t.user_attrs:
                self._submitted_elsewhere(name, cid, t)
            elif status == "running" and job is not None and job.trial_id == t._trial_id:
                values = {k: t.user_attrs.get(k) for k in FORM_KEYS}
                if values != job.request.form_values():  # the form on the running trial was submitted
                    self._submitted_elsewhere(name, cid, t)
            elif status not in ("waiting", "running"):
                self._close(t._trial_id, TrialState.FAIL, {STATUS: "abandoned", "reason": "not a form trial"})
        self._ensure_waiting(name, cid)
        self._refresh_notes(name)

    def _ensure_waiting(self, name: str, cid: int) -> tuple[int, int]:
        """``(trial id, number)`` of the study's waiting form trial (created if there is none)."""
        from optuna.trial import TrialState

        for t in self.storage.get_all_trials(cid, deepcopy=False, states=(TrialState.RUNNING,)):
            if t.user_attrs.get(STATUS) == "waiting" and KEY_ACTION not in t.user_attrs:
                return t._trial_id, t.number
        tid = self.storage.create_new_trial(cid)
        self.storage.set_trial_user_attr(tid, STATUS, "waiting")
        self._trial_to_study[tid] = name
        number = self.storage.get_trial(tid).number
        link = study_link(cid, number)
        study = self._load(name)
        if study.user_attrs.get(CONTROL_LINK_ATTR) != link:
            study.set_user_attr(CONTROL_LINK_ATTR, link)
        self._note_state.pop(name, None)  # the new form trial needs its note
        return tid, number

    # -- requests ----------------------------------------------------------------------------------
    def control_study_of_trial(self, trial_id: int) -> str | None:
        """The autoprune study whose control study holds ``trial_id`` (``None``: not a control trial)."""
        with self._lock:
            if trial_id not in self._trial_to_study:
                self.sync()
            return self._trial_to_study.get(trial_id)

    def submit(self, trial_id: int, attrs: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        """Handle a form posted to a control trial: ``(HTTP status, body)``.

        Acceptance is ``(200, {"accepted": ...})`` — a JSON body, because optuna-dashboard's UI parses
        the answer as JSON (its own route answers 204 with no body, which its UI reports as a failure).
        A refusal is ``(400, {"reason": ...})`` and changes nothing.
        """
        from optuna.trial import TrialState

        with self._lock:
            name = self._trial_to_study.get(trial_id)
            if name is None:
                return 404, {"reason": f"trial_id={trial_id} is not a control trial"}
            t = self.storage.get_trial(trial_id)
            if t.state != TrialState.RUNNING:
                return 400, {"reason": f"control trial {t.number} is {t.state.name}; use the waiting trial's form "
                             f"({study_link(self._controls[name])})"}
            try:
                req = parse_request(attrs)
                self._execute(name, self._controls[name], t, req)
            except RequestError as exc:
                self.say(f"refused on {name!r}: {exc}")
                return 400, {"reason": str(exc)}
            return 200, {"accepted": req.describe(), "control_trial": t.number}

    def _submitted_elsewhere(self, name: str, cid: int, t) -> None:
        """A form that reached the storage without passing through this process."""
        from optuna.trial import TrialState

        job = self.jobs.get(name)
        attrs = {k: t.user_attrs.get(k) for k in FORM_KEYS if k in t.user_attrs}
        try:
            self._execute(name, cid, t, parse_request(attrs))
        except RequestError as exc:
            self.say(f"refused on {name!r}: {exc}")
            if job is not None and job.trial_id == t._trial_id:
                self._restore_form(job)
                self._append_note(cid, t._trial_id, f"- refused a request sent on this trial's form: {exc}")
            else:
                self._close(t._trial_id, TrialState.FAIL, {STATUS: "refused", "reason": str(exc)})
                self._set_trial_note(cid, t._trial_id, f"## Refused\n\n{exc}\n")

    def _execute(self, name: str, cid: int, t, req: Request) -> None:
        """Validate ``req`` against the study's state and carry it out (caller holds the lock)."""
        from optuna.trial import TrialState

        job = self.jobs.get(name)
        if req.action == "stop":
            if job is None:
                raise RequestError(f"nothing to stop: no request from this dashboard is running on {name!r} (a "
                                   "search started in a terminal stops with Ctrl-C there)")
            self.stop(name, why=f"stop requested on control trial {t.number}")
            if t._trial_id == job.trial_id:
                self._restore_form(job)
                self._append_note(cid, t._trial_id, "- stop requested from this trial's form (SIGINT sent)")
            else:
                for k, v in req.form_values().items():
                    self.storage.set_trial_user_attr(t._trial_id, k, v)
                self._close(t._trial_id, TrialState.COMPLETE,
                            {STATUS: "done", "result": f"SIGINT sent to control trial {job.number}'s "
                             f"{job.request.action} (pid {job.pid})"}, value=0.0)
                self._ensure_waiting(name, cid)
            return
        if job is not None:
            raise RequestError(f"one request per study at a time: control trial {job.number} "
                               f"({job.request.describe()}) is still running; wait for it, or stop it first")
        if t.user_attrs.get(STATUS) != "waiting":
            raise RequestError(f"control trial {t.number} already carries a request; use the waiting trial")
        self._check_not_held(name)
        argv, extra = self._argv(name, req)
        self._start(name, cid, t, req, argv, extra)

    def _check_not_held(self, name: str) -> None:
        """Refuse a study that another process is searching."""
        from optuna.trial import TrialState

        from autoprune.search.storage import single_worker_lock, sqlite_path

        if sqlite_path(self.url) is not None:
            try:
                with single_worker_lock(self.url, name):
                    pass
            except StorageError as exc:
                raise RequestError(f"refused: {exc}") from None
            return
        study_id = self.storage.get_study_id_from_name(name)
        running = self.storage.get_all_trials(study_id, deepcopy=False, states=(TrialState.RUNNING,))
        stale = set(getattr(self.storage, "_get_stale_trial_ids", lambda _id: [])(study_id))
        live = [t.number for t in running if t._trial_id not in stale]
        if live:
            raise RequestError(f"refused: study {name!r} is being searched by another worker (trial(s) "
                               f"{', '.join(map(str, live[:5]))} RUNNING with a live heartbeat); stop that "
                               "worker or wait for it")

    def _argv(self, name: str, req: Request) -> tuple[list[str], dict[str, Any]]:
        """The child's argument list for a request that passed :func:`parse_request`."""
        from optuna.trial import TrialState

        base = [sys.executable, "-m", "autoprune"]
        if req.action == "resume":
            argv = [*base, "search", "--study", name, "--storage", self.url, "--trials", str(req.trials)]
            if req.timeout_s is not None:
                argv += ["--timeout", f"{req.timeout_s:g}"]
            return [*argv, "--no-progress"], {}
        study_id = self.storage.get_study_id_from_name(name)
        trials = {t.number: t for t in self.storage.get_all_trials(study_id, deepcopy=False)}
        target = trials.get(req.trial)
        if target is None or target.state != TrialState.COMPLETE or "plan" not in target.user_attrs:
            done = [n for n, t in trials.items() if t.state == TrialState.COMPLETE]
            raise RequestError(f"trial {req.trial} is not a completed trial of {name!r} (completed: "
                               f"{', '.join(map(str, done[:15])) or 'none'}{' ...' if len(done) > 15 else ''})")
        if req.action == "export":
            return [*base, "export", "--study", name, "--storage", self.url, "--trial", str(req.trial),
                    "--no-progress"], {"export_dir": str(self._export_dir(name, req.trial))}
        from autoprune.cli import COMMANDS

        if "verify" not in COMMANDS:
            raise RequestError("`autoprune verify` is not available in this version of autoprune")
        export_dir = self._export_dir(name, req.trial)
        if not (export_dir / "report.json").is_file():
            raise RequestError(f"trial {req.trial} of {name!r} has no export to verify ({export_dir} has no "
                               "report.json); export it first")
        return [*base, "verify", str(export_dir)], {"export_dir": str(export_dir)}

    def _export_dir(self, name: str, number: int) -> Path:
        from autoprune.io import results_dir

        rec = self.storage.get_study_user_attrs(self.storage.get_study_id_from_name(name)).get(
            f"autoprune.export.{number}")
        if isinstance(rec, dict) and rec.get("dir"):
            return Path(rec["dir"])
        return Path(self.cwd) / results_dir() / name / f"export-{number}"

    def _start(self, name: str, cid: int, t, req: Request, argv: list[str], extra: dict[str, Any]) -> None:
        import psutil
        from optuna.trial import TrialState

        from autoprune.io import results_dir
        from autoprune.search.storage import redact_text

        log_dir = (Path(self.cwd) / results_dir() / name / "dashboard").resolve()
        log_dir.mkdir(parents=True, exist_ok=True)
        log = log_dir / f"request-{t.number}-{req.action}.log"
        study_id = self.storage.get_study_id_from_name(name)
        complete0 = len(self.storage.get_all_trials(study_id, deepcopy=False, states=(TrialState.COMPLETE,)))
        shown = " ".join(["autoprune", *argv[3:]])
        attrs = {**req.form_values(), STATUS: "running", "request": req.describe(),
                 "command": redact_text(shown, self.url), "log": str(log), "complete_before": complete0, **extra}
        for k, v in attrs.items():
            self.storage.set_trial_user_attr(t._trial_id, k, v)
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        with open(log, "ab") as fh:
            fh.write(f"$ {redact_text(shown, self.url)}\n".encode())
            fh.flush()
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=fh, stderr=subprocess.STDOUT,
                                    cwd=self.cwd, env=env, start_new_session=True)
        started = psutil.Process(proc.pid).create_time()
        self.storage.set_trial_user_attr(t._trial_id, "pid", proc.pid)
        self.storage.set_trial_user_attr(t._trial_id, "pid_started", started)
        self.storage.set_trial_user_attr(t._trial_id, "started_unix", time.time())
        self.jobs[name] = Job(name, cid, t._trial_id, t.number, req, log, time.time(), complete0, proc)
        self.say(f"{name!r}: control trial {t.number}: {req.describe()} started (pid {proc.pid}; log {log})")
        self._set_trial_note(cid, t._trial_id, f"## {req.describe()}\n\nRunning: `{attrs['command']}` "
                             f"(pid {proc.pid}).\n\nLog: `{log}`\n")
        self._ensure_waiting(name, cid)

    def _adopt(self, name: str, cid: int, t) -> None:
        """A request left running by a dashboard that was killed: adopt its child, or record its end."""
        import psutil

        pid, started = t.user_attrs.get("pid"), t.user_attrs.get("pid_started")
        attrs = {k: t.user_attrs.get(k) for k in FORM_KEYS if k in t.user_attrs}
        try:
            req = parse_request(attrs)
        except RequestError:
            req = Request("resume", trials=1)
        proc = None
        if isinstance(pid, int) and isinstance(started, (int, float)):
            try:
                p = psutil.Process(pid)
                if abs(p.create_time() - started) < 1.0 and "autoprune" in " ".join(p.cmdline()):
                    proc = p
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                proc = None
        job = Job(name, cid, t._trial_id, t.number, req, Path(str(t.user_attrs.get("log", ""))),
                  float(t.user_attrs.get("started_unix", time.time())), int(t.user_attrs.get("complete_before", 0)),
                  proc if proc is not None else SimpleNamespace(pid=pid or -1), adopted=True)
        self.jobs[name] = job
        if proc is not None:
            self.storage.set_trial_user_attr(t._trial_id, "adopted", f"pid {pid} adopted after a dashboard restart")
            self.say(f"{name!r}: adopted the running {req.describe()} of control trial {t.number} (pid {pid})")
        else:
            self.say(f"{name!r}: the {req.describe()} of control trial {t.number} ended while no dashboard ran")
            self._finish(job, ended_unseen=True)

    # -- running children ----------------------------------------------------------------------------
    def stop(self, name: str, why: str = "stop requested") -> bool:
        """Send SIGINT to the study's running child (the clean stop). Returns whether one was running."""
        with self._lock:
            job = self.jobs.get(name)
            if job is None:
                return False
            if job.stop_requested is None:
                job.stop_requested = time.monotonic()
                job.signal(signal.SIGINT)
                self.storage.set_trial_user_attr(job.trial_id, "stop", f"{why}: SIGINT sent")
                self.say(f"{name!r}: {why}; SIGINT sent to pid {job.pid}")
            return True

    def poll(self) -> None:
        """Update the progress of running children; record the outcome of ended ones."""
        from optuna.trial import TrialState

        with self._lock:
            for name, job in list(self.jobs.items()):
                rc = job.poll()
                if rc is not None:
                    self._finish(job, rc=rc)
                    continue
                if job.stop_requested is not None:  # escalate a stop that is not obeyed
                    waited = time.monotonic() - job.stop_requested
                    if waited > 2 * STOP_GRACE_S and "SIGKILL" not in job.stop_signals:
                        job.signal(signal.SIGKILL)
                    elif waited > STOP_GRACE_S and "SIGTERM" not in job.stop_signals:
                        job.signal(signal.SIGTERM)
                try:
                    study_id = self.storage.get_study_id_from_name(name)
                    done = len(self.storage.get_all_trials(study_id, deepcopy=False, states=(TrialState.COMPLETE,)))
                except Exception:  # noqa: BLE001 - a busy database: try again next time
                    continue
                if done != job.last_complete:
                    job.last_complete = done
                    if job.request.action == "resume":
                        text = f"{done - job.complete0} of {job.request.trials} new trials complete"
                    else:
                        text = f"running for {time.time() - job.started:.0f} s"
                    self.storage.set_trial_user_attr(job.trial_id, "progress", text)
                    self._refresh_notes(name)

    def _finish(self, job: Job, rc: int | None = None, ended_unseen: bool = False) -> None:
        """Record a child's outcome on its trial, attach an export's files, close the trial."""
        from optuna.trial import TrialState

        tail = _tail(job.log)
        if rc is None:
            rc = inferred_exit_status(tail)
        inferred = job.adopted
        study_id = self.storage.get_study_id_from_name(job.study_name)
        done = len(self.storage.get_all_trials(study_id, deepcopy=False, states=(TrialState.COMPLETE,)))
        req = job.request
        ok = rc == 0 or (rc == 130 and job.stop_requested is not None) or (req.action == "verify" and rc == 1)
        how = "ended while no dashboard ran; exit status read from its log" if ended_unseen else \
            ("adopted after a dashboard restart; exit status read from its log" if inferred else "")
        attrs: dict[str, Any] = {
            "exit_status": rc, "log_tail": tail[-LOG_TAIL_CHARS:], "finished_unix": time.time(),
            "seconds": round(time.time() - job.started, 1), STATUS: "done" if ok else "failed",
        }
        if how:
            attrs["exit_status_source"] = how
        if req.action == "resume":
            attrs["new_trials_complete"] = done - job.complete0
            attrs["progress"] = f"{done - job.complete0} of {req.trials} new trials complete"
        note = [f"## {req.describe()}", "", f"- command: `{self._attr(job, 'command')}`",
                f"- exit status: **{rc}**" + (f" ({how})" if how else "")
                + (" — stopped on request (the clean SIGINT stop)" if rc == 130 and job.stop_requested else ""),
                f"- time: {attrs['seconds']:.1f} s"]
        if req.action == "resume":
            note.append(f"- completed trials: {job.complete0} → {done} ({done - job.complete0} new)")
        arts: list[str] = []
        if req.action == "export":
            arts, report_md = self._attach_export(job)
            note += report_md
        if arts:
            attrs["artifacts"] = ", ".join(arts)
        note += ["", "Log tail:", "", "```", tail[-LOG_TAIL_CHARS:].rstrip() or "(empty)", "```"]
        try:
            for k, v in attrs.items():
                self.storage.set_trial_user_attr(job.trial_id, k, v)
            self._restore_form(job)
            self._close(job.trial_id, TrialState.COMPLETE if ok else TrialState.FAIL, {}, value=float(rc))
        except Exception as exc:  # noqa: BLE001 - e.g. the trial was marked finished in the dashboard
            note.append(f"\n(could not update the trial: {type(exc).__name__})")
        self._set_trial_note(job.control_id, job.trial_id, "\n".join(note) + "\n")
        self.jobs.pop(job.study_name, None)
        self.say(f"{job.study_name!r}: control trial {job.number}: {req.describe()} ended with exit status {rc}")
        self._ensure_waiting(job.study_name, job.control_id)
        self._refresh_notes(job.study_name, force=True)

    def _attr(self, job: Job, key: str) -> Any:
        try:
            return self.storage.get_trial(job.trial_id).user_attrs.get(key, "")
        except Exception:  # noqa: BLE001
            return ""

    def _attach_export(self, job: Job) -> tuple[list[str], list[str]]:
        """Upload an export's files to the request's trial; Markdown lines of its report."""
        from optuna.artifacts import upload_artifact

        out = Path(str(self._attr(job, "export_dir") or self._export_dir(job.study_name, job.request.trial)))
        report_path = out / "report.json"
        if not report_path.is_file() or report_path.stat().st_mtime < job.started - 1:
            return [], ["- no new export report was written"]
        frozen = self.storage.get_trial(job.trial_id)
        names = []
        for fname, mime in (("model.onnx", "application/octet-stream"), ("model_tvm.so", "application/octet-stream"),
                            ("report.json", "application/json"), ("latency_per_layer.png", "image/png")):
            path = out / fname
            if path.is_file():
                art = upload_artifact(artifact_store=self.store, file_path=str(path), study_or_trial=frozen,
                                      storage=self.storage, mimetype=mime)
                self.storage.set_trial_user_attr(job.trial_id, f"artifact:{fname}", art)
                names.append(fname)
        try:
            rep = json.loads(report_path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return names, ["- report.json could not be read"]
        p, test, tvm = rep.get("predicted") or {}, rep.get("test") or {}, rep.get("tvm") or {}
        lines = ["", f"### Export of trial {rep.get('trial')} ({rep.get('plan_summary', '')})", "",
                 "| | value |", "|---|---|",
                 f"| test accuracy | {test.get('accuracy', float('nan')):.4f} (dense "
                 f"{rep.get('dense_test_accuracy', float('nan')):.4f}) |",
                 f"| latency on {rep.get('target')} (predicted) | {p.get('latency_ms', float('nan')):.4g} ms, "
                 f"{p.get('speedup', float('nan')):.2f}x vs dense |"]
        if rep.get("measured"):
            lines.append(f"| latency (measured, {rep['measured'].get('runtime')}) | "
                         f"{rep['measured'].get('latency_ms', float('nan')):.4g} ms |")
        tvm_text = "built" if tvm.get("built") else f"not built: {str(tvm.get('reason', ''))[:120]}"
        lines += [f"| size | {rep.get('size_bytes', 0) / 1e6:.3f} MB |",
                  f"| TVM module | {tvm_text} |",
                  f"| folder | `{out}` |", "", f"Artifacts on this trial: {', '.join(names)}."]
        return names, lines

    def _restore_form(self, job: Job) -> None:
        """Put the request's own values back in its form fields (a later submission may have overwritten them)."""
        try:
            cur = self.storage.get_trial(job.trial_id).user_attrs
            for k, v in job.request.form_values().items():
                if cur.get(k) != v:
                    self.storage.set_trial_user_attr(job.trial_id, k, v)
        except Exception:  # noqa: BLE001 - finished elsewhere
            pass

    def _close(self, trial_id: int, state, attrs: dict[str, Any], value: float = 0.0) -> None:
        from optuna.trial import TrialState

        for k, v in attrs.items():
            self.storage.set_trial_user_attr(trial_id, k, v)
        self.storage.set_trial_state_values(trial_id, state, [value] if state == TrialState.COMPLETE else None)

    # -- notes -----------------------------------------------------------------------------------------
    def _set_trial_note(self, cid: int, trial_id: int, body: str) -> None:
        from optuna_dashboard import save_note

        save_note(SimpleNamespace(storage=self.storage, study=SimpleNamespace(_study_id=cid), _trial_id=trial_id), body)

    def _append_note(self, cid: int, trial_id: int, line: str) -> None:
        from optuna_dashboard import get_note

        handle = SimpleNamespace(storage=self.storage, study=SimpleNamespace(_study_id=cid), _trial_id=trial_id)
        self._set_trial_note(cid, trial_id, get_note(handle).rstrip() + "\n" + line + "\n")

    def _refresh_notes(self, name: str, force: bool = False) -> None:
        """Rewrite the study's note, the control study's note and its front figure when trials changed."""
        from autoprune.dashboard.note import update_study_note

        try:
            study = self._load(name)
            cid = self._controls[name]
            key = (len(study.get_trials(deepcopy=False)), study.user_attrs.get(CONTROL_LINK_ATTR),
                   tuple(sorted(k for k in study.user_attrs if k.startswith("autoprune.export."))),
                   name in self.jobs)
            if not force and self._note_state.get(name) == key:
                return
            self._note_state[name] = key
            update_study_note(study, self.url)
            self._control_note(name, study, cid)
        except Exception as exc:  # noqa: BLE001 - a note is never worth stopping the controller
            self.say(f"could not refresh the notes of {name!r}: {type(exc).__name__}: {exc}")

    def _control_note(self, name: str, study, cid: int) -> None:
        import optuna
        from optuna_dashboard import save_note, save_plotly_graph_object

        from autoprune.dashboard.note import build_study_note

        ctrl = optuna.load_study(study_name=control_name(name), storage=self.storage)
        link = study.user_attrs.get(CONTROL_LINK_ATTR, "")
        job = self.jobs.get(name)
        busy = (f"**Running now:** control trial {job.number}: {job.request.describe()} (pid {job.pid}). "
                "Submit *stop* to stop it cleanly.") if job else "**Idle:** no request is running."
        head = [f"# Control panel of `{name}`", "",
                f"[Open the form]({link}) (the RUNNING trial marked *waiting*), choose an action, fill in what it "
                f"needs and press **Submit**. Each request runs `autoprune` as a child of the dashboard; its trial "
                f"here shows its command, progress, exit status, log tail and (for an export) the artifacts. "
                f"[The study's own page]({study_link(study._study_id)}) has the Pareto-front plot: click a point "
                "to see its trial number.", "", busy, "",
                "| action | needs |", "|---|---|",
                f"| resume | N (1-{MAX_TRIALS}) and/or a time budget in seconds |",
                "| stop | nothing: sends SIGINT to the running request (the clean stop) |",
                "| export | a completed trial's number |", "| verify | the number of an exported trial |", ""]
        body = "\n".join(head) + "\n" + build_study_note(study, self.url, control_link=None).split("\n", 1)[1]
        save_note(ctrl, body)
        tid, _ = self._ensure_waiting(name, cid)
        front = build_study_note(study, self.url).split("### Pareto front", 1)[1].split("\n### ", 1)[0]
        self._set_trial_note(cid, tid, f"**Waiting for a request** on `{name}`: choose an action below, fill in what "
                             f"it needs, press Submit. [The study's Pareto-front plot]({study_link(study._study_id)})"
                             f" links each point to its trial.\n\n### Pareto front of `{name}`\n{front.rstrip()}\n")
        fig = front_figure(study)
        if fig is not None:
            save_plotly_graph_object(ctrl, fig, graph_object_id="front")

    # -- the loop --------------------------------------------------------------------------------------
    def start(self, poll_s: float = 1.0, sync_every: int = 5) -> None:
        """Sync now, then poll children (and sync studies every ``sync_every`` polls) in a thread."""
        self.sync()

        def loop() -> None:
            i = 0
            while not self._stop.wait(poll_s):
                i += 1
                try:
                    self.poll()
                    if i % sync_every == 0:
                        self.sync()
                except Exception as exc:  # noqa: BLE001 - keep serving; say what went wrong
                    self.say(f"controller: {type(exc).__name__}: {str(exc)[:300]}")

        self._thread = threading.Thread(target=loop, name="autoprune-controller", daemon=True)
        self._thread.start()

    def shutdown(self, timeout_s: float = STOP_GRACE_S) -> None:
        """Stop the loop; stop running children cleanly (SIGINT) and record their outcomes."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        with self._lock:
            names = list(self.jobs)
            for name in names:
                self.stop(name, why="the dashboard is shutting down")
        deadline = time.monotonic() + timeout_s
        while self.jobs and time.monotonic() < deadline:
            self.poll()
            time.sleep(0.2)
        for job in list(self.jobs.values()):
            job.signal(signal.SIGTERM)


def front_figure(study):
    """A plotly figure of a study's trials and Pareto front (accuracy vs predicted latency), or ``None``."""
    import plotly.graph_objects as go

    from autoprune.search.report import front_rows
    from autoprune.search.study import CONFIG_ATTR, SearchConfig

    config = SearchConfig.from_dict(study.user_attrs[CONFIG_ATTR])
    rows, front, _ = front_rows(study, config)
    if not rows:
        return None

    def trace(rs, name, **kw):
        return go.Scatter(x=[r["latency_ms"] for r in rs], y=[r["accuracy"] * 100 for r in rs], name=name,
                          text=[f"trial {r['number']}" for r in rs], hovertemplate="%{text}<br>%{x:.4g} ms, "
                          "%{y:.2f} %<extra></extra>", **kw)

    fig = go.Figure([trace(rows, "all trials", mode="markers", marker={"color": "lightgray"}),
                     trace(front, "Pareto front", mode="lines+markers+text", textposition="top center")])
    fig.update_layout(title=f"Pareto front of {study.study_name} ({len(rows)} trials)",
                      xaxis_title=f"predicted latency on {config.target} (ms)", yaxis_title="accuracy (%)",
                      margin={"l": 50, "r": 20, "t": 50, "b": 45})
    return fig
