"""Deploying a picked point: export it (``export``), build its TVM module (``tvm``), save its reference
outputs (``reference``), measure its speedup here (``speed``), and re-check an export in CI (``verify``).

``autoprune export`` and ``autoprune verify`` share these functions, so the figures verify compares were
produced the same way at export. Here: how an optional step fails (:func:`optional_step`), and the base of
the report's records (:class:`ReportPart`; the report itself is :class:`autoprune.deploy.report.ExportReport`).
"""

from __future__ import annotations

import functools
import types
import typing
from collections.abc import Callable, Iterator, Mapping
from dataclasses import fields
from typing import Any, TypeVar

from autoprune.errors import AutopruneError, ConfigError


def reason_line(exc: BaseException) -> str:
    """One line for a failed optional step (the type is named for errors autoprune did not raise)."""
    text = " ".join(str(exc).split())[:300]
    return text if isinstance(exc, AutopruneError) else f"{type(exc).__name__}: {text}"


def optional_step(notes: list[str], what: str, fn: Callable[[], Any]) -> tuple[Any, str | None]:
    """Run an optional step: ``(result, None)``, or ``(None, reason)`` with a line added to ``notes``."""
    try:
        return fn(), None
    except Exception as exc:  # noqa: BLE001 - optional steps never abort an export
        reason = reason_line(exc)
        notes.append(f"{what}: {reason}")
        return None, reason


def plain(value: Any) -> Any:
    """``value`` as JSON-ready data (what :meth:`ReportPart.to_dict` writes): records as their dicts,
    mappings as dicts, tuples as lists."""
    if isinstance(value, ReportPart):
        return value.to_dict()
    if isinstance(value, Mapping):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    return value


def report_object(raw: Any, what: str) -> Mapping[str, Any]:
    """``raw`` if it is a JSON object (a part of a report read back).

    Raises:
        ConfigError: It is not (the report is corrupt).
    """
    if not isinstance(raw, Mapping):
        raise ConfigError(f"report.json is corrupt: {what} is not a JSON object; re-run `autoprune export`")
    return raw


_P = TypeVar("_P", bound="ReportPart")


@functools.cache
def _parts_of(cls: type) -> dict[str, type[ReportPart]]:
    """The fields of ``cls`` that are themselves parts (annotated ``Part`` or ``Part | None``): name → class."""
    hints = typing.get_type_hints(cls)
    out: dict[str, type[ReportPart]] = {}
    for f in fields(cls):
        hint = hints[f.name]
        union = typing.get_origin(hint) in (typing.Union, types.UnionType)
        for t in typing.get_args(hint) if union else (hint,):
            if isinstance(t, type) and issubclass(t, ReportPart):
                out[f.name] = t
    return out


class ReportPart:
    """A part of an export's report (a frozen dataclass): written as a JSON object in field order
    (:meth:`_written` says which fields a part writes), read back by :meth:`from_dict` (a field annotated
    with a part, or a part or ``None``, is read as that part)."""

    def _written(self) -> Iterator[str]:
        """The names of the fields :meth:`to_dict` writes (by default all of them)."""
        return (f.name for f in fields(self))  # type: ignore[arg-type]

    def _present(self, *always: str) -> Iterator[str]:
        """The fields in ``always`` and every other field that is not ``None``."""
        return (f.name for f in fields(self)  # type: ignore[arg-type]
                if f.name in always or getattr(self, f.name) is not None)

    def to_dict(self) -> dict[str, Any]:
        """The part as the JSON object ``report.json`` holds."""
        return {name: plain(getattr(self, name)) for name in self._written()}

    @classmethod
    def from_dict(cls: type[_P], raw: Any, what: str = "the report") -> _P:
        """Inverse of :meth:`to_dict`: missing keys read as ``None``, lists as tuples.

        Args:
            raw: The JSON object.
            what: Its key in the report, for the error.

        Raises:
            ConfigError: ``raw`` (or a part inside it) is not a JSON object.
        """
        raw = report_object(raw, what)
        parts = _parts_of(cls)
        kwargs = {}
        for f in fields(cls):  # type: ignore[arg-type]
            value = raw.get(f.name)
            if value is not None and f.name in parts:
                value = parts[f.name].from_dict(value, f.name)
            elif isinstance(value, list):
                value = tuple(value)
            kwargs[f.name] = value
        return cls(**kwargs)
