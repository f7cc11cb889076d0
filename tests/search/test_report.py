"""The front table shows each predicted latency's uncertainty band (``± ms``), ``-`` for a trial stored
before bands, and says where a prediction lies outside its calibration's range."""

from __future__ import annotations

from autoprune.records import TrialRecord
from autoprune.search.report import FrontPoint, provenance_line, table

BASIS = "80th percentile of |error| on 3 held-out plans, floor 3 %"
OUTSIDE = "0.12 ms is below the smallest latency calibrated (0.21 ms)"


def _rows() -> tuple[TrialRecord, TrialRecord, TrialRecord]:
    prov = {"status": "measured", "band_basis": BASIS}
    dense = TrialRecord(accuracy=0.97, latency_ms=0.4, latency_band_ms=0.021, latency_provenance=prov, number=0,
                        anchor="dense")
    thin = TrialRecord(accuracy=0.9, latency_ms=0.12, latency_band_ms=0.0123, latency_outside_range=OUTSIDE,
                       latency_provenance=prov, number=3)
    # a trial stored before bands: its user attributes have no band keys
    old_attrs = {k: v for k, v in TrialRecord(accuracy=0.95, latency_ms=0.266, number=5).to_dict().items()
                 if not k.startswith("latency_band") and k != "latency_outside_range"}
    old = TrialRecord.from_dict(old_attrs, number=5)
    return dense, thin, old


def test_the_table_shows_the_band_a_dash_without_one_and_flags_a_prediction_outside_the_range():
    dense, thin, old = _rows()
    assert old.latency_band_ms is None and old.latency_outside_range is None
    lines = table([thin, old, dense], dense).splitlines()
    assert "± ms" in lines[0]
    cells = {ln.split()[0]: ln.split() for ln in lines[2:5]}
    assert cells["0"][3] == "0.021" and cells["3"][3] == "0.012*" and cells["5"][3] == "-"
    assert lines[-1] == f"* outside the calibrated range, band widened (trial 3: {OUTSIDE})"
    assert len(table([old, dense], dense).splitlines()) == 4  # no footnote where nothing lies outside


def test_the_front_files_and_the_provenance_line_carry_the_band():
    dense, thin, old = _rows()
    assert FrontPoint.of(thin, dense.latency_ms).latency_band_ms == 0.0123
    assert FrontPoint.of(old, dense.latency_ms).latency_band_ms is None
    assert f"'± ms' band: {BASIS}" in provenance_line([dense, thin])
    assert "band" not in provenance_line([old])
