"""Early stopping in multi-objective studies: the rule on synthetic trials, a stopped trial PRUNED with its reason
and left out of the budget, a resumed (reloaded SQLite) study that decides the same, and the pipeline asking the
stopper at its fine-tuning checkpoints with costs known before fine-tuning."""

from __future__ import annotations

import dataclasses
import math

import optuna
import pytest
import torch
from optuna.trial import TrialState

from autoprune.pipeline import CHECKPOINTS
from autoprune.search.config import CONFIG_ATTR, SearchConfig
from autoprune.search.loop import run_trials
from autoprune.search.stopping import (
    STOPPED_REASON_ATTR,
    CompletedTrial,
    Stopper,
    TrialStopped,
    accuracy_at,
    learned_margin,
    stop_reason,
)
from tests.conftest import TINY_REF, ray_searcher


def _trial(number, acc, latency, gains=(0.10, 0.05, 0.02), feasible=True, energy=None):
    """A completed trial whose curve gains ``gains`` from its checkpoints at 0.25, 0.5, 0.75 to the end."""
    curve = (*((f, acc - g) for f, g in zip((0.25, 0.5, 0.75), gains)), (1.0, acc))
    costs = {"latency_ms": latency} if energy is None else {"latency_ms": latency, "energy_mj": energy}
    return CompletedTrial(number, acc, costs, curve, feasible)


FOUR = [_trial(0, 0.90, 2.0), _trial(1, 0.95, 1.0, gains=(0.20, 0.08, 0.03)), _trial(2, 0.80, 0.5),
        _trial(3, 0.85, 3.0)]


# -- the rule, a pure function -------------------------------------------------------------------
def test_margin_is_the_largest_gain_seen_at_that_fraction_plus_slack():
    margin, used = learned_margin(FOUR, 0.5, slack=0.005)
    assert used == 4 and margin == pytest.approx(0.08 + 0.005)
    margin, _ = learned_margin(FOUR, 0.25, slack=0.0)
    assert margin == pytest.approx(0.20)
    # between checkpoints the curves are read linearly; a curve that falls to the end gives no negative margin
    assert accuracy_at(FOUR[1].curve, 0.375) == pytest.approx((0.75 + 0.87) / 2)
    falling = [CompletedTrial(9, 0.5, {"latency_ms": 1.0}, ((0.5, 0.7), (1.0, 0.5)))] * 4
    assert learned_margin(falling, 0.5, slack=0.0) == (0.0, 4)


def test_a_candidate_dominated_beyond_the_margin_is_stopped_with_the_dominating_trial_and_the_numbers():
    # at 50 %, margin 0.085: trial 1 (1.0 ms, 0.95) dominates a 1.5 ms candidate at 0.85 (0.85 + 0.085 < 0.95)
    why = stop_reason(FOUR, [(0.25, 0.70), (0.5, 0.85)], {"latency_ms": 1.5}, ("latency_ms",))
    assert why is not None
    assert "trial 1" in why and "0.8500" in why and "0.0850" in why and "0.9500" in why and "latency_ms 1 <= 1.5" in why
    assert "50%" in why and "among 4 completed curves" in why


@pytest.mark.parametrize("case, curve, costs, trials", [
    ("within the margin", [(0.5, 0.87)], {"latency_ms": 1.5}, FOUR),  # 0.87 + 0.085 > 0.95
    ("only slower trials beat it", [(0.5, 0.72)], {"latency_ms": 0.9}, FOUR),  # 0.72 + 0.085 > 0.80 of trial 2
    ("the dominating trial is infeasible", [(0.5, 0.85)], {"latency_ms": 1.5},
     [dataclasses.replace(t, feasible=t.number != 1) for t in FOUR]),
    ("too few curves", [(0.5, 0.10)], {"latency_ms": 1.5}, FOUR[:3]),
    ("the candidate's latency is unknown", [(0.5, 0.10)], {"energy_mj": 1.0}, FOUR),
    ("no checkpoint yet", [], {"latency_ms": 1.5}, FOUR),
])
def test_a_candidate_that_may_still_reach_the_front_runs_on(case, curve, costs, trials):
    assert stop_reason(trials, curve, costs, ("latency_ms",)) is None, case


def test_trials_without_curves_dominate_but_do_not_count_toward_the_minimum():
    old = [CompletedTrial(10 + i, 0.99, {"latency_ms": 0.1}) for i in range(6)]  # recorded before curves existed
    assert stop_reason(old, [(0.5, 0.5)], {"latency_ms": 1.5}, ("latency_ms",)) is None
    why = stop_reason([*FOUR, *old], [(0.5, 0.5)], {"latency_ms": 1.5}, ("latency_ms",))
    assert why is not None and "trial 10 " in why  # the most accurate dominating trial, lowest number first


def test_with_two_cost_objectives_a_dominating_trial_is_no_worse_on_both():
    trials = [_trial(i, 0.95, 1.0, energy=5.0) for i in range(4)]
    keys = ("latency_ms", "energy_mj")
    assert stop_reason(trials, [(0.5, 0.5)], {"latency_ms": 2.0, "energy_mj": 4.0}, keys) is None
    assert stop_reason(trials, [(0.5, 0.5)], {"latency_ms": 2.0, "energy_mj": 6.0}, keys) is not None


def test_stopper_check_raises_trial_stopped_with_the_attributes_of_the_stopped_trial():
    stopper = Stopper(tuple(FOUR), ("latency_ms",))
    stopper.check([(0.5, 0.9)], {"latency_ms": 1.5})  # may go on: returns
    with pytest.raises(TrialStopped) as info:
        stopper.check([(0.25, 0.6), (0.5, 0.8)], {"latency_ms": 1.5, "energy_mj": 3.0})
    assert info.value.attrs == {"stopped_at": 0.5, "curve": [[0.25, 0.6], [0.5, 0.8]],
                                "costs": {"latency_ms": 1.5, "energy_mj": 3.0}}
    assert Stopper.from_dict(stopper.to_dict()) == stopper  # what a Ray worker is handed


def test_trial_stopped_is_not_a_candidate_failure():
    from autoprune.search.objective import CANDIDATE_ERRORS

    assert not isinstance(TrialStopped("x"), CANDIDATE_ERRORS)


# -- the loop: PRUNED with its reason, outside the budget ------------------------------------------
def _curve_objective(trial):
    """A candidate whose accuracy rises along its curve; stopped by the study's stopper at its checkpoints."""
    r = trial.suggest_float("r", 0.0, 0.9)
    final = 0.97 - 0.5 * r * r + 0.05 * math.sin(7 * r)
    latency = 10.0 * (1.0 - r) + 0.5
    curve = [(f, final - 0.3 * (1 - f) ** 2) for f in (0.25, 0.5, 0.75)]
    stopper = Stopper.from_study(trial.study)
    for i in range(len(curve)):
        stopper.check(curve[: i + 1], {"latency_ms": latency})
    for key, value in {"accuracy": final, "latency_ms": latency, "constraints": [0.0],
                       "curve": [list(p) for p in (*curve, (1.0, final))]}.items():
        trial.set_user_attr(key, value)
    return [final, latency]


def _study(storage=None, name="s", trials=12):
    study = optuna.create_study(directions=["maximize", "minimize"], storage=storage, study_name=name)
    study.sampler = optuna.samplers.RandomSampler(seed=3)
    config = SearchConfig(trials=trials)
    study.set_user_attr(CONFIG_ATTR, config.to_dict())
    return study, config


def test_a_stopped_trial_is_pruned_with_its_reason_and_not_counted_toward_the_budget():
    def objective(trial):
        trial.suggest_float("r", 0.0, 0.9)
        if trial.number % 2:
            raise TrialStopped(f"stopped: trial {trial.number} is dominated", {"stopped_at": 0.5})
        return [0.9, 1.0]

    study, config = _study(trials=3)
    counts = run_trials(study, config, objective, progress=False, max_consecutive_failures=1)
    trials = study.get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE, TrialState.PRUNED] * 2 + [TrialState.COMPLETE]
    assert counts == {"completed": 3, "failed": 0, "surplus": 0, "stopped": 2}
    for t in trials[1::2]:
        assert t.user_attrs[STOPPED_REASON_ATTR] == f"stopped: trial {t.number} is dominated"
        assert t.user_attrs["stopped_at"] == 0.5 and "fail_reason" not in t.user_attrs


def test_the_studys_stopper_stops_dominated_candidates_and_the_budget_still_fills():
    study, config = _study(trials=14)
    counts = run_trials(study, config, _curve_objective, progress=False)
    complete = study.get_trials(states=(TrialState.COMPLETE,))
    pruned = study.get_trials(states=(TrialState.PRUNED,))
    assert len(complete) == 14 and counts["completed"] == 14 and counts["failed"] == 0
    assert counts["stopped"] == len(pruned) > 0
    assert all(t.number >= 4 for t in pruned)  # never before four completed curves
    for t in pruned:  # each stop is justified by a faster completed trial that finished before it started
        dominating = int(t.user_attrs[STOPPED_REASON_ATTR].split("trial ")[1].split(" ")[0])
        d = study.trials[dominating]
        assert d.state == TrialState.COMPLETE and d.number < t.number
        assert d.user_attrs["latency_ms"] <= t.user_attrs["costs"]["latency_ms"]
        assert d.user_attrs["accuracy"] > t.user_attrs["curve"][-1][1]


def test_a_resumed_study_keeps_its_stopping_state(tmp_path):
    url = f"sqlite:///{tmp_path / 'study.db'}"
    study, config = _study(storage=url, trials=8)
    run_trials(study, config, _curve_objective, progress=False)
    probe = ([(0.25, 0.55), (0.5, 0.62)], {"latency_ms": 7.0})
    before = Stopper.from_study(study)
    assert len(before.trials) == 8 and before.reason(*probe) is not None  # the probe is dominated here

    reloaded = optuna.load_study(study_name="s", storage=optuna.storages.RDBStorage(url))
    after = Stopper.from_study(reloaded)  # config, objectives and trials all read back from SQLite
    assert after == before and after.reason(*probe) == before.reason(*probe)
    reloaded.sampler = optuna.samplers.RandomSampler(seed=4)
    reloaded.set_user_attr(CONFIG_ATTR, dataclasses.replace(config, trials=12).to_dict())
    counts = run_trials(reloaded, dataclasses.replace(config, trials=12), _curve_objective, progress=False)
    assert counts["completed"] == 4 and len(reloaded.get_trials(states=(TrialState.COMPLETE,))) == 12


# -- the pipeline: checkpoints, the curve, costs before fine-tuning -----------------------------------
def _pipeline(user_loaders: bool = False):
    from torch.utils.data import DataLoader

    from autoprune.data import load_digits
    from autoprune.pipeline import Pipeline
    from tests.fixtures.tiny_cnn import tiny_cnn

    data = load_digits(size=16)
    if user_loaders:  # a user's loaders are used as given: shuffled by the global random state
        data = dataclasses.replace(data, train=DataLoader(data.train, batch_size=32, shuffle=True),
                                   val=DataLoader(data.val, batch_size=256))
    torch.manual_seed(0)
    return Pipeline(tiny_cnn(), data, "jetson-nano", TINY_REF, finetune_steps=8, batch_size=32, lr=0.05)


@pytest.fixture(scope="module")
def pipe():
    return _pipeline()


class Recorder:
    def __init__(self, stop_at: float | None = None) -> None:
        self.calls: list[tuple[tuple, dict]] = []
        self.stop_at = stop_at

    def check(self, curve, costs):
        self.calls.append((tuple(curve), dict(costs)))
        if curve[-1][0] == self.stop_at:
            raise TrialStopped("test stop", {"stopped_at": curve[-1][0]})


def _plan(pipe, structure="channel", ratio=0.5):
    from autoprune.pruning import PruningPlan

    return PruningPlan.uniform(pipe.groups, structure, ratio)


def test_the_pipeline_asks_the_stopper_at_its_checkpoints_with_costs_known_before_fine_tuning(pipe):
    stopper = Recorder()
    result = pipe.run(_plan(pipe), stopper=stopper)
    rec = result.record()
    assert [c[0][-1][0] for c in stopper.calls] == list(CHECKPOINTS) == [0.0, 0.5]
    assert [len(c[0]) for c in stopper.calls] == [1, 2]  # the curve so far, growing
    costs = stopper.calls[0][1]
    assert costs["latency_ms"] == rec["latency_ms"] and costs["energy_mj"] == rec["energy_mj"]
    assert costs["macs"] == rec["macs"]
    # sizes count exact zeros: this untrained model's zero BatchNorm biases move off zero when fine-tuned
    assert costs["size_mb"] == pytest.approx(rec["size_mb"], rel=0.02)
    assert rec["curve"] == [list(p) for p in stopper.calls[-1][0]] + [[1.0, rec["accuracy"]]]
    assert all(0.0 <= a <= 1.0 for _, a in rec["curve"]) and rec["seconds"]["checkpoints_s"] > 0


@pytest.mark.parametrize("user_loaders", [False, True], ids=["tensors", "user-loaders"])
def test_checkpoints_leave_fine_tuning_as_it_was(user_loaders, monkeypatch):
    """Checkpoint evaluation restores BatchNorm statistics, random state and data order: the same weights."""
    import autoprune.pruning as pruning_pkg

    pipe = _pipeline(user_loaders)
    weights, real = [], pruning_pkg.finetune

    def spy(model, *args, **kwargs):
        out = real(model, *args, **kwargs)
        weights.append({k: v.clone() for k, v in model.state_dict().items()})
        return out

    monkeypatch.setattr(pruning_pkg, "finetune", spy)
    torch.manual_seed(1)
    with_curve = pipe.run(_plan(pipe)).record()
    monkeypatch.setattr(pipe, "checkpoints", ())
    torch.manual_seed(1)
    without = pipe.run(_plan(pipe)).record()
    assert len(with_curve["curve"]) == len(CHECKPOINTS) + 1 and without["curve"] == [[1.0, without["accuracy"]]]
    assert weights[0].keys() == weights[1].keys()
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
    assert with_curve["accuracy"] == without["accuracy"]


def test_a_stop_at_a_checkpoint_propagates_out_of_the_pipeline(pipe):
    stopper = Recorder(stop_at=0.5)
    with pytest.raises(TrialStopped, match="test stop"):
        pipe.run(_plan(pipe), stopper=stopper)
    assert [c[0][-1][0] for c in stopper.calls] == [0.0, 0.5]


def test_a_masked_candidate_is_costed_as_make_permanent_will_leave_it(pipe):
    """Unstructured masks: zeros counted on the masked module before fine-tuning are those baked in after."""
    from autoprune.pruning import FinetuneConfig, finetune

    template = pipe.cost_model.template
    pruned = pipe.prune(_plan(pipe, "unstructured", 0.6))
    before = template.describe(pruned.module, sparsity=True)
    assert min(before.weight_density) < 0.5  # the masks are seen
    finetune(pruned.module, pipe.data.loader("train", 32), FinetuneConfig(steps=3, lr=0.05))
    after = template.describe(pruned.make_permanent(), sparsity=True)
    assert after == before


def test_finetune_checkpoint_steps_are_rounded_deduplicated_and_stop_before_the_end():
    from autoprune.errors import ConfigError
    from autoprune.pruning import FinetuneConfig

    cfg = FinetuneConfig(checkpoints=(0.0, 0.25, 0.5, 0.75))
    assert cfg.checkpoint_steps(8) == {0: 0.0, 2: 0.25, 4: 0.5, 6: 0.75}
    assert cfg.checkpoint_steps(2) == {0: 0.0, 1: 0.5}  # 0.25 and 0.5 land on step 1; 0.75 on the end
    with pytest.raises(ConfigError, match="checkpoints"):
        FinetuneConfig(steps=2, checkpoints=(1.0,)).validate()


# -- Ray: the driver hands each trial the study's stopper; a stop reported by a worker is told PRUNED ---------
def test_ray_searcher_hands_out_the_stopper_and_tells_a_stopped_trial_pruned(tiny_dense, results_root):
    pytest.importorskip("ray.tune")
    import json

    from autoprune.search.backends import ray as rb

    url, study, config, searcher = ray_searcher(results_root, "stopping-ray", trials=2)
    params = searcher.suggest("a")
    assert Stopper.from_dict(json.loads(params[rb.STOPPER_KEY])) == Stopper.from_study(study)  # none completed yet

    # four faster, perfect trials that gained nothing while fine-tuning: any real candidate is stopped at once
    perfect = [CompletedTrial(i, 1.0, {"latency_ms": 1e-6}, ((0.0, 1.0), (1.0, 1.0))) for i in range(4)]
    params = {**params, rb.STOPPER_KEY: json.dumps(Stopper(tuple(perfect), ("latency_ms",)).to_dict())}
    result = rb.evaluate_params(params, rb.worker_spec(study, config))
    assert rb.STOPPED_KEY in result and rb.RECORD_KEY not in result and rb.ERROR_KEY not in result
    searcher.on_trial_complete("a", result)

    trial = optuna.load_study(study_name="stopping-ray", storage=url).trials[searcher.trials["a"].number]
    assert trial.state == TrialState.PRUNED and "fail_reason" not in trial.user_attrs
    assert trial.user_attrs[STOPPED_REASON_ATTR].startswith("stopped after 0% of fine-tuning")
    assert trial.user_attrs["stopped_at"] == 0.0 and trial.user_attrs["costs"]["latency_ms"] > 1e-6
    assert searcher.counts == {"completed": 0, "failed": 0, "surplus": 0, "stopped": 1}
