"""What each Ray Tune trial asks for (``--cpus-per-trial``, ``--gpus-per-trial``), the device its worker uses,
and the keys under which the driver and the worker exchange a trial.

Ray places the trials; a trial given GPUs sees only the ones Ray assigned it (Ray sets
``CUDA_VISIBLE_DEVICES`` in the worker), so its worker resolves ``cuda`` to that GPU. A trial
given no GPU runs on its CPUs (or on Apple's MPS where the driver uses it, on the same Mac).
Everything here is checked before a study is created, so bad input stores nothing.

The driver's searcher (:mod:`autoprune.search.backends.ray_searcher`) hands a worker its trial number
and stopper under :data:`TRIAL_KEY` and :data:`STOPPER_KEY`; the worker
(:func:`autoprune.search.backends.ray.evaluate_params`) reports its record, failure or stop under
:data:`RECORD_KEY`, :data:`ERROR_KEY` or :data:`STOPPED_KEY`.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Any

from autoprune.errors import ConfigError

#: Result keys a worker reports: the candidate record (JSON), a failure reason, a stop (JSON: reason, attributes).
RECORD_KEY, ERROR_KEY, STOPPED_KEY = "autoprune_record", "autoprune_error", "autoprune_stopped"
#: Config keys carrying the Optuna trial number and the stopper (JSON) to the worker (not search parameters).
TRIAL_KEY, STOPPER_KEY = "autoprune_trial", "autoprune_stopper"
#: Ray retries of a trial whose worker crashed (``FailureConfig(max_failures=...)``).
MAX_FAILURES = 2


@dataclass(frozen=True)
class TrialResources:
    """One Ray trial's resources and its worker's device.

    Attributes:
        cpus: CPUs per trial (the worker's torch threads are this, rounded down, at least 1).
        gpus: GPUs per trial: a fraction below 1 (trials share a GPU) or whole GPUs.
        device: ``--device`` for the worker: ``cuda`` when ``gpus > 0``, else ``cpu`` (or ``mps``).
    """

    cpus: float = 1.0
    gpus: float = 0.0
    device: str = "cpu"

    @property
    def threads(self) -> int:
        """Torch threads of a worker."""
        return max(1, int(self.cpus))

    def ray(self) -> dict[str, float]:
        """The ``tune.with_resources`` request."""
        return {"cpu": self.cpus, "gpu": self.gpus}


def trial_resources(device: str | None = "auto", gpus_per_trial: float | None = None, cpus_per_trial: float = 1.0,
                    address: str | None = None) -> TrialResources:
    """Check the per-trial resources and choose the workers' device.

    Args:
        device: ``--device`` as given (``auto`` when not). An explicit ``cpu``/``mps`` with GPUs per
            trial, or an explicit ``cuda`` with ``--gpus-per-trial 0``, contradict each other.
        gpus_per_trial: GPUs per trial; ``None``: 1 where ``device`` is CUDA here, else 0.
        cpus_per_trial: CPUs per trial (> 0; fractions allowed, as in Ray).
        address: A Ray cluster; ``None`` is a local Ray, whose GPUs and CPUs are this machine's and
            are checked here (a request it cannot meet would leave the trials pending forever).

    Raises:
        ConfigError: One line naming the bad value and what this machine has.
    """
    from autoprune.compute import available_devices, resolve_device

    text = (device or "auto").strip().lower()
    resolved = resolve_device(text)
    explicit_cuda = text.startswith("cuda")
    if not (isinstance(cpus_per_trial, (int, float)) and math.isfinite(cpus_per_trial) and cpus_per_trial > 0):
        raise ConfigError(f"--cpus-per-trial must be a number above 0, got {cpus_per_trial!r}")
    if gpus_per_trial is None:
        gpus_per_trial = 1.0 if resolved.type == "cuda" else 0.0
    if not (isinstance(gpus_per_trial, (int, float)) and math.isfinite(gpus_per_trial) and gpus_per_trial >= 0):
        raise ConfigError(f"--gpus-per-trial must be a number >= 0, got {gpus_per_trial!r}")
    if gpus_per_trial > 1 and gpus_per_trial != int(gpus_per_trial):
        raise ConfigError(f"--gpus-per-trial {gpus_per_trial:g}: Ray gives a trial a fraction of one GPU "
                          "(e.g. 0.5) or whole GPUs (1, 2, ...)")
    if gpus_per_trial > 0 and text in ("cpu", "mps"):
        raise ConfigError(f"--device {text} with --gpus-per-trial {gpus_per_trial:g}: trials given a GPU run on "
                          "the CUDA GPU Ray assigns them; use --device auto (or cuda), or --gpus-per-trial 0")
    if gpus_per_trial == 0 and explicit_cuda:
        raise ConfigError(f"--device {text} with --gpus-per-trial 0: Ray trials run on the GPUs Ray assigns them; "
                          "give --gpus-per-trial (e.g. 1, or 0.5 to share a GPU between two trials)")
    if address is None:  # a local Ray: this machine's resources
        gpus_here = sum(d.startswith("cuda") for d in available_devices())
        if gpus_per_trial > gpus_here:
            raise ConfigError(f"--gpus-per-trial {gpus_per_trial:g}: the local Ray has {gpus_here} CUDA GPU(s) "
                              f"(this machine has: {', '.join(available_devices())}); lower it, or give --address "
                              "of a Ray cluster with GPUs")
        cpus_here = os.cpu_count() or 1
        if cpus_per_trial > cpus_here:
            raise ConfigError(f"--cpus-per-trial {cpus_per_trial:g}: the local Ray has {cpus_here} CPUs; lower it, "
                              "or give --address of a Ray cluster")
    worker = "cuda" if gpus_per_trial > 0 else ("mps" if resolved.type == "mps" else "cpu")
    return TrialResources(cpus=float(cpus_per_trial), gpus=float(gpus_per_trial), device=worker)


def with_trial_resources(trainable: Any, resources: TrialResources) -> Any:
    """``trainable`` with ``resources`` as Ray Tune's per-trial request (``tune.with_resources``)."""
    from ray import tune

    return tune.with_resources(trainable, resources.ray())


__all__ = ["ERROR_KEY", "MAX_FAILURES", "RECORD_KEY", "STOPPED_KEY", "STOPPER_KEY", "TRIAL_KEY", "TrialResources",
           "trial_resources", "with_trial_resources"]
