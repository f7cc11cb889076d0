"""The Pareto front of a study: terminal table, CSV/JSON, a PNG and an interactive HTML plot."""

from __future__ import annotations

import csv
import io
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np

from autoprune.io import atomic_write_bytes, atomic_write_text, study_dir, write_json
from autoprune.records import TrialRecord
from autoprune.search.config import OBJECTIVES, SearchConfig, objective_values
from autoprune.search.pareto import hypervolume, pareto_mask, reference_point
from autoprune.search.study import completed_rows


@dataclass(frozen=True)
class FrontPoint:
    """One row of ``pareto.csv`` / ``pareto.json``'s front: a front trial's figures (latency and energy
    PREDICTED, ``latency_band_ms`` the half-width of the latency's uncertainty band, ``None`` for a trial
    from before bands or a prior; ``measured_latency_ms`` MEASURED where it was), ``speedup`` over the
    dense anchor's predicted latency, and the plan in short."""

    trial: int
    accuracy: float
    latency_ms: float
    latency_band_ms: float | None
    speedup: float | None
    energy_mj: float
    size_mb: float
    params: int
    macs: float
    measured_latency_ms: float | None
    plan: str

    @classmethod
    def of(cls, row: TrialRecord, dense_latency_ms: float | None) -> FrontPoint:
        """The front point of ``row``."""
        return cls(trial=row.number, accuracy=row.accuracy, latency_ms=row.latency_ms,
                   latency_band_ms=row.latency_band_ms,
                   speedup=(dense_latency_ms / row.latency_ms) if dense_latency_ms else None,
                   energy_mj=row.energy_mj, size_mb=row.size_mb, params=row.params, macs=row.macs,
                   measured_latency_ms=row.measured_latency_ms, plan=plan_summary(row.plan))


#: Study attribute ``<prefix><trial>``: a front trial's figures timed here by ``autoprune pareto --measure``
#: (:class:`~autoprune.deploy.front_measure.FrontMeasurement`; on the study, as a finished trial's own
#: attributes cannot change).
FRONT_MEASURED_PREFIX = "autoprune.front_measured."


def front_measured_key(trial: int) -> str:
    """The study attribute that holds trial ``trial``'s ``front_measured`` figures."""
    return f"{FRONT_MEASURED_PREFIX}{trial}"


def stored_front_measured(study) -> dict[int, dict[str, Any]]:
    """Trial number → its stored ``front_measured`` figures (none for a study never measured)."""
    out: dict[int, dict[str, Any]] = {}
    for key, value in study.user_attrs.items():
        if key.startswith(FRONT_MEASURED_PREFIX) and isinstance(value, dict):
            number = key[len(FRONT_MEASURED_PREFIX):]
            if number.isdigit():
                out[int(number)] = value
    return out


#: The columns of ``pareto.csv``.
COLUMNS = tuple(f.name for f in fields(FrontPoint))


def plan_summary(plan: dict[str, Any]) -> str:
    """A short description of a plan: structure counts and mean ratio, criterion."""
    counts: dict[str, int] = {}
    ratios = []
    crit = set()
    for gp in plan.get("groups", []):
        counts[gp["structure"]] = counts.get(gp["structure"], 0) + 1
        if gp["structure"] != "keep":
            ratios.append(gp["ratio"])
            crit.add(gp.get("criterion", ""))
    if not ratios and plan.get("settings", {}).get("allocation") != "global":
        return "dense"
    parts = [f"{k}x{v}" for k, v in sorted(counts.items())]
    s = plan.get("settings", {})
    if s.get("allocation") == "global":
        parts.append(f"global {s.get('global_ratio', 0):.2f}")
    elif ratios:
        parts.append(f"mean ratio {np.mean(ratios):.2f}")
    if crit:
        parts.append("/".join(sorted(crit)))
    return ", ".join(parts)


def front_rows(study, config: SearchConfig) -> tuple[list[TrialRecord], list[TrialRecord], TrialRecord | None]:
    """Return ``(all rows, front rows sorted by latency, dense row)`` for a study.

    The front is the non-dominated set of COMPLETE, feasible trials (the same set as
    Optuna's ``study.best_trials``), computed by :func:`~autoprune.search.pareto.pareto_mask`.
    """
    rows = completed_rows(study)
    dense = next((r for r in rows if r.is_dense), None)
    feasible = [r for r in rows if r.feasible]
    if not feasible:
        return rows, [], dense
    vals = np.array([objective_values(config, r) for r in feasible])
    mask = pareto_mask(vals, config.directions)
    front = [r for r, m in zip(feasible, mask) if m]
    front.sort(key=lambda r: (r.latency_ms, -r.accuracy))
    return rows, front, dense


def band_text(row: TrialRecord) -> str:
    """The ``± ms`` cell of a row: its latency band's half-width (``*`` where the prediction lies outside
    its calibration's range), ``-`` for a trial without a band (a prior, or a study from before bands)."""
    if row.latency_band_ms is None:
        return "-"
    return f"{row.latency_band_ms:.2g}{'*' if row.latency_outside_range else ''}"


def _now_text(measured: dict[int, dict[str, Any]], number: int | None) -> str:
    """The ``now ms`` cell: the trial's latency timed by ``pareto --measure``, ``-`` where never timed."""
    ms = measured.get(number, {}).get("pruned_ms") if number is not None else None
    return f"{ms:.3f}" if isinstance(ms, (int, float)) else "-"


def table(front: list[TrialRecord], dense: TrialRecord | None,
          measured: dict[int, dict[str, Any]] | None = None) -> str:
    """A fixed-width terminal table of the front; ``± ms`` is each predicted latency's uncertainty band
    (a footnote says where a prediction lies outside its calibration's range); ``now ms`` the latency
    timed here by ``pareto --measure`` (``measured``: :func:`stored_front_measured`), ``-`` where not."""
    measured = measured or {}
    base = dense.latency_ms if dense else None
    head = f"{'trial':>5}  {'acc':>6}  {'latency ms':>10}  {'± ms':>6}  {'speedup':>7}  {'energy mJ':>9}  " \
           f"{'size MB':>7}  {'MACs M':>7}  {'meas. ms':>8}  {'now ms':>8}  plan"
    lines = [head, "-" * len(head)]
    for r in front:
        sp = f"{base / r.latency_ms:.2f}x" if base else "-"
        meas = f"{r.measured_latency_ms:.3f}" if r.measured_latency_ms else "-"
        mark = " (dense)" if r.is_dense else ""
        lines.append(f"{r.number:>5}  {r.accuracy:>6.4f}  {r.latency_ms:>10.3f}  {band_text(r):>6}  {sp:>7}  "
                     f"{r.energy_mj:>9.3f}  {r.size_mb:>7.3f}  {r.macs / 1e6:>7.2f}  {meas:>8}  "
                     f"{_now_text(measured, r.number):>8}  "
                     f"{plan_summary(r.plan)}{mark}")
    outside = next((r for r in front if r.latency_band_ms is not None and r.latency_outside_range), None)
    if outside is not None:
        lines.append(f"* outside the calibrated range, band widened (trial {outside.number}: "
                     f"{outside.latency_outside_range})")
    return "\n".join(lines)


def provenance_line(rows: list[TrialRecord]) -> str:
    """Say where the latency figures come from (predicted, from which calibration)."""
    if not rows:
        return ""
    p = rows[0].latency_provenance
    bits = [f"latency and energy are PREDICTED by the {p.get('model', 'cost')} model"]
    for key in ("calibration", "status", "runtime", "error"):
        if p.get(key) not in (None, ""):
            bits.append(f"{key}: {p[key]}")
    if p.get("band_basis"):
        bits.append(f"'± ms' band: {p['band_basis']}")
    measured = [r for r in rows if r.measured_latency_ms]
    if measured:
        bits.append(f"'meas. ms' is MEASURED with {measured[0].measured_runtime}")
    return "; ".join(str(b) for b in bits)


def write_front(study, config: SearchConfig, out_dir: Path | None = None) -> dict[str, Any]:
    """Write ``pareto.csv``, ``pareto.json``, ``pareto.png`` and ``pareto.html`` and return a summary.

    Raises:
        ConfigError: If the study's name cannot be a folder under ``results/`` (and no ``out_dir`` is given).
    """
    out_dir = Path(out_dir or study_dir(study.study_name))
    rows, front, dense = front_rows(study, config)
    measured = stored_front_measured(study)
    base = dense.latency_ms if dense else None
    records = [asdict(FrontPoint.of(r, base)) for r in front]
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=COLUMNS)
    w.writeheader()
    w.writerows(records)
    atomic_write_text(out_dir / "pareto.csv", buf.getvalue())
    hv = None
    if rows:
        vals = np.array([objective_values(config, r) for r in rows])
        ref = reference_point(vals, config.directions)
        hv = hypervolume(vals, ref, config.directions)
    summary = {
        "study": study.study_name, "config": config.to_dict(), "objectives": list(config.objectives),
        "directions": config.directions, "completed_trials": len(rows), "front": records,
        "front_plans": {str(r.number): r.plan for r in front},
        "dense": dict(trial=dense.number, accuracy=dense.accuracy, latency_ms=dense.latency_ms) if dense else None,
        "hypervolume": hv, "provenance": provenance_line(rows),
        "front_measured": {str(r.number): measured[r.number] for r in front if r.number in measured},
    }
    write_json(out_dir / "pareto.json", summary)
    if rows:
        _plot_png(rows, front, dense, config, out_dir / "pareto.png")
        _plot_html(rows, front, dense, out_dir / "pareto.html")
    return {"rows": rows, "front": front, "dense": dense, "dir": out_dir, "hypervolume": hv}


def _plot_png(rows, front, dense, config, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    ax.scatter([r.latency_ms for r in rows], [r.accuracy * 100 for r in rows], s=18, c="0.7",
               label="all trials")
    ax.plot([r.latency_ms for r in front], [r.accuracy * 100 for r in front], "o-", c="C0",
            label="Pareto front")
    if dense:
        ax.scatter([dense.latency_ms], [dense.accuracy * 100], marker="*", s=220, c="C3",
                   label="dense", zorder=5)
    tgt = config.target
    ax.set_xlabel(f"predicted latency on {tgt} (ms)")
    ax.set_ylabel("validation accuracy (%)")
    ax.set_title(f"accuracy vs latency, {config.model} on {config.data}, target {tgt}")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png")
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())


def _plot_html(rows, front, dense, path: Path) -> None:
    import plotly.graph_objects as go

    def trace(rs, name, **kw):
        return go.Scatter(
            x=[r.latency_ms for r in rs], y=[r.accuracy * 100 for r in rs], name=name,
            text=[f"trial {r.number}: {plan_summary(r.plan)}" for r in rs], **kw)

    fig = go.Figure([trace(rows, "all trials", mode="markers", marker={"color": "lightgray"}),
                     trace(front, "Pareto front", mode="lines+markers")])
    if dense:
        fig.add_trace(trace([dense], "dense", mode="markers", marker={"symbol": "star", "size": 16}))
    fig.update_layout(xaxis_title="predicted latency (ms)", yaxis_title="validation accuracy (%)")
    atomic_write_text(path, fig.to_html(include_plotlyjs=True, full_html=True))


__all__ = ["COLUMNS", "FRONT_MEASURED_PREFIX", "OBJECTIVES", "FrontPoint", "band_text", "front_measured_key",
           "front_rows", "plan_summary", "stored_front_measured", "table", "write_front"]
