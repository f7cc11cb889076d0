"""torchvision and timm models by reference: built with the data's classes, channels and input size."""

from __future__ import annotations

import pytest
import torch

from autoprune.errors import ConfigError
from autoprune.models import build_model
from autoprune.models.external import import_torchvision, is_external, required_input_size


def _tv():
    try:
        return import_torchvision()
    except ConfigError as exc:
        pytest.skip(str(exc))


def test_references_are_recognised():
    assert is_external("torchvision.models:resnet18") and is_external("timm:ghostnet_100")
    assert not is_external("resnet20") and not is_external("my_models.py:net")


def test_torchvision_imports_even_when_its_c_extension_does_not_load():
    tv = _tv()
    assert "mobilenet_v3_small" in tv.models.list_models(module=tv.models)


@pytest.mark.parametrize("in_channels", [1, 3])
def test_a_torchvision_model_gets_the_datas_classes_and_channels(in_channels):
    _tv()
    model = build_model("torchvision.models:mobilenet_v3_small", num_classes=7, in_channels=in_channels).eval()
    with torch.no_grad():
        out = model(torch.randn(2, in_channels, 32, 32))
    assert out.shape == (2, 7)
    assert next(m for m in model.modules() if isinstance(m, torch.nn.Conv2d)).in_channels == in_channels


def test_a_vit_is_built_for_the_datas_input_size():
    _tv()
    model = build_model("torchvision.models:vit_b_16", num_classes=10, in_channels=1, input_size=32).eval()
    assert required_input_size(model) == 32
    with torch.no_grad():
        assert model(torch.randn(1, 1, 32, 32)).shape == (1, 10)


def test_a_timm_model_gets_classes_channels_and_size():
    _tv()
    pytest.importorskip("timm")
    model = build_model("timm:deit_tiny_patch16_224", num_classes=5, in_channels=1, input_size=32).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 1, 32, 32)).shape == (1, 5)
    model = build_model("timm:lcnet_050", num_classes=5, in_channels=2, input_size=32).eval()  # no img_size
    with torch.no_grad():
        assert model(torch.randn(1, 2, 32, 32)).shape == (1, 5)


@pytest.mark.parametrize("ref, words", [
    ("torchvision.models:mobilenet_v3_smal", "mobilenet_v3_small"),
    ("torchvision.models:fasterrcnn_resnet50_fpn", "no classification model"),
    ("timm:ghostnet_1000", "ghostnet_100"),
])
def test_an_unknown_name_is_one_line_with_close_matches(ref, words):
    _tv()
    if ref.startswith("timm:"):
        pytest.importorskip("timm")
    with pytest.raises(ConfigError) as info:
        build_model(ref)
    assert words in str(info.value) and "\n" not in str(info.value)
