"""Export a (pruned) model to ONNX and check it against PyTorch."""

from __future__ import annotations

import contextlib
import io
import os
import tempfile
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
        atol: The tolerance ``max_abs_diff`` was checked against (absolute: the given
            ``atol`` scaled by ``max(1, max |output|)``).
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
    within ``atol`` relative to the output's scale: ``atol * max(1, max |output|)``
    (absolute for outputs up to 1, as a trained classifier's logits are; an untrained
    Inception-v3's outputs near 2e8 are checked to about 1e-6 of their size, not to
    1e-4 absolute, which float32 cannot hold). Only then is the file written (atomically).

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
    if ref_np.size:
        atol = atol * max(1.0, float(np.max(np.abs(ref_np.astype(np.float64)))))
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


#: Input sides tried when the dense model does not export at the data's size (one export each, on failure only).
EXPORT_SIDES_PX = (32, 64, 96, 128, 160, 192, 224, 256, 299)


def exportable_side(dense: nn.Module, input_shape: tuple[int, ...]) -> int | None:
    """The smallest side in :data:`EXPORT_SIDES_PX` above ``input_shape``'s at which ``dense`` exports, or None."""
    c, h = int(input_shape[0]), int(input_shape[-1])
    for side in (s for s in EXPORT_SIDES_PX if s > h):
        try:
            with tempfile.TemporaryDirectory() as tmp:
                export_onnx(dense, Path(tmp) / "m.onnx", torch.zeros(1, c, side, side))
        except Exception:  # noqa: BLE001 - a side that does not export: try the next
            continue
        return side
    return None


def dense_export_message(dense: nn.Module, input_shape: tuple[int, ...], error: str) -> str:
    """One line: the dense model does not export to ONNX at this input size, and the size that does.

    A model whose every candidate would fail to export is refused before the study starts. The usual cause
    is an adaptive pooling to a size its input does not divide (torchvision's VGG and AlexNet pool to 7x7,
    so a 64 px input's 2x2 map cannot be exported with the TorchScript exporter); the sides in
    :data:`EXPORT_SIDES_PX` above the data's are tried in turn and the first that exports is named.
    """
    h = int(input_shape[-1])
    works = exportable_side(dense, input_shape)
    fix = (f"use --input-size {works} (the smallest tried that exports)" if works else
           f"no input side up to {EXPORT_SIDES_PX[-1]} px exports either; simplify the model's forward")
    return f"the dense model does not export to ONNX at {h}x{h} px, so no candidate could: {error[:200]}; {fix}"
