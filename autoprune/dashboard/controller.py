"""The controller: one per dashboard process, it keeps a control study beside each autoprune study and
carries out the requests submitted on it (see :mod:`autoprune.dashboard.control` for the whole channel)."""

from __future__ import annotations

import os
import signal
import threading
import time
from typing import Any

from autoprune.dashboard.jobs import (
    STOP_GRACE_S,
    Job,
    adopted_job,
    check_not_held,
    child_argv,
    completed_trials,
    export_dir,
    inferred_exit_status,
    job_trial_ok,
    log_tail,
    request_log,
    spawn_child,
)
from autoprune.dashboard.panel import (
    append_note,
    close_trial,
    control_panel_note,
    front_figure,
    outcome,
    restore_form,
    set_trial_note,
    trial_attr,
    waiting_note,
)
from autoprune.dashboard.recovery import DeletionRecovery
from autoprune.dashboard.request import (
    CONTROL_LINK_ATTR,
    CONTROL_OF_ATTR,
    FORM_KEYS,
    KEY_ACTION,
    STATUS,
    Request,
    RequestError,
    control_name,
    form_widgets,
    parse_request,
    study_link,
)
from autoprune.errors import AutopruneError


class Controller(DeletionRecovery):
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
        from autoprune.search.config import CONFIG_ATTR

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
                except (AutopruneError, KeyError) as exc:  # KeyError: deleted while this ran
                    self.say(f"study {s.study_name!r}: {exc}")

    def _sync_one(self, frozen, ctrl) -> None:
        import optuna
        from optuna_dashboard import register_user_attr_form_widgets

        name = frozen.study_name
        if ctrl is None:
            # (re-)created: forget the trial ids of a deleted control study (SQLite gives them out again)
            self._trial_to_study = {k: v for k, v in self._trial_to_study.items() if v != name}
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
        job = self.jobs.get(name)
        if job is not None and not job_trial_ok(self.storage, job):
            self._rehome(name, cid, job)
        trials = self.storage.get_all_trials(cid, deepcopy=False)
        for t in trials:
            self._trial_to_study[t._trial_id] = name
        from optuna.trial import TrialState

        running = [t for t in trials if t.state == TrialState.RUNNING]
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
                close_trial(self.storage, t._trial_id, TrialState.FAIL,
                            {STATUS: "abandoned", "reason": "not a form trial"})
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
    def submit(self, trial_id: int, attrs: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        """Handle a form posted to a control trial: ``(HTTP status, body)``.

        Acceptance is ``(200, {"accepted": ...})`` — a JSON body, because optuna-dashboard's UI parses
        the answer as JSON (its own route answers 204 with no body, which its UI reports as a failure).
        A refusal is ``(400, {"reason": ...})`` and changes nothing.
        """
        with self._lock:
            try:
                return self._submit(trial_id, attrs)
            except KeyError:  # the control study was deleted under the request
                return 409, {"reason": "the control study changed while this request was handled (was it "
                             "deleted?); reload the page and use the waiting trial's form"}

    def _submit(self, trial_id: int, attrs: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        from optuna.trial import TrialState

        name = self._control_of(trial_id)
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
                restore_form(self.storage, job)
                append_note(self.storage, cid, t._trial_id, f"- refused a request sent on this trial's form: {exc}")
            else:
                close_trial(self.storage, t._trial_id, TrialState.FAIL, {STATUS: "refused", "reason": str(exc)})
                set_trial_note(self.storage, cid, t._trial_id, f"## Refused\n\n{exc}\n")

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
                restore_form(self.storage, job)
                append_note(self.storage, cid, t._trial_id, "- stop requested from this trial's form (SIGINT sent)")
            else:
                for k, v in req.form_values().items():
                    self.storage.set_trial_user_attr(t._trial_id, k, v)
                close_trial(self.storage, t._trial_id, TrialState.COMPLETE,
                            {STATUS: "done", "result": f"SIGINT sent to control trial {job.number}'s "
                             f"{job.request.action} (pid {job.pid})"}, value=0.0)
                self._ensure_waiting(name, cid)
            return
        if job is not None:
            raise RequestError(f"one request per study at a time: control trial {job.number} "
                               f"({job.request.describe()}) is still running; wait for it, or stop it first")
        if t.user_attrs.get(STATUS) != "waiting":
            raise RequestError(f"control trial {t.number} already carries a request; use the waiting trial")
        check_not_held(self.storage, self.url, name)
        argv, extra = child_argv(self.storage, self.url, self.cwd, name, req)
        self._start(name, cid, t, req, argv, extra)

    def _start(self, name: str, cid: int, t, req: Request, argv: list[str], extra: dict[str, Any]) -> None:
        from autoprune.search.storage import redact_text

        log = request_log(self.cwd, name, t.number, req.action)
        complete0 = completed_trials(self.storage, name)
        shown = " ".join(["autoprune", *argv[3:]])
        attrs = {**req.form_values(), STATUS: "running", "request": req.describe(),
                 "command": redact_text(shown, self.url), "log": str(log), "complete_before": complete0, **extra}
        for k, v in attrs.items():
            self.storage.set_trial_user_attr(t._trial_id, k, v)
        proc, started = spawn_child(argv, log, self.cwd, redact_text(shown, self.url))
        more = {"pid": proc.pid, "pid_started": started, "started_unix": time.time()}
        for k, v in more.items():
            self.storage.set_trial_user_attr(t._trial_id, k, v)
        self.jobs[name] = Job(name, cid, t._trial_id, t.number, req, log, time.time(), complete0, proc,
                              attrs={**attrs, **more})
        self.say(f"{name!r}: control trial {t.number}: {req.describe()} started (pid {proc.pid}; log {log})")
        set_trial_note(self.storage, cid, t._trial_id,
                       f"## {req.describe()}\n\nRunning: `{attrs['command']}` (pid {proc.pid}).\n\nLog: `{log}`\n")
        self._ensure_waiting(name, cid)

    def _adopt(self, name: str, cid: int, t) -> None:
        """A request left running by a dashboard that was killed: adopt its child, or record its end."""
        job, alive = adopted_job(name, cid, t)
        pid, req = t.user_attrs.get("pid"), job.request
        self.jobs[name] = job
        if alive:
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
                try:
                    if job_trial_ok(self.storage, job):  # else deleted: the next poll re-creates it
                        self.storage.set_trial_user_attr(job.trial_id, "stop", f"{why}: SIGINT sent")
                except KeyError:
                    pass
                self.say(f"{name!r}: {why}; SIGINT sent to pid {job.pid}")
            return True

    def _poll_one(self, name: str, job: Job) -> None:
        rc = job.poll()
        if rc is not None:
            self._finish(job, rc=rc)
            return
        job.escalate_stop()
        try:
            done = completed_trials(self.storage, name)
        except Exception:  # noqa: BLE001 - a busy database: try again next time
            return
        if done != job.last_complete:
            job.last_complete = done
            self.storage.set_trial_user_attr(job.trial_id, "progress", job.progress(done))
            self._refresh_notes(name)

    def _finish(self, job: Job, rc: int | None = None, ended_unseen: bool = False) -> None:
        """Record a child's outcome on its trial, attach an export's files, close the trial."""
        from optuna.trial import TrialState

        tail = log_tail(job.log)
        if rc is None:
            rc = inferred_exit_status(tail)
        done = completed_trials(self.storage, job.study_name)
        out = None
        if job.request.action == "export":
            out = trial_attr(self.storage, job.trial_id, "export_dir") or \
                export_dir(self.storage, self.cwd, job.study_name, job.request.trial)
        ok, attrs, note = outcome(self.storage, self.store, job, tail, rc, done,
                                  trial_attr(self.storage, job.trial_id, "command"), out, ended_unseen)
        # The note is written before the trial closes: whoever sees the request finished reads its outcome.
        set_trial_note(self.storage, job.control_id, job.trial_id, "\n".join(note) + "\n")
        try:
            for k, v in attrs.items():
                self.storage.set_trial_user_attr(job.trial_id, k, v)
            restore_form(self.storage, job)
            state = TrialState.COMPLETE if ok else TrialState.FAIL
            close_trial(self.storage, job.trial_id, state, {}, value=float(rc))
        except Exception as exc:  # noqa: BLE001 - e.g. the trial was marked finished in the dashboard
            note.append(f"\n(could not update the trial: {type(exc).__name__})")
            set_trial_note(self.storage, job.control_id, job.trial_id, "\n".join(note) + "\n")
        self.jobs.pop(job.study_name, None)
        self.say(f"{job.study_name!r}: control trial {job.number}: {job.request.describe()} ended with exit "
                 f"status {rc}")
        self._ensure_waiting(job.study_name, job.control_id)
        self._refresh_notes(job.study_name, force=True)

    # -- notes -----------------------------------------------------------------------------------------
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

        ctrl = optuna.load_study(study_name=control_name(name), storage=self.storage)
        save_note(ctrl, control_panel_note(name, study, self.url, self.jobs.get(name)))
        tid, _ = self._ensure_waiting(name, cid)
        set_trial_note(self.storage, cid, tid, waiting_note(name, study, self.url))
        fig = front_figure(study)
        if fig is not None:
            save_plotly_graph_object(ctrl, fig, graph_object_id="front")

    # -- the loop --------------------------------------------------------------------------------------
    def start(self, poll_s: float = 1.0, sync_every: int = 5) -> None:
        """Sync now, then poll children (and sync studies every ``sync_every`` polls) in a thread."""
        self.sync()

        def loop() -> None:
            i, last, said = 0, "", 0.0
            while not self._stop.wait(poll_s):
                i += 1
                try:
                    self.poll()
                    if i % sync_every == 0:
                        self.sync()
                except Exception as exc:  # noqa: BLE001 - keep serving; say what went wrong (once a minute)
                    line = f"controller: {type(exc).__name__}: {str(exc)[:300]}"
                    if line != last or time.monotonic() - said > 60:
                        self.say(line)
                        last, said = line, time.monotonic()

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
