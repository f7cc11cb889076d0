"""Promotion by contribution to the front (autoprune.search.contribution): pure functions."""

from __future__ import annotations

import math

import numpy as np
import pytest

from autoprune.search.contribution import (
    Finished,
    expected_accuracy,
    front_gain,
    isotonic_decreasing,
    promote_by_contribution,
)

DENSE_MS = 10.0
#: dense, 2x and 5x predicted speedup, fine-tuned
STUDY = [Finished(0.90, 10.0), Finished(0.89, 5.0, 0.60), Finished(0.80, 2.0, 0.20)]


def test_isotonic_fit_pools_the_points_that_rise_with_speed_and_keeps_the_rest():
    xs, fit = isotonic_decreasing([3, 0, 2, 1, 2], [0.5, 0.9, 0.85, 0.8, 0.85])
    assert list(xs) == [0, 1, 2, 3]
    assert fit == pytest.approx([0.9, (0.8 + 0.85 + 0.85) / 3, (0.8 + 0.85 + 0.85) / 3, 0.5])
    assert np.all(np.diff(fit) <= 0)


def test_expected_accuracy_follows_the_studys_curve_and_keeps_falling_beyond_its_fastest_plan():
    got = expected_accuracy(STUDY[:1] + STUDY[1:], [(0.3, 2.5), (0.3, 1.0)], DENSE_MS)
    u = [math.log(DENSE_MS / lat) for lat in (5.0, 2.0, 2.5)]
    assert got[0] == pytest.approx(0.89 + (0.80 - 0.89) * (u[2] - u[0]) / (u[1] - u[0]))  # between 2x and 5x
    assert got[1] < 0.80  # 10x: faster than anything fine-tuned, below the fastest one's accuracy
    # with fewer than 3 screened trials the screening score moves nothing
    assert expected_accuracy(STUDY, [(0.9, 2.5)], DENSE_MS)[0] == pytest.approx(got[0])


def test_a_screen_that_ranks_well_moves_the_expectation_and_one_that_ranks_badly_does_not():
    lat = [8.0, 6.0, 4.0, 3.0, 2.5]
    base = [0.895, 0.89, 0.88, 0.87, 0.86]
    screen = [0.8, 0.7, 0.5, 0.4, 0.3]
    noise = [0.01, -0.01, 0.01, -0.01, 0.01]

    def study(sign):
        return [Finished(0.90, DENSE_MS)] + [Finished(b + sign * n, x, s + n * 5) for b, x, s, n in
                                             zip(base, lat, screen, noise)]

    cands = [(0.55, 4.0), (0.45, 4.0)]  # one screened above its neighbours, one below, at the same speed
    good, bad = expected_accuracy(study(+1), cands, DENSE_MS), expected_accuracy(study(-1), cands, DENSE_MS)
    assert good[0] > good[1]  # the screen predicted the fine-tuned residuals: it separates the two
    assert bad[0] == pytest.approx(bad[1])  # it predicted them backwards: beta is clipped to 0


def test_promotion_fills_the_widest_gap_of_the_front_first_and_never_a_dominated_plan():
    cands = [(0, 0.3, 6.0, "mild"), (1, 0.3, 2.5, "gap"), (2, 0.3, 5.5, "dominated")]
    picks = promote_by_contribution(STUDY, cands, DENSE_MS, 0.80, limit=3)
    assert picks[0] == 1  # 4x, between the 2x and 5x plans: the front's widest gap
    assert 2 not in picks or picks.index(2) > picks.index(0)
    assert promote_by_contribution(STUDY, list(reversed(cands)), DENSE_MS, 0.80, limit=3) == picks
    assert promote_by_contribution(STUDY, cands, DENSE_MS, 0.80, limit=3, skip_plans=["gap"])[0] != 1
    assert promote_by_contribution(STUDY, cands, DENSE_MS, 0.80, limit=1) == [1]
    # a plan exactly on the front (same accuracy and speed as a fine-tuned one) adds nothing
    assert promote_by_contribution(STUDY, [(0, 0.6, 5.0, "same")], DENSE_MS, 0.80, limit=2) == []


def test_each_pick_joins_the_front_before_the_next_so_two_picks_do_not_crowd_one_gap():
    # two near-identical candidates in the 2x-5x gap (each alone adds 20x what the mild one does), one mild
    cands = [(0, 0.3, 2.5, "a"), (1, 0.3, 2.45, "b"), (2, 0.3, 7.0, "c")]
    front = [(f.accuracy, DENSE_MS / f.latency_ms) for f in STUDY]
    e = expected_accuracy(STUDY, [(c[1], c[2]) for c in cands], DENSE_MS)
    alone = [front_gain(front, (a, DENSE_MS / c[2]), (0.80, 1.0)) for a, c in zip(e, cands)]
    assert min(alone[:2]) > 10 * alone[2]
    # but once one twin is on the front, the other adds less than the mild plan: it comes second
    assert promote_by_contribution(STUDY, cands, DENSE_MS, 0.80, limit=3) == [0, 2, 1]


def test_with_timed_trials_the_gain_counts_per_expected_second_so_a_slow_plan_must_add_more():
    from autoprune.search.contribution import expected_seconds

    timed = [Finished(0.90, 10.0), Finished(0.86, 6.0, 0.7, 60.0), Finished(0.85, 3.0, 0.3, 30.0),
             Finished(0.80, 2.0, 0.2, 20.0)]
    assert list(expected_seconds(timed, [4.0, 1.0])) == pytest.approx([40.0, 10.0])  # 10 s per ms on this study
    assert expected_seconds(timed[:3], [4.0]) is None  # two timed trials: no line
    cands = [(0, 0.8, 8.0, "mild"), (1, 0.25, 2.9, "fast")]
    front = [(f.accuracy, DENSE_MS / f.latency_ms) for f in timed]
    e = expected_accuracy(timed, [(c[1], c[2]) for c in cands], DENSE_MS)
    gain = [front_gain(front, (a, DENSE_MS / c[2]), (0.80, 1.0)) for a, c in zip(e, cands)]
    assert gain[0] > gain[1] and gain[0] / 80 < gain[1] / 29  # more hypervolume, but less per second
    assert promote_by_contribution(timed, cands, DENSE_MS, 0.80, limit=1) == [1]
    untimed = [Finished(f.accuracy, f.latency_ms, f.screen_accuracy) for f in timed]
    assert promote_by_contribution(untimed, cands, DENSE_MS, 0.80, limit=1) == [0]

