"""A VGG-style plain CNN (Simonyan & Zisserman, 2015) with BN, for 32×32 inputs."""

from __future__ import annotations

from torch import nn

CONFIGS = {
    "vgg11": (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"),
    "vgg-small": (32, 32, "M", 64, 64, "M", 128, 128, "M"),
}


class VGG(nn.Module):
    """Conv-BN-ReLU stacks with max-pooling, then a small classifier."""

    def __init__(self, config: str = "vgg11", num_classes: int = 10, in_channels: int = 3) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        ch = in_channels
        for v in CONFIGS[config]:
            if v == "M":
                layers.append(nn.MaxPool2d(2))
            else:
                layers += [nn.Conv2d(ch, v, 3, padding=1, bias=False), nn.BatchNorm2d(v), nn.ReLU(inplace=True)]
                ch = v
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(nn.Linear(ch, 128), nn.ReLU(inplace=True), nn.Linear(128, num_classes))

    def forward(self, x):
        return self.classifier(self.pool(self.features(x)).flatten(1))


def vgg11(num_classes: int = 10, in_channels: int = 3) -> VGG:
    """VGG-11 with BN for 32×32 inputs."""
    return VGG("vgg11", num_classes, in_channels)


def vgg_small(num_classes: int = 10, in_channels: int = 3) -> VGG:
    """A six-conv VGG-style plain CNN for 32×32 inputs (fast to train and search)."""
    return VGG("vgg-small", num_classes, in_channels)
