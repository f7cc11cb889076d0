"""What the dashboard's UI may change without ``--allow-edits``.

optuna-dashboard can delete, rename and create studies, finish (``tell``) a running trial, and write a
trial's user attributes, notes and artifacts. On an autoprune study those trials are the search's records
(the front, the plans, the exports): a told trial is a fake point on the front, and the search running it
crashes. :func:`edit_refusal` therefore refuses, unless ``--allow-edits`` is given:

* deleting, renaming or creating any study;
* any write that names an autoprune study or its control study, or a trial of one (``tell``, user
  attributes, trial notes, artifacts, skip, preferences, and a route a newer optuna-dashboard adds);
* a write route that names no study at all (a storage-wide change such as the RDB schema migration).

Left open: the study's own note (text a user writes above autoprune's marker is kept), the LLM helper
routes (they store nothing), every write on a plain (non-autoprune) study, and the control form, which
the controller answers itself. Every one of them still passes :class:`~autoprune.dashboard.guard.Guard`.
"""

from __future__ import annotations

from typing import Any

from autoprune.dashboard.request import CONTROL_OF_ATTR

STUDY_EDITS = {
    ("POST", "/api/studies"): "creating a study",
    ("DELETE", "/api/studies/<study_id:int>"): "deleting a study",
    ("POST", "/api/studies/<study_id:int>/rename"): "renaming a study",
}
#: Writes allowed on any study: the study note keeps the user's text above autoprune's marker.
FREE_ROUTES = frozenset({("PUT", "/api/studies/<study_id:int>/note")})
#: Route prefixes that store nothing (optuna-dashboard's LLM helpers).
FREE_PREFIXES = ("/api/llm/",)
_WHAT = (("/tell", "finishing a trial (tell)"), ("/user-attrs", "setting a trial's user attributes"),
         ("/note", "writing a trial's note"), ("/api/artifacts/", "changing an artifact"),
         ("/skip", "skipping a trial"), ("/preference", "changing preferences"))
EDITS_FLAG = "start `autoprune dashboard` with --allow-edits to allow it"


def match_route(app: Any, environ: dict[str, Any]) -> tuple[str, dict[str, Any]] | None:
    """``(rule, url arguments)`` of the bottle route a request goes to, ``None`` when none matches."""
    router = getattr(app, "router", None)
    if router is None:
        return None
    try:
        route, args = router.match({"PATH_INFO": environ.get("PATH_INFO", "/"),
                                    "REQUEST_METHOD": environ.get("REQUEST_METHOD", "GET")})
    except Exception:  # noqa: BLE001 - bottle's HTTPError 404/405: the app answers it itself
        return None
    return route.rule, dict(args)


def study_id_of_trial(storage, trial_id: int) -> int | None:
    """The id of the study that holds trial ``trial_id`` (``None``: no such trial)."""
    try:
        number = storage.get_trial(trial_id).number
    except KeyError:
        return None
    for s in storage.get_all_studies():
        try:
            if storage.get_trial_id_from_study_id_trial_number(s._study_id, number) == trial_id:
                return s._study_id
        except KeyError:
            continue
    return None


def autoprune_study_name(storage, study_id: int) -> str | None:
    """The name of study ``study_id`` if it is an autoprune study or a control study, else ``None``."""
    from autoprune.search.config import CONFIG_ATTR

    try:
        attrs = storage.get_study_user_attrs(study_id)
        if CONFIG_ATTR in attrs or CONTROL_OF_ATTR in attrs:
            return storage.get_study_name_from_id(study_id)
    except KeyError:
        return None
    return None


def _ids(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def edit_refusal(storage, method: str, rule: str, args: dict[str, Any]) -> str | None:
    """Why the write ``method rule`` (with its URL ``args``) needs ``--allow-edits``, or ``None`` if it may pass.

    Args:
        storage: The dashboard's storage (to tell autoprune studies from others).
        method: The HTTP method.
        rule: The bottle route's rule, e.g. ``/api/trials/<trial_id:int>/tell``.
        args: The route's URL arguments (``study_id``, ``trial_id``, ...).
    """
    key = (method.upper(), rule)
    if key in STUDY_EDITS:
        return f"refused: {STUDY_EDITS[key]} from the dashboard; {EDITS_FLAG}"
    if key in FREE_ROUTES or rule.startswith(FREE_PREFIXES):
        return None
    what = next((w for part, w in _WHAT if part in rule), f"{method.upper()} {rule}")
    study_ids = [_ids(args.get("study_id"))]
    trial_id = _ids(args.get("trial_id"))
    if trial_id is not None:
        study_ids.append(study_id_of_trial(storage, trial_id))
    study_ids = [s for s in study_ids if s is not None]
    if "study_id" not in args and "trial_id" not in args:
        return f"refused: {what} changes the storage outside any one study; {EDITS_FLAG}"
    for sid in study_ids:
        name = autoprune_study_name(storage, sid)
        if name is not None:
            return (f"refused: {what} on the autoprune study {name!r} (its trials are the search's records: the "
                    f"front, the plans, the exports); {EDITS_FLAG}")
    return None
