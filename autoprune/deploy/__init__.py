"""Deploying a picked point: export it (``export``), build its TVM module (``tvm``), save its reference
outputs (``reference``), measure its speedup here (``speed``), and re-check an export in CI (``verify``).

``autoprune export`` and ``autoprune verify`` share these functions, so the figures verify compares were
produced the same way at export.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from autoprune.errors import AutopruneError


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
