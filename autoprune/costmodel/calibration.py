"""Calibration files and the one entry point the search calls: :func:`load_cost_model`.

A calibration is versioned JSON (never pickle), written atomically with a SHA-256
checksum by :func:`autoprune.io.write_json`. Measured calibrations live at
:func:`calibration_path` (``results/calibrations/<target>/<model>-<input_size>.json``);
published ones ship with the package (``autoprune/costmodel/calibrations/<target>.json``).
"""

from __future__ import annotations

import platform
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from autoprune.errors import CalibrationError, ConfigError
from autoprune.io import read_json, results_dir, write_json

from .base import CostModel, Provenance, get_cost_model_class
from .regressor import Regressor
from .targets import TargetSpec, target_spec
from .template import ModelTemplate

__all__ = [
    "CALIBRATION_FORMAT",
    "CALIBRATION_VERSION",
    "PUBLISHED_DIR",
    "calibration_path",
    "load_calibration",
    "load_cost_model",
    "published_path",
    "save_calibration",
    "template_for",
]

CALIBRATION_FORMAT = "autoprune-calibration"
CALIBRATION_VERSION = 1
PUBLISHED_DIR = Path(__file__).parent / "calibrations"

#: Derived targets: name → (base calibration, compute-time scale, overhead scale, why).
DERIVED = {
    "jetson-nano-5w": ("jetson-nano", 921.6 / 640.0, 1479.0 / 918.0,
                       "jetson-nano calibration clock-scaled to nvpmodel mode 1 (5W): MAC- and bandwidth-bound "
                       "terms x921.6/640 (GPU clock; assumes EMC scales alike), launch overhead x1479/918 "
                       "(CPU clock); unverified on a device"),
}

_TEMPLATES: dict[tuple[str, tuple[int, ...]], ModelTemplate] = {}


def calibration_path(target: str, model: str, input_size: int, root: str | Path | None = None) -> Path:
    """Where the measured calibration of ``model`` at ``input_size`` on ``target`` lives."""
    safe = model.replace("/", "_").replace(":", "_")
    return Path(root or results_dir()) / "calibrations" / target / f"{safe}-{int(input_size)}.json"


def published_path(target: str) -> Path:
    """Where the shipped published calibration of ``target`` lives."""
    return PUBLISHED_DIR / f"{target}.json"


def _fix(target: str, model: str) -> str:
    return f"run `autoprune profile --target {target} --model {model}`"


def save_calibration(model: CostModel, path: str | Path, *, model_name: str, input_shape: tuple[int, ...],
                     runtime: str, status: str, error: dict[str, Any], sources: list[str] | None = None,
                     extra: dict[str, Any] | None = None) -> Path:
    """Write a calibration file (atomic, checksummed)."""
    created = datetime.now(timezone.utc).isoformat(timespec="seconds")
    payload = {
        "format": CALIBRATION_FORMAT,
        "version": CALIBRATION_VERSION,
        "id": f"{model.target.name}/{model_name}-{input_shape[-1]}@{created}",
        "target": model.target.name,
        "model": model_name,
        "input_shape": list(input_shape),
        "runtime": runtime,
        "status": status,
        "cost_model": model.name,
        "created": created,
        "host": platform.node(),
        "error": error,
        "sources": sources or [],
        "params": model.params(),
        **(extra or {}),
    }
    return write_json(path, payload, checksum=True)


def load_calibration(path: str | Path, template: ModelTemplate | None = None, *,
                     target: str | None = None, fix: str | None = None) -> CostModel:
    """Load a calibration file into its cost model.

    Raises:
        CalibrationError: If the file is missing, corrupt, fails its checksum, or
            has an unknown format/version; the message names the fix.
    """
    path = Path(path)
    fix = fix or "regenerate it with `autoprune profile`"
    try:
        data = read_json(path, checksum=True, what="calibration")
    except CalibrationError as exc:
        raise CalibrationError(f"{exc}; {fix}") from None
    if not isinstance(data, dict) or data.get("format") != CALIBRATION_FORMAT:
        raise CalibrationError(f"{path} is not an autoprune calibration; {fix}")
    if data.get("version") != CALIBRATION_VERSION:
        raise CalibrationError(f"calibration {path} has version {data.get('version')}, "
                               f"this autoprune reads {CALIBRATION_VERSION}; {fix}")
    try:
        cls = get_cost_model_class(data["cost_model"])
        spec = target_spec(target or data["target"])
        model = cls(spec, template)
        model.load_params(data["params"])
    except (KeyError, TypeError, ValueError, ConfigError) as exc:
        raise CalibrationError(f"calibration {path} is malformed ({exc.__class__.__name__}: {exc}); {fix}") from None
    err = data.get("error") or {}
    model.provenance = Provenance(
        cost_model=model.name, target=spec.name, runtime=data.get("runtime", ""), status=data.get("status", ""),
        calibration_id=data.get("id", ""), calibration_path=str(path), calibration_sha256=data.get("sha256", ""),
        heldout_mape=err.get("heldout_mape"), heldout_spearman=err.get("heldout_spearman"),
        n_heldout=int(err.get("n_heldout", 0)), note=err.get("note", ""),
    )
    return model


def template_for(model: Any, input_shape: tuple[int, ...] | None = None, *, name: str | None = None,
                 num_classes: int = 10) -> ModelTemplate:
    """Return (and cache) the template of a zoo model name or an ``nn.Module``."""
    if isinstance(model, ModelTemplate):
        return model
    import torch

    from autoprune.models import ZOO, build_model

    if isinstance(model, str):
        name = name or model
        if input_shape is None:
            size = ZOO.get(model).input_size if model in ZOO else 32
            input_shape = (3, size, size)
        key = (f"{model}/{num_classes}", tuple(input_shape))
        if key not in _TEMPLATES:
            module = build_model(model, num_classes=num_classes, in_channels=input_shape[0]).eval()
            _TEMPLATES[key] = ModelTemplate.from_model(module, torch.zeros(1, *input_shape), name)
        return _TEMPLATES[key]
    if input_shape is None:
        raise ConfigError("give input_shape=(C, H, W) when building a cost-model template from a module")
    return ModelTemplate.from_model(model, torch.zeros(1, *input_shape), name or type(model).__name__)


def _published(target: str, template: ModelTemplate | None) -> CostModel | None:
    base, c_scale, o_scale, why = DERIVED.get(target, (target, 1.0, 1.0, ""))
    path = published_path(base)
    if not path.is_file():
        return None
    model = load_calibration(path, template, target=base,
                             fix=f"reinstall autoprune or run `python -m autoprune.costmodel.published` ({path})")
    if base != target:
        spec = target_spec(target)
        derived = Regressor(spec, template)
        derived.load_params(model.params())
        derived.a *= c_scale
        derived.b *= c_scale
        derived.o *= o_scale
        derived.provenance = Provenance(**{**model.provenance.__dict__, "target": target,
                                           "note": f"{why}; base error: {model.provenance.note}"})
        return derived
    return model


def load_cost_model(target: str, model: Any = "resnet20", input_shape: tuple[int, ...] | None = None, *,
                    model_name: str | None = None, num_classes: int = 10, allow_prior: bool = True,
                    root: str | Path | None = None) -> CostModel:
    """Return the best available cost model for ``model`` on ``target``.

    Order: the measured local calibration (``lut``) at :func:`calibration_path`;
    else the published calibration of the target (``regressor``, e.g. jetson-nano
    fitted to TensorRT figures); else, when ``allow_prior``, a datasheet roofline
    prior (``status="prior"``, error unknown). The choice is in ``.provenance``.

    Args:
        target: Target name (``local``, ``jetson-nano``, ``jetson-nano-5w``, ``raspberry-pi-4``...).
        model: A zoo model name, an ``nn.Module`` (with ``input_shape``) or a template.
        input_shape: ``(C, H, W)``; defaults to the zoo model's natural size.
        model_name: Name used for the calibration file (defaults to the zoo name).
        num_classes: Classifier width used to build a zoo model's template.
        allow_prior: Fall back to an unchecked roofline prior instead of failing.
        root: Results folder (defaults to :func:`autoprune.io.results_dir`).

    Raises:
        CalibrationError: If a calibration exists but is corrupt, or none exists and
            ``allow_prior`` is false (or the target is ``local``); the message names
            the command that creates it.
    """
    template = template_for(model, input_shape, name=model_name, num_classes=num_classes)
    name = model_name or template.name
    path = calibration_path(target, name, template.input_size, root)
    if path.exists():
        return load_calibration(path, template, fix=_fix(target, name))
    published = _published(target, template)
    if published is not None:
        return published
    if target == "local" or not allow_prior:
        raise CalibrationError(f"no calibration for {name} at {template.input_size}px on {target} ({path}); "
                               f"{_fix(target, name)}")
    spec: TargetSpec = target_spec(target)
    prior = Regressor.from_roofline(spec, template=template)
    prior.provenance = Provenance(cost_model="regressor", target=target, runtime="datasheet roofline",
                                  status="prior", calibration_id=f"{target}/datasheet-prior",
                                  note="datasheet roofline with default efficiencies; never checked against a "
                                       f"measurement; {_fix(target, name)} on the device to calibrate")
    return prior
