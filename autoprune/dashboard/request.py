"""The control form and its validation: what a request may ask for, checked against an allow-list.

A request arrives as the user attributes of a control trial (see :mod:`autoprune.dashboard.control`);
:func:`parse_request` turns them into a :class:`Request` or refuses them with a :class:`RequestError`
whose message the dashboard shows.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

from autoprune.errors import AutopruneError

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
