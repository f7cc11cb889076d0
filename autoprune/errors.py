"""One small error hierarchy for autoprune.

Every error a user can cause derives from :class:`AutopruneError`. The CLI turns
any of them into one line on stderr and exit code 2, so messages must name the
problem *and* the fix.
"""

from __future__ import annotations


class AutopruneError(Exception):
    """Base class of every error that autoprune raises on purpose."""


class ConfigError(AutopruneError, ValueError):
    """A bad argument, file or setting supplied by the user."""


class UnknownNameError(ConfigError, KeyError):
    """A name that is not in a registry. The message lists the valid names."""

    def __str__(self) -> str:  # KeyError would quote the message otherwise.
        return str(self.args[0]) if self.args else ""


class PlanError(ConfigError):
    """A pruning plan that cannot be applied to the given model."""


class ExportError(AutopruneError):
    """A model that cannot be exported, or whose export does not match PyTorch."""


class CalibrationError(AutopruneError):
    """A missing, corrupt or mismatched calibration or profile file."""


class ProfilingError(AutopruneError):
    """A measurement that failed, timed out, or was too noisy to store."""


class NoisyMeasurementError(ProfilingError):
    """Every batch of a measurement had a spread above the protocol's bound (nothing was stored)."""


class StorageError(AutopruneError):
    """An unreachable or inconsistent study storage (URLs are always redacted)."""


class MissingDependencyError(AutopruneError, ImportError):
    """An optional heavy dependency (ray, tvm, onnxruntime...) is not installed."""
