"""The real model zoo: torchvision's classification builders and a timm sample discover, check, prune and export.

Every name in ``torchvision.models.list_models(module=torchvision.models)`` is a case. CI runs a sample
(:data:`TV_CI`, :data:`TIMM_CI`: one model per feature the zoo exposed) and the rest skip with that reason;
``AUTOPRUNE_ZOO=families`` runs the smallest member of each family (``benchmarks/zoo_survey.TV_FAMILIES``: the
others differ in depth and width only) and the whole timm sample, ``AUTOPRUNE_ZOO=all`` every one (hours here).
Each model, with random weights at a small input side it supports: group discovery and the check must not
crash and give unique group
names; one random plan from each of the ``default`` and ``sparse`` spaces must prune, keep every layer non-empty,
grouped convs divisible and depthwise convs depthwise, run, and export to ONNX with parity. A dense model that
cannot export at that side must be refused in one line that names a side that does.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import optuna
import pytest
import torch

from autoprune.errors import ConfigError
from autoprune.pruning import check_groups, discover_groups, export_onnx, prune_model
from autoprune.pruning.check import check_options
from autoprune.pruning.faults import depthwise_names, layer_faults
from autoprune.search.space import SearchSpace, plan_from_params
from benchmarks.zoo_survey import TIMM_SAMPLE, TV_FAMILIES

try:
    from autoprune.models.external import build_external, required_input_size, torchvision_names

    TV_NAMES = torchvision_names()
except ConfigError:  # torchvision is not installed: the module skips
    TV_NAMES = []

ZOO = os.environ.get("AUTOPRUNE_ZOO", "ci")  # ci, families or all
#: What CI runs: one model for each feature the zoo exposed. Residuals, squeeze-excite and depthwise, ShuffleNet's
#: channel shuffle (Torch-Pruning crashed), Swin's windows (ran out of memory), ConvNeXt's LayerNorm2d (the probe
#: misread it); timm's CSP split/concat (duplicate names), GhostNet, LCNet, MixNet.
TV_CI = ("resnet18", "mobilenet_v3_small", "shufflenet_v2_x0_5", "swin_t", "convnext_tiny")
#: Sides below which a model does not run (Inception's 3x3 convs at stride 32, MaxViT's 7x7 partitions).
SIDE = {"inception_v3": 96, "alexnet": 64, "maxvit_t": 224, "maxvit_tiny_tf_224": 224}
SMALL_SIDE = 32
#: timm models too slow for CI on 2 cores (run with AUTOPRUNE_ZOO=all).
TIMM_CI = ("cspresnet50", "ghostnet_100", "lcnet_050", "mixnet_s")
#: The most groups a model may keep whole (lose channel pruning), where a fix freed them: GhostNet's ghost
#: modules (the probe moved a primary channel without its copy), MixNet's split convs (Torch-Pruning mapped a
#: chunk onto the wrong conv, and the stored split sizes went stale), PoolFormer's stored scale shape.
KEPT_WHOLE_AT_MOST = {"timm:ghostnet_100": 0, "timm:mixnet_s": 0, "timm:poolformer_s12": 0}

pytestmark = [pytest.mark.slow, pytest.mark.skipif(not TV_NAMES, reason="torchvision is not installed")]


def run_zoo_model(ref: str, side: int) -> dict:
    """Discover, check, and prune/run/export one plan per space; returns what was found (asserting nothing)."""
    torch.manual_seed(0)
    model = build_external(ref, num_classes=10, input_size=side).eval()
    side = required_input_size(model) or side
    x = torch.randn(1, 3, side, side, generator=torch.Generator().manual_seed(0))
    groups = discover_groups(model, x)
    names = [g.name for g in groups]
    result = check_groups(model, x, groups, **check_options(SearchSpace.load("default"), None))
    checked = list(result.groups)
    gen = torch.Generator().manual_seed(3)
    calib = [(torch.randn((2, 3, side, side), generator=gen), torch.randint(0, 10, (2,), generator=gen))]
    depthwise = depthwise_names(model)
    failures, pruned = [], 0
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    for space_name in ("default", "sparse"):
        space = SearchSpace.load(space_name)
        study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=5))
        trial = study.ask()
        plan = plan_from_params(space, checked, space.suggest(trial, checked), seed=0)
        pruned += any(gp.structure != "keep" for _, gp in plan.groups)
        try:
            module = prune_model(model, plan, x, calib_loader=calib).make_permanent()
            failures += [f"{space_name}: {f}" for f in layer_faults(module, depthwise)]
            with torch.no_grad():
                assert module(x).shape == (1, 10)
            if result.dense_export_error is None:
                with tempfile.TemporaryDirectory() as tmp:
                    res = export_onnx(module, Path(tmp) / "m.onnx", x)
                assert res.max_abs_diff <= res.atol
        except Exception as exc:  # noqa: BLE001 - collected and reported
            failures.append(f"{space_name}: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}")
    return {"model": model, "side": side, "names": names, "check": result, "failures": failures, "pruned": pruned}


def _assert_zoo_model(ref: str, side: int) -> None:
    found = run_zoo_model(ref, side)
    assert len(found["names"]) == len(set(found["names"])), "group names are not unique"
    assert not found["failures"], f"{ref}:\n" + "\n".join(found["failures"])
    assert found["pruned"] >= 1
    check = found["check"]
    assert any("channel" in g.allowed for g in check.groups), f"{ref}: every group kept whole: {check.excluded}"
    if ref in KEPT_WHOLE_AT_MOST:
        whole = {n: why for n, why in check.excluded.items() if why.startswith("channel")}
        assert len(whole) <= KEPT_WHOLE_AT_MOST[ref], f"{ref} keeps {len(whole)} groups whole: {whole}"
    if check.dense_export_error is not None:
        from autoprune.pruning.export import dense_export_message

        line = dense_export_message(found["model"], (3, found["side"], found["side"]), check.dense_export_error)
        assert "--input-size" in line and "\n" not in line, line


@pytest.mark.parametrize("name", TV_NAMES)
def test_torchvision_model(name):
    if ZOO == "ci" and name not in TV_CI:
        pytest.skip("not in CI's sample (AUTOPRUNE_ZOO=families runs each family's smallest, =all every one)")
    if ZOO == "families" and name not in TV_FAMILIES:
        pytest.skip("same family as a model that runs (AUTOPRUNE_ZOO=all runs every one)")
    _assert_zoo_model(f"torchvision.models:{name}", SIDE.get(name, SMALL_SIDE))


@pytest.mark.parametrize("name", TIMM_SAMPLE)
def test_timm_model(name):
    pytest.importorskip("timm")
    if ZOO == "ci" and name not in TIMM_CI:
        pytest.skip("not in CI's sample (AUTOPRUNE_ZOO=families or =all runs it)")
    _assert_zoo_model(f"timm:{name}", SIDE.get(name, SMALL_SIDE))
