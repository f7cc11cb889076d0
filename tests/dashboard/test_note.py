"""The study note's front table shows each predicted latency's band (``± ms``) and the outside-range line."""

from __future__ import annotations

import optuna

from autoprune.dashboard.note import build_study_note
from autoprune.records import TrialRecord
from autoprune.search.config import CONFIG_ATTR, SearchConfig

OUTSIDE = "0.12 ms is below the smallest latency calibrated (0.21 ms)"


def test_the_note_shows_the_band_its_basis_and_why_a_band_is_widened():
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(directions=["maximize", "minimize"], study_name="band")
    study.set_user_attr(CONFIG_ATTR, SearchConfig(trials=3).to_dict())
    prov = {"status": "measured", "band_basis": "80th percentile of |error| on 3 held-out plans, floor 3 %"}
    records = [TrialRecord(accuracy=0.97, latency_ms=0.4, latency_band_ms=0.021, latency_provenance=prov,
                           anchor="dense"),
               TrialRecord(accuracy=0.9, latency_ms=0.12, latency_band_ms=0.0123, latency_outside_range=OUTSIDE,
                           latency_provenance=prov),
               TrialRecord(accuracy=0.95, latency_ms=0.266)]  # no band (a prior, or stored before bands)
    for r in records:
        study.add_trial(optuna.trial.create_trial(values=[r.accuracy, r.latency_ms], user_attrs=r.to_dict()))
    body = build_study_note(study, "sqlite:///band.db")
    assert "| trial | accuracy | latency ms (predicted) | ± ms | latency ms (measured) |" in body
    assert "| 0 (dense) | 0.9700 | 0.4 | 0.021 | – |" in body
    assert "| 1 | 0.9000 | 0.12 | 0.012\\* | – |" in body
    assert "| 2 | 0.9500 | 0.266 | – | – |" in body
    assert "Band: 80th percentile of |error| on 3 held-out plans, floor 3 %." in body
    assert f"- trial 1 (\\*): {OUTSIDE}, so its band is widened" in body
