"""The built-in model zoo, and loading of users' models and checkpoints.

Models are addressed by name (``resnet20``), or a user model as
``package.module:function`` or ``path/to/file.py:function`` returning an
``nn.Module``. Checkpoints are always loaded with ``weights_only=True``.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from autoprune.errors import ConfigError
from autoprune.registry import Registry

from .cifar_resnet import resnet20, resnet56
from .imagenet import mobilenet_v2, resnet18
from .vgg import vgg11, vgg_small

__all__ = ["ZOO", "ModelSpec", "build_model", "load_checkpoint", "model_names", "resolve_callable"]


@dataclass(frozen=True)
class ModelSpec:
    """A zoo entry.

    Attributes:
        name: The name users type.
        factory: ``factory(num_classes=..., in_channels=...) -> nn.Module``.
        input_size: The natural square input side in pixels (32 or 224).
        description: One line for ``--help`` and listings.
    """

    name: str
    factory: Callable[..., nn.Module]
    input_size: int
    description: str


ZOO: Registry[ModelSpec] = Registry("model")
for _spec in (
    ModelSpec("resnet20", resnet20, 32, "CIFAR-style ResNet-20 (small inputs)"),
    ModelSpec("resnet56", resnet56, 32, "CIFAR-style ResNet-56 (small inputs)"),
    ModelSpec("resnet18", resnet18, 224, "ImageNet-style ResNet-18 (224x224, latency work)"),
    ModelSpec("mobilenet_v2", mobilenet_v2, 224, "ImageNet-style MobileNetV2 (224x224, latency work)"),
    ModelSpec("vgg11", vgg11, 32, "VGG-11 with BN, plain CNN for small inputs; the default"),
    ModelSpec("vgg", vgg_small, 32, "small VGG-style plain CNN (6 convs) for small inputs"),
):
    ZOO.register(_spec.name, _spec)


#: A model that is not in the zoo (a user's own) is used at this square side unless told otherwise.
DEFAULT_INPUT_SIZE = 32


#: Built-in data sets of small images, which models see at no more than 32 px by default.
SMALL_IMAGE_DATA = ("digits", "fashion-mnist")


def natural_input_size(model_ref: str, data_ref: str | None = None) -> int:
    """The square input side a model is used at when the user gives no ``--input-size``: the one rule.

    A zoo model's own size, :data:`DEFAULT_INPUT_SIZE` for a user's model; on the built-in small-image
    sets (:data:`SMALL_IMAGE_DATA`: the 8×8 digits, the 28×28 Fashion-MNIST) capped at 32 px, so a 224-px
    ImageNet model does not upsample 70,000 tiny images sevenfold (about 9 GB).
    """
    size = ZOO.get(model_ref).input_size if model_ref in ZOO else DEFAULT_INPUT_SIZE
    return min(size, 32) if data_ref in SMALL_IMAGE_DATA else size


def model_names() -> list[str]:
    """Return the zoo's model names."""
    return ZOO.names()


def resolve_callable(spec: str, what: str) -> Callable:
    """Resolve ``package.module:function`` or ``path/to/file.py:function``.

    Args:
        spec: The reference.
        what: What it is for, used in error messages (``"model"``, ``"data"``).

    Raises:
        ConfigError: If the reference is malformed, the module or file cannot be
            imported, or the attribute is missing or not callable.
    """
    if spec.count(":") != 1 or not all(spec.split(":")):
        raise ConfigError(
            f"malformed {what} reference {spec!r}: use 'package.module:function' or 'path/to/file.py:function'"
        )
    mod_ref, func_name = spec.split(":")
    try:
        if mod_ref.endswith(".py"):
            path = Path(mod_ref)
            if not path.is_file():
                raise ConfigError(f"{what} file not found: {path}")
            mod_name = f"_autoprune_user_{abs(hash(str(path.resolve())))}"
            loader_spec = importlib.util.spec_from_file_location(mod_name, path)
            module = importlib.util.module_from_spec(loader_spec)  # type: ignore[arg-type]
            sys.modules[mod_name] = module
            loader_spec.loader.exec_module(module)  # type: ignore[union-attr]
        else:
            module = importlib.import_module(mod_ref)
    except ConfigError:
        raise
    except Exception as exc:  # noqa: BLE001 - user code can raise anything
        raise ConfigError(f"cannot import {what} module {mod_ref!r}: {exc.__class__.__name__}: {exc}") from None
    func = getattr(module, func_name, None)
    if not callable(func):
        raise ConfigError(f"{mod_ref!r} has no callable {func_name!r} for the {what}")
    return func


def build_model(spec: str, num_classes: int = 10, in_channels: int = 3, input_size: int | None = None) -> nn.Module:
    """Build a zoo model by name, a torchvision or timm model, or a user model from a reference.

    Args:
        spec: A zoo name, ``torchvision.models:NAME``, ``timm:NAME``, ``package.module:function`` or
            ``file.py:function``.
        num_classes: Classifier outputs (zoo, torchvision and timm models; passed to user functions that
            accept it).
        in_channels: Input channels (likewise).
        input_size: The square input side, for torchvision and timm models that fix one (ViT, Swin, MaxViT):
            they are built for it.

    Raises:
        UnknownNameError: For an unknown zoo name (lists the valid ones).
        ConfigError: For a bad user reference, or a function that returns no ``nn.Module``.
    """
    if ":" not in spec:
        return ZOO.get(spec).factory(num_classes=num_classes, in_channels=in_channels)
    from .external import build_external, is_external

    if is_external(spec):
        return build_external(spec, num_classes=num_classes, in_channels=in_channels, input_size=input_size)
    func = resolve_callable(spec, "model")
    params = inspect.signature(func).parameters
    kwargs = {k: v for k, v in (("num_classes", num_classes), ("in_channels", in_channels)) if k in params}
    try:
        model = func(**kwargs)
    except Exception as exc:  # noqa: BLE001
        raise ConfigError(f"model function {spec!r} failed: {exc.__class__.__name__}: {exc}") from None
    if not isinstance(model, nn.Module):
        raise ConfigError(f"model function {spec!r} returned {type(model).__name__}, not an nn.Module")
    return model


def load_checkpoint(model: nn.Module, path: str | Path) -> nn.Module:
    """Load a state dict into ``model`` with ``torch.load(weights_only=True)``.

    A dict with a ``"state_dict"`` or ``"model"`` entry is unwrapped.

    Raises:
        ConfigError: If the file is missing, unreadable, not a state dict, or
            does not fit the model.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"checkpoint not found: {path}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - unpickling errors vary
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else exc.__class__.__name__
        raise ConfigError(f"checkpoint {path} cannot be loaded safely (weights_only=True): {first}") from None
    if isinstance(obj, dict):
        for key in ("state_dict", "model"):
            if isinstance(obj.get(key), dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ConfigError(f"checkpoint {path} is not a state dict (a mapping of names to tensors)")
    try:
        model.load_state_dict(obj)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0]
        raise ConfigError(f"checkpoint {path} does not fit the model: {first}") from None
    return model
