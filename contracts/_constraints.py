"""Value constraints, given as ``typing.Annotated`` metadata on an argument or return.

They are plain frozen descriptions; the checker turns them into one fused reduction per tensor.

Example:
    >>> from typing import Annotated
    >>> tokens: Annotated[Int[Tensor, "B N"], Range(0, "V-1")]
    >>> probs: Annotated[Float[Tensor, "B T"], Probability()]
    >>> mask: Annotated[Bool[Tensor, "B T"], Mask()]
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from ._errors import AnnotationError
from ._spec import Expr, compile_expr

__all__ = ["Constraint", "Finite", "Mask", "Probability", "Range"]


class Constraint:
    """Base class of value constraints (a marker; the checker dispatches on the subclass)."""

    __module__ = "contracts"


def _bound(value: Any, which: str) -> float | Expr | None:
    if value is None:
        return None
    if isinstance(value, bool):
        raise AnnotationError(f"Range {which} bound must be a number, a string expression or None")
    if isinstance(value, (int, float)):
        if math.isnan(value):
            raise AnnotationError(f"Range {which} bound is NaN")
        return value
    if isinstance(value, str):
        return compile_expr(value)
    raise AnnotationError(
        f"Range {which} bound must be a number, a string expression (like 'V-1') or None, "
        f"not {type(value).__name__}"
    )


class Range(Constraint):
    """A closed interval ``[lo, hi]``; also requires every value to be finite.

    A bound is a number, ``None`` (unbounded on that side) or a string expression over dims and
    ``self`` (``"V-1"``, ``"T"``, ``"self.n_bins"``), evaluated at call time.

    Example:
        >>> Range(0, "V-1")
        Range(0, 'V-1')
    """

    __slots__ = ("hi", "lo")

    def __init__(self, lo: float | str | None, hi: float | str | None) -> None:
        self.lo = _bound(lo, "lower")
        self.hi = _bound(hi, "upper")
        if isinstance(self.lo, (int, float)) and isinstance(self.hi, (int, float)):
            if self.lo > self.hi:
                raise AnnotationError(f"Range({lo!r}, {hi!r}) is empty: lower bound > upper bound")

    @staticmethod
    def _src(b: Any) -> str:
        return repr(b.source) if isinstance(b, Expr) else repr(b)

    def __repr__(self) -> str:
        return f"Range({self._src(self.lo)}, {self._src(self.hi)})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Range) and repr(self) == repr(other)

    def __hash__(self) -> int:
        return hash(repr(self))

    def describe(self) -> str:
        lo = "-∞" if self.lo is None else (self.lo.source if isinstance(self.lo, Expr) else self.lo)
        hi = "∞" if self.hi is None else (self.hi.source if isinstance(self.hi, Expr) else self.hi)
        left = "(" if self.lo is None else "["
        right = ")" if self.hi is None else "]"
        return f"{left}{lo}, {hi}{right}"


@dataclass(frozen=True)
class Finite(Constraint):
    """Every value is finite (no NaN, no ±Inf); for complex tensors, both parts."""

    def describe(self) -> str:
        return "finite"


@dataclass(frozen=True)
class Mask(Constraint):
    """A boolean mask with at least one valid position along ``axis`` per row.

    By default True marks the valid positions (torchdx's convention). ``padding=True`` states
    PyTorch's ``key_padding_mask`` convention instead: True marks the *padded* positions, so
    every row needs at least one False.

    Example:
        >>> mask: Annotated[Bool[Tensor, "B T"], Mask()]  # every sequence has a valid frame
        >>> key_padding_mask: Annotated[Bool[Tensor, "B S"], Mask(padding=True)]
    """

    axis: int = -1
    padding: bool = False

    def describe(self) -> str:
        if self.padding:
            return "{0, 1}, True = padded, ≥1 valid (False) per row"
        return "{0, 1}, ≥1 valid per row"


class Probability(Range):
    """Values in ``[0, 1]`` (and finite)."""

    def __init__(self) -> None:
        super().__init__(0, 1)

    def __repr__(self) -> str:
        return "Probability()"
