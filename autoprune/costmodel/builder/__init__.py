"""The cost model's builder: measure a model on a target, or fit published figures, and fit a calibration.

As nn-Meter keeps its builder apart from its predictor, this subpackage holds everything that
*makes* a calibration file, and nothing the search needs at prediction time:

* :mod:`.job`: a whole ``autoprune profile`` run (:func:`profile_target` with the loaded target
  profile and a :class:`ProfileJob` record, returning a :class:`ProfileOutcome`): the runtime and
  its checks, the model as ``search`` builds it, the calibration, the file written and read back;
* :mod:`.calibrate`: the measurement and fit (:func:`calibrate` with a
  :class:`CalibrationOptions` record): isolated kernels over a channel grid, whole pruned models
  against the dense one, the fit and its held-out error;
* :mod:`.measure`: the protocols, and a candidate timed against a reference in one window;
* :mod:`.microbench`: single-kernel ONNX graphs;
* :mod:`.energy_fit`: a power figure fitted to a sensor's readings;
* :mod:`.published` and :mod:`.reference_nets`: the shipped Jetson Nano calibration, fitted to
  published TensorRT figures (``python -m autoprune.costmodel.builder.published``).

The predictor (:mod:`autoprune.costmodel`'s top level) never imports this subpackage. Importing it
imports numpy and scipy, not torch/onnx/onnxruntime.
"""

from .calibrate import CalibrationOptions, CalibrationResult, calibrate, error_metrics, kernel_grid, prune_random
from .job import MeasuredEnergy, ProfileJob, ProfileOutcome, profile_target
from .measure import RelativeMeasurement, measure_relaxed, measure_vs_reference

__all__ = [
    "CalibrationOptions",
    "CalibrationResult",
    "MeasuredEnergy",
    "ProfileJob",
    "ProfileOutcome",
    "RelativeMeasurement",
    "calibrate",
    "error_metrics",
    "kernel_grid",
    "measure_relaxed",
    "measure_vs_reference",
    "profile_target",
    "prune_random",
]
