"""The Markdown note of an autoprune study, shown on its optuna-dashboard page.

:func:`update_study_note` rebuilds the part of the note that autoprune owns — the
configuration, the Pareto front (trial, accuracy, latency predicted with its uncertainty
band and measured where there is a measurement, speedup, size), the exports, and the CLI command
equivalent to each dashboard action — and saves it with ``optuna_dashboard.save_note``.
Text a user writes in the dashboard *above* the marker line is kept.
"""

from __future__ import annotations

import json
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from autoprune.deploy.report import ExportReport

#: Everything from this line down is rewritten; it renders as nothing in Markdown.
MARKER = "[//]: # (autoprune: the note below this line is rewritten by search, export and the dashboard)"
EXPORT_ATTR_PREFIX = "autoprune.export."


def split_user_text(body: str) -> str:
    """The part of a note that a user wrote (everything above :data:`MARKER`), stripped."""
    return body.split(MARKER, 1)[0].rstrip() if body else ""


@dataclass(frozen=True)
class StudyExport:
    """One export recorded on a study (``autoprune.export.<trial>``) and its report.

    Attributes:
        dir: The export folder, as recorded (``''`` if none was).
        report: Its ``report.json``, or ``None`` where it cannot be read (gone, not JSON, empty or corrupt).
    """

    dir: str
    report: ExportReport | None


def _read_report(folder: Path) -> ExportReport | None:
    """The report of the export in ``folder``, or ``None`` where it cannot be read."""
    from autoprune.deploy.report import ExportReport
    from autoprune.errors import ConfigError

    try:
        raw = json.loads((folder / "report.json").read_text(encoding="utf-8"))
        return ExportReport.from_dict(raw) if raw else None
    except (OSError, ValueError, ConfigError):
        return None


def exports_of(study) -> dict[int, StudyExport]:
    """``{trial number: export}`` of a study's exports, each with its report read from disk."""
    out: dict[int, StudyExport] = {}
    for key, value in study.user_attrs.items():
        if not key.startswith(EXPORT_ATTR_PREFIX) or not isinstance(value, dict):
            continue
        try:
            number = int(key[len(EXPORT_ATTR_PREFIX):])
        except ValueError:
            continue
        folder = str(value.get("dir", ""))
        out[number] = StudyExport(folder, _read_report(Path(folder)))
    return dict(sorted(out.items()))


def cli_commands(study_name: str, storage_url: str, export_dir: str = "results/{study}/export-N") -> dict[str, str]:
    """The terminal command equivalent to each dashboard action (storage URL redacted)."""
    from autoprune.search.storage import redact_url

    s, u = shlex.quote(study_name), shlex.quote(redact_url(storage_url))
    return {
        "resume N more trials": f"autoprune search --study {s} --storage {u} --trials N",
        "resume for a time budget": f"autoprune search --study {s} --storage {u} --trials 1000 --timeout SECONDS",
        "stop a running search": "Ctrl-C in its terminal, or `kill -INT PID` (the same clean stop)",
        "export trial N": f"autoprune export --study {s} --storage {u} --trial N",
        "verify an export": f"autoprune verify {shlex.quote(export_dir.format(study=study_name))}",
        "watch and drive it here": f"autoprune dashboard --study {s} --storage {u}",
    }


def _fmt(value: Any, spec: str = ".4g", unit: str = "") -> str:
    if value is None:
        return "–"
    try:
        return f"{float(value):{spec}}{unit}"
    except (TypeError, ValueError):
        return str(value)


def build_study_note(study, storage_url: str, *, control_link: str | None = None) -> str:
    """The generated Markdown of an autoprune study's note (without the user's part).

    Args:
        study: The autoprune study (it must hold its stored configuration).
        storage_url: Its storage URL (shown redacted).
        control_link: Dashboard path of the study's control form, if a dashboard drives it.
    """
    from optuna.trial import TrialState

    from autoprune.search.config import CONFIG_ATTR, SearchConfig
    from autoprune.search.report import front_rows, plan_summary
    from autoprune.search.storage import redact_url

    config = SearchConfig.from_dict(study.user_attrs[CONFIG_ATTR])
    trials = study.get_trials(deepcopy=False)
    counts = {s: sum(t.state == s for t in trials) for s in (TrialState.COMPLETE, TrialState.FAIL,
                                                                 TrialState.RUNNING)}
    _, front, dense = front_rows(study, config)
    exports = exports_of(study)
    lines = [MARKER, f"## autoprune study `{study.study_name}`", ""]
    if control_link:
        lines += [f"**Drive it from here:** [control form]({control_link}) — resume, stop, export, verify.", ""]
    lines += [f"{counts[TrialState.COMPLETE]} of {config.trials} trials complete, {counts[TrialState.FAIL]} failed, "
              f"{counts[TrialState.RUNNING]} running; storage `{redact_url(storage_url)}`.", "",
              "### Configuration", "", "| setting | value |", "|---|---|"]
    for key, value in config.to_dict().items():
        if key != "version" and value is not None:
            shown = ", ".join(value) if isinstance(value, (list, tuple)) else value
            lines.append(f"| {key} | `{shown}` |")
    base = dense.latency_ms if dense else None
    lines += ["", "### Pareto front", ""]
    if not front:
        lines.append("No feasible completed trial yet.")
    else:
        lines += ["| trial | accuracy | latency ms (predicted) | ± ms | latency ms (measured) | speedup | size MB | "
                  "plan |", "|---:|---:|---:|---:|---:|---:|---:|---|"]
        for r in front:
            measured = r.measured_latency_ms
            rep = exports[r.number].report if r.number in exports else None
            if measured is None and rep is not None and rep.measured is not None:
                measured = rep.measured.latency_ms
            speed = f"{base / r.latency_ms:.2f}x" if base and r.latency_ms else "–"
            mark = " (dense)" if r.is_dense else ""
            outside = r.latency_band_ms is not None and r.latency_outside_range
            band = _fmt(r.latency_band_ms, '.2g') + ("\\*" if outside else "")
            lines.append(f"| {r.number}{mark} | {_fmt(r.accuracy, '.4f')} | {_fmt(r.latency_ms, '.4g')} | {band} | "
                         f"{_fmt(measured, '.4g')} | {speed} | {_fmt(r.size_mb, '.3f')} | "
                         f"{plan_summary(r.plan)} |")
        lines += ["", "Predicted latency comes from the target's cost model, ± its uncertainty band (from the "
                  "calibration's error; – where it has none); *measured* is filled in where a trial or its export "
                  "was measured."]
        basis = front[0].latency_provenance.get("band_basis")
        if basis:
            lines.append(f"Band: {basis}.")
        widened = [f"- trial {r.number} (\\*): {r.latency_outside_range}, so its band is widened" for r in front
                   if r.latency_band_ms is not None and r.latency_outside_range]
        lines += ["", *widened] if widened else []
    if exports:
        lines += ["", "### Exports", "", "| trial | test accuracy | latency ms (predicted) | ± ms | "
                  "latency ms (measured) | TVM module | folder |", "|---:|---:|---:|---:|---:|---|---|"]
        for number, rec in exports.items():
            lines.append(_export_row(number, rec))
    lines += ["", "### The same from a terminal", "", "| action | command |", "|---|---|"]
    for what, cmd in cli_commands(study.study_name, storage_url).items():
        lines.append(f"| {what} | {cmd if cmd.startswith('Ctrl') else f'`{cmd}`'} |")
    return "\n".join(lines) + "\n"


def _export_row(number: int, export: StudyExport) -> str:
    """The export's line of the "Exports" table (``–`` for what its report lacks)."""
    rep = export.report
    test = rep.test.accuracy if rep is not None and rep.test is not None else None
    pred = rep.predicted.latency_ms if rep is not None and rep.predicted is not None else None
    band = rep.predicted.band_ms if rep is not None and rep.predicted is not None else None
    meas = rep.measured.latency_ms if rep is not None and rep.measured is not None else None
    tvm_s = "–" if rep is None else ("built" if rep.tvm is not None and rep.tvm.built else "not built")
    return (f"| {number} | {_fmt(test, '.4f')} | {_fmt(pred, '.4g')} | {_fmt(band, '.2g')} | {_fmt(meas, '.4g')} | "
            f"{tvm_s} | `{export.dir}` |")


def update_study_note(study, storage_url: str, *, control_link: str | None = None) -> str:
    """Rebuild and save an autoprune study's Markdown note, keeping what a user wrote above :data:`MARKER`.

    Call it after anything that changes the front or the exports (``autoprune search``
    after its trials, ``autoprune export`` after recording the export). A study without
    a stored autoprune configuration is left alone.

    Args:
        study: An ``optuna.Study``.
        storage_url: Its storage URL (only shown redacted).
        control_link: Dashboard path of the control form (the dashboard passes it); if ``None``,
            a link already in the note is kept.

    Returns:
        The saved note ('' if the study is not an autoprune study).
    """
    from optuna_dashboard import get_note, save_note

    from autoprune.search.config import CONFIG_ATTR

    if CONFIG_ATTR not in study.user_attrs:
        return ""
    old = get_note(study)
    if control_link is None:
        control_link = study.user_attrs.get("autoprune.control_link")
    body = build_study_note(study, storage_url, control_link=control_link)
    user = split_user_text(old)
    new = f"{user}\n\n{body}" if user else body
    if new != old:
        save_note(study, new)
    return new
