"""The ``autoprune`` command line: a name → command-class table (see :mod:`autoprune.commands`).

Every :class:`~autoprune.errors.AutopruneError` and every bad argument becomes
one line on stderr and exit code 2; no traceback.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from autoprune import __version__
from autoprune.errors import AutopruneError

#: Command name → "module:Class". Modules are light; heavy imports happen in ``run``.
COMMANDS = {
    "search": "autoprune.commands.search:SearchCommand",
    "pareto": "autoprune.commands.pareto:ParetoCommand",
    "export": "autoprune.commands.export:ExportCommand",
    "profile": "autoprune.commands.profile:ProfileCommand",
    "targets": "autoprune.commands.targets:TargetsCommand",
    "dashboard": "autoprune.commands.dashboard:DashboardCommand",
    "train": "autoprune.commands.train:TrainCommand",
    "device": "autoprune.commands.device:DeviceCommand",
    "verify": "autoprune.commands.verify:VerifyCommand",
}


class _Parser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose errors are one line and exit code 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


def _load(ref: str):
    module, cls = ref.split(":")
    return getattr(importlib.import_module(module), cls)()


def build_parser() -> argparse.ArgumentParser:
    """Build the full parser with one sub-parser per command."""
    parser = _Parser(
        prog="autoprune",
        description="Hardware-aware pruning search: the accuracy/latency/energy Pareto front of a model "
        "on a target device.",
    )
    parser.add_argument("--version", action="version", version=f"autoprune {__version__}")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--profiles", metavar="DIR", default=None,
                        help="a folder of your own hardware profiles (*.yaml), searched before the shipped ones "
                        "(or set AUTOPRUNE_HW_PROFILES)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for name, ref in COMMANDS.items():
        cmd = _load(ref)
        p = sub.add_parser(name, help=cmd.help, description=cmd.help, parents=[common])
        cmd.add_arguments(p)
        p.set_defaults(_command=cmd)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the CLI and return the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "_command", None):
        parser.print_help()
        return 2
    if getattr(args, "profiles", None):
        folder = os.path.abspath(args.profiles)
        if not os.path.isdir(folder):
            print(f"autoprune {args.command}: error: --profiles {args.profiles}: no such folder", file=sys.stderr)
            return 2
        # An environment variable, so child processes (Ray workers, dashboard requests) see the same targets.
        os.environ["AUTOPRUNE_HW_PROFILES"] = os.pathsep.join(
            [folder, *filter(None, os.environ.get("AUTOPRUNE_HW_PROFILES", "").split(os.pathsep))])
    try:
        return int(args._command.run(args) or 0)
    except AutopruneError as exc:
        print(f"autoprune {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"autoprune {args.command}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # e.g. `autoprune targets | head`
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
