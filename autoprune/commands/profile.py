"""``autoprune profile``: measure a model on a target and write its cost-model calibration."""

from __future__ import annotations

import argparse

from autoprune.commands.base import Command
from autoprune.commands.common import add_model_data_args, load_data_for
from autoprune.errors import ConfigError


class ProfileCommand(Command):
    """Measure per-layer lookup tables and end-to-end plans; fit and save the calibration."""

    name = "profile"
    help = "measure per-layer latency tables + random plans on a target and write its cost-model calibration"

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--target", default="local", help="target name (see `autoprune targets`; default: local)")
        add_model_data_args(parser)
        for action in parser._actions:
            if action.dest == "model":
                action.help = ("model to calibrate, as `search` takes it: a zoo name, package.module:function or "
                               "file.py:function (default: vgg11 at 32x32, the search default)")
            elif action.dest == "data":
                action.help = ("the data the model is searched on, as `search` takes it: it sets the classes and "
                               "the default input size (default: digits)")
            elif action.dest == "checkpoint":
                action.help = "dense state dict to check the model against (latency needs no trained weights)"
            elif action.dest == "seed":
                action.help = "seed of the data split and of the random plans (default: 0)"
        parser.add_argument("--runtime", default="onnxruntime", choices=("onnxruntime", "tvm"),
                            help="runtime that executes the kernels (default: onnxruntime)")
        parser.add_argument("--rpc", metavar="HOST:PORT",
                            help="the device's server: `autoprune device serve` (both runtimes) or a plain TVM RPC "
                                 "server (--runtime tvm only)")
        parser.add_argument("--rpc-tracker", metavar="HOST:PORT", help="TVM RPC tracker (with --rpc-key)")
        parser.add_argument("--rpc-key", metavar="KEY", help="device key registered with the tracker")
        parser.add_argument("--energy-sensor", default=None,
                            help="measure energy here with this sensor: auto, none, ina3221[:RAIL], rapl, nvml[:INDEX] "
                                 "(default: nvml on --target cuda, else none; a device server reads its own)")
        parser.add_argument("--threads", type=int, default=1, help="intra-op threads (default: 1)")
        parser.add_argument("--plans", type=int, default=96,
                            help="random plans measured end to end, each against the dense model; three quarters "
                            "fit the per-kernel in-context scales, the rest are held out (default: 96)")
        parser.add_argument("--grid", default="0.125,0.25,0.5,0.75,1.0",
                            help="kept-channel fractions per layer (default: 0.125,0.25,0.5,0.75,1.0)")
        parser.add_argument("--round-to", type=int, default=8,
                            help="channel alignment of the grid and random plans (default: 8; match the search's)")
        parser.add_argument("--max-cv", type=float, default=None,
                            help="noise bound of each isolated kernel measurement as a robust CV (default: 0.2); "
                                 "a noisier point is re-measured, then rejected and never stored")

    def run(self, args: argparse.Namespace) -> int:
        from tqdm import tqdm

        from autoprune.costmodel.builder import CalibrationOptions, calibrate
        from autoprune.costmodel.calibration import (
            calibration_name,
            calibration_path,
            load_calibration,
            save_calibration,
        )
        from autoprune.hardware import load_profile
        from autoprune.models import build_model, load_checkpoint
        from autoprune.train import check_model_fits

        if args.threads < 1:
            raise ConfigError(f"--threads must be >= 1, got {args.threads}")
        if args.max_cv is not None and not args.max_cv > 0:
            raise ConfigError(f"--max-cv must be a positive fraction (0.2 = 20 %), got {args.max_cv}")
        if args.plans < 2:
            raise ConfigError(f"--plans must be >= 2 (some are held out to measure the error), got {args.plans}")
        try:
            grid = tuple(float(x) for x in args.grid.split(","))
        except ValueError:
            raise ConfigError(f"--grid {args.grid!r} is not a comma-separated list of fractions, e.g. 0.5,1.0") \
                from None
        if not grid or any(not 0 < g <= 1 for g in grid):
            raise ConfigError(f"--grid fractions must lie in (0, 1], got {args.grid!r}")
        load_profile(args.target)  # an unknown target: one line listing the valid ones
        runtime = _make_runtime(args)
        # The model exactly as `search` builds it: its data's classes, channels and input size.
        data = load_data_for(args)
        size = int(data.input_shape[-1])
        dense = build_model(args.model, num_classes=data.num_classes, in_channels=data.input_shape[0])
        if args.checkpoint is not None:
            load_checkpoint(dense, args.checkpoint)
        check_model_fits(dense, data)
        name = calibration_name(args.model)
        bar = tqdm(total=1, desc=f"profile {name}@{size} on {args.target}", unit="meas")

        def progress(done: int, total: int, what: str) -> None:
            bar.total = total
            bar.set_postfix_str(what[:28])
            bar.update(done - bar.n)

        try:
            options = CalibrationOptions(plans=args.plans, grid=grid, seed=args.seed, round_to=args.round_to,
                                         max_cv=args.max_cv, num_classes=data.num_classes, input_size_px=size,
                                         in_channels=data.input_shape[0])
            result = calibrate(name, options, target=args.target, runtime=runtime, model=dense, progress=progress)
        finally:
            bar.close()
        path = calibration_path(args.target, name, size)
        save_calibration(result.model, path, model_name=name, input_shape=tuple(data.input_shape),
                         runtime=result.runtime, status="measured", error=result.error,
                         extra={"grid": list(grid), "plans": args.plans, "seed": args.seed, "round_to": args.round_to,
                                "kernel_points": result.kernel_points, "calibration_seconds": result.seconds,
                                "model_ref": args.model, "data": args.data,
                                "template": result.model.template.to_dict()})
        model = load_calibration(path)  # round-trip check (checksum)
        e = result.error

        def fmt(v: float | None, spec: str) -> str:
            return "n/a" if v is None else format(v, spec)

        print(f"calibration written: {path}")
        print(f"  target {args.target}, runtime {result.runtime}, status measured, cost model lut")
        print(f"  {result.kernel_points} isolated kernel measurements over {len(model.tables)} layer configs, "
              f"{args.plans} random plans + dense + uniform ladder, {result.seconds:.0f} s")
        if e["rejected_points"]:
            print(f"  {len(e['rejected_points'])} isolated measurement(s) rejected as too noisy and not stored "
                  f"(first: {e['rejected_points'][0]})")
        fit = e.get("whole_model_fit", {})
        if "class_scales" in fit:
            scales = ", ".join(f"{c} {v:.2f}" for c, v in fit["class_scales"].items())
            print(f"  in-context kernel scales (per op class: {scales}; per kernel {fit['kernel_scale_range'][0]:.2f}"
                  f"-{fit['kernel_scale_range'][1]:.2f}), overhead {model.overhead_ms:+.3f} ms")
        else:
            print(f"  whole-model correction: alpha {model.alpha:.3f}, power {model.power:.2f}, "
                  f"overhead {model.overhead_ms:+.3f} ms")
        energy = e.get("energy")
        if energy:
            held = energy.get("heldout_mape")
            print(f"  energy MEASURED: {energy['power_w']:.3f} W from {energy['sensor']} rail {energy['rail']} "
                  f"(energy_mj = power x latency fitted on {energy['n_fit']} models"
                  + (f", held-out error {held:.1%})" if held is not None else ")"))
        else:
            print("  energy MODELLED: no sensor was read (the profile's active power x latency)")
        lo, hi = e["dense_reference_range_ms"]
        print(f"  dense model {e['dense_reference_ms']:.3f} ms (median; {lo:.3f}-{hi:.3f} ms over the calibration: "
              "each model was timed against it in the same window)")
        print(f"  held-out error on {e['n_heldout']} plans: MAPE {fmt(e['heldout_mape'], '.1%')}, "
              f"within 10% {fmt(e.get('heldout_within_10pct'), '.0%')}, "
              f"Spearman {fmt(e['heldout_spearman'], '.3f')}")
        return 0


#: Targets that are this machine (profiled without --rpc).
LOCAL_TARGETS = ("local", "cuda")
_GPU_PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider")


def _make_runtime(args: argparse.Namespace):
    """The runtime ``profile`` measures with: ONNX Runtime or TVM, here or on a device over RPC."""
    from autoprune.hardware import load_profile
    from autoprune.profiling import get_runtime
    from autoprune.profiling.base import runtime_for_profile
    from autoprune.profiling.rpc import RPCConfig

    remote = bool(args.rpc or args.rpc_tracker)
    if args.target not in LOCAL_TARGETS and not remote:
        raise ConfigError(f"{args.target} is not this machine: start `autoprune device serve` on it and give --rpc "
                          "HOST:PORT (or --rpc-tracker HOST:PORT --rpc-key KEY), or profile --target local")
    if args.runtime == "tvm":
        if args.energy_sensor not in (None, "none"):
            raise ConfigError("--energy-sensor goes with --runtime onnxruntime (TVM measurements read no sensor)")
        rpc = RPCConfig.from_args(args.rpc, args.rpc_tracker, args.rpc_key) if remote else None
        # The target's own TVM target (e.g. nvidia/jetson-nano + its aarch64 host), not this host's.
        return runtime_for_profile(args.target, "tvm", threads=args.threads, rpc=rpc)
    if remote:
        from autoprune.device.client import device_runtime_for_profile

        if args.energy_sensor not in (None, "none"):
            raise ConfigError("--energy-sensor is for measuring here; on a device, give it to `autoprune device "
                              "serve --energy-sensor ...`")
        # One session serves many measurements; each step has its own bound (protocol timeout + margin).
        rpc = RPCConfig.from_args(args.rpc, args.rpc_tracker, args.rpc_key, session_timeout_s=900.0)
        runtime = device_runtime_for_profile(args.target, rpc, threads=args.threads)
        runtime.info()  # unreachable, or not `autoprune device serve`: one line now, before any work
        return runtime
    from autoprune.hardware.sensor_spec import sensor_from_spec
    from autoprune.registry import lazy_import

    profile = load_profile(args.target)
    options = profile.runtime_options("onnxruntime")
    wanted_gpu = [p for p in options.get("providers", ()) if p in _GPU_PROVIDERS]
    if wanted_gpu:
        ort = lazy_import("onnxruntime")
        if not set(wanted_gpu) & set(ort.get_available_providers()):
            raise ConfigError(f"target {args.target} runs ONNX Runtime on {', '.join(wanted_gpu)}, which onnxruntime "
                              f"{ort.__version__} here lacks (it has {', '.join(ort.get_available_providers())}); "
                              "on a machine with an NVIDIA GPU: pip uninstall -y onnxruntime && pip install "
                              "onnxruntime-gpu nvidia-ml-py (the two onnxruntime wheels cannot share an environment)")
    if args.energy_sensor is None and args.target == "cuda":
        from autoprune.errors import MissingDependencyError, ProfilingError

        try:
            sensor = sensor_from_spec("nvml")
        except (MissingDependencyError, ProfilingError) as exc:
            print(f"energy stays modelled: {str(exc).splitlines()[0]}")
            sensor = None
    else:
        sensor = sensor_from_spec(args.energy_sensor or "none")
    if args.target == "local":
        return get_runtime("onnxruntime", threads=args.threads, energy_sensor=sensor)
    return runtime_for_profile(args.target, "onnxruntime", threads=args.threads, energy_sensor=sensor)
