import pytest
import yaml

from autoprune.errors import ConfigError
from autoprune.search.space import SPACES_DIR, SearchSpace, needs_pipeline, plan_from_params


@pytest.mark.parametrize("name", sorted(p.stem for p in SPACES_DIR.glob("*.yaml")))
def test_shipped_spaces_load(name):
    space = SearchSpace.load(name)
    assert space.structures and space.criteria


def write(tmp_path, raw):
    p = tmp_path / "s.yaml"
    p.write_text(yaml.safe_dump(raw))
    return str(p)


@pytest.mark.parametrize("raw,needle", [
    ({"structures": ["channel"], "ratios": {"low": 0, "high": 0.5}}, "unknown key 'ratios'"),
    ({"ratio": {"low": 0.6, "high": 0.2}}, "empty range"),
    ({"ratio": {"low": 0.0, "high": 1.0}}, "[0, 1)"),
    ({"ratio": {"low": 0.0, "high": 0.5, "stride": 0.1}}, "unknown key 'stride'"),
    ({"criteria": ["magic"]}, "unknown criterion 'magic'"),
    ({"structures": ["pruned"]}, "unknown structures value"),
    ({"finetune": {"epochs": -1}}, "finetune.epochs"),
    ({"ratio_by_kind": {"attention": {"low": 0, "high": 0.2}}}, "unknown key 'attention'"),
    ({"distillation": {"enabled": "yes"}}, "distillation.enabled"),
    ({"ratio": {"low": True, "high": 0.5}}, "finite number"),
])
def test_space_validation_errors(tmp_path, raw, needle):
    with pytest.raises(ConfigError) as exc:
        SearchSpace.load(write(tmp_path, raw))
    assert needle in str(exc.value)


def test_bad_yaml_names_path(tmp_path):
    p = tmp_path / "broken.yaml"
    p.write_text("structures: [channel\n")
    with pytest.raises(ConfigError, match=r"broken\.yaml"):
        SearchSpace.load(str(p))


def test_params_become_valid_plans(tiny_dense):
    import optuna

    from autoprune.pruning import discover_groups

    model, data, _ = tiny_dense
    groups = discover_groups(model, data.example_input())
    for name in ("default", "structured-only", "sparse"):
        space = SearchSpace.load(name)
        study = optuna.create_study(directions=["maximize", "minimize"], sampler=optuna.samplers.RandomSampler(0))
        for _ in range(5):
            trial = study.ask()
            plan = plan_from_params(space, groups, space.suggest(trial, groups))
            plan.validate(groups)
            study.tell(trial, [0.5, 1.0])
        for params in space.seed_params(groups):
            plan_from_params(space, groups, params).validate(groups)
    dense = plan_from_params(SearchSpace.load("default"), groups, SearchSpace.load("default").seed_params(groups)[0])
    assert all(gp.structure == "keep" for _, gp in dense.groups)
    knapsack = SearchSpace.load("knapsack")  # knapsack params need the pipeline (tests/search/test_knapsack.py)
    assert all(needs_pipeline(knapsack, p) for p in knapsack.seed_params(groups))


@pytest.mark.parametrize("raw,needle", [
    ({"allocation": ["knapsack"], "budget": {"low": 0.0, "high": 0.5}}, "'budget'"),
    ({"allocation": ["knapsack"], "budget": {"low": 0.5, "high": 1.2}}, "'budget'"),
    ({"allocation": ["knapsack"], "priorities": {"low": 4, "high": 1}}, "'priorities'"),
    ({"allocation": ["knapsack"], "priorities": {"low": 0, "high": 1}}, "priorities.low"),
    ({"allocation": ["greedy"]}, "unknown allocation value 'greedy'"),
    ({"allocation": ["knapsack"], "budget": {"low": 0.1, "high": 0.5, "log": "yes"}}, "'budget'"),
    ({"allocation": ["knapsack"], "latency_weight": 1.5}, "'latency_weight'"),
    ({"allocation": ["knapsack"], "latency_weight": {"low": 0.8, "high": 0.2}}, "'latency_weight'"),
    ({"allocation": ["knapsack"], "thinning": -1}, "'thinning'"),
])
def test_knapsack_space_validation_errors(tmp_path, raw, needle):
    with pytest.raises(ConfigError) as exc:
        SearchSpace.load(write(tmp_path, raw))
    assert needle in str(exc.value)


def test_knapsack_space_searches_a_log_budget_and_the_latency_weight(tiny_dense):
    """The shipped knapsack space: a log-uniform budget (speedups spread evenly) and a searched
    latency_weight; the anchors run HALP's ranking (latency_weight 1) at a ladder of budgets."""
    import numpy as np
    import optuna

    from autoprune.pruning import discover_groups

    model, data, _ = tiny_dense
    groups = discover_groups(model, data.example_input())
    space = SearchSpace.load("knapsack")
    assert space.budget.log and space.latency_weight.high > space.latency_weight.low and space.thinning > 0
    study = optuna.create_study(directions=["maximize", "minimize"], sampler=optuna.samplers.RandomSampler(0))
    budgets = []
    for _ in range(40):
        params = space.suggest(study.ask(), groups)
        assert space.latency_weight.low <= params["latency_weight"] <= space.latency_weight.high
        budgets.append(params["budget"])
    assert space.budget.low <= min(budgets) and max(budgets) <= space.budget.high
    geo = (space.budget.low * space.budget.high) ** 0.5  # log-uniform: half the draws below the geometric mean
    assert 0.25 < np.mean(np.array(budgets) < geo) < 0.75
    anchors = [p for p in space.seed_params(groups) if "latency_weight" in p]
    assert anchors and all(p["latency_weight"] == 1.0 for p in anchors)
    assert {0.075, 0.15, 0.3, 0.6} <= {p["budget"] for p in anchors}  # the ladder, each twice the last
