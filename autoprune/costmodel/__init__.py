"""The calibrated latency/energy cost model.

Flow: exported ONNX graph → :func:`detect_kernels` (fusion rules, named
:class:`KernelFeatures`) → a per-model :class:`ModelTemplate` that describes pruned
candidates without exporting them → a :class:`CostModel` (``lut``: per-layer
lookup tables measured by ``autoprune profile``; ``regressor``: a per-op-class
roofline, fitted on kernels or on published figures) → :class:`CostEstimate`
with :class:`Provenance`.

The search calls one function::

    cm = load_cost_model("jetson-nano", "resnet20")      # picks the best calibration
    est = cm.predict(pruned_module)                       # < 1 ms once loaded
    est.latency_ms, est.energy_mj, est.provenance.status

Layout (as nn-Meter keeps its builder apart from its predictor): this top level *is* the
predictor, everything the search needs to load a calibration and predict (kernels, features,
templates, targets, the ``lut`` and ``regressor`` models, calibration files, measured/modelled
energy). :mod:`autoprune.costmodel.builder` makes calibrations (``autoprune profile``'s
measurements, the published Jetson Nano fit) and imports the predictor; the predictor never
imports the builder.

Importing this package imports numpy and scipy, not torch/onnx/onnxruntime; it also fills
:data:`COST_MODELS` (importing :mod:`.lut` and :mod:`.regressor` registers them).
"""

from .base import COST_MODELS, CostEstimate, CostModel, FitSample, Provenance, get_cost_model_class
from .calibration import (
    calibration_name,
    calibration_path,
    load_calibration,
    load_cost_model,
    profile_command,
    published_path,
    require_calibration,
    save_calibration,
    template_for,
)
from .features import OP_CLASSES, KernelFeatures
from .kernels import Kernel, detect_kernels
from .lut import LutCostModel
from .regressor import Regressor
from .targets import TargetSpec, target_spec
from .template import CandidateShape, ModelTemplate

__all__ = [
    "COST_MODELS",
    "OP_CLASSES",
    "CandidateShape",
    "CostEstimate",
    "CostModel",
    "FitSample",
    "Kernel",
    "KernelFeatures",
    "LutCostModel",
    "ModelTemplate",
    "Provenance",
    "Regressor",
    "TargetSpec",
    "calibration_name",
    "calibration_path",
    "detect_kernels",
    "get_cost_model_class",
    "load_calibration",
    "load_cost_model",
    "profile_command",
    "published_path",
    "require_calibration",
    "save_calibration",
    "target_spec",
    "template_for",
]
