"""Widths a model stores beside its layers, kept in step when Torch-Pruning narrows those layers.

Torch-Pruning resizes the layers' parameters (and a ``nn.MultiheadAttention``'s own ``embed_dim`` /
``head_dim``), but a model's forward may also read a width it stored at construction. torchvision's
``VisionTransformer`` reshapes its patch embedding with ``self.hidden_dim``
(``x.reshape(n, self.hidden_dim, n_h * n_w)``), so pruning the residual stream made every plan fail with
``shape '[1, 768, 196]' is invalid`` and the stream, with every attention projection in it, was kept whole
(Torch-Pruning's own ViT benchmark patches ``hidden_dim`` by hand after pruning).

:func:`stored_widths` finds, once on the dense model, an integer attribute of a module that equals the width
of exactly one of its direct conv/linear children, and a list of integers that equals its (two or more) direct
children's input widths in order: timm's ``MixedConv2d`` splits its input with ``torch.split(x, self.splits)``
among convs of different kernel sizes. :func:`sync_widths` rewrites them after each prune. An integer matching
two children, or none, is left alone.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

#: Attribute names that models use for a stored channel width.
WIDTH_ATTRS = ("hidden_dim", "embed_dim", "num_features", "out_chs", "out_channels", "dim", "width", "channels")
_LAYERS = (nn.modules.conv._ConvNd, nn.Linear)


@dataclass(frozen=True)
class StoredWidth:
    """``owner.attr`` mirrors ``layer``'s output width, or (a list) the input widths of ``layers``."""

    owner: nn.Module
    attr: str
    layer: nn.Module | None = None
    layers: tuple[nn.Module, ...] = ()


def _width(layer: nn.Module) -> int:
    return int(layer.out_channels if isinstance(layer, nn.modules.conv._ConvNd) else layer.out_features)


def _in_width(layer: nn.Module) -> int:
    return int(layer.in_channels if isinstance(layer, nn.modules.conv._ConvNd) else layer.in_features)


def stored_widths(model: nn.Module) -> tuple[StoredWidth, ...]:
    """Every stored width of ``model`` (see the module docstring), on the dense model."""
    found = []
    for owner in model.modules():
        if isinstance(owner, (*_LAYERS, nn.MultiheadAttention)):  # their widths are Torch-Pruning's to update
            continue
        children = [c for c in owner.children() if isinstance(c, _LAYERS)]
        for attr, value in owner.__dict__.items():
            if (isinstance(value, (list, tuple)) and len(value) == len(children) > 1
                    and all(type(v) is int for v in value) and list(value) == [_in_width(c) for c in children]):
                found.append(StoredWidth(owner, attr, layers=tuple(children)))
        for attr in WIDTH_ATTRS:
            value = owner.__dict__.get(attr)
            if not isinstance(value, int) or isinstance(value, bool):
                continue
            match = [c for c in children if _width(c) == value]
            if len(match) == 1:
                found.append(StoredWidth(owner, attr, layer=match[0]))
    return tuple(found)


def sync_widths(widths: tuple[StoredWidth, ...]) -> None:
    """Set each stored width to its layer's current width."""
    for w in widths:
        if w.layer is not None:
            setattr(w.owner, w.attr, _width(w.layer))
        else:
            old = getattr(w.owner, w.attr)
            setattr(w.owner, w.attr, type(old)(_in_width(c) for c in w.layers))


__all__ = ["WIDTH_ATTRS", "StoredWidth", "stored_widths", "sync_widths"]
