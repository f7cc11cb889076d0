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
among convs of different kernel sizes; and a broadcast shape (one entry, the others 1) equal to the length of
one of the module's own 1-D parameters: timm's MetaFormer ``Scale`` (PoolFormer) reshapes its per-channel scale
with ``self.scale.view(self.shape)``, ``shape == (dim, 1, 1)``. :func:`sync_widths` rewrites them after each
prune. An integer matching two children, or none, is left alone.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

#: Attribute names that models use for a stored channel width.
WIDTH_ATTRS = ("hidden_dim", "embed_dim", "num_features", "out_chs", "out_channels", "dim", "width", "channels")
_LAYERS = (nn.modules.conv._ConvNd, nn.Linear)


@dataclass(frozen=True)
class StoredWidth:
    """``owner.attr`` mirrors ``layer``'s output width, the input widths of ``layers`` (a list), or the length of
    the owner's parameter ``param`` at position ``at`` (a broadcast shape)."""

    owner: nn.Module
    attr: str
    layer: nn.Module | None = None
    layers: tuple[nn.Module, ...] = ()
    param: str = ""  # a broadcast shape: the owner's own 1-D parameter whose length it holds
    at: int = 0  # ... at this position


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
        vectors = {n: p.numel() for n, p in owner.named_parameters(recurse=False) if p.dim() == 1}
        for attr, value in owner.__dict__.items():
            if not (isinstance(value, (list, tuple)) and value and all(type(v) is int for v in value)):
                continue
            if len(value) == len(children) > 1 and list(value) == [_in_width(c) for c in children]:
                found.append(StoredWidth(owner, attr, layers=tuple(children)))
            wide = [i for i, v in enumerate(value) if v != 1]
            names = [n for n, size in vectors.items() if len(wide) == 1 and size == value[wide[0]] > 1]
            if len(names) == 1:
                found.append(StoredWidth(owner, attr, param=names[0], at=wide[0]))
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
        elif w.param:
            old = getattr(w.owner, w.attr)
            new = list(old)
            new[w.at] = int(getattr(w.owner, w.param).numel())
            setattr(w.owner, w.attr, type(old)(new))
        else:
            old = getattr(w.owner, w.attr)
            setattr(w.owner, w.attr, type(old)(_in_width(c) for c in w.layers))


__all__ = ["WIDTH_ATTRS", "StoredWidth", "stored_widths", "sync_widths"]
