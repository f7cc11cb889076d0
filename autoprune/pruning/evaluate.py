"""Evaluate a (pruned) model: accuracy metrics, parameters, MACs and storage size.

Definitions:
    ``params``: number of parameter elements (a masked weight counts with its full
        dense shape; the mask buffer is not a parameter).
    ``nonzero_params``: parameter elements that are not exactly zero after masks.
    ``macs``: multiply-accumulates of Conv and Linear layers for one forward pass
        of ``example_input`` (dense: zeros in weights are still counted, since
        dense kernels do compute them).
    ``size_bytes``: dense fp32 storage, ``4 * params``.
    ``sparse_size_bytes``: compressed fp32 storage. A weight tensor with an ``N:M``
        mask is stored as its kept values (4 B each) plus ``ceil(log2 M)`` bits of
        index metadata per kept value (the 2-bit indices of 2:4 sparse tensor
        cores). Any other tensor is stored as the smaller of dense (4 B per
        element) and CSR over its ``[out, rest]`` matrix (4 B value + 4 B column
        index per non-zero, plus 4 B per row pointer).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import asdict, dataclass

import torch
from torch import nn

from autoprune.compute import Compute
from autoprune.pruning.apply import NM_ATTR, PrunedModel
from autoprune.pruning.plan import parse_nm


@dataclass(frozen=True)
class Evaluation:
    """Quality and size of a model (see the module docstring for definitions).

    Attributes:
        accuracy: Top-1 accuracy in [0, 1].
        precision_macro: Macro-averaged precision.
        recall_macro: Macro-averaged recall.
        f1_macro: Macro-averaged F1.
        params: Parameter elements.
        macs: Multiply-accumulates per forward pass of the example input.
        size_bytes: Dense fp32 bytes.
        sparse_size_bytes: Compressed bytes.
        nonzero_params: Non-zero parameter elements.
        samples: Number of evaluated samples.
    """

    accuracy: float
    precision_macro: float
    recall_macro: float
    f1_macro: float
    params: int
    macs: int
    size_bytes: int
    sparse_size_bytes: int
    nonzero_params: int
    samples: int

    def to_dict(self) -> dict:
        """A JSON-ready dict."""
        return asdict(self)


def count_macs(model: nn.Module, example_input: torch.Tensor) -> int:
    """Conv and Linear multiply-accumulates for one forward pass of ``example_input``."""
    total = 0

    def hook(mod, inputs, out):
        nonlocal total
        if isinstance(mod, nn.modules.conv._ConvNd):
            k = math.prod(mod.kernel_size) * (mod.in_channels // mod.groups)
            total += out.numel() * k
        elif isinstance(mod, nn.Linear):
            total += out.numel() * mod.in_features

    handles = [
        m.register_forward_hook(hook)
        for m in model.modules()
        if isinstance(m, (nn.modules.conv._ConvNd, nn.Linear))
    ]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(example_input)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return int(total)


def _effective_tensors(model: nn.Module) -> Iterable[tuple[str, torch.Tensor]]:
    """Every parameter as used in the forward pass (masked weights after the mask)."""
    for mname, mod in model.named_modules():
        for pname, p in mod.named_parameters(recurse=False):
            full = f"{mname}.{pname}" if mname else pname
            if pname.endswith("_orig") and hasattr(mod, pname[: -len("_orig")] + "_mask"):
                base = pname[: -len("_orig")]
                yield (f"{mname}.{base}" if mname else base), (p * getattr(mod, base + "_mask")).detach()
            else:
                yield full, p.detach()


def size_report(model: nn.Module, nm_members: dict[str, str] | None = None) -> tuple[int, int, int]:
    """Return ``(params, nonzero_params, sparse_size_bytes)`` of ``model``.

    Args:
        model: The model (masks may be active or baked).
        nm_members: Member name → ``"N:M"`` for weights stored in N:M format.
    """
    nm_members = nm_members or {}
    params = nonzero = sparse = 0
    for name, t in _effective_tensors(model):
        n, nnz = t.numel(), int(torch.count_nonzero(t))
        params += n
        nonzero += nnz
        member = name[: -len(".weight")] if name.endswith(".weight") else None
        if member in nm_members:
            _, m = parse_nm(nm_members[member])
            sparse += 4 * nnz + math.ceil(nnz * math.ceil(math.log2(m)) / 8)
            continue
        rows = t.shape[0] if t.dim() >= 2 else 1
        sparse += min(4 * n, 8 * nnz + 4 * (rows + 1))
    return params, nonzero, sparse


def evaluate(
    model: nn.Module | PrunedModel,
    loader: Iterable,
    example_input: torch.Tensor,
    compute: Compute | None = None,
) -> Evaluation:
    """Evaluate ``model`` on ``loader`` and measure its size.

    Args:
        model: A module or a :class:`PrunedModel`, already on ``compute``'s device. N:M members
            recorded by :func:`~autoprune.pruning.prune_model` (also after ``make_permanent``)
            are sized in N:M format.
        loader: ``(x, y)`` batches (on the CPU).
        example_input: Input for counting MACs (use batch size 1), on the CPU.
        compute: Where the batches go (default: the CPU). Evaluation runs in full precision,
            so the accuracy does not depend on mixed precision.

    Returns:
        An :class:`Evaluation`.
    """
    from sklearn.metrics import precision_recall_fscore_support

    compute = compute or Compute()
    module = model.module if isinstance(model, PrunedModel) else model
    nm_members = model.nm_members if isinstance(model, PrunedModel) else getattr(module, NM_ATTR, {})
    was_training = module.training
    module.eval()
    preds, labels = [], []
    try:
        with torch.no_grad():
            for batch in loader:
                x, y = compute.batch(batch)
                preds.append(module(x).argmax(1).cpu())
                labels.append(y.cpu())
    finally:
        module.train(was_training)
    if preds:
        p, y = torch.cat(preds).numpy(), torch.cat(labels).numpy()
        accuracy = float((p == y).mean())
        prec, rec, f1, _ = precision_recall_fscore_support(y, p, average="macro", zero_division=0)
    else:
        accuracy = prec = rec = f1 = 0.0
    params, nonzero, sparse = size_report(module, nm_members)
    return Evaluation(
        accuracy=accuracy,
        precision_macro=float(prec),
        recall_macro=float(rec),
        f1_macro=float(f1),
        params=params,
        macs=count_macs(module, compute.tensor(example_input)),
        size_bytes=4 * params,
        sparse_size_bytes=sparse,
        nonzero_params=nonzero,
        samples=len(p) if preds else 0,
    )


@torch.no_grad()
def top1_upto(model: nn.Module, loader: Iterable, samples: int | None,
              compute: Compute | None = None) -> tuple[float, int]:
    """``(top-1 accuracy, samples evaluated)`` over the first ``samples`` of ``loader`` (all where None)."""
    compute = compute or Compute()
    model.eval()
    correct = total = 0
    for batch in loader:
        x, y = compute.batch(batch)
        if samples is not None:
            x, y = x[: samples - total], y[: samples - total]
        correct += int((model(x).argmax(1) == y).sum())
        total += int(y.numel())
        if samples is not None and total >= samples:
            break
    return correct / max(total, 1), total
