"""Small models of architectures the built-in zoo does not have, for the pruning-robustness tests.

Each ``build_*`` returns ``(model, example_input)`` in eval mode, sized to stay cheap (16x16 or
32x32 inputs, 10 classes). ``FOREIGN_MODELS`` maps a name to its builder.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from tests.fixtures import usermodel


def _cbr(cin: int, cout: int, k: int = 3, stride: int = 1, groups: int = 1, act: type = nn.ReLU) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False),
                         nn.BatchNorm2d(cout), act())


class SE(nn.Module):
    """Squeeze-and-excitation gate."""

    def __init__(self, c: int, r: int = 4, gate: type = nn.Hardsigmoid) -> None:
        super().__init__()
        self.fc = nn.Sequential(nn.Linear(c, c // r), nn.ReLU(), nn.Linear(c // r, c), gate())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.fc(x.mean((2, 3)))[:, :, None, None]


class DenseSepNet(nn.Module):
    """DenseNet-style concatenation, depthwise-separable convs, a groups=4 conv and SE."""

    def __init__(self, num_classes: int = 10, growth: int = 8) -> None:
        super().__init__()
        self.stem = _cbr(3, 16)
        ch = 16
        self.blocks = nn.ModuleList()
        for _ in range(3):
            self.blocks.append(nn.Sequential(
                nn.BatchNorm2d(ch), nn.ReLU(),
                nn.Conv2d(ch, ch, 3, padding=1, groups=ch, bias=False),  # depthwise
                nn.Conv2d(ch, growth, 1, bias=False),  # pointwise
            ))
            ch += growth
        self.grouped = _cbr(ch, 32, 3, stride=2, groups=4)  # 40 -> 32, groups=4
        self.se = SE(32)
        self.fc = nn.Linear(32, num_classes)

    def forward(self, x):
        x = self.stem(x)
        for block in self.blocks:
            x = torch.cat([x, block(x)], 1)
        x = self.se(self.grouped(x))
        return self.fc(x.mean((2, 3)))


class InceptionNet(nn.Module):
    """Inception-style parallel branches joined by ``torch.cat``, twice."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.stem = _cbr(3, 16)
        self.inc1 = _Inception(16, (8, 12, 4, 8))
        self.inc2 = _Inception(32, (16, 8, 8, 8))
        self.fc = nn.Linear(40, num_classes)

    def forward(self, x):
        x = self.inc2(nn.functional.max_pool2d(self.inc1(self.stem(x)), 2))
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


class _Inception(nn.Module):
    def __init__(self, cin: int, widths: tuple[int, int, int, int]) -> None:
        super().__init__()
        a, b, c, d = widths
        self.b1 = _cbr(cin, a, 1)
        self.b3 = nn.Sequential(_cbr(cin, b // 2, 1), _cbr(b // 2, b, 3))
        self.b5 = nn.Sequential(_cbr(cin, c, 1), _cbr(c, c, 3), _cbr(c, c, 3))
        self.pool = nn.Sequential(nn.MaxPool2d(3, 1, 1), _cbr(cin, d, 1))

    def forward(self, x):
        return torch.cat([self.b1(x), self.b3(x), self.b5(x), self.pool(x)], 1)


class ChannelShuffle(nn.Module):
    """ShuffleNet's channel shuffle: view into groups, transpose, flatten back."""

    def __init__(self, groups: int) -> None:
        super().__init__()
        self.groups = groups

    def forward(self, x):
        n, c, h, w = x.shape
        return x.view(n, self.groups, c // self.groups, h, w).transpose(1, 2).reshape(n, c, h, w)


class _ResNeXtBlock(nn.Module):
    def __init__(self, c: int, width: int, groups: int) -> None:
        super().__init__()
        self.reduce = _cbr(c, width, 1)
        self.grouped = _cbr(width, width, 3, groups=groups)
        self.shuffle = ChannelShuffle(groups)
        self.expand = nn.Sequential(nn.Conv2d(width, c, 1, bias=False), nn.BatchNorm2d(c))

    def forward(self, x):
        return torch.relu(x + self.expand(self.shuffle(self.grouped(self.reduce(x)))))


class ResNeXtShuffleNet(nn.Module):
    """ResNeXt-style grouped bottlenecks (groups=8) with a channel shuffle between grouped convs."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.stem = _cbr(3, 32, stride=2)
        self.block1 = _ResNeXtBlock(32, 32, 8)
        self.block2 = _ResNeXtBlock(32, 32, 4)
        self.fc = nn.Linear(32, num_classes)

    def forward(self, x):
        return self.fc(self.block2(self.block1(self.stem(x))).mean((2, 3)))


class _InvertedResidual(nn.Module):
    def __init__(self, cin: int, exp: int, cout: int, stride: int) -> None:
        super().__init__()
        self.use_res = stride == 1 and cin == cout
        self.body = nn.Sequential(
            _cbr(cin, exp, 1, act=nn.Hardswish),
            _cbr(exp, exp, 3, stride, groups=exp, act=nn.Hardswish),  # depthwise
            SE(exp),
            nn.Conv2d(exp, cout, 1, bias=False), nn.BatchNorm2d(cout),
        )

    def forward(self, x):
        y = self.body(x)
        return x + y if self.use_res else y


class MobileNetV3Tiny(nn.Module):
    """MobileNetV3-style inverted residuals: hard-swish, depthwise, SE, a residual add, a hard-swish head."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.stem = _cbr(3, 16, stride=2, act=nn.Hardswish)
        self.blocks = nn.Sequential(
            _InvertedResidual(16, 48, 24, 2),
            _InvertedResidual(24, 72, 24, 1),
        )
        self.head = nn.Sequential(nn.Linear(24, 64), nn.Hardswish(), nn.Dropout(0.2), nn.Linear(64, num_classes))

    def forward(self, x):
        return self.head(self.blocks(self.stem(x)).mean((2, 3)))


class _HandAttention(nn.Module):
    """Multi-head self-attention written by hand (separate q, k, v projections)."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.q, self.k, self.v = nn.Linear(dim, dim), nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x):
        b, n, _ = x.shape
        q, k, v = (t(x).reshape(b, n, self.heads, -1).transpose(1, 2) for t in (self.q, self.k, self.v))
        att = torch.softmax(q @ k.transpose(-2, -1) * q.shape[-1] ** -0.5, dim=-1)
        return self.proj((att @ v).transpose(1, 2).reshape(b, n, -1))


class _ViTBlock(nn.Module):
    def __init__(self, dim: int, heads: int, hand: bool) -> None:
        super().__init__()
        self.hand = hand
        self.ln1 = nn.LayerNorm(dim)
        self.attn = _HandAttention(dim, heads) if hand else nn.MultiheadAttention(dim, heads, batch_first=True)
        self.ln2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))

    def forward(self, x):
        y = self.ln1(x)
        x = x + (self.attn(y) if self.hand else self.attn(y, y, y)[0])
        return x + self.mlp(self.ln2(x))


class TinyViT(nn.Module):
    """A two-block ViT: patch embedding, class token, position embedding, one ``nn.MultiheadAttention``
    block and one hand-written attention block, LayerNorm, GELU MLPs."""

    def __init__(self, num_classes: int = 10, dim: int = 32, heads: int = 4, patch: int = 4, size: int = 16) -> None:
        super().__init__()
        self.embed = nn.Conv2d(3, dim, patch, patch)
        self.cls = nn.Parameter(torch.randn(1, 1, dim) * 0.02)
        self.pos = nn.Parameter(torch.randn(1, (size // patch) ** 2 + 1, dim) * 0.02)
        self.blocks = nn.Sequential(_ViTBlock(dim, heads, hand=False), _ViTBlock(dim, heads, hand=True))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, x):
        x = self.embed(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls.expand(x.shape[0], -1, -1), x], 1) + self.pos
        return self.head(self.norm(self.blocks(x))[:, 0])


class SharedConvNet(nn.Module):
    """One conv layer applied twice (shared weights), plus a shared linear in the head."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.stem = _cbr(3, 16)
        self.shared = nn.Conv2d(16, 16, 3, padding=1, bias=False)
        self.bn1, self.bn2 = nn.BatchNorm2d(16), nn.BatchNorm2d(16)
        self.mid = _cbr(16, 24, stride=2)
        self.fc_shared = nn.Linear(24, 24)
        self.fc = nn.Linear(24, num_classes)

    def forward(self, x):
        x = self.stem(x)
        x = torch.relu(self.bn1(self.shared(x)))
        x = torch.relu(self.bn2(self.shared(x))) + x
        v = self.mid(x).mean((2, 3))
        v = torch.relu(self.fc_shared(torch.relu(self.fc_shared(v))))
        return self.fc(v)


def _build(cls: type[nn.Module], size: int) -> Callable[[], tuple[nn.Module, torch.Tensor]]:
    def build() -> tuple[nn.Module, torch.Tensor]:
        torch.manual_seed(0)
        model = cls().eval()
        return model, torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(1))

    build.__name__ = f"build_{cls.__name__}"
    return build


FOREIGN_MODELS: dict[str, Callable[[], tuple[nn.Module, torch.Tensor]]] = {
    "densenet_sep": _build(DenseSepNet, 16),
    "inception": _build(InceptionNet, 16),
    "resnext_shuffle": _build(ResNeXtShuffleNet, 16),
    "mobilenetv3": _build(MobileNetV3Tiny, 32),
    "vit": _build(TinyViT, 16),
    "shared": _build(SharedConvNet, 16),
    "usermodel": _build(usermodel.UserNet, 32),
}
