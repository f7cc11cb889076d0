"""``autoprune verify EXPORT_DIR``: the regression check a CI pipeline runs on a pruned model."""

from __future__ import annotations

import argparse

from autoprune.commands.base import Command
from autoprune.commands.common import add_compute_args, compute_of, fraction


class VerifyCommand(Command):
    """Re-check an export folder against its report; exit 0 pass, 1 regression, 2 bad input."""

    name = "verify"
    help = ("re-check an exported model (CI): its checksum, outputs on the saved reference inputs, test accuracy, "
            "and on `local` its speedup over the dense model; exit 0 pass, 1 regression, 2 bad input")

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("export_dir", metavar="EXPORT_DIR", help="folder written by `autoprune export`")
        parser.add_argument("--max-accuracy-drop", type=fraction, default=0.01,
                            help="largest acceptable drop of test accuracy below the report's (default: 0.01)")
        parser.add_argument("--min-speedup-fraction", type=fraction, default=0.8,
                            help="the re-measured speedup over the dense model must be at least this fraction "
                                 "of the report's (default: 0.8; `local` exports only)")
        parser.add_argument("--no-speed", action="store_true", help="skip the speed check")
        parser.add_argument("--quiet", action="store_true", help="print only the table and the verdict")
        add_compute_args(parser, amp=False)

    def run(self, args: argparse.Namespace) -> int:
        from autoprune.deploy.verify import verify_export

        def say(msg: str) -> None:
            if not args.quiet:
                print(f"  ... {msg}", flush=True)

        compute = compute_of(args)  # checked like everywhere else; verify itself has no torch work to place
        if compute.moves:
            say(f"--device {compute.device}: unused here, verify runs the ONNX file with ONNX Runtime on the CPU "
                "(as it was checked at export)")

        result = verify_export(args.export_dir, max_accuracy_drop=args.max_accuracy_drop,
                               min_speedup_fraction=args.min_speedup_fraction, speed=not args.no_speed,
                               progress=say)
        print(result.table())
        if args.no_speed:
            print("speed not checked (--no-speed)")
        if result.passed:
            print(f"PASS: {result.folder}")
            return 0
        for c in result.checks:
            if c.status == "FAIL":
                print(f"REGRESSION: {c.name}: expected {c.expected}, got {c.got}" + (f" ({c.note})" if c.note else ""))
        return 1
