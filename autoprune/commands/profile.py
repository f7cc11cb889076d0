"""``autoprune profile``: measure a model on a target and write its cost-model calibration."""

from __future__ import annotations

import argparse
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

from autoprune.commands.base import Command
from autoprune.commands.common import add_model_data_args, positive_float, positive_int
from autoprune.errors import ConfigError

if TYPE_CHECKING:
    from autoprune.costmodel.builder import ProfileOutcome


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
        parser.add_argument("--tvm-tune-trials", type=positive_int, default=None, metavar="N",
                            help="--runtime tvm: tune each measured model with MetaSchedule on this machine first, "
                            "about N trials per model, into results/tvm-tuning/<target>/<model>")
        parser.add_argument("--tvm-tune-timeout", type=positive_float, default=600.0, metavar="S",
                            help="bound on each model's tuning in seconds (default: 600)")
        parser.add_argument("--allow-untuned", action="store_true",
                            help="--runtime tvm without --tvm-tune-trials: calibrate on untuned TVM kernels anyway "
                            "(refused without it: nobody deploys them)")
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
        parser.add_argument("--round-to", type=int, default=1,
                            help="channel alignment of the grid and random plans (default: 1, none, as the default "
                                 "search spaces; match the space's round_to)")
        parser.add_argument("--min-channels", type=int, default=4,
                            help="fewest channels a plan keeps per group, measured in every layer's grid "
                                 "(default: 4; match the space's min_channels)")
        parser.add_argument("--max-ratio", type=float, default=0.95,
                            help="largest channel ratio of the random and uniform plans (default: 0.95; match the "
                                 "space's largest ratio)")
        parser.add_argument("--max-cv", type=float, default=None,
                            help="noise bound of each isolated kernel measurement as a robust CV (default: 0.2); "
                                 "a noisier point is re-measured, then rejected and never stored")
        parser.add_argument("--strict", action="store_true",
                            help="refuse to save a calibration measured on a busy host (1-min load average of "
                            "other work above half the cores, or CPU steal above 5 %%; not judged over --rpc)")

    def run(self, args: argparse.Namespace) -> int:
        from autoprune.costmodel.builder import ProfileJob, profile_target
        from autoprune.hardware import load_profile

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
        profile = load_profile(args.target)  # once; an unknown target: one line listing the valid ones
        job = ProfileJob(model_ref=args.model, data_ref=args.data, input_size_px=args.input_size,
                         checkpoint=args.checkpoint, seed=args.seed, runtime=args.runtime, rpc=args.rpc,
                         rpc_tracker=args.rpc_tracker, rpc_key=args.rpc_key, energy_sensor=args.energy_sensor,
                         threads=args.threads, plans=args.plans, grid=grid, round_to=args.round_to,
                         min_channels=args.min_channels, max_ratio=args.max_ratio,
                         max_cv=args.max_cv, tvm_tune_trials=args.tvm_tune_trials or 0,
                         tvm_tune_timeout_s=args.tvm_tune_timeout, allow_untuned=args.allow_untuned,
                         strict=args.strict)
        _print_outcome(profile_target(profile, job, progress=_progress_bar))
        return 0


@contextmanager
def _progress_bar(name: str, size_px: int, target: str) -> Iterator[Callable[[int, int, str], None]]:
    """A tqdm bar over the measurements of one calibration, closed when they end (or fail)."""
    from tqdm import tqdm

    bar = tqdm(total=1, desc=f"profile {name}@{size_px} on {target}", unit="meas")

    def progress(done: int, total: int, what: str) -> None:
        bar.total = total
        bar.set_postfix_str(what[:28])
        bar.update(done - bar.n)

    try:
        yield progress
    finally:
        bar.close()


def _print_outcome(r: ProfileOutcome) -> None:
    """The calibration's summary: the file, what was measured, the fit, its held-out error and the host's load
    (with a ``warning:`` line when the host was busy)."""

    def fmt(v: float | None, spec: str) -> str:
        return "n/a" if v is None else format(v, spec)

    def pct(v: float | None) -> str:
        return "n/a" if v is None else f"{100 * v:.1f} %"

    print(f"calibration written: {r.path}")
    print(f"  target {r.target}, runtime {r.runtime}, status measured, cost model lut")
    print(f"  {r.kernel_points} isolated kernel measurements over {r.layer_configs} layer configs, "
          f"{r.plans} random plans + dense + uniform ladder, {r.calibration_s:.0f} s")
    if r.rejected_points:
        print(f"  {len(r.rejected_points)} isolated measurement(s) rejected as too noisy and not stored "
              f"(first: {r.rejected_points[0]})")
    if r.class_scales is not None and r.kernel_scale_range is not None:
        scales = ", ".join(f"{c} {v:.2f}" for c, v in r.class_scales.items())
        print(f"  in-context kernel scales (per op class: {scales}; per kernel {r.kernel_scale_range[0]:.2f}"
              f"-{r.kernel_scale_range[1]:.2f}), overhead {r.overhead_ms:+.3f} ms")
    else:
        print(f"  whole-model correction: alpha {r.alpha:.3f}, power {r.power:.2f}, "
              f"overhead {r.overhead_ms:+.3f} ms")
    energy = r.energy
    if energy is not None:
        held = energy.heldout_mape
        print(f"  energy MEASURED: {energy.power_w:.3f} W from {energy.sensor} rail {energy.rail} "
              f"(energy_mj = power x latency fitted on {energy.fit_models} models"
              + (f", held-out error {held:.1%})" if held is not None else ")"))
    else:
        print("  energy MODELLED: no sensor was read (the profile's active power x latency)")
    lo, hi = r.dense_reference_range_ms
    print(f"  dense model {r.dense_reference_ms:.3f} ms (median; {lo:.3f}-{hi:.3f} ms over the calibration: "
          "each model was timed against it in the same window)")
    print(f"  held-out error on {r.heldout_plans} plans: MAPE {fmt(r.heldout_mape, '.1%')}, "
          f"within 10% {fmt(r.heldout_within_10pct, '.0%')}, "
          f"Spearman {fmt(r.heldout_spearman, '.3f')}")
    if len(r.heldout_by_decile) > 1:
        d, rest = r.heldout_by_decile[0], r.heldout_by_decile[1:]
        print(f"    fastest tenth ({d['n']} plan(s), {d['low_ms']:.3f}-{d['high_ms']:.3f} ms): MAPE {d['mape']:.1%}, "
              f"mean {d['mean_signed_pct']:+.1f} %; the other deciles: MAPE "
              + ", ".join(f"{x['mape']:.0%}" for x in rest))
    h = r.host_state
    if h is not None:
        print(f"  host{'' if r.host_is_target else ' (this machine, the RPC client, not the device)'}: load average "
              f"{fmt(h.load_avg_1min, '.2f')} on {h.cpu_count or 'n/a'} cores, steal {pct(h.steal_share)}, "
              f"busy {pct(h.busy_share)} during calibration")
    if r.host_warning is not None:
        print(f"warning: {r.host_warning} (--strict refuses to save such a calibration)")
