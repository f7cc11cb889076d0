"""``autoprune device serve``: a TVM RPC server on the board, with autoprune's measurement functions.

The server is TVM's own Python RPC server (``tvm.rpc.server``), run in this process, so TVM
measurements (``autoprune profile --runtime tvm --rpc ...``) work against it unchanged. Before it
listens it registers three global functions that a client calls over the session:

* ``autoprune.device.info()``: versions, the execution providers this onnxruntime has, the energy
  sensor, the host;
* ``autoprune.device.measure(file, request)``: one model measured with
  :meth:`~autoprune.profiling.ort.OnnxRuntime.measure` (the shared protocol: warm-up, repeats,
  noise bound with retries, timeout);
* ``autoprune.device.relative(file, reference_file, request)``: a candidate against a reference in
  interleaved rounds (:meth:`~autoprune.profiling.ort.OnnxRuntime.measure_relative`, the loop
  local calibrations use), with the candidate's energy read from the board's sensor where one exists.

``file`` names an ONNX model the client uploaded into the session's work folder; ``request`` and the
answer are JSON strings. An error is answered as JSON (its class and one-line message) so that the
client raises the same error class (a too-noisy point stays a
:class:`~autoprune.errors.NoisyMeasurementError`, which a calibration may reject and go on).

Each RPC session runs in a process forked from the server (TVM's design), so the onnxruntime
sessions and the sensor are created in that child, never in the listening process.

Security: a TVM RPC server runs whatever a client sends it (it writes uploaded files and loads
uploaded libraries). ``serve`` binds 127.0.0.1 unless told otherwise and prints a warning when it
binds anything else. Its file functions (``upload``, ``download``, ``remove``, ``load_module``,
``download_linked_module``) stay inside each session's work folder (:func:`confine_session_files`):
TVM's own join ``../x`` or ``/etc/x`` onto it and so read and write anywhere.
"""

from __future__ import annotations

import ipaddress
import json
import os
import signal
import sys
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from autoprune.errors import AutopruneError, ConfigError, ProfilingError
from autoprune.hardware.records import GPU_PROVIDERS
from autoprune.registry import lazy_import

__all__ = ["FUNCTIONS", "ServerConfig", "confine_session_files", "handle_info", "handle_measure", "handle_relative",
           "in_work_folder", "is_loopback", "register_functions", "serve"]

#: Global function names registered on the server (the client calls them by these names).
FUNCTIONS = {"info": "autoprune.device.info", "measure": "autoprune.device.measure",
             "relative": "autoprune.device.relative"}
#: Providers tried by ``--providers auto``, best first.
AUTO_PROVIDERS = (*GPU_PROVIDERS, "CPUExecutionProvider")
#: Reference models kept loaded per session (a calibration compares everything with one dense model).
_CACHED_REFERENCES = 2


@dataclass(frozen=True)
class ServerConfig:
    """What the device server measures with.

    Attributes:
        providers: Execution providers to use, best first; empty: what each request asks for
            (the target profile's), restricted to those this onnxruntime has.
        threads: Intra-op threads; ``None``: what each request asks for.
        energy_sensor: ``auto``, ``none``, ``ina3221[:RAIL]``, ``rapl`` or ``nvml[:INDEX]``.
        sysfs_root: The ``/sys`` folder the sensor is read from (tests pass a fake tree).
        energy_min_time_s: How long each energy reading runs the candidate.
    """

    providers: tuple[str, ...] = ()
    threads: int | None = None
    energy_sensor: str = "auto"
    sysfs_root: str = "/sys"
    energy_min_time_s: float = 0.5


_CONFIG = ServerConfig()
#: Per session process: its pid, the sensor, the loaded reference models.
_STATE: dict[str, Any] = {}


def _sensor():
    """The sensor, created once per process (after the fork), or ``None``."""
    state = _STATE
    if "sensor" not in state or state.get("pid") != os.getpid():
        from autoprune.hardware.sensor_spec import sensor_from_spec

        state["pid"] = os.getpid()
        state["sensor"] = sensor_from_spec(_CONFIG.energy_sensor, _CONFIG.sysfs_root)
        state["references"] = OrderedDict()
    return state["sensor"]


def _providers(requested: list[str] | None) -> list[str]:
    if _CONFIG.providers:
        if list(_CONFIG.providers) == ["auto"]:
            ort = lazy_import("onnxruntime")
            return [p for p in AUTO_PROVIDERS if p in ort.get_available_providers()]
        return list(_CONFIG.providers)
    return list(requested or ["CPUExecutionProvider"])


def _runtime(request: dict[str, Any]):
    from autoprune.profiling.ort import OnnxRuntime
    from autoprune.profiling.protocol import DEFAULT_PROTOCOL

    threads = _CONFIG.threads if _CONFIG.threads is not None else request.get("threads", 1)
    return OnnxRuntime(threads=threads, providers=_providers(request.get("providers")),
                       optimization=request.get("optimization", "all"),
                       protocol=DEFAULT_PROTOCOL.with_overrides(**request.get("protocol", {})),
                       energy_sensor=_sensor(), energy_min_time_s=_CONFIG.energy_min_time_s)


def _path(file_name: str) -> str:
    """The uploaded file ``file_name`` in this session's work folder."""
    name = os.path.basename(str(file_name))
    if not name.endswith(".onnx") or name != file_name:
        raise ConfigError(f"the device server measures uploaded .onnx files by name, got {file_name!r}")
    try:
        tvm = lazy_import("tvm", "apache-tvm")
        path = str(tvm.get_global_func("tvm.rpc.server.workpath")(name))
    except Exception:  # noqa: BLE001 - called outside an RPC session (tests): the current folder
        path = os.path.abspath(name)
    if not os.path.isfile(path):
        raise ProfilingError(f"no uploaded model {name} on the device; upload it in the same session first")
    return path


def _answer(fn: Callable[[], dict[str, Any]]) -> str:
    """Run a handler; answer ``{"ok": true, ...}`` or ``{"ok": false, "error": class, "message": line}``."""
    try:
        return json.dumps({"ok": True, **fn()})
    except AutopruneError as exc:
        return json.dumps({"ok": False, "error": type(exc).__name__, "message": str(exc).splitlines()[0]})
    except Exception as exc:  # noqa: BLE001 - any failure on the device is reported as one line
        lines = str(exc).strip().splitlines() or [type(exc).__name__]
        return json.dumps({"ok": False, "error": "ProfilingError", "message": f"{type(exc).__name__}: {lines[-1]}"})


def handle_info() -> str:
    """``autoprune.device.info``: versions, providers, sensor and host, as JSON."""

    def info() -> dict[str, Any]:
        import platform

        import autoprune
        from autoprune.profiling.protocol import host_description

        ort = lazy_import("onnxruntime")
        sensor = _sensor()
        try:
            tvm_version = lazy_import("tvm", "apache-tvm").__version__
        except AutopruneError:
            tvm_version = None
        return {"autoprune": autoprune.__version__, "python": platform.python_version(),
                "onnxruntime": ort.__version__, "available_providers": list(ort.get_available_providers()),
                "providers": list(_CONFIG.providers), "threads": _CONFIG.threads, "tvm": tvm_version,
                "host": host_description(), "energy_source": getattr(sensor, "source", None),
                "energy_min_time_s": _CONFIG.energy_min_time_s}

    return _answer(info)


def handle_measure(file_name: str, request: str) -> str:
    """``autoprune.device.measure``: one model, the shared protocol; the answer holds ``measurement``."""

    def measure() -> dict[str, Any]:
        from autoprune.profiling.protocol import host_description

        req = json.loads(request or "{}")
        shapes = req.get("input_shapes")
        if isinstance(shapes, dict):
            shapes = {k: tuple(v) for k, v in shapes.items()}
        elif shapes is not None:
            shapes = tuple(shapes)
        m = _runtime(req).measure(_path(file_name), shapes, seed=int(req.get("seed", 0)))
        return {"measurement": {**m.to_dict(), "device": host_description()}}

    return _answer(measure)


def handle_relative(file_name: str, reference_name: str, request: str) -> str:
    """``autoprune.device.relative``: a candidate against a reference in interleaved rounds (+ energy)."""

    def relative() -> dict[str, Any]:
        req = json.loads(request or "{}")
        runtime = _runtime(req)
        _sensor()  # opens this process's state
        refs: OrderedDict = _STATE["references"]
        key = (reference_name, tuple(runtime.providers), runtime.threads)
        if key not in refs:
            refs[key] = runtime.runner(_path(reference_name))
            while len(refs) > _CACHED_REFERENCES:
                refs.popitem(last=False)
        refs.move_to_end(key)
        return {"relative": runtime.measure_relative(_path(file_name), refs[key], req.get("settings", {}))}

    return _answer(relative)


def register_functions(config: ServerConfig | None = None) -> None:
    """Register the measurement functions as TVM global functions (before the server forks sessions)."""
    global _CONFIG
    if config is not None:
        _CONFIG = config
    tvm_ffi = lazy_import("tvm_ffi", "apache-tvm")
    tvm_ffi.register_global_func(FUNCTIONS["info"], handle_info, override=True)
    tvm_ffi.register_global_func(FUNCTIONS["measure"], handle_measure, override=True)
    tvm_ffi.register_global_func(FUNCTIONS["relative"], handle_relative, override=True)


#: TVM's session functions that take a file name and resolve it with their own join (the C++ upload,
#: download and remove resolve theirs through ``tvm.rpc.server.workpath``, replaced as a whole).
_FILE_FUNCTIONS = ("tvm.rpc.server.load_module", "tvm.rpc.server.download_linked_module")


def in_work_folder(folder: str, name: str) -> str:
    """The path of ``name`` in ``folder``, refused when it leads out of it (``..``, an absolute path, a link).

    Raises:
        ConfigError: Naming the file and the rule.
    """
    base = os.path.realpath(folder)
    path = os.path.realpath(os.path.join(base, os.fspath(name)))
    if os.path.commonpath([base, path]) != base or path == base:
        raise ConfigError(f"the device server reads and writes files only inside its session folder; {name!r} is "
                          "not a file name in it (no '..', no absolute path)")
    return path


def confine_session_files(server_mod: Any) -> None:
    """Make every RPC session of ``tvm.rpc.server`` (this process's, and those forked from it) keep its
    file functions inside its work folder: ``tvm.rpc.server.workpath`` (which the C++ ``upload``,
    ``download`` and ``remove`` call for every path) and the Python ``load_module`` and
    ``download_linked_module`` are registered again, after TVM's, refusing any other path."""
    original = server_mod._server_env
    if getattr(original, "confined", False):
        return
    tvm_ffi = lazy_import("tvm_ffi", "apache-tvm")

    def server_env(load_library: Any, work_path: Any = None) -> Any:
        temp = original(load_library, work_path)
        folder = temp.temp_dir
        tvm_ffi.register_global_func("tvm.rpc.server.workpath", lambda name: in_work_folder(folder, name),
                                     override=True)
        for fname in _FILE_FUNCTIONS:
            inner = tvm_ffi.get_global_func(fname)
            tvm_ffi.register_global_func(
                fname, lambda name, inner=inner: inner(os.path.relpath(in_work_folder(folder, name), folder)),
                override=True)
        return temp

    server_env.confined = True  # type: ignore[attr-defined]
    server_mod._server_env = server_env


def is_loopback(host: str) -> bool:
    """True for ``localhost`` and loopback addresses."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


RPC_WARNING = (
    "WARNING: a TVM RPC server runs whatever a client sends it (it writes uploaded files and loads "
    "uploaded libraries). Binding {host} lets anyone who can reach {host}:{port} run code on this machine "
    "as {user}. Use it only on a trusted network, or keep the default 127.0.0.1 and tunnel "
    "(ssh -L {port}:127.0.0.1:{port} this-board)."
)


def serve(host: str = "127.0.0.1", port: int = 9090, port_end: int = 9199, *, tracker: str | None = None,
          key: str = "", custom_addr: str | None = None, config: ServerConfig = ServerConfig(),
          echo: Callable[[str], None] = print, ready: Callable[[int], None] | None = None) -> int:
    """Run the device server in the foreground until interrupted.

    Args:
        host: Address to bind (default loopback; anything else prints :data:`RPC_WARNING`).
        port: First port to try; the next free one below ``port_end`` is used.
        port_end: End of the port range.
        tracker: ``HOST:PORT`` of a TVM RPC tracker to register with (needs ``key``).
        key: Device key (registered with the tracker; a direct client sends it too).
        custom_addr: The address the tracker hands to clients (default: the one it sees).
        config: What and how to measure.
        echo: Where status lines go.
        ready: Called with the bound port once the server listens.

    Returns:
        The exit code (1 if the listening thread ended on an error).

    Raises:
        ConfigError: On a tracker without key, a bad address, or a bad sensor spec.
        ProfilingError: If the named sensor is absent.
    """
    from autoprune.hardware.sensor_spec import sensor_from_spec
    from autoprune.profiling.rpc import _parse_addr

    if tracker and not key:
        raise ConfigError("--tracker needs --key KEY (the device key clients ask the tracker for)")
    tracker_addr = _parse_addr(tracker, "--tracker") if tracker else None
    sensor = sensor_from_spec(config.energy_sensor, config.sysfs_root)  # fail now on a bad spec
    source = getattr(sensor, "source", None)
    del sensor  # each session process opens its own
    ort = lazy_import("onnxruntime")
    server_mod = lazy_import("tvm.rpc.server", "apache-tvm[rpc]")
    register_functions(config)
    confine_session_files(server_mod)
    if not is_loopback(host):
        import getpass

        print(RPC_WARNING.format(host=host, port=port, user=getpass.getuser()), file=sys.stderr, flush=True)
    try:
        state = server_mod.PopenRPCServerState(host, port, port_end, False, tracker_addr, key, None, custom_addr,
                                               True)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot listen on {host}:{port}-{port_end}: {exc}") from None
    echo(f"autoprune device server listening on {host}:{state.port}" + (f" key={key}" if key else "")
         + (f", registered with tracker {tracker}" if tracker else ""))
    echo(f"  onnxruntime {ort.__version__}: providers available {', '.join(ort.get_available_providers())}; "
         f"using {', '.join(config.providers) or 'what each client asks for'}")
    echo(f"  energy: {'measured with ' + source if source else 'no sensor (energy stays modelled)'}")
    echo(f"  settings: {json.dumps(asdict(config))}")
    if ready is not None:
        ready(state.port)

    def stop(signum: int, _frame: Any) -> None:
        _kill_children()
        os._exit(0)

    signal.signal(signal.SIGTERM, stop)
    try:
        while state.thread.is_alive():
            state.thread.join(0.5)
    except KeyboardInterrupt:
        _kill_children()
        os._exit(0)
    echo("autoprune device server: the listening thread stopped (tracker unreachable?)")
    return 1


def _kill_children() -> None:
    """Terminate this server's own session processes (by their ids)."""
    try:
        import psutil
    except ImportError:
        return
    for child in psutil.Process(os.getpid()).children(recursive=True):
        try:
            child.kill()
        except psutil.Error:
            pass
