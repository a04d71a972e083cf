"""The one validated setting: the checking mode (``off``, ``shapes``, ``full``)."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

from ._errors import TorchdxError

__all__ = ["MODES", "ModeError", "get_mode", "mode", "set_mode"]

MODES = ("off", "shapes", "full")
OFF, SHAPES, FULL = 0, 1, 2


class ModeError(TorchdxError, ValueError):
    """An invalid contracts mode."""

    __module__ = "contracts"


def _parse(value: str, where: str) -> int:
    v = value.strip().lower() if isinstance(value, str) else value
    if v not in MODES:
        raise ModeError(
            f"invalid contracts mode {value!r} from {where}; valid modes are "
            f"{', '.join(repr(m) for m in MODES)}"
        )
    return MODES.index(v)


class _State:
    __slots__ = ("level",)

    def __init__(self) -> None:
        self.level = _parse(os.environ.get("CONTRACTS_MODE", "full"), "env CONTRACTS_MODE")


state = _State()


def set_mode(value: str) -> None:
    """Set the checking mode for the whole process.

    Example:
        >>> contracts.set_mode("shapes")  # skip value checks
    """
    state.level = _parse(value, "contracts.set_mode()")


def get_mode() -> str:
    """The current mode, one of ``off``, ``shapes``, ``full``."""
    return MODES[state.level]


@contextlib.contextmanager
def mode(value: str) -> Iterator[None]:
    """Scope a mode: ``with contracts.mode("off"): ...``; the old mode is restored on exit."""
    old = state.level
    state.level = _parse(value, "contracts.mode()")
    try:
        yield
    finally:
        state.level = old
