"""The base class of every CLI command."""

from __future__ import annotations

import argparse
from abc import ABC, abstractmethod


class Command(ABC):
    """One ``autoprune`` sub-command.

    Subclasses set :attr:`name` and :attr:`help`, add their arguments, and
    implement :meth:`run`. Modules that define commands import heavy packages
    (torch, onnxruntime, tvm, ray) inside :meth:`run`, so ``autoprune --help``
    stays fast. User errors are raised as
    :class:`~autoprune.errors.AutopruneError`; the CLI prints them as one line
    and exits with code 2.
    """

    name: str = ""
    help: str = ""

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:  # noqa: B027 - optional hook
        """Add this command's arguments to ``parser``."""

    @abstractmethod
    def run(self, args: argparse.Namespace) -> int:
        """Run the command and return the process exit code."""
