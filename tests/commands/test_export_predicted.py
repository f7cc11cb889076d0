"""What ``autoprune export`` prints about its prediction: ``±X ms (basis)`` and, where the prediction lies outside
its calibration's range, why; a report written before bands still reads and prints without one."""

from __future__ import annotations

import json

from autoprune.commands.export import _predicted_line
from autoprune.deploy.report import ExportReport

BASIS = "80th percentile of |error| on 3 held-out plans, floor 3 %"
OUTSIDE = "0.12 ms is below the smallest latency calibrated (0.21 ms)"
OLD = {"latency_ms": 0.2, "energy_mj": 1.0, "dense_latency_ms": 1.0, "speedup": 5.0,
       "calibration": {"status": "measured", "calibration_id": "c1", "heldout_mape": 0.05, "n_heldout": 3}}


def _report(predicted: dict) -> ExportReport:
    return ExportReport.from_dict({"target": "local", "predicted": predicted})


def test_the_prediction_prints_its_band_basis_and_outside_line():
    new = {**OLD, "provenance": {"band_basis": BASIS}, "band_ms": 0.0123, "outside_range": OUTSIDE}
    r = _report(new)
    assert r.predicted.band_ms == 0.0123 and r.predicted.outside_range == OUTSIDE
    assert ExportReport.from_dict(json.loads(json.dumps(r.to_dict()))).predicted == r.predicted
    first, second = _predicted_line(r).split("\n")
    assert f"PREDICTED on local: 0.2 ms ±0.012 ms ({BASIS}) (5.00x vs dense 1 ms)" in first
    assert second == f"    outside the calibrated range, band widened: {OUTSIDE}"
    inside = _predicted_line(_report({**new, "outside_range": None}))
    assert "±0.012 ms" in inside and "\n" not in inside


def test_a_report_written_before_bands_reads_and_prints_without_one():
    r = _report(OLD)
    assert r.predicted.band_ms is None and r.predicted.outside_range is None
    line = _predicted_line(r)
    assert "±" not in line and "\n" not in line and "held-out MAPE 5% (n=3)" in line
