"""Calibration files and the one entry point the search calls: :func:`load_cost_model`.

A calibration is versioned JSON (never pickle), written atomically with a SHA-256
checksum by :func:`autoprune.io.write_json`. Measured calibrations live at
:func:`calibration_path` (``results/calibrations/<target>/<model>-<input_size>.json``);
published ones ship with the package (``autoprune/costmodel/calibrations/<target>.json``).
"""

from __future__ import annotations

import platform
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from autoprune.errors import CalibrationError, ConfigError
from autoprune.hardware.records import HERE_TARGETS
from autoprune.io import read_json, results_dir, safe_name, write_json

from .base import CostModel, Provenance, get_cost_model_class
from .energy import apply_energy_fit
from .regressor import Regressor
from .targets import TargetSpec, spec_from_profile, target_spec
from .uncertainty import from_calibration

if TYPE_CHECKING:
    from autoprune.hardware import HardwareProfile
from .template import ModelTemplate

__all__ = [
    "CALIBRATION_FORMAT",
    "CALIBRATION_VERSION",
    "PUBLISHED_DIR",
    "calibration_name",
    "calibration_path",
    "load_calibration",
    "load_cost_model",
    "profile_command",
    "published_path",
    "require_calibration",
    "save_calibration",
    "template_for",
]

CALIBRATION_FORMAT = "autoprune-calibration"
CALIBRATION_VERSION = 1
PUBLISHED_DIR = Path(__file__).parent / "calibrations"

_TEMPLATES: dict[tuple[str, tuple[int, ...]], ModelTemplate] = {}


def calibration_name(model_ref: str) -> str:
    """The name a model's calibration is stored under: the one place it is worked out.

    A zoo name stays itself (``resnet20``). A user model is named by its file's stem or its
    module path and its function, so ``usermodel.py:build``, ``./usermodel.py:build`` and
    ``/abs/path/usermodel.py:build`` all find the same calibration (``usermodel.build``), and
    ``pkg.models:make`` is ``pkg.models.make``. ``profile`` writes and ``search`` reads this name.
    """
    ref = str(model_ref)
    if ":" in ref:
        module, func = ref.rsplit(":", 1)
        module = Path(module).stem if module.endswith(".py") else module
        ref = f"{module}.{func}"
    return safe_name(ref)


def calibration_path(target: str, model: str, input_size: int, root: str | Path | None = None) -> Path:
    """Where the measured calibration of ``model`` (a reference or a :func:`calibration_name`) at
    ``input_size`` on ``target`` lives."""
    return Path(root or results_dir()) / "calibrations" / target / f"{calibration_name(model)}-{int(input_size)}.json"


def published_path(target: str) -> Path:
    """Where the shipped published calibration of ``target`` lives."""
    return PUBLISHED_DIR / f"{target}.json"


def profile_command(target: str, model_ref: str, *, data: str | None = None, input_size: int | None = None,
                    extra: str = "") -> str:
    """The ``autoprune profile`` command line that writes the calibration ``search`` looks for.

    Args:
        target: Target name.
        model_ref: The model reference exactly as the user gave it to ``search``.
        data: The data reference, where it is not the default (``digits``): it sets the classes
            and the default input size, so the calibration is made for the same model.
        input_size: The ``--input-size`` the user gave, if any.
        extra: More arguments (e.g. ``--runtime tvm --rpc HOST:PORT``).
    """
    import shlex

    cmd = f"autoprune profile --target {shlex.quote(target)} --model {shlex.quote(str(model_ref))}"
    if data not in (None, "digits"):
        cmd += f" --data {shlex.quote(str(data))}"
    if input_size is not None:
        cmd += f" --input-size {int(input_size)}"
    return f"{cmd} {extra}".rstrip()


def _fix(target: str, model: str) -> str:
    return f"run `{profile_command(target, model)}`"


def require_calibration(target: str | HardwareProfile, model_ref: str, input_size: int, *, fix: str | None = None,
                        root: str | Path | None = None) -> None:
    """Fail now, before any training, when :func:`load_cost_model` would find no calibration.

    A measured calibration at :func:`calibration_path`, a published one, or (on any target but
    ``local``) the datasheet prior will do.

    Raises:
        CalibrationError: Naming the file looked for and the command that writes it.
    """
    name = _target_name(target)
    path = calibration_path(name, model_ref, input_size, root)
    if path.exists() or HERE_TARGETS.get(name) != "cpu":
        return
    raise CalibrationError(f"no calibration for {model_ref} at {int(input_size)}px on {name} ({path}); "
                           f"{fix or _fix(name, model_ref)} first")


def _target_name(target: str | HardwareProfile) -> str:
    return target if isinstance(target, str) else target.name


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
                     target: str | TargetSpec | None = None, fix: str | None = None) -> CostModel:
    """Load a calibration file into its cost model.

    ``target`` is the target's :class:`TargetSpec` (or its name, resolved here; default: the target
    the file names).

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
        spec = target if isinstance(target, TargetSpec) else target_spec(target or data["target"])
        model = cls(spec, template)
        model.load_params(data["params"])
    except (KeyError, TypeError, ValueError, ConfigError) as exc:
        raise CalibrationError(f"calibration {path} is malformed ({exc.__class__.__name__}: {exc}); {fix}") from None
    err = data.get("error") or {}
    shape = data.get("input_shape") or [None]
    model.uncertainty = from_calibration(err, input_size_px=shape[-1], status=data.get("status", ""))
    model.provenance = Provenance(
        cost_model=model.name, target=spec.name, runtime=data.get("runtime", ""), status=data.get("status", ""),
        calibration_id=data.get("id", ""), calibration_path=str(path), calibration_sha256=data.get("sha256", ""),
        heldout_mape=err.get("heldout_mape"), heldout_spearman=err.get("heldout_spearman"),
        n_heldout=int(err.get("n_heldout", 0)), note=err.get("note", ""),
        band_basis=model.uncertainty.basis if model.uncertainty is not None else "",
    )
    return apply_energy_fit(model, err.get("energy"))  # measured energy where the calibration read a sensor


def template_for(model: Any, input_shape: tuple[int, ...] | None = None, *, name: str | None = None,
                 num_classes: int = 10) -> ModelTemplate:
    """Return (and cache) the template of a zoo model name or an ``nn.Module``."""
    if isinstance(model, ModelTemplate):
        return model
    import torch

    from autoprune.models import build_model, natural_input_size

    if isinstance(model, str):
        name = name or model
        if input_shape is None:
            size = natural_input_size(model)
            input_shape = (3, size, size)
        key = (f"{model}/{num_classes}", tuple(input_shape))
        if key not in _TEMPLATES:
            module = build_model(model, num_classes=num_classes, in_channels=input_shape[0],
                                 input_size=int(input_shape[-1])).eval()
            _TEMPLATES[key] = ModelTemplate.from_model(module, torch.zeros(1, *input_shape), name)
        return _TEMPLATES[key]
    if input_shape is None:
        raise ConfigError("give input_shape=(C, H, W) when building a cost-model template from a module")
    return ModelTemplate.from_model(model, torch.zeros(1, *input_shape), name or type(model).__name__)


def _derived_scales(profile: HardwareProfile, base: HardwareProfile | None) -> tuple[float, float, str]:
    """``(compute-time scale, overhead scale, why)`` for a profile that says ``calibration.derived_from``
    (``base`` is that profile), from the two profiles' default power modes' clocks."""
    target = profile.name
    mine, theirs = profile.power_mode(), base.power_mode()
    if not (mine.gpu_clock_mhz and theirs.gpu_clock_mhz and mine.cpu_clock_mhz and theirs.cpu_clock_mhz):
        raise ConfigError(f"hardware profile {profile.path}: calibration.derived_from needs gpu_clock_mhz and "
                          f"cpu_clock_mhz in both its and {base.name}'s default power modes")
    c_scale = theirs.gpu_clock_mhz / mine.gpu_clock_mhz
    o_scale = theirs.cpu_clock_mhz / mine.cpu_clock_mhz
    why = (f"{base.name} calibration clock-scaled to {target}'s {mine.name} mode: MAC- and bandwidth-bound terms "
           f"x{theirs.gpu_clock_mhz:g}/{mine.gpu_clock_mhz:g} (GPU clock; assumes EMC scales alike), launch "
           f"overhead x{theirs.cpu_clock_mhz:g}/{mine.cpu_clock_mhz:g} (CPU clock); unverified on a device")
    return c_scale, o_scale, why


def _published(profile: HardwareProfile, base: HardwareProfile | None, template: ModelTemplate | None
               ) -> CostModel | None:
    derived = profile.calibration.derived_from
    if derived and base is None:
        from autoprune.hardware import load_profile

        base = load_profile(derived)
    source = base if derived else profile
    path = published_path(source.name)
    if not path.is_file():
        return None
    model = load_calibration(path, template, target=spec_from_profile(source), fix="reinstall autoprune or run "
                             f"`python -m autoprune.costmodel.builder.published` ({path})")
    if derived:
        c_scale, o_scale, why = _derived_scales(profile, base)
        derived_model = Regressor(spec_from_profile(profile), template)
        derived_model.load_params(model.params())
        derived_model.a *= c_scale
        derived_model.b *= c_scale
        derived_model.o *= o_scale
        u = model.uncertainty
        if u is not None:  # the base's band, over the base's latencies clock-scaled alike
            rng = (u.range_ms[0] * c_scale, u.range_ms[1] * c_scale) if u.range_ms is not None else None
            u = replace(u, range_ms=rng, basis=f"{u.basis} (of {base.name}, clock-scaled; unchecked on a device)")
        derived_model.uncertainty = u
        derived_model.provenance = Provenance(**{**model.provenance.__dict__, "target": profile.name,
                                                 "note": f"{why}; base error: {model.provenance.note}",
                                                 "band_basis": u.basis if u is not None else ""})
        return derived_model
    return model


def load_cost_model(target: str | HardwareProfile, model: Any = "resnet20",
                    input_shape: tuple[int, ...] | None = None, *, model_name: str | None = None,
                    num_classes: int = 10, allow_prior: bool = True, root: str | Path | None = None,
                    fix: str | None = None, base_profile: HardwareProfile | None = None) -> CostModel:
    """Return the best available cost model for ``model`` on ``target``.

    Order: the measured local calibration (``lut``) at :func:`calibration_path`;
    else the published calibration of the target (``regressor``, e.g. jetson-nano
    fitted to TensorRT figures); else, when ``allow_prior``, a datasheet roofline
    prior (``status="prior"``, error unknown). The choice is in ``.provenance``.

    Args:
        target: The target's loaded hardware profile, or its name (``local``, ``jetson-nano``,
            ``jetson-nano-5w``, ``raspberry-pi-4``...), loaded here.
        model: A zoo model name, an ``nn.Module`` (with ``input_shape``) or a template.
        input_shape: ``(C, H, W)``; defaults to the zoo model's natural size.
        model_name: Name used for the calibration file (defaults to the zoo name).
        num_classes: Classifier width used to build a zoo model's template.
        allow_prior: Fall back to an unchecked roofline prior instead of failing.
        root: Results folder (defaults to :func:`autoprune.io.results_dir`).
        fix: What to tell the user to run (default: ``autoprune profile`` with the model's name).
        base_profile: The profile ``target``'s calibration is derived from (``calibration.derived_from``),
            if the caller has it loaded.

    Raises:
        CalibrationError: If a calibration exists but is corrupt, or none exists and
            ``allow_prior`` is false (or the target is ``local``); the message names
            the command that creates it.
    """
    if isinstance(target, str):
        from autoprune.hardware import load_profile

        target = load_profile(target)
    profile = target
    template = template_for(model, input_shape, name=model_name, num_classes=num_classes)
    name = model_name or template.name
    path = calibration_path(profile.name, name, template.input_size, root)
    fix = fix or _fix(profile.name, name)
    if path.exists():
        return load_calibration(path, template, target=spec_from_profile(profile), fix=fix)
    published = _published(profile, base_profile, template)
    if published is not None:
        return published
    if profile.here == "cpu" or not allow_prior:
        raise CalibrationError(f"no calibration for {name} at {template.input_size}px on {profile.name} ({path}); "
                               f"{fix}")
    spec: TargetSpec = spec_from_profile(profile)
    prior = Regressor.from_roofline(spec, template=template)
    prior.provenance = Provenance(cost_model="regressor", target=profile.name, runtime="datasheet roofline",
                                  status="prior", calibration_id=f"{profile.name}/datasheet-prior",
                                  note="datasheet roofline with default efficiencies; never checked against a "
                                       f"measurement; {fix} on the device to calibrate")
    return prior
