"""Measuring latency: the shared protocol and the runtimes that execute ONNX graphs.

Public surface:

* :mod:`autoprune.profiling.protocol`: :class:`Measurement`,
  :func:`measure_callable`, :func:`summarize_timings`, :func:`measure_samples`.
* :class:`Runtime` and the :data:`RUNTIMES` registry (``"onnxruntime"``,
  ``"tvm"``), :func:`get_runtime`, :func:`runtime_for_profile`.
* :mod:`autoprune.profiling.rpc`: TVM RPC sessions and loopback servers/trackers.

Importing this package does not import onnxruntime or tvm.
"""

from autoprune.profiling import ort as _ort  # noqa: F401  (registers "onnxruntime")
from autoprune.profiling import tvm_runtime as _tvm  # noqa: F401  (registers "tvm"; imports tvm lazily)
from autoprune.profiling.base import RUNTIMES, Runtime, get_runtime, runtime_for_profile
from autoprune.profiling.protocol import (
    DEFAULT_PROTOCOL,
    Measurement,
    ProtocolSettings,
    measure_callable,
    measure_samples,
    summarize_timings,
)

__all__ = [
    "DEFAULT_PROTOCOL",
    "RUNTIMES",
    "Measurement",
    "ProtocolSettings",
    "Runtime",
    "get_runtime",
    "measure_callable",
    "measure_samples",
    "runtime_for_profile",
    "summarize_timings",
]
