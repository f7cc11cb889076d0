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

The channel's parts: :mod:`~autoprune.dashboard.request` (the form, its allow-list and validation),
:mod:`~autoprune.dashboard.jobs` (the children: argument lists, start, adoption, logs, exit status),
:mod:`~autoprune.dashboard.panel` (the notes, attributes and figure the control studies show) and
:mod:`~autoprune.dashboard.controller` (the :class:`Controller` that ties them together). This module
gathers their public names.
"""

from __future__ import annotations

from autoprune.dashboard.controller import Controller
from autoprune.dashboard.jobs import LOG_TAIL_CHARS, STOP_GRACE_S, Job, inferred_exit_status
from autoprune.dashboard.panel import front_figure
from autoprune.dashboard.request import (
    ACTIONS,
    CONTROL_LINK_ATTR,
    CONTROL_OF_ATTR,
    CONTROL_SUFFIX,
    FORM_KEYS,
    KEY_ACTION,
    KEY_TIMEOUT,
    KEY_TRIAL,
    KEY_TRIALS,
    MAX_TIMEOUT_S,
    MAX_TRIALS,
    STATUS,
    Request,
    RequestError,
    control_name,
    form_widgets,
    parse_request,
    study_link,
)

__all__ = [
    "ACTIONS", "CONTROL_LINK_ATTR", "CONTROL_OF_ATTR", "CONTROL_SUFFIX", "FORM_KEYS", "KEY_ACTION", "KEY_TIMEOUT",
    "KEY_TRIAL", "KEY_TRIALS", "LOG_TAIL_CHARS", "MAX_TIMEOUT_S", "MAX_TRIALS", "STATUS", "STOP_GRACE_S",
    "Controller", "Job", "Request", "RequestError", "control_name", "form_widgets", "front_figure",
    "inferred_exit_status", "parse_request", "study_link",
]
