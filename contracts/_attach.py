"""``contracts.attach``: a contract on code you don't own, without editing its source."""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import Any

from ._decorator import wrap
from ._errors import AnnotationError
from ._plan import ContractOptions, build_plan
from ._registry import register

__all__ = ["Attachment", "attach"]

_MISSING = object()


class Attachment:
    """Handle returned by :func:`attach`; ``.remove()`` restores the original attribute.

    Also a context manager: the contract is removed on exit, even when the body raises.
    """

    __module__ = "contracts"

    def __init__(self, owner: Any, attribute: str, original: Any, had_own: bool) -> None:
        self.owner, self.attribute = owner, attribute
        self._original, self._had_own = original, had_own
        self.active = True

    def remove(self) -> None:
        """Restore the original attribute (idempotent)."""
        if not self.active:
            return
        if self._had_own:
            setattr(self.owner, self.attribute, self._original)
        else:
            delattr(self.owner, self.attribute)
        self.active = False

    def __enter__(self) -> Attachment:
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()

    def __repr__(self) -> str:
        name = getattr(self.owner, "__qualname__", repr(self.owner))
        state = "active" if self.active else "removed"
        return f"Attachment({name}.{self.attribute}, {state})"


def attach(
    owner: Any,
    attribute: str,
    /,
    *,
    returns: Any = None,
    dims: Mapping[str, str] | None = None,
    **params: Any,
) -> Attachment:
    """Put a contract on ``owner.attribute`` (a class's method or a module's function).

    Args:
        owner: a class or module.
        attribute: the method or function name.
        returns: annotation of the return value (a tensor annotation, a tuple of them, or a
            dict ``{key: annotation}`` for dict returns).
        dims: pre-bind dims from ``self`` (as in :func:`contract`).
        **params: annotations by parameter name.

    Returns:
        An :class:`Attachment`; call ``.remove()`` or use it as a context manager.

    Example:
        >>> with contracts.attach(nn.Linear, "forward", input=Float[Tensor, "*b 16"]):
        ...     nn.Linear(16, 4)(torch.zeros(3, 8))  # raises ContractError
    """
    if not isinstance(attribute, str) or not hasattr(owner, attribute):
        raise AnnotationError(f"attach(): {owner!r} has no attribute {attribute!r}")
    had_own = (isinstance(owner, type) and attribute in owner.__dict__) or not isinstance(
        owner, type
    )
    raw = (
        owner.__dict__.get(attribute, _MISSING)
        if isinstance(owner, type)
        else getattr(owner, attribute)
    )
    original = raw if raw is not _MISSING else getattr(owner, attribute)
    func = original
    wrapper_kind = None
    if isinstance(original, staticmethod):
        func, wrapper_kind = original.__func__, staticmethod
    elif isinstance(original, classmethod):
        func, wrapper_kind = original.__func__, classmethod
    if not callable(func):
        raise AnnotationError(f"attach(): {attribute!r} of {owner!r} is not callable")
    try:
        sig = inspect.signature(func)
        missing = set(params) - set(sig.parameters)
        if missing:
            raise AnnotationError(
                f"attach(): {getattr(func, '__qualname__', attribute)} has no parameter "
                f"{', '.join(sorted(missing))}; its parameters are {', '.join(sig.parameters)}"
            )
    except ValueError:
        pass
    dict_returns = returns if isinstance(returns, Mapping) else None
    plan = build_plan(
        func,
        ContractOptions(returns=dict_returns, dims=dims),
        hints=dict(params),
        return_hint=returns
        if dict_returns is None and returns is not None
        else inspect.Parameter.empty,
        qualname=f"{getattr(owner, '__qualname__', getattr(owner, '__name__', '?'))}.{attribute}",
    )
    register(plan)
    wrapped = wrap(plan)
    if wrapper_kind is not None:
        wrapped = wrapper_kind(wrapped)
    setattr(owner, attribute, wrapped)
    return Attachment(owner, attribute, original, had_own)
