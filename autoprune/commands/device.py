"""``autoprune device``: run on a board to profile it from another machine (``serve``), or check one (``info``)."""

from __future__ import annotations

import argparse
import json

from autoprune.commands.base import Command
from autoprune.errors import ConfigError


class DeviceCommand(Command):
    """``device serve`` (on the board) and ``device info`` (from the host)."""

    name = "device"
    help = "on a board: serve TVM + ONNX Runtime measurements over RPC (`device serve`); check one (`device info`)"

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        sub = parser.add_subparsers(dest="action", metavar="ACTION", parser_class=type(parser))
        serve = sub.add_parser("serve", help="run the device server here (a TVM RPC server with autoprune's "
                               "ONNX Runtime measurement functions and this board's energy sensor)",
                               description="Run on the device. SECURITY: a TVM RPC server runs whatever a client "
                               "sends it; keep the default 127.0.0.1 (and tunnel with ssh -L) or use a trusted "
                               "network.")
        serve.add_argument("--host", default="127.0.0.1",
                           help="address to bind (default 127.0.0.1; anything else prints a security warning)")
        serve.add_argument("--port", type=int, default=9090, help="first port to try (default 9090)")
        serve.add_argument("--port-end", type=int, default=None, help="end of the port range (default: --port + 100)")
        serve.add_argument("--tracker", metavar="HOST:PORT", help="register with this TVM RPC tracker (with --key)")
        serve.add_argument("--key", default="", help="device key registered with the tracker (e.g. nano)")
        serve.add_argument("--custom-addr", default=None,
                           help="the address the tracker hands to clients (default: the one it sees)")
        serve.add_argument("--providers", default="",
                           help="ONNX Runtime execution providers to use, comma-separated, or `auto` (TensorRT, "
                                "CUDA, CPU: those this onnxruntime has); default: what the client's target asks")
        serve.add_argument("--threads", type=int, default=None,
                           help="intra-op threads (default: what the client asks, --threads of `profile`)")
        serve.add_argument("--energy-sensor", default="auto",
                           help="auto (INA3221 board rail, then RAPL, then NVML), none, ina3221[:RAIL], rapl, "
                                "nvml[:INDEX] (default: auto)")
        serve.add_argument("--sysfs-root", default="/sys", help="the sysfs folder sensors are read from (default /sys)")
        serve.add_argument("--energy-min-time", type=float, default=0.5,
                           help="seconds each energy reading runs a model (default 0.5)")
        info = sub.add_parser("info", help="ask a device server what it has (versions, providers, energy sensor)")
        info.add_argument("--rpc", metavar="HOST:PORT", help="the device server")
        info.add_argument("--rpc-tracker", metavar="HOST:PORT", help="a TVM RPC tracker (with --rpc-key)")
        info.add_argument("--rpc-key", metavar="KEY", help="device key registered with the tracker")
        info.add_argument("--json", action="store_true", help="print JSON")

    def run(self, args: argparse.Namespace) -> int:
        if args.action == "serve":
            return self._serve(args)
        if args.action == "info":
            return self._info(args)
        raise ConfigError("give an action: `autoprune device serve` (on the board) or `autoprune device info --rpc "
                          "HOST:PORT`")

    @staticmethod
    def _serve(args: argparse.Namespace) -> int:
        from autoprune.device.server import ServerConfig, serve

        if args.threads is not None and args.threads < 1:
            raise ConfigError(f"--threads must be >= 1, got {args.threads}")
        if not args.energy_min_time > 0:
            raise ConfigError(f"--energy-min-time must be positive seconds, got {args.energy_min_time}")
        if args.port_end is None:
            args.port_end = min(args.port + 100, 65536)
        if not 0 < args.port < args.port_end <= 65536:
            raise ConfigError(f"need 0 < --port < --port-end <= 65536, got {args.port} and {args.port_end}")
        providers = tuple(p.strip() for p in args.providers.split(",") if p.strip())
        config = ServerConfig(providers=providers, threads=args.threads, energy_sensor=args.energy_sensor,
                              sysfs_root=args.sysfs_root, energy_min_time_s=args.energy_min_time)
        return serve(args.host, args.port, args.port_end, tracker=args.tracker, key=args.key,
                     custom_addr=args.custom_addr, config=config, echo=lambda s: print(s, flush=True))

    @staticmethod
    def _info(args: argparse.Namespace) -> int:
        from autoprune.device.client import DeviceOnnxRuntime
        from autoprune.profiling.rpc import RPCConfig

        rpc = RPCConfig.from_args(args.rpc, args.rpc_tracker, args.rpc_key)
        if rpc is None:
            raise ConfigError("give the device server: --rpc HOST:PORT or --rpc-tracker HOST:PORT --rpc-key KEY")
        info = DeviceOnnxRuntime(rpc).info()
        info = {k: v for k, v in info.items() if k != "ok"}
        if args.json:
            print(json.dumps(info, indent=2))
            return 0
        print(f"device server {rpc.describe()}: autoprune {info['autoprune']}, python {info['python']}, "
              f"onnxruntime {info['onnxruntime']}, tvm {info['tvm']}")
        print(f"  host {info['host']}; providers available: {', '.join(info['available_providers'])}")
        print(f"  energy: {info['energy_source'] or 'no sensor (energy stays modelled)'}")
        return 0
