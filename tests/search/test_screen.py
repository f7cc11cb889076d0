"""Screening: the pure promotion logic, and a screened study on a foreign model (bands, rungs, promotion,
resume, the front).

The model is the tiny user CNN of the fixtures, which the zoo does not have; studies are SQLite files in the
session's results folder.
"""

from __future__ import annotations

import optuna
import pytest
import yaml
from optuna.trial import TrialState

from autoprune.search.config import SearchConfig
from autoprune.search.promotion import (
    RoundBudget,
    Scored,
    band_edges,
    band_of,
    plan_digest,
    promote,
    rank,
    round_budget,
    spread,
)
from autoprune.search.runner import run_search
from autoprune.search.screen import HISTORY_KEYS, ROUND_ATTR, ScreenRound, rounds_of, screen_round
from autoprune.search.space import SearchSpace
from tests.conftest import TINY_REF

SCREENING = {"random": 6, "bands": 3, "refine_parents": 1, "refine_children": 2, "rung1_fraction": 0.5,
             "rung1_per_band": 2, "promote_per_band": 1, "val_samples": 128, "bn_batches": 2,
             "budget_share": 0}  # no time box: these tests count every rung's candidates


# -- pure logic --------------------------------------------------------------------------------------
def test_bands_are_even_in_speedup_from_the_fastest_plan_to_dense_and_every_latency_falls_in_one():
    edges = band_edges(0.5, 4.0, 3)  # 8x, 5.67x, 3.33x, 1x
    assert edges == pytest.approx((0.5, 4.0 / (8 - 7 / 3), 4.0 / (8 - 14 / 3), 4.0))
    assert [band_of(x, edges) for x in (0.1, 0.5, 0.7, 0.71, 1.0, 1.21, 3.9, 4.0, 9.0)] == [0, 0, 0, 1, 1, 2, 2, 2, 2]
    assert band_edges(2.0, 2.0, 5) == (2.0, 2.0) and band_of(7.0, (2.0, 2.0)) == 0  # nothing faster than dense


def test_rank_puts_the_non_dominated_first_then_accuracy():
    s = [Scored(0, 0.80, 1.0), Scored(1, 0.90, 1.2), Scored(2, 0.85, 1.5), Scored(3, 0.70, 0.9)]
    assert [x.index for x in rank(s)] == [1, 0, 3, 2]  # 2 is dominated by 1 (more accurate and faster)


def test_promotion_takes_each_bands_best_round_robin_and_is_deterministic():
    edges = (0.5, 1.0, 2.0, 4.0)
    s = [Scored(0, 0.60, 0.6, "a"), Scored(1, 0.50, 0.7, "b"), Scored(2, 0.95, 3.0, "c"), Scored(3, 0.90, 1.5, "d"),
         Scored(4, 0.97, 3.5, "e"), Scored(5, 0.40, 1.2, "f"), Scored(6, 0.61, 0.8, "a")]
    picks = promote(s, edges, 2)
    assert picks == [6, 3, 4, 1, 5, 2]  # best of each band (fastest first), then the second of each
    assert promote(list(reversed(s)), edges, 2) == picks  # the input order does not matter
    # a plan already promoted or run is never promoted again, and the limit cuts the round-robin
    assert promote(s, edges, 2, skip_plans=["a", "e"], limit=4) == [1, 3, 2, 5]


def test_a_limit_shorter_than_the_bands_takes_both_ends_of_the_speed_range_not_the_fastest_only():
    edges = (0.5, 1.0, 2.0, 4.0, 8.0)
    s = [Scored(i, 0.9 - 0.1 * i, lat) for i, lat in enumerate((0.6, 1.5, 3.0, 6.0))]
    assert promote(s, edges, 1, limit=2) == [0, 3] and promote(s, edges, 1, limit=3) == [0, 2, 3]
    assert promote(s, edges, 1, limit=1) == [1] and promote(s, edges, 1) == [0, 1, 2, 3]
    assert spread(5, 3) == [0, 2, 4] and spread(2, 5) == [0, 1]


def test_a_rounds_screening_is_a_share_of_its_fine_tuning_time_and_a_time_limit_caps_its_promotions():
    # no estimate, or no share: no box (the round promotes what it may, as before budgets)
    assert round_budget(slots_left=50, per_round=10, share=0.3, finetune_s=None, rung1_plan_s=5.0) == RoundBudget(10)
    assert round_budget(slots_left=3, per_round=10, share=0.0, finetune_s=80.0, rung1_plan_s=20.0).rung0_s is None
    # 10 slots of 80 s: screening may take 0.3 / 0.7 of 800 s; 40 % of that buys 6 short fine-tunes of 25 s
    b = round_budget(slots_left=50, per_round=10, share=0.3, finetune_s=80.0, rung1_plan_s=25.0)
    assert b.slots == 10 and b.rung1_plans == 0  # 137 s / 25 s = 5 short fine-tunes cannot pick 10 of 10
    b = round_budget(slots_left=50, per_round=10, share=0.3, finetune_s=80.0, rung1_plan_s=10.0)
    assert b.rung1_plans == 13 and b.rung0_s == pytest.approx(0.3 / 0.7 * 800 - 130)
    # a 480 s limit with 85 s fine-tunes: 0.7 x 480 s holds 3 of them, and the screening is sized for 3
    b = round_budget(slots_left=50, per_round=10, share=0.3, finetune_s=85.0, rung1_plan_s=20.0, time_left_s=480)
    assert b.slots == 3 and b.rung1_plans == 0 and b.rung0_s == pytest.approx(0.3 / 0.7 * 3 * 85)
    # at least one promotion however short the rest, never more than the study needs
    assert round_budget(slots_left=50, per_round=10, share=0.3, finetune_s=85.0, rung1_plan_s=20.0,
                        time_left_s=10).slots == 1
    assert round_budget(slots_left=2, per_round=10, share=0.3, finetune_s=85.0, rung1_plan_s=20.0).slots == 2


def test_a_round_scores_the_coarse_sweeps_first_then_alternates_random_plans_and_finer_sweeps():
    from autoprune.search.candidates import Candidate
    from autoprune.search.screen_budget import explore_order

    cands = [Candidate(i, f"{b}-l1-{r:g}", {}) for i, (r, b) in enumerate(
        (r, b) for r in (0.1, 0.3, 0.5, 0.7, 0.9) for b in ("uniform", "global"))]
    cands += [Candidate(10 + i, "random", {}) for i in range(3)]
    order = [c.source for c in explore_order(cands)]
    assert order[:6] == ["uniform-l1-0.5", "global-l1-0.5", "uniform-l1-0.3", "global-l1-0.3", "uniform-l1-0.7",
                         "global-l1-0.7"]
    assert order[6:] == ["random", "uniform-l1-0.1", "random", "global-l1-0.1", "random", "uniform-l1-0.9",
                         "global-l1-0.9"]
    assert sorted(c.index for c in explore_order(cands)) == list(range(13))


def test_the_uniform_l1_sweep_runs_l1_in_a_space_whose_only_criterion_is_another(tiny_dense):
    """A space searching only Taylor has no criterion parameter: the uniform-L1 sweep must fix it to L1."""
    from autoprune.pruning import discover_groups
    from autoprune.search.candidates import sweep_candidates

    model, data, _ = tiny_dense
    raw, _ = SearchSpace.read("default")
    space = SearchSpace.from_dict({**raw, "criteria": ["taylor"]})
    groups = discover_groups(model, data.example_input(1))
    uniform = [c for c in sweep_candidates(space, groups) if c.source.startswith("uniform-l1-")]
    assert uniform and all(c.merged()["criterion"] == "l1" for c in uniform)


# -- a screened study --------------------------------------------------------------------------------
@pytest.fixture
def screened_space(tmp_path):
    raw, _ = SearchSpace.read("default")
    raw = {**raw, "screening": SCREENING, "finetune": {**raw["finetune"], "steps": 2}}
    path = tmp_path / "screened.yaml"
    path.write_text(yaml.safe_dump(raw))
    return str(path)


def _config(space: str, trials: int) -> SearchConfig:
    return SearchConfig(model=TINY_REF, target="jetson-nano", space=space, trials=trials, seed=3)


def _promoted_trials(study):
    return [t for t in study.get_trials(deepcopy=False) if "screen_index" in t.user_attrs]


def test_a_screened_study_fine_tunes_only_promoted_candidates_and_keeps_every_rung(results_root, tiny_dense,
                                                                                    screened_space):
    url = f"sqlite:///{results_root / 'screen-a.db'}"
    summary = run_search(_config(screened_space, 4), study_name="screen-a", storage=url, given={}, progress=False)
    study = summary.study
    done = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    assert len(done) == 4
    # the dense anchor, then only promoted candidates: no sampler draw was fine-tuned
    anchors = [t.user_attrs.get("anchor") for t in done if "screen_index" not in t.user_attrs]
    assert anchors == ["dense"]
    for t in _promoted_trials(study):
        assert set(HISTORY_KEYS) <= set(t.user_attrs)
        assert t.user_attrs["rung1_accuracy"] is not None  # it went through the short fine-tune
    r0 = ScreenRound(study, 0)
    assert r0.edges is not None and len(r0.edges) == SCREENING["bands"] + 1
    # the 18 sweep plans and the random ones, then up to one parent's children per band
    refined = [r for r in r0.rung0.values() if r["source"].startswith("refine:")]
    assert len(r0.rung0) == 18 + SCREENING["random"] + len(refined)
    assert 0 < len(refined) <= SCREENING["bands"] * SCREENING["refine_children"]
    sources = {r["source"] for r in r0.rung0.values()}
    assert {"uniform-l1-0.5", "global-l1-0.5", "random"} <= sources and any(s.startswith("refine:") for s in sources)
    assert 0 < len(r0.rung1) <= SCREENING["bands"] * SCREENING["rung1_per_band"]
    assert all(r["steps"] == 1 for r in r0.rung1.values())  # half of the 2-step fine-tune
    # the front holds fully fine-tuned trials only: each a COMPLETE trial, none a screened-only candidate
    numbers = {t.number for t in done}
    assert summary.front and all(r.number in numbers for r in summary.front)
    promoted_keys = {t.user_attrs["screen_plan_key"] for t in _promoted_trials(study)}
    screened_only = {r["plan_key"] for r in r0.rung0.values() if "plan_key" in r} - promoted_keys
    assert not {plan_digest(r.plan) for r in summary.front} & screened_only


def test_promotion_is_deterministic_for_a_seed(results_root, tiny_dense, screened_space):
    picked = []
    for name in ("screen-d1", "screen-d2"):
        url = f"sqlite:///{results_root / (name + '.db')}"
        summary = run_search(_config(screened_space, 3), study_name=name, storage=url, given={}, progress=False,
                             create_only=True)
        from autoprune.search.objective import build_pipeline
        from autoprune.search.study import study_space

        config = summary.config
        space = study_space(summary.study, config)
        pipe, _ = build_pipeline(summary.context, space, progress=False)
        screen_round(summary.study, pipe, space, config, number=0, slots=2, progress=False, log=lambda _: None)
        r0 = ScreenRound(summary.study, 0)
        picked.append((r0.promoted, [r0.rung0[i]["params"] for i in r0.promoted],
                       [t.params for t in summary.study.get_trials(deepcopy=False, states=(TrialState.WAITING,))]))
    assert picked[0] == picked[1] and len(picked[0][0]) == 2


def test_a_resumed_round_continues_without_rescoring_what_it_scored(results_root, tiny_dense, screened_space,
                                                                    monkeypatch):
    from autoprune.pipeline import Pipeline

    url = f"sqlite:///{results_root / 'screen-r.db'}"
    summary = run_search(_config(screened_space, 3), study_name="screen-r", storage=url, given={}, progress=False,
                         create_only=True)
    from autoprune.search.objective import build_pipeline
    from autoprune.search.study import study_space

    config, study = summary.config, summary.study
    space = study_space(study, config)
    pipe, _ = build_pipeline(summary.context, space, progress=False)
    calls: list[int] = []
    real = Pipeline.screen

    def counting(self, plan, **kw):
        calls.append(kw.get("steps", 0))
        if len(calls) == 10:
            raise KeyboardInterrupt  # killed mid-round, after 9 candidates were scored
        return real(self, plan, **kw)

    monkeypatch.setattr(Pipeline, "screen", counting)
    with pytest.raises(KeyboardInterrupt):
        screen_round(study, pipe, space, config, number=0, slots=2, progress=False, log=lambda _: None)
    reloaded = optuna.load_study(study_name="screen-r", storage=url)
    kept = ScreenRound(reloaded, 0)
    assert len(kept.rung0) == 9 and kept.promoted is None  # what was scored was stored, nothing promoted yet
    before = {i: r["val_accuracy"] for i, r in kept.rung0.items()}
    calls.clear()
    monkeypatch.setattr(Pipeline, "screen", lambda self, plan, **kw: (calls.append(kw.get("steps", 0)),
                                                                       real(self, plan, **kw))[1])
    promoted = screen_round(reloaded, pipe, space, config, number=0, slots=2, progress=False, log=lambda _: None)
    done = ScreenRound(reloaded, 0)
    assert {i: done.rung0[i]["val_accuracy"] for i in before} == before
    assert calls.count(0) == len(done.rung0) - 9  # only the unscored candidates were screened
    assert promoted == done.promoted and len(promoted) == 2
    # a second call neither rescreens nor promotes again
    calls.clear()
    assert screen_round(reloaded, pipe, space, config, number=0, slots=2, progress=False, log=lambda _: None) \
        == promoted and not calls
    assert rounds_of(reloaded) == [0] and f"{ROUND_ATTR}0" in reloaded.user_attrs
    # a round cut by the time budget is left unfinished (nothing promoted), for a resume to continue
    import time

    assert screen_round(reloaded, pipe, space, config, number=1, slots=2, deadline=time.monotonic() - 1,
                        progress=False, log=lambda _: None) == []
    assert ScreenRound(reloaded, 1).promoted is None
    # the promoted candidates keep their history through a retry (a trial killed while it ran)
    from autoprune.search.study import retry_attrs

    waiting = [t for t in reloaded.get_trials(deepcopy=False, states=(TrialState.WAITING,))
               if "screen_index" in t.user_attrs]
    assert len(waiting) == 2
    trial = reloaded.ask()
    while "screen_index" not in trial.user_attrs:
        reloaded.tell(trial, state=TrialState.FAIL)
        trial = reloaded.ask()
    assert set(HISTORY_KEYS) <= set(retry_attrs(trial))


def test_a_budgeted_round_times_a_fine_tune_keeps_screening_within_its_box_and_later_rounds_use_real_trials(
        results_root, tiny_dense, tmp_path):
    raw, _ = SearchSpace.read("default")
    raw = {**raw, "screening": {**SCREENING, "budget_share": 0.2}, "finetune": {**raw["finetune"], "steps": 8}}
    path = tmp_path / "budgeted.yaml"
    path.write_text(yaml.safe_dump(raw))
    url = f"sqlite:///{results_root / 'screen-b.db'}"
    study = run_search(_config(str(path), 5), study_name="screen-b", storage=url, given={}, progress=False).study
    r0 = ScreenRound(study, 0)
    b = r0.budget
    assert b["estimated_from"].startswith("timed: 1 and 3 fine-tuning steps") and b["finetune_s"] > 0
    assert b["rung0_s"] == pytest.approx(0.2 / 0.8 * b["slots"] * b["finetune_s"] - b["rung1_plans"]
                                         * b["rung1_plan_s"], rel=1e-6)
    # rung 0 stops within one plan of its box (the box is checked before each plan)
    per_plan = max(float(r["seconds"]) for r in r0.rung0.values() if "seconds" in r)
    assert r0.seconds["rung0_explore"] + r0.seconds.get("rung0_refine", 0.0) <= b["rung0_s"] + 2 * per_plan + 0.5
    assert len(r0.promoted) <= b["slots"] and r0.promoted
    rounds = rounds_of(study)
    if len(rounds) > 1:  # the next round is sized from the study's own promoted trials
        assert ScreenRound(study, rounds[1]).budget["estimated_from"].endswith("promoted trials")


def test_later_rounds_promote_by_contribution_to_the_front_from_every_round_screened_so_far(
        results_root, tiny_dense, screened_space):
    from autoprune.search.contribution import FRONT_MARGIN, Finished, promote_by_contribution
    from autoprune.search.screen import ACC, LAT

    url = f"sqlite:///{results_root / 'screen-c.db'}"
    study = run_search(_config(screened_space, 7), study_name="screen-c", storage=url, given={},
                       progress=False).study
    rounds = rounds_of(study)
    r0 = ScreenRound(study, 0)
    # the first round: one per band but the slowest (dense covers it), each with a short fine-tune, for the
    # next rounds to fit the study's curve and learn what a short fine-tune says
    assert 0 < len(r0.promoted) <= SCREENING["bands"] - 1
    assert len({band_of(r0.rung0[i]["predicted_ms"], r0.edges) for i in r0.promoted}) == len(r0.promoted)
    assert all(r0.rung0[i]["predicted_ms"] < r0.edges[-2] for i in r0.promoted)
    assert set(r0.promoted) <= set(r0.rung1)
    assert len(rounds) >= 2
    r1 = ScreenRound(study, rounds[1])
    done = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    mine = [t for t in study.get_trials(deepcopy=False) if t.user_attrs.get("screen_round") == rounds[1]]
    assert mine and all(t.user_attrs["screen_promoted_by"] in ("contribution", "band") for t in mine)
    # the same picks, recomputed from what was stored: the trials fine-tuned before round 1, every rung-0 score
    before = [t for t in done if t.number < min(t.number for t in mine)]
    dense = next(t for t in before if t.user_attrs.get("anchor") == "dense")
    dense_ms, ref = dense.user_attrs[LAT], dense.user_attrs[ACC] - FRONT_MARGIN

    def finished(key):
        return [Finished(t.user_attrs[ACC], t.user_attrs[LAT], t.user_attrs.get(key),
                         None if t.user_attrs.get("anchor") == "dense" else
                         (t.datetime_complete - t.datetime_start).total_seconds()) for t in before]

    taken = [t.user_attrs["screen_plan_key"] for t in before if "screen_plan_key" in t.user_attrs]
    recs = [(0, i, r) for i, r in r0.rung0.items()] + [(rounds[1], i, r) for i, r in r1.rung0.items()
                                                      if "carried_from" not in r]
    recs = [x for x in recs if "val_accuracy" in x[2]]
    # rung 1 shortlists the plans of any round that add most at rung 0, and gives each a short fine-tune
    short = promote_by_contribution(finished("rung0_accuracy"), [
        (j, r["val_accuracy"], r["predicted_ms"], r["plan_key"]) for j, (_, _, r) in enumerate(recs)],
        dense_ms, ref, len(r1.rung1), skip_plans=taken)
    assert {recs[j][2]["plan_key"] for j in short} == {r1.rung0[i]["plan_key"] for i in r1.rung1}
    # and the full fine-tunes go to those whose short fine-tune adds most
    by_front = [t for t in mine if t.user_attrs["screen_promoted_by"] == "contribution"]
    assert by_front  # the round found plans that add to the front
    picks = promote_by_contribution(finished("rung1_accuracy"), [
        (i, r1.rung1[i]["val_accuracy"], r1.rung0[i]["predicted_ms"], r1.rung0[i]["plan_key"]) for i in r1.rung1],
        dense_ms, ref, len(by_front), skip_plans=taken)
    assert picks == [t.user_attrs["screen_index"] for t in by_front]
    # a plan is short-fine-tuned once: a later round that carries it copies its rung-1 score
    first: dict[str, float] = {}
    for n in rounds:
        r = ScreenRound(study, n)
        for i, x in r.rung1.items():
            key = r.rung0[i]["plan_key"]
            assert key not in first or ("carried_from" in x and first[key] == x["val_accuracy"])
            first.setdefault(key, x["val_accuracy"])
    # a pick from an earlier round is carried into this one with its score, not screened again
    for i in r1.rung1:
        rec = r1.rung0[i]
        if "carried_from" in rec:
            n, k = rec["carried_from"]
            assert ScreenRound(study, n).rung0[k]["val_accuracy"] == rec["val_accuracy"]
