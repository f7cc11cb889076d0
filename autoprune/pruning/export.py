"""Export a (pruned) model to ONNX and check it against PyTorch."""

from __future__ import annotations

import contextlib
import io
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from autoprune.errors import ExportError
from autoprune.io import atomic_write_bytes
from autoprune.pruning.apply import PrunedModel, _remove_masks, safe_deepcopy
from autoprune.registry import lazy_import


@dataclass(frozen=True)
class ExportResult:
    """A checked ONNX export.

    Attributes:
        path: The written ``.onnx`` file.
        file_bytes: Its size in bytes.
        params: Parameter elements of the exported model.
        opset: ONNX opset.
        max_abs_diff: Largest absolute difference between ONNX Runtime (CPU) and
            PyTorch outputs on the example input.
        atol: The tolerance ``max_abs_diff`` was checked against.
    """

    path: str
    file_bytes: int
    params: int
    opset: int
    max_abs_diff: float
    atol: float

    def to_dict(self) -> dict:
        """A JSON-ready dict."""
        return asdict(self)


def export_onnx(
    model: nn.Module | PrunedModel,
    path: str | os.PathLike,
    example_input: torch.Tensor,
    opset: int = 17,
    atol: float = 1e-4,
) -> ExportResult:
    """Export ``model`` to ``path`` and verify it.

    A copy is made, masks are baked into it, it is put in eval mode and traced
    with ``torch.onnx.export(..., dynamo=False)``. The graph must pass
    ``onnx.checker.check_model`` and ONNX Runtime's output must match PyTorch's
    within ``atol`` (absolute). Only then is the file written (atomically).

    Raises:
        ExportError: If tracing fails (naming torch's reason), the checker
            rejects the graph, or the outputs differ by more than ``atol``.
    """
    module = model.module if isinstance(model, PrunedModel) else model
    work = safe_deepcopy(module)
    _remove_masks(work)
    work.eval()
    with _no_mha_fastpath():
        return _export_checked(work, path, example_input, opset, atol)


@contextlib.contextmanager
def _no_mha_fastpath():
    """Trace ``nn.MultiheadAttention`` through its plain ops: in eval mode without gradients it
    otherwise takes the fused ``_native_multi_head_attention`` kernel, which ONNX cannot export."""
    mha = getattr(torch.backends, "mha", None)
    before = mha.get_fastpath_enabled() if mha is not None else None
    if mha is not None:
        mha.set_fastpath_enabled(False)
    try:
        yield
    finally:
        if mha is not None:
            mha.set_fastpath_enabled(before)


def _export_checked(
    work: nn.Module, path: str | os.PathLike, example_input: torch.Tensor, opset: int, atol: float
) -> ExportResult:
    onnx = lazy_import("onnx")
    ort = lazy_import("onnxruntime")
    buf = io.BytesIO()
    try:
        with torch.no_grad():
            torch.onnx.export(
                work,
                (example_input,),
                buf,
                opset_version=opset,
                input_names=["input"],
                output_names=["output"],
                dynamo=False,
            )
    except Exception as exc:  # noqa: BLE001 - torch and onnx raise many kinds
        first = (str(exc).strip().splitlines() or [exc.__class__.__name__])[0]
        raise ExportError(
            f"torch.onnx.export failed: {exc.__class__.__name__}: {first}; "
            "simplify the model's forward (no data-dependent control flow) or change opset"
        ) from None
    data = buf.getvalue()
    try:
        onnx.checker.check_model(onnx.load_from_string(data))
    except Exception as exc:  # noqa: BLE001 - torch and onnx raise many kinds
        raise ExportError(f"exported ONNX graph is invalid: {exc}; try another opset") from None
    with torch.no_grad():
        ref = work(example_input)
    if isinstance(ref, (tuple, list)):
        ref = ref[0]
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    sess = ort.InferenceSession(data, opts, providers=["CPUExecutionProvider"])
    out = sess.run(None, {sess.get_inputs()[0].name: example_input.detach().cpu().numpy()})[0]
    ref_np = ref.detach().cpu().numpy()
    if out.shape != ref_np.shape:
        raise ExportError(f"ONNX output shape {out.shape} differs from PyTorch's {ref_np.shape}")
    diff = float(np.max(np.abs(out.astype(np.float64) - ref_np.astype(np.float64)))) if out.size else 0.0
    if not np.isfinite(diff) or diff > atol:
        raise ExportError(
            f"ONNX Runtime output differs from PyTorch by {diff:.3g} > atol {atol:g}; "
            "the export is not faithful (check custom ops or raise atol knowingly)"
        )
    path = atomic_write_bytes(path, data)
    return ExportResult(
        path=str(Path(path)),
        file_bytes=len(data),
        params=sum(p.numel() for p in work.parameters()),
        opset=opset,
        max_abs_diff=diff,
        atol=atol,
    )
