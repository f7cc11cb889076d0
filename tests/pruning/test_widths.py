"""Widths a model stores beside its layers follow the layers when they are pruned (a ViT of our own)."""

from __future__ import annotations

import torch
from torch import nn

from autoprune.pruning import GroupPlan, PruningPlan, check_groups, export_onnx, prune_model
from autoprune.pruning.widths import stored_widths


class StoredWidthViT(nn.Module):
    """torchvision's VisionTransformer in small: the patch embedding is reshaped with a stored ``hidden_dim``,
    then one pre-norm attention block on the residual stream."""

    def __init__(self, hidden_dim: int = 16, heads: int = 4) -> None:
        super().__init__()
        self.hidden_dim = hidden_dim
        self.conv_proj = nn.Conv2d(3, hidden_dim, 4, stride=4)
        self.class_token = nn.Parameter(torch.randn(1, 1, hidden_dim) * 0.1)
        self.ln = nn.LayerNorm(hidden_dim)
        self.attn = nn.MultiheadAttention(hidden_dim, heads, batch_first=True)
        self.mlp = nn.Sequential(nn.Linear(hidden_dim, 32), nn.GELU(), nn.Linear(32, hidden_dim))
        self.head = nn.Linear(hidden_dim, 10)

    def forward(self, x):
        n = x.shape[0]
        x = self.conv_proj(x).reshape(n, self.hidden_dim, -1).permute(0, 2, 1)
        x = torch.cat([self.class_token.expand(n, -1, -1), x], dim=1)
        y = self.ln(x)
        x = x + self.attn(y, y, y, need_weights=False)[0]
        x = x + self.mlp(x)
        return self.head(x[:, 0])


def test_a_stored_width_is_found_only_where_one_child_has_it():
    model = StoredWidthViT()
    assert [(w.attr, w.layer) for w in stored_widths(model)] == [("hidden_dim", model.conv_proj)]

    class Two(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.width, self.a, self.b = 8, nn.Conv2d(3, 8, 1), nn.Conv2d(8, 8, 1)

    assert stored_widths(Two()) == ()  # ambiguous: left alone


def test_the_residual_stream_of_a_vit_with_a_stored_width_is_pruned_and_exports(tmp_path):
    torch.manual_seed(0)
    model, x = StoredWidthViT().eval(), torch.randn(1, 3, 16, 16)
    result = check_groups(model, x, max_ratio=0.9)
    stream = {g.name: g for g in result.groups}["conv_proj"]
    assert "channel" in stream.allowed, result.excluded.get("conv_proj")
    assert stream.channel_multiple == 4  # one channel of each of the attention's 4 heads at a time
    plan = PruningPlan(tuple((g.name, GroupPlan("channel", 0.5) if g.name == "conv_proj" else GroupPlan("keep"))
                             for g in result.groups))
    pruned = prune_model(model, plan, x).module
    assert pruned.conv_proj.out_channels == 8 and pruned.hidden_dim == 8 and pruned.attn.embed_dim == 8
    assert model.hidden_dim == 16  # the user's model is untouched
    assert pruned(x).shape == (1, 10)
    assert export_onnx(pruned, tmp_path / "vit.onnx", x).max_abs_diff < 1e-4  # parity with PyTorch


class Scale(nn.Module):
    """timm's MetaFormer ``Scale`` (PoolFormer): a per-channel scale viewed with a stored broadcast shape."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.shape = (dim, 1, 1)
        self.scale = nn.Parameter(torch.rand(dim) + 0.5)

    def forward(self, x):
        return x * self.scale.view(self.shape)


class PoolFormerish(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, padding=1)
        self.mlp = nn.Sequential(nn.Conv2d(16, 32, 1), nn.GELU(), nn.Conv2d(32, 16, 1))
        self.layer_scale = Scale(16)
        self.head = nn.Linear(16, 10)

    def forward(self, x):
        x = self.stem(x)
        x = x + self.layer_scale(self.mlp(x))
        return self.head(x.mean((2, 3)))


def test_a_broadcast_shape_beside_a_per_channel_scale_follows_it():
    torch.manual_seed(0)
    model, x = PoolFormerish().eval(), torch.randn(1, 3, 8, 8)
    found = [(w.attr, w.param, w.at) for w in stored_widths(model)]
    assert ("shape", "scale", 0) in found
    result = check_groups(model, x, max_ratio=0.9)
    assert "channel" in {g.name: g for g in result.groups}["stem"].allowed, result.excluded.get("stem")
    plan = PruningPlan(tuple((g.name, GroupPlan("channel", 0.5) if g.name == "stem" else GroupPlan("keep"))
                             for g in result.groups))
    pruned = prune_model(model, plan, x).module
    assert pruned.layer_scale.shape == (8, 1, 1) and pruned(x).shape == (1, 10)
