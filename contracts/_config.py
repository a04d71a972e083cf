"""The one validated setting: the checking mode (``off``, ``shapes``, ``full``)."""

from __future__ import annotations

import contextlib
import os
import threading
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


_SCOPES: list[tuple[object, int]] = []  # (token, level) of each open mode() block, oldest first
_BASE = [state.level]  # the level outside every block (set_mode)
_LOCK = threading.Lock()


def set_mode(value: str) -> None:
    """Set the checking mode for the whole process (now, and after open ``mode()`` blocks end).

    Example:
        >>> contracts.set_mode("shapes")  # skip value checks
    """
    level = _parse(value, "contracts.set_mode()")
    with _LOCK:
        _BASE[0] = state.level = level


def get_mode() -> str:
    """The current mode, one of ``off``, ``shapes``, ``full``."""
    return MODES[state.level]


@contextlib.contextmanager
def mode(value: str) -> Iterator[None]:
    """Scope a mode: ``with contracts.mode("off"): ...``; the old mode is restored on exit.

    The mode is the process's (every thread checks in it, as with :func:`set_mode`; a
    per-thread mode would cost every contract call a lookup). Blocks in several threads may end
    in any order: the mode is always that of the newest block still open, or the process's
    mode once none is.
    """
    level = _parse(value, "contracts.mode()")
    token = object()
    with _LOCK:
        _SCOPES.append((token, level))
        state.level = level
    try:
        yield
    finally:
        with _LOCK:
            _SCOPES[:] = [sc for sc in _SCOPES if sc[0] is not token]
            state.level = _SCOPES[-1][1] if _SCOPES else _BASE[0]
