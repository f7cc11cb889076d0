"""Measuring through ``autoprune device serve``: ONNX Runtime on the device, driven from here.

:class:`DeviceOnnxRuntime` is a :class:`~autoprune.profiling.Runtime`: ``calibrate()`` uses it like
the local ONNX Runtime. Each ONNX graph is uploaded once per RPC session (named by its SHA-256), then
measured on the device by the functions :mod:`autoprune.device.server` registers, under the same
protocol as local profiling; whole models are timed against the dense model in interleaved rounds
on the device, with the candidate's energy read from the board's sensor where it has one.

Reliability: every remote step runs under :func:`~autoprune.profiling.rpc.run_with_watchdog` with a
bound (the protocol's ``timeout_s`` plus ``margin_s``), so an unreachable, killed or hung server
gives one :class:`~autoprune.errors.ProfilingError` line within that bound; a broken session is
dropped, never reused. A calibration stops on that error and writes nothing.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Sequence
from typing import Any

from autoprune.errors import ConfigError, NoisyMeasurementError, ProfilingError, UnknownNameError
from autoprune.hardware.records import GPU_PROVIDERS
from autoprune.profiling.base import Runtime, model_bytes
from autoprune.profiling.protocol import DEFAULT_PROTOCOL, Measurement, ProtocolSettings
from autoprune.profiling.rpc import RPCConfig, connect, run_with_watchdog

__all__ = ["DeviceOnnxRuntime", "device_runtime_for_profile"]

_ERRORS: dict[str, type[Exception]] = {"NoisyMeasurementError": NoisyMeasurementError, "ConfigError": ConfigError,
                                       "UnknownNameError": UnknownNameError}


def _bytes_of(model: Any) -> bytes:
    data = model_bytes(model)
    if isinstance(data, str):
        with open(data, "rb") as fh:
            return fh.read()
    return data


class DeviceOnnxRuntime(Runtime):
    """ONNX Runtime on a device that runs ``autoprune device serve``, reached over TVM RPC.

    Args:
        rpc: Where the server (or the tracker that knows it) is.
        threads: Intra-op threads asked for (the server's ``--threads`` wins where set).
        providers: Execution providers asked for, best first (the target profile's; the server's
            ``--providers`` wins where set; ones the device lacks fall back to CPU, and the runtime
            string says so).
        optimization: Graph optimisation level.
        protocol: Measurement settings (applied on the device).
        margin_s: Added to each step's protocol timeout for the RPC round trip and uploads.
    """

    name = "onnxruntime"

    def __init__(self, rpc: RPCConfig, *, threads: int | None = 1, providers: Sequence[str] | None = None,
                 optimization: str = "all", protocol: ProtocolSettings = DEFAULT_PROTOCOL,
                 margin_s: float = 30.0) -> None:
        super().__init__(threads=threads, protocol=protocol)
        if not isinstance(rpc, RPCConfig):
            raise ConfigError("DeviceOnnxRuntime needs an RPCConfig (--rpc HOST:PORT or --rpc-tracker + --rpc-key)")
        if not margin_s > 0:
            raise ConfigError(f"margin_s must be positive seconds, got {margin_s!r}")
        self.rpc = rpc
        self.providers = list(providers or ["CPUExecutionProvider"])
        self.optimization = optimization
        self.margin_s = float(margin_s)
        self._session: Any = None
        self._opened = 0.0
        self._uploaded: set[str] = set()
        self._info: dict[str, Any] | None = None
        self._last_runtime: str | None = None

    # -- session ------------------------------------------------------------------------------------

    def _session_for(self, bound_s: float):
        """The open session, or a new one when there is none or it would expire within ``bound_s``."""
        if self._session is None or time.monotonic() - self._opened + bound_s > self.rpc.session_timeout_s:
            self._session = None
            self._session = connect(self.rpc)
            self._opened = time.monotonic()
            self._uploaded = set()
        return self._session

    def close(self) -> None:
        """Close the session (a new one opens on the next call)."""
        self._session = None
        self._uploaded = set()

    def _call(self, what: str, bound_s: float, fn_name: str, *args: Any, uploads: Sequence[bytes] = ()) -> dict:
        """Upload ``uploads`` (once per session), call ``fn_name(*names, *args)`` remotely, decode its answer."""
        where = self.rpc.describe()
        session = self._session_for(bound_s + self.margin_s)
        names = [f"{hashlib.sha256(b).hexdigest()[:24]}.onnx" for b in uploads]

        def step() -> str:
            for name, data in zip(names, uploads):
                if name not in self._uploaded:
                    session.upload(bytearray(data), target=name)
                    self._uploaded.add(name)
            return str(session.get_function(fn_name)(*names, *args))

        try:
            text = run_with_watchdog(step, bound_s + self.margin_s, f"{what} on {where}", (session,))
        except ProfilingError as exc:
            self._session = None  # broken or abandoned: never reused
            self._uploaded = set()
            text = str(exc)
            if "no answer within" in text or ("kShutdown" not in text and "Socket" not in text):
                raise
            raise ProfilingError(f"{what} on {where}: the device server closed the connection mid-call "
                                 f"({text.rsplit(': ', 1)[-1]}); check that `autoprune device serve` still runs "
                                 "there, then profile again") from None
        try:
            answer = json.loads(text)
        except ValueError:
            raise ProfilingError(f"{what} on {where}: the server answered {text[:80]!r}, not JSON; is it "
                                 "`autoprune device serve` (a plain TVM RPC server cannot measure ONNX)?") from None
        if not answer.get("ok"):
            cls = _ERRORS.get(answer.get("error", ""), ProfilingError)
            raise cls(f"{what} on {where}: {answer.get('message', 'failed')}")
        return answer

    # -- device facts ---------------------------------------------------------------------------------

    def info(self) -> dict[str, Any]:
        """The server's versions, providers and energy sensor (cached).

        Raises:
            ProfilingError: If the server is unreachable, or is a plain TVM RPC server.
        """
        if self._info is None:
            from autoprune.device.server import FUNCTIONS

            try:
                self._info = self._call("asking the device server", self.rpc.connect_timeout_s, FUNCTIONS["info"])
            except ProfilingError as exc:
                if "autoprune.device.info" in str(exc) or "not found" in str(exc).lower():
                    raise ProfilingError(f"{self.rpc.describe()} is a TVM RPC server without autoprune's functions; "
                                         "start `autoprune device serve` on the device") from None
                raise
        return self._info

    @property
    def energy_source(self) -> str | None:
        """The device's energy sensor (e.g. ``ina3221:VDD_IN:...``), or ``None``."""
        return self.info().get("energy_source")

    def describe(self) -> str:
        """``onnxruntime-<device version>/<provider> on rpc://host:port``, with any provider fallback."""
        if self._last_runtime is None:
            info = self.info()
            available = set(info.get("available_providers", ()))
            wanted = list(info.get("providers") or self.providers)
            if wanted == ["auto"]:
                wanted = [p for p in GPU_PROVIDERS if p in available]
            used = [p for p in wanted if p in available] or ["CPUExecutionProvider"]
            missing = [p for p in wanted if p not in available]
            text = f"onnxruntime-{info.get('onnxruntime')}/{used[0]}"
            if missing:
                text += f" (fallback: {', '.join(missing)} unavailable)"
            self._last_runtime = text
        return f"{self._last_runtime} on {self.rpc.describe()}"

    # -- measuring ------------------------------------------------------------------------------------

    def _request(self, **extra: Any) -> dict[str, Any]:
        return {"providers": self.providers, "threads": self.threads, "optimization": self.optimization, **extra}

    def measure(self, model: Any, input_shapes: dict[str, tuple[int, ...]] | tuple[int, ...] | None = None, *,
                seed: int = 0, **protocol_kwargs: Any) -> Measurement:
        """Measure one inference of ``model`` on the device (see :meth:`Runtime.measure`).

        Raises:
            NoisyMeasurementError: If the device's timings stay too noisy.
            ProfilingError: If the model cannot run there, or the server fails, dies or hangs.
        """
        from autoprune.device.server import FUNCTIONS

        settings = self.settings(**protocol_kwargs)
        shapes = ({k: list(v) for k, v in input_shapes.items()} if isinstance(input_shapes, dict)
                  else list(input_shapes) if input_shapes is not None else None)
        request = self._request(protocol=settings.callable_kwargs(), input_shapes=shapes, seed=seed)
        answer = self._call("measuring", settings.timeout_s, FUNCTIONS["measure"], json.dumps(request),
                            uploads=[_bytes_of(model)])
        m = dict(answer["measurement"])
        self._last_runtime = m["runtime"]
        m["device"] = f"{self.rpc.describe()} ({m.get('device', '?')})"
        return Measurement.from_dict(m)

    def measure_relative(self, model: Any, reference: Any, settings: dict[str, Any] | None = None) -> dict[str, Any]:
        """Time ``model`` against ``reference`` in interleaved rounds on the device (+ its energy).

        Args:
            model: The candidate (ONNX path, bytes or proto).
            reference: The reference model (path, bytes or proto; not a local runner).
            settings: ``rounds``, ``warmup``, ``min_time_s``, ``min_repeats``, ``timeout_s``.

        Returns:
            :meth:`autoprune.profiling.ort.OnnxRuntime.measure_relative`'s dict, measured on the device.

        Raises:
            ConfigError: If ``reference`` is a callable.
            ProfilingError: If the server fails, dies or hangs.
        """
        from autoprune.device.server import FUNCTIONS

        if callable(reference):
            raise ConfigError("a device runtime compares with a reference model, not a local runner")
        cfg = {"timeout_s": self.protocol.timeout_s, **(settings or {})}
        answer = self._call("timing against the dense model", float(cfg["timeout_s"]) + self._energy_bound(),
                            FUNCTIONS["relative"], json.dumps(self._request(settings=cfg)),
                            uploads=[_bytes_of(model), _bytes_of(reference)])
        return answer["relative"]

    def _energy_bound(self) -> float:
        return 4 * float(self.info().get("energy_min_time_s") or 0) if self.energy_source else 0.0


def device_runtime_for_profile(profile: Any, rpc: RPCConfig, **overrides: Any) -> DeviceOnnxRuntime:
    """A :class:`DeviceOnnxRuntime` with the target profile's ONNX Runtime options (providers, threads).

    Raises:
        UnknownNameError: If the profile configures no ``onnxruntime`` runtime.
    """
    if isinstance(profile, str):
        from autoprune.hardware.profile import load_profile

        profile = load_profile(profile)
    options = profile.runtime_options("onnxruntime")
    options.update({k: v for k, v in overrides.items() if v is not None})
    return DeviceOnnxRuntime(rpc, **options)
