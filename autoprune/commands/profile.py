"""``autoprune profile``: measure a model on a target and write its cost-model calibration."""

from __future__ import annotations

import argparse

from autoprune.commands.base import Command
from autoprune.errors import ConfigError


class ProfileCommand(Command):
    """Measure per-layer lookup tables and end-to-end plans; fit and save the calibration."""

    name = "profile"
    help = "measure per-layer latency tables + random plans on a target and write its cost-model calibration"

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--target", default="local", help="target name (default: local)")
        parser.add_argument("--model", default="vgg11",
                            help="zoo model to calibrate (default: vgg11 at 32x32, the search default)")
        parser.add_argument("--runtime", default="onnxruntime", choices=("onnxruntime", "tvm"),
                            help="runtime that executes the kernels (default: onnxruntime)")
        parser.add_argument("--rpc", metavar="HOST:PORT", help="TVM RPC server of the device (with --runtime tvm)")
        parser.add_argument("--rpc-tracker", metavar="HOST:PORT", help="TVM RPC tracker (with --rpc-key)")
        parser.add_argument("--rpc-key", metavar="KEY", help="device key registered with the tracker")
        parser.add_argument("--threads", type=int, default=1, help="intra-op threads (default: 1)")
        parser.add_argument("--plans", type=int, default=96,
                            help="random plans measured end to end, each against the dense model; three quarters "
                            "fit the per-kernel in-context scales, the rest are held out (default: 96)")
        parser.add_argument("--grid", default="0.125,0.25,0.5,0.75,1.0",
                            help="kept-channel fractions per layer (default: 0.125,0.25,0.5,0.75,1.0)")
        parser.add_argument("--seed", type=int, default=0, help="seed of the random plans")
        parser.add_argument("--round-to", type=int, default=8,
                            help="channel alignment of the grid and random plans (default: 8; match the search's)")
        parser.add_argument("--num-classes", type=int, default=10, help="classifier width (default: 10)")
        parser.add_argument("--max-cv", type=float, default=None,
                            help="noise bound of each isolated kernel measurement as a robust CV (default: 0.2); "
                                 "a noisier point is re-measured, then rejected and never stored")

    def run(self, args: argparse.Namespace) -> int:
        from tqdm import tqdm

        from autoprune.costmodel.calibrate import calibrate
        from autoprune.costmodel.calibration import calibration_path, load_calibration, save_calibration
        from autoprune.models import ZOO
        from autoprune.profiling import get_runtime
        from autoprune.profiling.base import runtime_for_profile

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
        if args.model not in ZOO:
            ZOO.get(args.model)  # raises UnknownNameError listing the zoo
        remote = bool(args.rpc or args.rpc_tracker)
        if args.target != "local" and not remote:
            raise ConfigError(f"{args.target} is not this machine: measure it with --runtime tvm and --rpc HOST:PORT "
                              "or --rpc-tracker HOST:PORT --rpc-key KEY, or profile --target local")
        if args.runtime == "tvm":
            from autoprune.profiling.rpc import RPCConfig

            rpc = RPCConfig.from_args(args.rpc, args.rpc_tracker, args.rpc_key) if remote else None
            # The target's own TVM target (e.g. nvidia/jetson-nano + its aarch64 host), not this host's.
            runtime = runtime_for_profile(args.target, "tvm", threads=args.threads, rpc=rpc)
        else:
            if remote:
                raise ConfigError("--rpc/--rpc-tracker need --runtime tvm (ONNX Runtime measures locally)")
            runtime = get_runtime("onnxruntime", threads=args.threads)
        size = ZOO.get(args.model).input_size
        bar = tqdm(total=1, desc=f"profile {args.model}@{size} on {args.target}", unit="meas")

        def progress(done: int, total: int, what: str) -> None:
            bar.total = total
            bar.set_postfix_str(what[:28])
            bar.update(done - bar.n)

        try:
            result = calibrate(args.model, target=args.target, runtime=runtime, plans=args.plans, grid=grid,
                               seed=args.seed, num_classes=args.num_classes, progress=progress,
                               round_to=args.round_to, max_cv=args.max_cv)
        finally:
            bar.close()
        path = calibration_path(args.target, args.model, size)
        save_calibration(result.model, path, model_name=args.model, input_shape=(3, size, size),
                         runtime=result.runtime, status="measured", error=result.error,
                         extra={"grid": list(grid), "plans": args.plans, "seed": args.seed, "round_to": args.round_to,
                                "kernel_points": result.kernel_points, "calibration_seconds": result.seconds,
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
        lo, hi = e["dense_reference_range_ms"]
        print(f"  dense model {e['dense_reference_ms']:.3f} ms (median; {lo:.3f}-{hi:.3f} ms over the calibration: "
              "each model was timed against it in the same window)")
        print(f"  held-out error on {e['n_heldout']} plans: MAPE {fmt(e['heldout_mape'], '.1%')}, "
              f"within 10% {fmt(e.get('heldout_within_10pct'), '.0%')}, "
              f"Spearman {fmt(e['heldout_spearman'], '.3f')}")
        return 0
