import itertools

import numpy as np
import pytest

from autoprune.search.pareto import best_within_drop, dominates, hypervolume, pareto_mask, reference_point

MAXMIN = ["maximize", "minimize"]


def brute_front(values, directions):
    signs = np.array([-1 if d == "maximize" else 1 for d in directions])
    m = values * signs
    return np.array([not any(dominates(m[j], m[i]) for j in range(len(m)) if j != i) for i in range(len(m))])


def test_pareto_mask_matches_brute_force():
    rng = np.random.default_rng(0)
    for _ in range(20):
        v = rng.random((30, 2))
        assert (pareto_mask(v, MAXMIN) == brute_front(v, MAXMIN)).all()
    v3 = rng.random((40, 3))
    dirs3 = ["maximize", "minimize", "minimize"]
    assert (pareto_mask(v3, dirs3) == brute_front(v3, dirs3)).all()


def test_pareto_mask_small_cases():
    v = np.array([[0.9, 10.0], [0.95, 12.0], [0.8, 11.0], [0.95, 12.0], [np.nan, 1.0]])
    assert pareto_mask(v, MAXMIN).tolist() == [True, True, False, True, False]


def test_hypervolume_2d_exact():
    # accuracy (max) vs latency (min), reference (0, 10)
    v = np.array([[0.5, 2.0], [0.8, 5.0]])
    # minimisation: (-0.5, 2), (-0.8, 5), ref (0, 10) -> 0.5*8 + 0.3*5
    assert hypervolume(v, [0.0, 10.0], MAXMIN) == pytest.approx(0.5 * 8 + 0.3 * 5)
    # a dominated point adds nothing; a point outside the reference adds nothing
    more = np.vstack([v, [[0.4, 6.0], [0.9, 11.0]]])
    assert hypervolume(more, [0.0, 10.0], MAXMIN) == pytest.approx(5.5)


def test_hypervolume_3d_matches_monte_carlo_and_box_union():
    rng = np.random.default_rng(1)
    pts = rng.random((8, 3))
    ref = np.ones(3)
    # exact volume of the union of boxes [p, ref] by inclusion-exclusion
    exact = 0.0
    for r in range(1, len(pts) + 1):
        for combo in itertools.combinations(range(len(pts)), r):
            corner = pts[list(combo)].max(axis=0)
            exact += (-1) ** (r + 1) * np.prod(ref - corner)
    assert hypervolume(pts, ref, ["minimize"] * 3) == pytest.approx(exact, rel=1e-9)


def test_hypervolume_monotone_and_reference():
    v = np.array([[0.9, 3.0], [0.97, 6.0]])
    ref = reference_point(v, MAXMIN)
    assert ref[0] < 0.9 and ref[1] > 6.0
    base = hypervolume(v, ref, MAXMIN)
    better = hypervolume(np.vstack([v, [[0.95, 2.0]]]), ref, MAXMIN)
    assert better > base > 0


def test_best_within_drop_respects_the_accuracy_budget():
    acc = np.array([0.99, 0.985, 0.975, 0.90, np.nan])
    speedup = np.array([1.0, 2.0, 3.0, 9.0, 20.0])
    assert best_within_drop(acc, speedup, 0.99, 0.01) == 2.0
    assert best_within_drop(acc, speedup, 0.99, 0.02) == 3.0
    assert best_within_drop(acc, speedup, 0.99, 0.10) == 9.0
    assert np.isnan(best_within_drop(acc[3:4], speedup[3:4], 0.99, 0.01))
