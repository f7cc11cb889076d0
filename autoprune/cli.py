"""The ``autoprune`` command line: a name → command-class table (see :mod:`autoprune.commands`).

Every :class:`~autoprune.errors.AutopruneError`, every bad argument, and every path that cannot be
written (permissions, a read-only file system or database, a full disk) becomes one line on stderr
and exit code 2; no traceback. SIGTERM stops a command as Ctrl-C (SIGINT) does: the command's own
clean-up runs (a search records its running trial for a retry, nothing half-written is left) and
one line says so, with exit code 130 for either signal (the clean stop's code, which the
dashboard reads).
"""

from __future__ import annotations

import argparse
import importlib
import os
import signal
import sys
import threading

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
    previous = _stop_on_sigterm()
    try:
        return int(args._command.run(args) or 0)
    except AutopruneError as exc:
        print(f"autoprune {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as exc:
        name = _signal_of(exc)
        print(f"autoprune {args.command}: interrupted ({name}), stopped cleanly", file=sys.stderr)
        return 130
    except BrokenPipeError:  # e.g. `autoprune targets | head`
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except Exception as exc:
        line = _write_failure(exc, args)
        if line is None:
            raise
        print(f"autoprune {args.command}: error: {line}", file=sys.stderr)
        return 2
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where the main thread is, so that it unwinds as Ctrl-C does."""


def _raise_terminated(signum: int, _frame) -> None:
    raise Terminated(signal.Signals(signum).name)


def _stop_on_sigterm():
    """Make SIGTERM raise :class:`Terminated` in the main thread; return the handler it replaces
    (``None`` off the main thread, where no handler can be set). A command that handles SIGTERM
    itself (the search loop, the device server) sets its own while it runs."""
    if threading.current_thread() is not threading.main_thread():
        return None
    return signal.signal(signal.SIGTERM, _raise_terminated)


def _signal_of(exc: BaseException) -> str:
    """``SIGTERM`` or ``SIGINT``: which signal ``exc`` (a ``KeyboardInterrupt``) comes from. The search
    loop turns its own signal into a plain ``KeyboardInterrupt`` raised while handling one named by it."""
    seen: BaseException | None = exc
    for _ in range(5):
        if seen is None:
            break
        name = str(seen.args[0]) if seen.args else ""
        if name in ("SIGTERM", "SIGINT"):
            return name
        seen = seen.__context__
    return "SIGINT"


#: How each command can write somewhere else, for the one line of a path it cannot write.
_ELSEWHERE = {"export": "pass --out DIR", "search": "set AUTOPRUNE_RESULTS=DIR", "pareto": "set AUTOPRUNE_RESULTS=DIR",
              "train": "set AUTOPRUNE_RESULTS=DIR", "profile": "set AUTOPRUNE_RESULTS=DIR"}


def _write_failure(exc: BaseException, args: argparse.Namespace) -> str | None:
    """The one line of a permission, read-only or disk-full error (see :func:`autoprune.io.write_failure`)."""
    from autoprune.io import write_failure
    from autoprune.search.storage import default_storage_url, sqlite_path

    database = sqlite_path(getattr(args, "storage", None) or default_storage_url())
    return write_failure(exc, database=database, elsewhere=_ELSEWHERE.get(args.command, ""),
                         database_elsewhere="pass --storage URL" if hasattr(args, "storage") else "")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
