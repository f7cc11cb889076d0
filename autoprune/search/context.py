"""A study's resolved facts: :class:`StudyContext`, resolved once at the edge and passed down.

A :class:`~autoprune.search.config.SearchConfig` names things (a target, a model reference, a device);
:meth:`StudyContext.resolve` turns those names into objects once — the loaded hardware profile (and the
profile its calibration is derived from, if any), the model's calibration name and input size, the
compute device and the storage — and everything below (the pipeline, the cost model, the export) takes
the objects, never a name to resolve again. ``autoprune search`` loads a target's profile once per run.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from autoprune.search.config import SearchConfig

if TYPE_CHECKING:
    from autoprune.compute import Compute
    from autoprune.hardware import HardwareProfile
    from autoprune.search.storage import StudyStorage

__all__ = ["ModelRef", "StudyContext"]


@dataclass(frozen=True)
class ModelRef:
    """The model a study prunes, as the cost model and the data loader need it.

    Attributes:
        ref: The reference as the user gave it (a zoo name, ``file.py:function``, ``module:function``).
        calibration_name: The name its calibration is stored under
            (:func:`~autoprune.costmodel.calibration_name`).
        input_size_px: The square input side the study uses (``--input-size``, else the natural one).
        natural_size: ``input_size_px`` is the natural size (no ``--input-size`` was needed).
    """

    ref: str
    calibration_name: str
    input_size_px: int
    natural_size: bool

    @classmethod
    def resolve(cls, model_ref: str, data_ref: str, input_size: int | None) -> ModelRef:
        """The reference of ``model_ref`` on ``data_ref`` at ``input_size`` (``None``: its natural size)."""
        from autoprune.costmodel.calibration import calibration_name
        from autoprune.models import natural_input_size

        natural = natural_input_size(model_ref, data_ref)
        size = natural if input_size is None else int(input_size)
        return cls(str(model_ref), calibration_name(model_ref), size, size == natural)


@dataclass(frozen=True)
class StudyContext:
    """Everything a study's stages need, resolved from its configuration once.

    Attributes:
        config: The study's configuration.
        profile: The target's loaded hardware profile (``profile.is_here``: the target is this machine).
        base_profile: The profile whose calibration ``profile`` is derived from
            (``calibration.derived_from``), loaded with it; ``None`` if none.
        model: The model reference, resolved.
        compute: Where fine-tuning and evaluation run (``config.device`` on this machine).
        storage: The study's storage (``None`` where a stage needs none).
    """

    config: SearchConfig
    profile: HardwareProfile
    base_profile: HardwareProfile | None
    model: ModelRef
    compute: Compute
    storage: StudyStorage | None = None

    @classmethod
    def resolve(cls, config: SearchConfig, *, storage: StudyStorage | None = None,
                compute: Compute | None = None) -> StudyContext:
        """Resolve ``config``'s names: the one place a study's target profile is loaded.

        Args:
            config: The study's configuration.
            storage: Its storage, if the caller has one.
            compute: An already resolved compute device (default: ``config.device`` resolved here).

        Raises:
            UnknownNameError: An unknown target (lists the valid ones).
            ConfigError: An invalid profile, or a device this machine lacks.
        """
        from autoprune.compute import Compute
        from autoprune.hardware import load_profile

        profile = load_profile(config.target)
        base = profile.calibration.derived_from
        return cls(config=config, profile=profile, base_profile=load_profile(base) if base else None,
                   model=ModelRef.resolve(config.model, config.data, config.input_size),
                   compute=compute or Compute.resolve(config.device, amp=config.amp), storage=storage)

    def resolves(self, config: SearchConfig) -> bool:
        """Whether this context's resolved facts hold for ``config`` (same target, model, data and size)."""
        keys = ("target", "model", "data", "input_size")
        return all(getattr(self.config, k) == getattr(config, k) for k in keys)

    def with_config(self, config: SearchConfig, **changes: Any) -> StudyContext:
        """This context for ``config`` (which :meth:`resolves` holds for), with other fields changed."""
        return replace(self, config=config, **changes)
