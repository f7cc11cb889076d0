"""What the controller does when a study, or its control study, is deleted under it.

Deleting a control study (with ``--allow-edits`` in the dashboard, or from another process) while its request
runs must not jam the controller: :class:`DeletionRecovery` re-creates the control study on the next poll and
gives the running request a new control trial (:func:`~autoprune.dashboard.jobs.rehome`), where it can be
watched and stopped as before. When the study itself is deleted, its child is stopped (SIGINT, escalated as
for ``stop``) and forgotten once it has ended. SQLite gives the ids of deleted rows out again, so a trial id is
only taken for a control trial after checking that it is one (:func:`~autoprune.dashboard.jobs.is_trial_of`).
"""

from __future__ import annotations

import signal
import threading
import time
from typing import Any

from autoprune.dashboard.jobs import Job, is_trial_of, job_trial_ok, rehome
from autoprune.dashboard.panel import set_trial_note


class DeletionRecovery:
    """The controller's part that survives deletions (mixed into :class:`~autoprune.dashboard.controller.Controller`,
    which provides ``storage``, ``jobs``, ``_lock``, ``_trial_to_study``, ``_controls``, ``_note_state``, ``say``,
    ``sync`` and ``_poll_one``)."""

    storage: Any
    jobs: dict[str, Job]
    _lock: threading.RLock
    _trial_to_study: dict[int, str]
    _controls: dict[str, int]
    _note_state: dict[str, tuple]

    def _control_of(self, trial_id: int) -> str | None:
        name = self._trial_to_study.get(trial_id)
        if name is not None and is_trial_of(self.storage, self._controls.get(name, -1), trial_id):
            return name
        return None

    def control_study_of_trial(self, trial_id: int) -> str | None:
        """The autoprune study whose control study holds ``trial_id`` (``None``: not a control trial)."""
        with self._lock:
            name = self._control_of(trial_id)
            if name is None:
                self.sync()
                name = self._control_of(trial_id)
            return name

    def poll(self) -> None:
        """Update the progress of running children; record the outcome of ended ones."""
        with self._lock:
            for name, job in list(self.jobs.items()):
                try:
                    if job_trial_ok(self.storage, job) or self._recover(job):
                        self._poll_one(name, job)
                except KeyError:  # the study or its control study was deleted just now
                    if name in {s.study_name for s in self.storage.get_all_studies()}:
                        raise
                    self._orphan(job)

    def _rehome(self, name: str, cid: int, job: Job) -> None:
        """The running request's control trial was deleted (with its control study): re-create it in ``cid``."""
        old = job.number
        rehome(self.storage, job, cid)
        self._trial_to_study[job.trial_id] = name
        self._note_state.pop(name, None)
        set_trial_note(self.storage, cid, job.trial_id, f"## {job.request.describe()}\n\nRunning: "
                       f"`{job.attrs.get('command', '')}` (pid {job.pid}); this trial was re-created after its "
                       f"control study was deleted.\n\nLog: `{job.log}`\n")
        self.say(f"{name!r}: the control study was deleted while control trial {old} ran its "
                 f"{job.request.describe()}; re-created it: the request is now control trial {job.number}")

    def _recover(self, job: Job) -> bool:
        """The job's control trial is gone: re-create it with its control study (``True``), or, when the
        study itself is gone, stop the child and forget it once it has ended (``False``)."""
        self.sync()
        if job_trial_ok(self.storage, job):
            return True
        self._orphan(job)
        return False

    def _orphan(self, job: Job) -> None:
        """A job whose study was deleted: SIGINT (escalated as for ``stop``), forgotten once it has ended."""
        name = job.study_name
        if job.stop_requested is None:
            job.stop_requested = time.monotonic()
            job.signal(signal.SIGINT)
            self.say(f"{name!r} is gone (deleted?); SIGINT sent to its running {job.request.describe()} "
                     f"(pid {job.pid})")
        job.escalate_stop()
        rc = job.poll()
        if rc is not None:
            self.jobs.pop(name, None)
            self.say(f"{name!r}: the {job.request.describe()} of the deleted study ended with exit status {rc}")
