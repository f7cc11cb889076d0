"""The :class:`Runtime` plug-in point: something that executes an ONNX graph and times it.

Contract for implementers:

* ``measure`` takes an ONNX model (path, bytes or ``onnx.ModelProto``) and its
  input shapes, builds/compiles it, feeds deterministic random inputs and
  returns a :class:`~autoprune.profiling.protocol.Measurement` produced by the
  shared protocol (:mod:`autoprune.profiling.protocol`). It never returns a
  made-up or predicted figure.
* Latencies are per single inference, in milliseconds, for the given shapes.
* Heavy packages (onnxruntime, tvm) are imported lazily inside methods.
* ``describe()`` names the runtime, version and backend the way it is stored in
  ``Measurement.runtime``.
"""

from __future__ import annotations

import os
import re
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any

from autoprune.errors import ConfigError, ProfilingError
from autoprune.profiling.protocol import DEFAULT_PROTOCOL, Measurement, ProtocolSettings
from autoprune.registry import Registry, lazy_import

__all__ = ["RUNTIMES", "Runtime", "get_runtime", "graph_inputs", "load_onnx", "make_inputs", "model_bytes",
           "normalise_shapes", "runtime_for_profile", "threads_of"]

#: Runtime name → class. Populated by :mod:`autoprune.profiling`'s submodules.
RUNTIMES: Registry[type[Runtime]] = Registry("runtime")

_ONNX_TO_NUMPY = {
    1: "float32",
    2: "uint8",
    3: "int8",
    5: "int16",
    6: "int32",
    7: "int64",
    9: "bool",
    10: "float16",
    11: "float64",
}


class Runtime(ABC):
    """Executes an ONNX graph and measures its latency with the shared protocol.

    Args:
        threads: Intra-op threads the runtime may use (``None``: the runtime's own
            default for this machine, recorded in the measurement).
        protocol: Measurement settings; per-call keyword overrides are allowed in
            :meth:`measure`.
    """

    name: str = ""

    def __init__(self, *, threads: int | None = None, protocol: ProtocolSettings = DEFAULT_PROTOCOL) -> None:
        if threads is not None and (not isinstance(threads, int) or threads < 1):
            raise ConfigError(f"threads must be a positive integer, got {threads!r}")
        self.threads = threads
        self.protocol = protocol

    @abstractmethod
    def measure(
        self,
        model: Any,
        input_shapes: dict[str, tuple[int, ...]] | tuple[int, ...] | None = None,
        **protocol_kwargs: Any,
    ) -> Measurement:
        """Measure one inference of ``model``.

        Args:
            model: ONNX file path, serialised bytes, or an ``onnx.ModelProto``.
            input_shapes: ``{input_name: shape}``, or one shape for a single-input
                model; ``None`` uses the model's static input shapes.
            **protocol_kwargs: Overrides of :class:`ProtocolSettings` fields.

        Raises:
            ProfilingError: If the model cannot be run or the timings are rejected.
            ConfigError: On bad shapes or settings.
        """

    @abstractmethod
    def describe(self) -> str:
        """Return e.g. ``"onnxruntime-1.31.1/CPUExecutionProvider"``."""

    def settings(self, **overrides: Any) -> ProtocolSettings:
        """Return this runtime's protocol with per-call ``overrides`` applied."""
        return self.protocol.with_overrides(**overrides)


def get_runtime(name: str, **options: Any) -> Runtime:
    """Instantiate the runtime called ``name`` with ``options``.

    Raises:
        UnknownNameError: If no such runtime exists (the message lists them).
    """
    return RUNTIMES.get(name)(**options)


def runtime_for_profile(profile: Any, name: str, **overrides: Any) -> Runtime:
    """Instantiate runtime ``name`` with a hardware profile's options for it.

    Args:
        profile: A :class:`~autoprune.hardware.profile.HardwareProfile` or a target name.
        name: ``"onnxruntime"`` or ``"tvm"``.
        **overrides: Options that replace the profile's (e.g. ``threads=1``, ``rpc=RPCConfig(...)``);
            ``None`` values are ignored.

    Raises:
        UnknownNameError: If the profile does not configure that runtime.
    """
    if isinstance(profile, str):
        from autoprune.hardware.profile import load_profile

        profile = load_profile(profile)
    options = profile.runtime_options(name)
    options.update({k: v for k, v in overrides.items() if v is not None})
    return get_runtime(name, **options)


def load_onnx(model: Any):
    """Return an ``onnx.ModelProto`` from a path, bytes or a ModelProto.

    Raises:
        ProfilingError: If the file is missing or is not a valid ONNX model.
    """
    onnx = lazy_import("onnx")
    if isinstance(model, onnx.ModelProto):
        return model
    try:
        if isinstance(model, (bytes, bytearray)):
            return onnx.load_from_string(bytes(model))
        path = Path(os.fspath(model))
        if not path.is_file():
            raise ProfilingError(f"ONNX model not found: {path}; export the model first")
        return onnx.load(str(path))
    except ProfilingError:
        raise
    except Exception as exc:  # noqa: BLE001 - onnx raises DecodeError and friends
        what = "<bytes>" if isinstance(model, (bytes, bytearray)) else model
        raise ProfilingError(f"cannot read ONNX model {what}: {exc}; re-export it") from None


def model_bytes(model: Any) -> bytes | str:
    """Return a path string or serialised bytes suitable for ``onnxruntime``."""
    if isinstance(model, (bytes, bytearray)):
        return bytes(model)
    if isinstance(model, (str, os.PathLike)):
        path = Path(os.fspath(model))
        if not path.is_file():
            raise ProfilingError(f"ONNX model not found: {path}; export the model first")
        return str(path)
    if hasattr(model, "SerializeToString"):
        return model.SerializeToString()
    raise ConfigError(f"expected an ONNX path, bytes or ModelProto, got {type(model).__name__}")


def graph_inputs(model_proto) -> list[tuple[str, tuple[int | str | None, ...], str]]:
    """Return ``(name, shape, numpy dtype)`` of the graph's real inputs (initialisers excluded)."""
    inits = {i.name for i in model_proto.graph.initializer}
    out = []
    for inp in model_proto.graph.input:
        if inp.name in inits:
            continue
        tt = inp.type.tensor_type
        dims = tuple(d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in tt.shape.dim)
        out.append((inp.name, dims, _ONNX_TO_NUMPY.get(tt.elem_type, "float32")))
    return out


def normalise_shapes(
    inputs: list[tuple[str, tuple[Any, ...], str]],
    input_shapes: dict[str, tuple[int, ...]] | tuple[int, ...] | list[int] | None,
) -> dict[str, tuple[int, ...]]:
    """Resolve ``input_shapes`` against the graph inputs into ``{name: concrete shape}``.

    Raises:
        ConfigError: If a shape is missing, names an unknown input, or is not concrete.
    """
    names = [n for n, _, _ in inputs]
    if input_shapes is None:
        shapes = {n: s for n, s, _ in inputs}
    elif isinstance(input_shapes, dict):
        unknown = sorted(set(input_shapes) - set(names))
        if unknown:
            raise ConfigError(
                f"input_shapes names unknown input(s) {unknown}; the model's inputs are {names}"
            )
        shapes = {n: tuple(input_shapes.get(n, s)) for n, s, _ in inputs}
    else:
        if len(inputs) != 1:
            raise ConfigError(f"the model has inputs {names}; pass input_shapes as a dict name -> shape")
        shapes = {names[0]: tuple(input_shapes)}
    for n, s in shapes.items():
        if not all(isinstance(d, int) and d > 0 for d in s):
            raise ConfigError(f"input {n!r} has a non-concrete shape {s}; pass input_shapes={{'{n}': (...)}}")
    return shapes


def make_inputs(
    inputs: list[tuple[str, tuple[Any, ...], str]], shapes: dict[str, tuple[int, ...]], seed: int = 0
) -> dict[str, Any]:
    """Deterministic random inputs (uniform [0, 1) floats, small non-negative ints)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    feeds = {}
    for name, _, dtype in inputs:
        shape = shapes[name]
        if dtype.startswith("float"):
            feeds[name] = rng.random(shape, dtype=np.float32).astype(dtype)
        elif dtype == "bool":
            feeds[name] = rng.random(shape) < 0.5
        else:
            feeds[name] = rng.integers(0, 2, size=shape).astype(dtype)
    return feeds


def threads_of(runtime_text: str | None) -> int | None:
    """The ``threads=N`` a runtime description names (a calibration's runtime), if any."""
    m = re.search(r"threads=(\d+)", runtime_text or "")
    return int(m.group(1)) if m else None
