"""Plain-torch reference architectures for the published Jetson Nano calibration.

They only provide kernel shapes (random weights; torchvision is not installed):
ResNet-34/50 (He et al. 2016), DenseNet-121 (Huang et al. 2017), SqueezeNet 1.1
(Iandola et al. 2016), VGG-16 (Simonyan & Zisserman 2015), all at 224×224 with
1000 classes, following torchvision's layer definitions. ResNet-18 and MobileNetV2
come from the model zoo.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["REFERENCE_NETS", "build_reference"]


def _cbr(cin: int, cout: int, k: int, s: int = 1, relu: bool = True) -> list[nn.Module]:
    mods: list[nn.Module] = [nn.Conv2d(cin, cout, k, s, k // 2, bias=False), nn.BatchNorm2d(cout)]
    return [*mods, nn.ReLU(inplace=True)] if relu else mods


class _Basic(nn.Module):
    expansion = 1

    def __init__(self, cin: int, width: int, stride: int) -> None:
        super().__init__()
        out = width * self.expansion
        self.body = nn.Sequential(*_cbr(cin, width, 3, stride), *_cbr(width, out, 3, 1, relu=False))
        self.short = nn.Sequential(*_cbr(cin, out, 1, stride, relu=False)) if stride != 1 or cin != out \
            else nn.Identity()
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x):
        return self.relu(self.body(x) + self.short(x))


class _Bottleneck(_Basic):
    expansion = 4

    def __init__(self, cin: int, width: int, stride: int) -> None:
        nn.Module.__init__(self)
        out = width * 4
        self.body = nn.Sequential(*_cbr(cin, width, 1), *_cbr(width, width, 3, stride),
                                  *_cbr(width, out, 1, relu=False))
        self.short = nn.Sequential(*_cbr(cin, out, 1, stride, relu=False)) if stride != 1 or cin != out \
            else nn.Identity()
        self.relu = nn.ReLU(inplace=True)


class _ResNet(nn.Module):
    def __init__(self, block, counts) -> None:
        super().__init__()
        layers: list[nn.Module] = [*_cbr(3, 64, 7, 2), nn.MaxPool2d(3, 2, 1)]
        cin = 64
        for i, (width, n) in enumerate(zip((64, 128, 256, 512), counts)):
            for j in range(n):
                layers.append(block(cin, width, 2 if i > 0 and j == 0 else 1))
                cin = width * block.expansion
        self.features = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1))
        self.fc = nn.Linear(cin, 1000)

    def forward(self, x):
        return self.fc(self.features(x).flatten(1))


class _DenseLayer(nn.Module):
    def __init__(self, cin: int, growth: int = 32) -> None:
        super().__init__()
        self.f = nn.Sequential(nn.BatchNorm2d(cin), nn.ReLU(inplace=True), nn.Conv2d(cin, 4 * growth, 1, bias=False),
                               nn.BatchNorm2d(4 * growth), nn.ReLU(inplace=True),
                               nn.Conv2d(4 * growth, growth, 3, 1, 1, bias=False))

    def forward(self, x):
        return torch.cat([x, self.f(x)], 1)


class _DenseNet121(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        layers: list[nn.Module] = [*_cbr(3, 64, 7, 2), nn.MaxPool2d(3, 2, 1)]
        c = 64
        for i, n in enumerate((6, 12, 24, 16)):
            for _ in range(n):
                layers.append(_DenseLayer(c))
                c += 32
            if i < 3:
                layers += [nn.BatchNorm2d(c), nn.ReLU(inplace=True), nn.Conv2d(c, c // 2, 1, bias=False),
                           nn.AvgPool2d(2, 2)]
                c //= 2
        self.features = nn.Sequential(*layers, nn.BatchNorm2d(c), nn.ReLU(inplace=True), nn.AdaptiveAvgPool2d(1))
        self.fc = nn.Linear(c, 1000)

    def forward(self, x):
        return self.fc(self.features(x).flatten(1))


class _Fire(nn.Module):
    def __init__(self, cin: int, s: int, e: int) -> None:
        super().__init__()
        self.sq = nn.Sequential(nn.Conv2d(cin, s, 1), nn.ReLU(inplace=True))
        self.e1 = nn.Sequential(nn.Conv2d(s, e, 1), nn.ReLU(inplace=True))
        self.e3 = nn.Sequential(nn.Conv2d(s, e, 3, 1, 1), nn.ReLU(inplace=True))

    def forward(self, x):
        x = self.sq(x)
        return torch.cat([self.e1(x), self.e3(x)], 1)


class _SqueezeNet11(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        pool = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.features = nn.Sequential(
            nn.Conv2d(3, 64, 3, 2), nn.ReLU(inplace=True), pool, _Fire(64, 16, 64), _Fire(128, 16, 64),
            nn.MaxPool2d(3, 2, ceil_mode=True), _Fire(128, 32, 128), _Fire(256, 32, 128),
            nn.MaxPool2d(3, 2, ceil_mode=True), _Fire(256, 48, 192), _Fire(384, 48, 192), _Fire(384, 64, 256),
            _Fire(512, 64, 256))
        self.classifier = nn.Sequential(nn.Conv2d(512, 1000, 1), nn.ReLU(inplace=True), nn.AdaptiveAvgPool2d(1))

    def forward(self, x):
        return self.classifier(self.features(x)).flatten(1)


class _VGG16(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c = 3
        for v in (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"):
            if v == "M":
                layers.append(nn.MaxPool2d(2, 2))
            else:
                layers += [nn.Conv2d(c, int(v), 3, 1, 1), nn.ReLU(inplace=True)]
                c = int(v)
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(nn.Linear(512 * 7 * 7, 4096), nn.ReLU(inplace=True), nn.Linear(4096, 4096),
                                        nn.ReLU(inplace=True), nn.Linear(4096, 1000))

    def forward(self, x):
        return self.classifier(self.features(x).flatten(1))


def _zoo(name: str):
    def make() -> nn.Module:
        from autoprune.models import build_model

        return build_model(name, num_classes=1000)

    return make


#: name → factory of the reference architectures.
REFERENCE_NETS = {
    "resnet18": _zoo("resnet18"),
    "resnet34": lambda: _ResNet(_Basic, (3, 4, 6, 3)),
    "resnet50": lambda: _ResNet(_Bottleneck, (3, 4, 6, 3)),
    "densenet121": _DenseNet121,
    "squeezenet1_1": _SqueezeNet11,
    "vgg16": _VGG16,
    "mobilenet_v2": _zoo("mobilenet_v2"),
}


def build_reference(name: str) -> nn.Module:
    """Build reference architecture ``name`` (eval mode, random weights)."""
    return REFERENCE_NETS[name]().eval()
