"""The children that carry out requests: their argument lists, start, adoption, logs and exit status.

Each accepted request runs ``sys.executable -m autoprune ...`` (an argument list, never a shell) in its own
session, so a killed dashboard does not take it down; a restarted dashboard finds it again by the pid and
start time stored on its trial (:func:`find_child`) and reads the exit status of a child it did not start
from its log (:func:`inferred_exit_status`).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from autoprune.dashboard.request import FORM_KEYS, STATUS, Request, RequestError, parse_request
from autoprune.errors import StorageError

#: After SIGINT, how long a child gets before SIGTERM (and as long again before SIGKILL).
STOP_GRACE_S = 60.0
LOG_TAIL_CHARS = 2000


def log_tail(path: Path, chars: int = LOG_TAIL_CHARS) -> str:
    """The last ``chars`` characters of a child's log (carriage returns as newlines; ``""`` if unreadable)."""
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
    if "Traceback" in log_tail or re.search(r"^[\w.]*(Error|Exception)\b", text, re.M):
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
    #: The attributes its control trial got at the start (copied to a re-created trial, see :func:`rehome`).
    attrs: dict[str, Any] = field(default_factory=dict)

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
        return inferred_exit_status(log_tail(self.log))

    def signal(self, sig: int) -> None:
        try:
            os.kill(self.pid, sig)
            self.stop_signals.append(signal.Signals(sig).name)
        except ProcessLookupError:
            pass

    def escalate_stop(self) -> None:
        """After a SIGINT that is not obeyed: SIGTERM past :data:`STOP_GRACE_S`, SIGKILL past twice that."""
        if self.stop_requested is not None:
            waited = time.monotonic() - self.stop_requested
            if waited > 2 * STOP_GRACE_S and "SIGKILL" not in self.stop_signals:
                self.signal(signal.SIGKILL)
            elif waited > STOP_GRACE_S and "SIGTERM" not in self.stop_signals:
                self.signal(signal.SIGTERM)

    def progress(self, done: int) -> str:
        """The progress shown on the request's trial, given the study's completed trials now."""
        if self.request.action == "resume":
            return f"{done - self.complete0} of {self.request.trials} new trials complete"
        return f"running for {time.time() - self.started:.0f} s"


def export_dir(storage, cwd: str, name: str, number: int) -> Path:
    """The folder an export of trial ``number`` of study ``name`` goes to (recorded on the study, else the
    default under the results folder of ``cwd``)."""
    from autoprune.io import study_dir

    rec = storage.get_study_user_attrs(storage.get_study_id_from_name(name)).get(f"autoprune.export.{number}")
    if isinstance(rec, dict) and rec.get("dir"):
        return Path(rec["dir"])
    return Path(cwd) / study_dir(name) / f"export-{number}"


def child_argv(storage, url: str, cwd: str, name: str, req: Request) -> tuple[list[str], dict[str, Any]]:
    """The child's argument list for a request that passed :func:`~autoprune.dashboard.request.parse_request`,
    and the extra attributes for its trial.

    Raises:
        RequestError: The request does not fit the study (no such completed trial, nothing exported to verify).
    """
    from optuna.trial import TrialState

    base = [sys.executable, "-m", "autoprune"]
    if req.action == "resume":
        argv = [*base, "search", "--study", name, "--storage", url, "--trials", str(req.trials)]
        if req.timeout_s is not None:
            argv += ["--timeout", f"{req.timeout_s:g}"]
        return [*argv, "--no-progress"], {}
    study_id = storage.get_study_id_from_name(name)
    trials = {t.number: t for t in storage.get_all_trials(study_id, deepcopy=False)}
    target = trials.get(req.trial)
    if target is None or target.state != TrialState.COMPLETE or "plan" not in target.user_attrs:
        done = [n for n, t in trials.items() if t.state == TrialState.COMPLETE]
        raise RequestError(f"trial {req.trial} is not a completed trial of {name!r} (completed: "
                           f"{', '.join(map(str, done[:15])) or 'none'}{' ...' if len(done) > 15 else ''})")
    if req.action == "export":
        return [*base, "export", "--study", name, "--storage", url, "--trial", str(req.trial),
                "--no-progress"], {"export_dir": str(export_dir(storage, cwd, name, req.trial))}
    out = export_dir(storage, cwd, name, req.trial)
    if not (out / "report.json").is_file():
        raise RequestError(f"trial {req.trial} of {name!r} has no export to verify ({out} has no "
                           "report.json); export it first")
    return [*base, "verify", str(out)], {"export_dir": str(out)}


def completed_trials(storage, name: str) -> int:
    """How many trials of study ``name`` are COMPLETE."""
    from optuna.trial import TrialState

    study_id = storage.get_study_id_from_name(name)
    return len(storage.get_all_trials(study_id, deepcopy=False, states=(TrialState.COMPLETE,)))


def check_not_held(storage, url: str, name: str) -> None:
    """Refuse a study that another process is searching.

    Raises:
        RequestError: Its SQLite lock is held, or it has RUNNING trials with a live heartbeat.
    """
    from optuna.trial import TrialState

    from autoprune.search.storage import single_worker_lock, sqlite_path

    if sqlite_path(url) is not None:
        try:
            with single_worker_lock(url, name):
                pass
        except StorageError as exc:
            raise RequestError(f"refused: {exc}") from None
        return
    study_id = storage.get_study_id_from_name(name)
    running = storage.get_all_trials(study_id, deepcopy=False, states=(TrialState.RUNNING,))
    stale = set(getattr(storage, "_get_stale_trial_ids", lambda _id: [])(study_id))
    live = [t.number for t in running if t._trial_id not in stale]
    if live:
        raise RequestError(f"refused: study {name!r} is being searched by another worker (trial(s) "
                           f"{', '.join(map(str, live[:5]))} RUNNING with a live heartbeat); stop that "
                           "worker or wait for it")


def request_log(cwd: str, name: str, number: int, action: str) -> Path:
    """The log file of control trial ``number``'s request (its folder is created)."""
    from autoprune.io import study_dir

    log_dir = (Path(cwd) / study_dir(name) / "dashboard").resolve()
    log_dir.mkdir(parents=True, exist_ok=True)
    return log_dir / f"request-{number}-{action}.log"


def spawn_child(argv: list[str], log: Path, cwd: str, shown: str) -> tuple[subprocess.Popen, float]:
    """Start a child in its own session, its output appended to ``log`` (after the line ``$ shown``).

    Returns:
        The process and its start time (``psutil``'s ``create_time``, to recognise it after a restart).
    """
    import psutil

    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with open(log, "ab") as fh:
        fh.write(f"$ {shown}\n".encode())
        fh.flush()
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=fh, stderr=subprocess.STDOUT,
                                cwd=cwd, env=env, start_new_session=True)
    return proc, psutil.Process(proc.pid).create_time()


def find_child(pid: Any, started: Any):
    """The still-running ``autoprune`` child with this pid and start time (a ``psutil.Process``), else ``None``."""
    import psutil

    if not (isinstance(pid, int) and isinstance(started, (int, float))):
        return None
    try:
        p = psutil.Process(pid)
        if abs(p.create_time() - started) < 1.0 and "autoprune" in " ".join(p.cmdline()):
            return p
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return None
    return None


def adopted_job(name: str, cid: int, t) -> tuple[Job, bool]:
    """The job of a request that a killed dashboard left RUNNING on control trial ``t``, and whether its
    child still runs (else its ``proc`` is a stand-in with the stored pid)."""
    pid, started = t.user_attrs.get("pid"), t.user_attrs.get("pid_started")
    attrs = {k: t.user_attrs.get(k) for k in FORM_KEYS if k in t.user_attrs}
    try:
        req = parse_request(attrs)
    except RequestError:
        req = Request("resume", trials=1)
    proc = find_child(pid, started)
    job = Job(name, cid, t._trial_id, t.number, req, Path(str(t.user_attrs.get("log", ""))),
              float(t.user_attrs.get("started_unix", time.time())), int(t.user_attrs.get("complete_before", 0)),
              proc if proc is not None else SimpleNamespace(pid=pid or -1), adopted=True,
              attrs=dict(t.user_attrs))
    return job, proc is not None


def is_trial_of(storage, study_id: int, trial_id: int) -> bool:
    """Whether trial ``trial_id`` belongs to study ``study_id`` (SQLite reuses the ids of deleted rows, so an id
    alone may name a trial of another study after a deletion)."""
    try:
        number = storage.get_trial(trial_id).number
        return storage.get_trial_id_from_study_id_trial_number(study_id, number) == trial_id
    except KeyError:
        return False


def job_trial_ok(storage, job: Job) -> bool:
    """Whether the job's control trial is still there: in its control study, carrying the running request."""
    try:
        t = storage.get_trial(job.trial_id)
    except KeyError:
        return False
    return (t.user_attrs.get(STATUS) == "running" and t.number == job.number
            and is_trial_of(storage, job.control_id, job.trial_id))


def rehome(storage, job: Job, cid: int) -> None:
    """Give a running job a new control trial in control study ``cid`` (its old one was deleted with its
    control study): a RUNNING trial with the request's attributes, so it can be watched and stopped again."""
    tid = storage.create_new_trial(cid)
    attrs = {**job.attrs, STATUS: "running",
             "recreated": "the control study was deleted while this request ran; this trial was re-created for it"}
    if job.stop_requested is not None:
        attrs["stop"] = "stop requested: SIGINT sent"
    for k, v in attrs.items():
        storage.set_trial_user_attr(tid, k, v)
    job.trial_id, job.control_id, job.number = tid, cid, storage.get_trial(tid).number
