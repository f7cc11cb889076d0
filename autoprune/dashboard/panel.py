"""What the control studies show: the control panel's note and front figure, the waiting trial's note,
and the notes and attributes that record a request's outcome (an export's report and artifacts included)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

from autoprune.dashboard.jobs import LOG_TAIL_CHARS, Job
from autoprune.dashboard.request import CONTROL_LINK_ATTR, MAX_TRIALS, STATUS, study_link

if TYPE_CHECKING:
    from autoprune.deploy.report import ExportReport


def set_trial_note(storage, cid: int, trial_id: int, body: str) -> None:
    """Replace the note of trial ``trial_id`` of the (control) study ``cid``."""
    from optuna_dashboard import save_note

    save_note(SimpleNamespace(storage=storage, study=SimpleNamespace(_study_id=cid), _trial_id=trial_id), body)


def append_note(storage, cid: int, trial_id: int, line: str) -> None:
    """Add a line to the note of trial ``trial_id`` of the (control) study ``cid``."""
    from optuna_dashboard import get_note

    handle = SimpleNamespace(storage=storage, study=SimpleNamespace(_study_id=cid), _trial_id=trial_id)
    set_trial_note(storage, cid, trial_id, get_note(handle).rstrip() + "\n" + line + "\n")


def restore_form(storage, job: Job) -> None:
    """Put the request's own values back in its form fields (a later submission may have overwritten them)."""
    try:
        cur = storage.get_trial(job.trial_id).user_attrs
        for k, v in job.request.form_values().items():
            if cur.get(k) != v:
                storage.set_trial_user_attr(job.trial_id, k, v)
    except Exception:  # noqa: BLE001 - finished elsewhere
        pass


def close_trial(storage, trial_id: int, state, attrs: dict[str, Any], value: float = 0.0) -> None:
    """Set ``attrs`` on a control trial and finish it in ``state`` (COMPLETE with the objective ``value``)."""
    from optuna.trial import TrialState

    for k, v in attrs.items():
        storage.set_trial_user_attr(trial_id, k, v)
    storage.set_trial_state_values(trial_id, state, [value] if state == TrialState.COMPLETE else None)


def control_panel_note(name: str, study, url: str, job: Job | None) -> str:
    """The control study's note: how to use the form, what is running, then the study's own note."""
    from autoprune.dashboard.note import build_study_note

    link = study.user_attrs.get(CONTROL_LINK_ATTR, "")
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
    return "\n".join(head) + "\n" + build_study_note(study, url, control_link=None).split("\n", 1)[1]


def waiting_note(name: str, study, url: str) -> str:
    """The note of the waiting form trial: what to do, and the study's Pareto front."""
    from autoprune.dashboard.note import build_study_note

    front = build_study_note(study, url).split("### Pareto front", 1)[1].split("\n### ", 1)[0]
    return (f"**Waiting for a request** on `{name}`: choose an action below, fill in what "
            f"it needs, press Submit. [The study's Pareto-front plot]({study_link(study._study_id)})"
            f" links each point to its trial.\n\n### Pareto front of `{name}`\n{front.rstrip()}\n")


def trial_attr(storage, trial_id: int, key: str) -> Any:
    """A user attribute of a trial (``""`` when it is missing or the trial cannot be read)."""
    try:
        return storage.get_trial(trial_id).user_attrs.get(key, "")
    except Exception:  # noqa: BLE001
        return ""


def outcome(storage, store, job: Job, tail: str, rc: int, done: int, command: Any, out: Any = None,
            ended_unseen: bool = False) -> tuple[bool, dict[str, Any], list[str]]:
    """How a child's end is recorded: whether it succeeded, its trial's attributes and its note's lines.

    An export's files are uploaded to the request's trial (see :func:`attach_export`).

    Args:
        storage: The storage.
        store: The artifact store.
        job: The request's job.
        tail: The end of its log.
        rc: Its exit status.
        done: The study's completed trials now.
        command: The command shown on its trial.
        out: An export's folder (``None``: not an export).
        ended_unseen: It ended while no dashboard ran.
    """
    req = job.request
    ok = rc == 0 or (rc == 130 and job.stop_requested is not None) or (req.action == "verify" and rc == 1)
    how = "ended while no dashboard ran; exit status read from its log" if ended_unseen else \
        ("adopted after a dashboard restart; exit status read from its log" if job.adopted else "")
    attrs: dict[str, Any] = {
        "exit_status": rc, "log_tail": tail[-LOG_TAIL_CHARS:], "finished_unix": time.time(),
        "seconds": round(time.time() - job.started, 1), STATUS: "done" if ok else "failed",
    }
    if how:
        attrs["exit_status_source"] = how
    if req.action == "resume":
        attrs["new_trials_complete"] = done - job.complete0
        attrs["progress"] = f"{done - job.complete0} of {req.trials} new trials complete"
    note = [f"## {req.describe()}", "", f"- command: `{command}`",
            f"- exit status: **{rc}**" + (f" ({how})" if how else "")
            + (" — stopped on request (the clean SIGINT stop)" if rc == 130 and job.stop_requested else ""),
            f"- time: {attrs['seconds']:.1f} s"]
    if req.action == "resume":
        note.append(f"- completed trials: {job.complete0} → {done} ({done - job.complete0} new)")
    if out is not None:
        arts, report_md = attach_export(storage, store, job, Path(str(out)))
        note += report_md
        if arts:
            attrs["artifacts"] = ", ".join(arts)
    note += ["", "Log tail:", "", "```", tail[-LOG_TAIL_CHARS:].rstrip() or "(empty)", "```"]
    return ok, attrs, note


def attach_export(storage, store, job: Job, out: Path) -> tuple[list[str], list[str]]:
    """Upload an export's files from ``out`` to the request's trial; Markdown lines of its report."""
    from optuna.artifacts import upload_artifact

    from autoprune.deploy.report import ExportReport
    from autoprune.errors import ConfigError

    report_path = out / "report.json"
    if not report_path.is_file() or report_path.stat().st_mtime < job.started - 1:
        return [], ["- no new export report was written"]
    frozen = storage.get_trial(job.trial_id)
    names = []
    for fname, mime in (("model.onnx", "application/octet-stream"), ("model_tvm.so", "application/octet-stream"),
                        ("report.json", "application/json"), ("latency_per_layer.png", "image/png")):
        path = out / fname
        if path.is_file():
            art = upload_artifact(artifact_store=store, file_path=str(path), study_or_trial=frozen,
                                  storage=storage, mimetype=mime)
            storage.set_trial_user_attr(job.trial_id, f"artifact:{fname}", art)
            names.append(fname)
    try:
        rep = ExportReport.from_dict(json.loads(report_path.read_text(encoding="utf-8")))
    except (OSError, ValueError, ConfigError):
        return names, ["- report.json could not be read"]
    return names, _report_lines(rep, out, names)


def _nan(value: float | None) -> float:
    """``value``, or NaN where the report lacks it (printed as ``nan``)."""
    return float("nan") if value is None else value


def _report_lines(rep: ExportReport, out: Path, names: list[str]) -> list[str]:
    """Markdown lines of an export's report, for the request's note."""
    p, test, tvm = rep.predicted, rep.test, rep.tvm
    lines = ["", f"### Export of trial {rep.trial} ({rep.plan_summary or ''})", "",
             "| | value |", "|---|---|",
             f"| test accuracy | {_nan(test.accuracy if test else None):.4f} (dense "
             f"{_nan(rep.dense_test_accuracy):.4f}) |",
             f"| latency on {rep.target} (predicted) | {_nan(p.latency_ms if p else None):.4g} ms, "
             f"{_nan(p.speedup if p else None):.2f}x vs dense |"]
    if rep.measured is not None:
        lines.append(f"| latency (measured, {rep.measured.runtime}) | {_nan(rep.measured.latency_ms):.4g} ms |")
    reason = tvm.reason if tvm is not None else None
    tvm_text = "built" if tvm is not None and tvm.built else f"not built: {(reason or '')[:120]}"
    lines += [f"| size | {(rep.size_bytes or 0) / 1e6:.3f} MB |",
              f"| TVM module | {tvm_text} |",
              f"| folder | `{out}` |", "", f"Artifacts on this trial: {', '.join(names)}."]
    return lines


def front_figure(study):
    """A plotly figure of a study's trials and Pareto front (accuracy vs predicted latency), or ``None``."""
    import plotly.graph_objects as go

    from autoprune.search.config import CONFIG_ATTR, SearchConfig
    from autoprune.search.report import front_rows

    config = SearchConfig.from_dict(study.user_attrs[CONFIG_ATTR])
    rows, front, _ = front_rows(study, config)
    if not rows:
        return None

    def trace(rs, name, **kw):
        return go.Scatter(x=[r.latency_ms for r in rs], y=[r.accuracy * 100 for r in rs], name=name,
                          text=[f"trial {r.number}" for r in rs], hovertemplate="%{text}<br>%{x:.4g} ms, "
                          "%{y:.2f} %<extra></extra>", **kw)

    fig = go.Figure([trace(rows, "all trials", mode="markers", marker={"color": "lightgray"}),
                     trace(front, "Pareto front", mode="lines+markers+text", textposition="top center")])
    fig.update_layout(title=f"Pareto front of {study.study_name} ({len(rows)} trials)",
                      xaxis_title=f"predicted latency on {config.target} (ms)", yaxis_title="accuracy (%)",
                      margin={"l": 50, "r": 20, "t": 50, "b": 45})
    return fig
