"""Name registries for every plug-in point.

A :class:`Registry` maps a name to an implementation. Unknown names raise
:class:`~autoprune.errors.UnknownNameError` listing the valid names, so that a typo
on the command line is answered with the fix.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from autoprune.errors import ConfigError, MissingDependencyError, UnknownNameError

T = TypeVar("T")


class Registry(Generic[T]):
    """A name → object table with helpful errors.

    Args:
        kind: What the entries are, used in error messages (e.g. ``"criterion"``).
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, T] = {}

    def register(self, name: str, obj: T | None = None) -> Callable[[T], T] | T:
        """Register ``obj`` under ``name``; usable as a decorator.

        Raises:
            ConfigError: If the name is already taken.
        """

        def _add(o: T) -> T:
            if name in self._entries:
                raise ConfigError(f"{self.kind} {name!r} is registered twice")
            self._entries[name] = o
            return o

        return _add if obj is None else _add(obj)

    def get(self, name: str) -> T:
        """Return the entry called ``name``.

        Raises:
            UnknownNameError: If there is none; the message lists the valid names.
        """
        try:
            return self._entries[name]
        except KeyError:
            valid = ", ".join(sorted(self._entries)) or "(none)"
            raise UnknownNameError(f"unknown {self.kind} {name!r}; valid: {valid}") from None

    def names(self) -> list[str]:
        """Return the registered names, sorted."""
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())


def lazy_import(module: str, extra: str | None = None):
    """Import a heavy optional module, or fail with an install hint.

    Args:
        module: Dotted module name, e.g. ``"onnxruntime"``.
        extra: The pip requirement that provides it, when it differs from ``module``.

    Raises:
        MissingDependencyError: If the module cannot be imported.
    """
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        req = extra or module.split(".")[0]
        raise MissingDependencyError(
            f"{module} is not installed ({exc}); install it with `pip install {req}` "
            "or run `make setup`"
        ) from exc
