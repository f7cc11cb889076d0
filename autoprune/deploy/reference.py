"""Reference outputs of an export and how outputs and accuracy are computed: ONNX Runtime on CPU, on a fixed
batch of test inputs saved at export (``reference.npz``), and the ONNX file's own test accuracy."""

from __future__ import annotations

import io
import math
import statistics
from pathlib import Path
from typing import Any

import numpy as np

from autoprune.errors import ConfigError
from autoprune.io import atomic_write_bytes

#: Test samples whose outputs are stored in ``reference.npz``.
REPORT_FORMAT = "autoprune-export"
REPORT_VERSION = 2
#: Test samples whose outputs are stored in ``reference.npz``.
REFERENCE_SAMPLES = 32


#: Outputs match when ``max |a - b| <= OUTPUT_ATOL + OUTPUT_RTOL * max |reference|``.
OUTPUT_ATOL = 1e-4


OUTPUT_RTOL = 1e-4


def _session(model: Any):
    from autoprune.profiling.ort import create_session

    return create_session(model, threads=1, providers=["CPUExecutionProvider"])[0]


def onnx_outputs(model: Any, x: np.ndarray, session: Any = None) -> np.ndarray:
    """The first output of ``model`` on the batch ``x`` with ONNX Runtime (CPU, one thread).

    A graph exported for batch 1 (autoprune's exports are) is run one sample at a time.

    Raises:
        ProfilingError: If onnxruntime cannot load or run the model.
    """
    from autoprune.errors import ProfilingError

    sess = session or _session(model)
    inp = sess.get_inputs()[0]
    x = np.ascontiguousarray(x, dtype=np.float32)
    try:
        if inp.shape and inp.shape[0] == 1 and len(x) != 1:
            return np.concatenate([sess.run(None, {inp.name: x[i:i + 1]})[0] for i in range(len(x))])
        return sess.run(None, {inp.name: x})[0]
    except Exception as exc:  # noqa: BLE001 - foreign library errors become ProfilingError
        raise ProfilingError(f"onnxruntime failed to run the model: {str(exc).splitlines()[0]}") from None


def onnx_accuracy(model: Any, data: Any, split: str = "test") -> tuple[float, int]:
    """Top-1 accuracy of the ONNX file itself on ``split`` of ``data``: ``(accuracy, samples)``."""
    sess = _session(model)
    correct = total = 0
    for xb, yb in data.loader(split, 256, shuffle=False):
        pred = onnx_outputs(model, xb.numpy(), session=sess).argmax(axis=1)
        correct += int((pred == yb.numpy()).sum())
        total += len(yb)
    if total == 0:
        raise ConfigError(f"the {split} split of {data.name!r} is empty; nothing to evaluate")
    return correct / total, total


def reference_batch(data: Any, n: int = REFERENCE_SAMPLES) -> tuple[np.ndarray, np.ndarray]:
    """The first ``n`` samples of the (seeded, unshuffled) test split: ``(x, y)``."""
    xs, ys, have = [], [], 0
    for xb, yb in data.loader("test", n, shuffle=False):
        xs.append(xb.numpy())
        ys.append(yb.numpy())
        have += len(yb)
        if have >= n:
            break
    return np.concatenate(xs)[:n].astype(np.float32), np.concatenate(ys)[:n].astype(np.int64)


def output_tolerance(reference: np.ndarray) -> float:
    """The largest acceptable ``max |a - b|`` against ``reference`` outputs."""
    return OUTPUT_ATOL + OUTPUT_RTOL * float(np.max(np.abs(reference))) if reference.size else OUTPUT_ATOL


def max_abs_diff(a: np.ndarray, b: np.ndarray) -> float:
    """``max |a - b|`` in float64 (infinite on a shape mismatch or a NaN)."""
    if a.shape != b.shape:
        return math.inf
    d = float(np.max(np.abs(a.astype(np.float64) - b.astype(np.float64)))) if a.size else 0.0
    return d if math.isfinite(d) else math.inf


def save_reference(path: Path, x: np.ndarray, y: np.ndarray, outputs: np.ndarray) -> Path:
    """Write ``reference.npz`` (``x``, ``y``, ``outputs``) atomically."""


    buf = io.BytesIO()
    np.savez(buf, x=x, y=y, outputs=outputs)
    return atomic_write_bytes(path, buf.getvalue())


def load_reference(path: Path) -> dict[str, np.ndarray]:
    """Read ``reference.npz``.

    Raises:
        ConfigError: If it is missing, unreadable or lacks ``x``/``outputs``.
    """
    if not path.is_file():
        raise ConfigError(f"{path} is missing; this is not a complete autoprune export (re-run `autoprune export`)")
    try:
        with np.load(path, allow_pickle=False) as f:
            arrays = {k: f[k] for k in f.files}
    except Exception as exc:  # noqa: BLE001 - numpy raises ValueError, OSError, zipfile errors
        raise ConfigError(f"{path} is corrupt ({type(exc).__name__}: {exc}); re-run `autoprune export`") from None
    if "x" not in arrays or "outputs" not in arrays or len(arrays["x"]) != len(arrays["outputs"]):
        raise ConfigError(f"{path} must hold arrays x and outputs of the same length; re-run `autoprune export`")
    return arrays


def tvm_outputs(runtime: Any, library: Path, x: np.ndarray) -> np.ndarray:
    """The first output of an exported TVM library on the batch ``x``, one sample at a time.

    Raises:
        ProfilingError: If the library cannot be loaded or run.
    """
    import tvm

    from autoprune.errors import ProfilingError

    vm, dev, _ = runtime.load(library)
    outs = []
    try:
        for i in range(len(x)):
            out = vm["main"](tvm.runtime.tensor(np.ascontiguousarray(x[i:i + 1], dtype=np.float32), dev))
            first = out if hasattr(out, "numpy") else out[0]
            outs.append(first.numpy())
    except Exception as exc:  # noqa: BLE001 - foreign library errors become ProfilingError
        lines = str(exc).strip().splitlines()
        raise ProfilingError(f"TVM failed to run {library.name}: {lines[-1] if lines else type(exc).__name__}") \
            from None
    return np.concatenate(outs)


def mean_sd(values: list[float]) -> tuple[float, float | None]:
    """Mean and sample standard deviation (``None`` for one value)."""
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else None)
