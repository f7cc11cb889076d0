"""Prune, evaluate and export real models under channel, unstructured and N:M plans."""

from __future__ import annotations

import onnx
import pytest
import torch
from torch import nn

from autoprune.pruning import PruningPlan, discover_groups, evaluate, export_onnx, prune_model

MODELS = ["resnet20", "resnet18", "mobilenet_v2", "densenet"]
STRUCTURES = ["channel", "unstructured", "nm"]


def _batch(x: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(1)
    return [(torch.randn((4, *x.shape[1:]), generator=g), torch.randint(0, 10, (4,), generator=g))]


@pytest.fixture(scope="module")
def dense_results(model_factory, tmp_path_factory):
    out = {}
    for name in MODELS:
        model, x = model_factory(name)
        path = tmp_path_factory.mktemp(name) / "dense.onnx"
        out[name] = (evaluate(model, _batch(x), x), export_onnx(model, path, x))
    return out


@pytest.mark.parametrize("structure", STRUCTURES)
@pytest.mark.parametrize("name", MODELS)
def test_prune_and_export(name, structure, model_factory, dense_results, tmp_path):
    model, x = model_factory(name)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    groups = discover_groups(model, x)
    plan = PruningPlan.uniform(groups, structure, 0.5)
    assert any(gp.structure == structure for _, gp in plan.groups), "the plan prunes something"
    pruned = prune_model(model, plan, x)
    ev = evaluate(pruned, _batch(x), x)
    res = export_onnx(pruned, tmp_path / "m.onnx", x)
    dense_ev, dense_res = dense_results[name]

    # The input model is never modified.
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    # ONNX parity (checked inside export_onnx; the stated tolerance is recorded) and a valid file.
    assert res.max_abs_diff <= res.atol
    assert res.file_bytes == (tmp_path / "m.onnx").stat().st_size
    onnx.checker.check_model(onnx.load(str(tmp_path / "m.onnx")))
    # No zero-width layer.
    for m in pruned.module.modules():
        if isinstance(m, nn.Conv2d):
            assert m.out_channels >= 1 and m.in_channels >= 1
        if isinstance(m, nn.Linear):
            assert m.out_features >= 1 and m.in_features >= 1
    assert all(k >= 1 for k in pruned.kept_channels.values())

    if structure == "channel":
        assert ev.params < dense_ev.params
        assert ev.macs < dense_ev.macs
        assert res.file_bytes < dense_res.file_bytes
        for g in groups:
            gp = plan.get(g.name)
            if gp.structure == "channel":
                expected = round(g.channels * (1 - gp.ratio))
                assert abs(pruned.kept_channels[g.name] - expected) <= 1, g.name
            else:
                assert pruned.kept_channels[g.name] == g.channels
        assert not pruned.masks
    else:
        assert ev.params == dense_ev.params
        assert ev.macs == dense_ev.macs
        assert ev.nonzero_params < dense_ev.nonzero_params
        assert pruned.kept_channels == {g.name: g.channels for g in groups}
        masked = {n for g in groups if plan.get(g.name).structure == structure for n in g.members}
        assert set(pruned.masks) == masked  # zeros live in exactly the members' weights
        for member, mask in pruned.masks.items():
            assert abs((1 - mask.float().mean().item()) - 0.5) < 0.02, member
        if structure == "nm":
            assert set(pruned.nm_members) == masked
            assert ev.sparse_size_bytes < dense_ev.sparse_size_bytes
            for member, mask in pruned.masks.items():
                blocks = mask.movedim(1, -1).reshape(-1, 4)
                assert bool((blocks.sum(1) == 2).all()), member
        # Baked zeros survive in the exported file's weights.
        assert res.params == dense_res.params


def test_groups_resnet20_couple_the_residual_stream(model_factory):
    model, x = model_factory("resnet20")
    groups = {g.name: g for g in discover_groups(model, x)}
    stem = groups["conv1"]
    assert stem.members == ("conv1", "layers.0.conv2", "layers.1.conv2", "layers.2.conv2")
    assert "layers.3.shortcut.0" in groups["layers.3.conv2"].members
    assert "channel" not in groups["fc"].allowed and "unstructured" in groups["fc"].allowed
    assert "nm" not in stem.allowed  # conv1 sees 3 input channels
    assert [g.name for g in discover_groups(model, x)] == list(groups)  # deterministic order


def test_groups_depthwise_and_concat(model_factory):
    model, x = model_factory("mobilenet_v2")
    groups = discover_groups(model, x)
    dw = [g for g in groups if g.kind == "depthwise"]
    assert dw and all("nm" not in g.allowed for g in dw)
    model, x = model_factory("densenet")
    names = [g.name for g in discover_groups(model, x)]
    assert names == ["stem", "blocks.0.0", "blocks.1.0", "blocks.2.0", "trans", "fc"]


class _Unexportable(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)

    def forward(self, x):
        return torch.histc(self.conv(x), 4)  # aten::histc has no ONNX export


def test_export_failures_are_export_errors(model_factory, tmp_path):
    from autoprune.errors import ExportError

    with pytest.raises(ExportError, match=r"torch\.onnx\.export failed"):
        export_onnx(_Unexportable().eval(), tmp_path / "bad.onnx", torch.randn(1, 3, 8, 8))
    assert not (tmp_path / "bad.onnx").exists()
    model, x = model_factory("resnet20")
    with pytest.raises(ExportError, match="differs from PyTorch"):
        export_onnx(model, tmp_path / "strict.onnx", x * 100, atol=1e-12)
    assert not (tmp_path / "strict.onnx").exists()
