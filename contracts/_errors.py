"""The one error hierarchy of torchdx.

Every error torchdx raises on purpose derives from :class:`TorchdxError`, so callers can catch
all of them with one ``except``. Contract violations are :class:`ContractError`; the diagnostics
and the reference models define their subclasses next to the code that raises them.
"""

from __future__ import annotations

from typing import Any

__all__ = ["AnnotationError", "ContractError", "TorchdxError"]


class TorchdxError(Exception):
    """Base class of every error raised on purpose by torchdx."""

    __module__ = "contracts"


class ContractError(TorchdxError, ValueError):
    """A tensor contract was violated (or a contract itself is malformed).

    Attributes:
        function: qualified name of the decorated function.
        argument: the argument (or ``"return"`` / ``"return[0]"`` / ``"return['loss']"``).
        axis: the axis index that failed, or ``None`` when the failure is not about one axis.
        expected: what the contract asked for, in words.
        actual: what was found, in words.
        bindings: the dimension bindings at the time of failure, ``{name: size}``.

    Example:
        >>> try:
        ...     f(torch.zeros(2, 3))
        ... except ContractError as e:
        ...     print(e.argument, e.axis, e.expected, e.actual)
    """

    __module__ = "contracts"

    def __init__(
        self,
        message: str,
        *,
        function: str = "",
        argument: str | None = None,
        axis: int | None = None,
        expected: Any = None,
        actual: Any = None,
        bindings: dict[str, int] | None = None,
    ) -> None:
        super().__init__(message)
        self.function = function
        self.argument = argument
        self.axis = axis
        self.expected = expected
        self.actual = actual
        self.bindings = dict(bindings or {})


class AnnotationError(TorchdxError, TypeError):
    """A contract cannot be built as written: a malformed annotation or constraint (``Mask()``
    on a float tensor, an axis the annotation does not have), or ``attach``/``check`` given
    something they cannot check. Raised at decoration (or attach) time, never during a call.
    """

    __module__ = "contracts"
