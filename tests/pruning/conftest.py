"""Shared fixtures for the pruning tests: small models, a concatenation model, digits."""

from __future__ import annotations

import pytest
import torch
from torch import nn

torch.set_num_threads(1)


class TinyDenseNet(nn.Module):
    """A DenseNet-style model: each block's output is concatenated to its input."""

    def __init__(self, num_classes: int = 10, growth: int = 8) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, padding=1, bias=False)
        self.bn0 = nn.BatchNorm2d(16)
        ch = 16
        self.blocks = nn.ModuleList()
        for _ in range(3):
            self.blocks.append(
                nn.Sequential(nn.Conv2d(ch, growth, 3, padding=1, bias=False), nn.BatchNorm2d(growth), nn.ReLU())
            )
            ch += growth
        self.trans = nn.Conv2d(ch, 32, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(32)
        self.fc = nn.Linear(32, num_classes)

    def forward(self, x):
        x = torch.relu(self.bn0(self.stem(x)))
        for block in self.blocks:
            x = torch.cat([x, block(x)], 1)
        x = torch.relu(self.bn1(self.trans(x)))
        return self.fc(x.mean((2, 3)))


@pytest.fixture(scope="session")
def digits():
    from autoprune.data import load_digits

    return load_digits()


@pytest.fixture(scope="session")
def trained_resnet20(digits):
    """ResNet-20 trained briefly on digits (>90 % validation accuracy)."""
    from autoprune.models import build_model
    from autoprune.pruning import FinetuneConfig, finetune

    torch.manual_seed(0)
    model = build_model("resnet20", num_classes=digits.num_classes)
    config = FinetuneConfig(epochs=3, lr=0.1, weight_decay=1e-4, lr_schedule="one-cycle")
    finetune(model, digits.loader("train", 64), config)
    return model.eval()


@pytest.fixture(scope="session")
def model_factory():
    """``model_factory(name) -> (model, example_input)``."""
    return make_model


def make_model(name: str) -> tuple[nn.Module, torch.Tensor]:
    """A model and an example input, sized to keep the tests cheap."""
    from autoprune.models import build_model

    torch.manual_seed(0)
    if name == "densenet":
        return TinyDenseNet().eval(), torch.randn(1, 3, 16, 16)
    size = {"resnet20": 32, "resnet18": 64, "mobilenet_v2": 64, "vgg": 32}[name]
    return build_model(name, num_classes=10).eval(), torch.randn(1, 3, size, size)
