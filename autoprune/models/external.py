"""Models from torchvision and timm, by reference: ``torchvision.models:NAME`` and ``timm:NAME``.

Both libraries are optional (``pip install --no-deps torchvision timm``, so the CPU torch stays). Models
are built with random weights (nothing is downloaded), ``num_classes`` set, and ``in_channels`` mapped:
timm takes ``in_chans``; a torchvision model's first convolution is rebuilt for the data's channels.

torchvision's only wheel for this torch may be a CUDA build whose C extension does not load beside the
CPU torch. ``import torchvision`` then fails on ``register_fake("torchvision::nms")``, because the
``nms``/``qnms`` operators were never defined. :func:`import_torchvision` defines their schemas first
(no kernels: detection ops stay unavailable, classification models do not use them).
"""

from __future__ import annotations

import importlib
from typing import Any

from torch import nn

from autoprune.errors import ConfigError

#: The reference prefixes this module resolves.
TORCHVISION_PREFIX = "torchvision.models:"
TIMM_PREFIX = "timm:"
_INSTALL = "pip install --no-deps torchvision==0.28.0 timm==1.0.31 && pip install pyyaml safetensors huggingface_hub"
_SCHEMAS = {
    "nms": "nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "qnms": "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
}
_LIBRARY: list[Any] = []  # keeps the torch.library.Library that holds the schemas alive


def is_external(ref: str) -> bool:
    """Whether ``ref`` names a torchvision or timm model."""
    return ref.startswith((TORCHVISION_PREFIX, TIMM_PREFIX))


def import_torchvision() -> Any:
    """``import torchvision``, defining the ``nms``/``qnms`` schemas when its C extension cannot load.

    Raises:
        ConfigError: If torchvision is not installed, or fails to import for another reason.
    """
    import sys

    import torch

    if "torchvision" in sys.modules and hasattr(sys.modules["torchvision"], "models"):
        return sys.modules["torchvision"]
    try:
        import torchvision
    except ModuleNotFoundError:
        raise ConfigError(f"torchvision is not installed; install it beside the CPU torch: {_INSTALL}") from None
    except RuntimeError as exc:
        if "torchvision::" not in str(exc):
            raise ConfigError(f"torchvision fails to import: {exc}") from None
        for name in [k for k in sys.modules if k == "torchvision" or k.startswith("torchvision.")]:
            del sys.modules[name]
        if not _LIBRARY:
            lib = torch.library.Library("torchvision", "FRAGMENT")
            for schema in _SCHEMAS.values():
                try:
                    lib.define(schema)
                except RuntimeError:  # already defined by a loaded extension
                    pass
            _LIBRARY.append(lib)
        try:
            import torchvision
        except Exception as exc2:  # noqa: BLE001 - one line whatever the import raises
            raise ConfigError(f"torchvision fails to import: {type(exc2).__name__}: {exc2}") from None
    return torchvision


def import_timm() -> Any:
    """``import timm`` (after :func:`import_torchvision`, which timm imports)."""
    try:
        import_torchvision()
    except ConfigError:
        pass  # timm runs without torchvision for most models
    try:
        return importlib.import_module("timm")
    except ModuleNotFoundError as exc:
        raise ConfigError(f"timm cannot be imported ({exc}); install it beside the CPU torch: {_INSTALL}") from None
    except Exception as exc:  # noqa: BLE001
        raise ConfigError(f"timm fails to import: {type(exc).__name__}: {exc}") from None


def torchvision_names() -> list[str]:
    """Every classification builder in ``torchvision.models`` (not detection, segmentation, video...)."""
    tv = import_torchvision()
    return sorted(tv.models.list_models(module=tv.models))


def build_external(ref: str, num_classes: int = 10, in_channels: int = 3, input_size: int | None = None) -> nn.Module:
    """Build ``torchvision.models:NAME`` or ``timm:NAME`` with random weights.

    Args:
        ref: The reference.
        num_classes: Classifier outputs.
        in_channels: Input channels (timm's ``in_chans``; torchvision's first conv is rebuilt).
        input_size: Build models that fix their input side (ViT's ``image_size``, MaxViT's ``input_size``,
            timm's ``img_size``) for this square side; None: their own default.

    Raises:
        ConfigError: For a library that is not installed or an unknown model name (with close matches).
    """
    if ref.startswith(TIMM_PREFIX):
        name = ref[len(TIMM_PREFIX):]
        timm = import_timm()
        if not timm.is_model(name):
            close = timm.list_models(f"*{name[:5]}*")[:8]
            raise ConfigError(f"timm has no model {name!r}" + (f"; close: {', '.join(close)}" if close else "")
                              + "; list them with python -c \"import timm; print(timm.list_models())\"")
        kwargs = {"pretrained": False, "num_classes": num_classes, "in_chans": in_channels}
        try:
            if input_size:
                try:
                    return timm.create_model(name, img_size=input_size, **kwargs)
                except TypeError:  # a model with no fixed input size takes no img_size
                    pass
            return timm.create_model(name, **kwargs)
        except Exception as exc:  # noqa: BLE001
            raise ConfigError(f"timm cannot build {name!r}: {type(exc).__name__}: {exc}") from None
    name = ref[len(TORCHVISION_PREFIX):]
    tv = import_torchvision()
    names = tv.models.list_models(module=tv.models)
    if name not in names:
        import difflib

        close = difflib.get_close_matches(name, names, n=5)
        raise ConfigError(f"torchvision.models has no classification model {name!r}"
                          + (f"; close: {', '.join(close)}" if close else f"; valid: {', '.join(sorted(names))}"))
    size_kw = {}
    if input_size and name.startswith("vit_"):
        size_kw = {"image_size": input_size}
    elif input_size and name.startswith("maxvit_"):
        size_kw = {"input_size": (input_size, input_size)}
    try:
        model = tv.models.get_model(name, weights=None, num_classes=num_classes, **size_kw)
    except Exception as exc:  # noqa: BLE001
        raise ConfigError(f"torchvision cannot build {name!r}: {type(exc).__name__}: {exc}") from None
    if in_channels != 3:
        _map_input_channels(model, in_channels, ref)
    return model


def _map_input_channels(model: nn.Module, in_channels: int, ref: str) -> None:
    """Rebuild the first convolution (in module order) that reads 3 channels for ``in_channels``."""
    for parent in model.modules():
        for child_name, child in parent.named_children():
            if isinstance(child, nn.Conv2d):
                if child.in_channels != 3 or child.groups != 1:
                    raise ConfigError(f"{ref}: its first convolution reads {child.in_channels} channels, "
                                      f"so it cannot be mapped to {in_channels}")
                setattr(parent, child_name, nn.Conv2d(
                    in_channels, child.out_channels, child.kernel_size, child.stride, child.padding,
                    child.dilation, child.groups, child.bias is not None, child.padding_mode))
                return
    raise ConfigError(f"{ref} has no 2-D convolution to map to {in_channels} input channels")


#: Input sides some models need (a fixed patch grid or window size); others run at the data's size.
def required_input_size(model: nn.Module) -> int | None:
    """The square side a model must see, when it fixes one (ViT, Swin, MaxViT...), else None."""
    for attr in ("image_size", "img_size"):
        v = getattr(model, attr, None)
        if isinstance(v, int):
            return v
        if isinstance(v, (tuple, list)) and v and isinstance(v[0], int):
            return int(v[0])
    embed = getattr(model, "patch_embed", None)
    v = getattr(embed, "img_size", None)
    if isinstance(v, (tuple, list)) and v and getattr(embed, "strict_img_size", True):
        return int(v[0])
    return None


__all__ = ["build_external", "import_timm", "import_torchvision", "is_external", "required_input_size",
           "torchvision_names"]
