"""The cost model's layout: the predictor (the package's top level) never imports the builder."""

from __future__ import annotations

from tests.test_architecture import import_graph


def test_the_predictor_never_imports_the_builder():
    graph = import_graph()
    predictor = [m for m in graph if m.startswith("autoprune.costmodel") and ".builder" not in m]
    assert "autoprune.costmodel.base" in predictor and "autoprune.costmodel.calibration" in predictor
    bad = {m: sorted(d for d in graph[m] if d.startswith("autoprune.costmodel.builder")) for m in predictor}
    assert {m: d for m, d in bad.items() if d} == {}

