"""Progress: what a long step tells its caller as it goes (a line at a time), or nothing."""

from __future__ import annotations

from collections.abc import Callable

Progress = Callable[[str], None]


def quiet(_line: str) -> None:
    """Progress that goes nowhere (the default)."""
