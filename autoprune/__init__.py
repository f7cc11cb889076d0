"""autoprune: hardware-aware AutoML pruning search.

The flow, top to bottom: search space → candidate plan → prune →
fine-tune/evaluate → export ONNX → cost model (calibrated by profilers) →
objectives → Pareto front → export/pick. See :mod:`autoprune.pipeline`.

Importing this package is light: torch, ray, tvm and onnxruntime are imported
where they are used.
"""

__version__ = "0.1.0"
__all__ = ["__version__"]
