"""``contracts.attach``: a contract on code you don't own, without editing its source.

Several contracts may be attached to the same attribute; they stack (the last attached checks
first). Each :class:`Attachment` is one layer of that stack, and removing any layer, in any
order, leaves exactly the remaining layers installed: the layers above the removed one are
re-wrapped around the layer below it. Removing the last layer puts back what was there before
the first attach (an attribute the owner did not hold itself, such as a method seen through an
instance or a subclass, is deleted again, so the owner ends as it was).
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import threading
import types
import weakref
from collections.abc import Mapping
from typing import Any

from ._decorator import wrap
from ._errors import AnnotationError
from ._plan import ContractOptions, Plan, build_plan
from ._registry import register

__all__ = ["Attachment", "attach"]

_MISSING = object()
_LOCK = threading.RLock()


class _Stack:
    """The attachments of one ``(owner, attribute)``, oldest first, over the original value.

    ``raw`` is what the owner held itself before the first attach (``_MISSING`` when the
    attribute was inherited: a method seen through an instance or a subclass); ``func`` the
    callable the first layer wraps, and ``kind`` the descriptor (``staticmethod`` /
    ``classmethod``) every layer is wrapped in again, or None. Each installed wrapper carries
    its stack (``__contract_stack__``), so the next attach finds it there: no registry outlives
    the owner.
    """

    def __init__(self, owner: Any, attribute: str, raw: Any, func: Any, kind: Any) -> None:
        self.owner, self.attribute = owner, attribute
        self.raw, self.func, self.kind = raw, func, kind
        self.layers: list[Attachment] = []

    def top(self) -> Any:
        """What the stack has installed on the owner (the raw value, descriptor included)."""
        return self.layers[-1]._installed if self.layers else self.raw


def _stack_of(owner: Any, attribute: str, value: Any) -> _Stack | None:
    """The stack whose top ``value`` is, on this owner (None for any other value)."""
    func = value.__func__ if isinstance(value, (staticmethod, classmethod)) else value
    stack = getattr(func, "__contract_stack__", None)
    if (
        isinstance(stack, _Stack)
        and stack.owner is owner
        and stack.attribute == attribute
        and stack.layers
        and stack.top() is value
    ):
        return stack
    return None


def _own_value(owner: Any, attribute: str) -> Any:
    """The value ``owner`` holds itself (its ``__dict__``), or ``_MISSING``."""
    try:
        d = object.__getattribute__(owner, "__dict__")
    except AttributeError:
        return _MISSING
    return d.get(attribute, _MISSING)


def _lookup(owner: Any, attribute: str) -> Any:
    """The value the first layer wraps: the raw descriptor when ``owner`` is a class (its own,
    or the first base's along the MRO, so a staticmethod stays one), else the attribute as
    read (a bound method for an instance)."""
    if isinstance(owner, type):
        for cls in owner.__mro__:
            if attribute in cls.__dict__:
                return cls.__dict__[attribute]
    return getattr(owner, attribute)


class Attachment:
    """Handle returned by :func:`attach`; ``.remove()`` takes this contract off again.

    Removing attachments of one attribute in any order leaves the others active; removing the
    last restores the original attribute. Also a context manager: the contract is removed on
    exit, even when the body raises.
    """

    __module__ = "contracts"

    def __init__(self, stack: _Stack, plan: Plan) -> None:
        self.owner, self.attribute = stack.owner, stack.attribute
        self._stack, self._plan = stack, plan
        self._installed = _install_value(stack, plan)
        self.active = True

    def remove(self) -> None:
        """Take this contract off, leaving any other attachment of the attribute (idempotent)."""
        with _LOCK:
            if not self.active:
                return
            self.active = False
            stack = self._stack
            owner = stack.owner
            i = stack.layers.index(self)
            was = stack.top()
            del stack.layers[i]
            below = stack.layers[i - 1]._installed_func() if i else stack.func
            for layer in stack.layers[i:]:  # the layers above: re-wrapped around the one below
                layer._rewrap(below)
                below = layer._installed_func()
            if _own_value(owner, stack.attribute) is not was:
                return  # replaced by someone else since: not ours to put back
            if stack.layers:
                setattr(owner, stack.attribute, stack.top())
            elif stack.raw is _MISSING:
                delattr(owner, stack.attribute)
            else:
                setattr(owner, stack.attribute, stack.raw)

    def _installed_func(self) -> Any:
        return self._installed.__func__ if self._stack.kind is not None else self._installed

    def _rewrap(self, inner: Any) -> None:
        self._plan = dataclasses.replace(self._plan, fn=inner)
        _register(self._stack, self._plan)
        self._installed = _install_value(self._stack, self._plan)

    def __enter__(self) -> Attachment:
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()

    def __repr__(self) -> str:
        name = _owner_name(self.owner)
        state = "active" if self.active else "removed"
        return f"Attachment({name}.{self.attribute}, {state})"


def _owner_name(owner: Any) -> str:
    """A class's or module's name; for an instance, its class's."""
    for attr in ("__qualname__", "__name__"):
        name = getattr(owner, attr, None)
        if isinstance(name, str):
            return name
    return type(owner).__qualname__


def _register(stack: _Stack, plan: Plan) -> None:
    """Register a contract on a class or module (for ``contracts.docs`` and the generated
    tests); one attached to a single instance is not that class's contract."""
    if isinstance(stack.owner, (type, types.ModuleType)):
        register(plan)


def _base_value(cls: type, attribute: str, start: int) -> Any:
    for base in cls.__mro__[start:]:
        if attribute in base.__dict__:
            return base.__dict__[attribute]
    return _MISSING


def _inherited(owner: Any, attribute: str, found: Any) -> Any:
    """The callable a first layer wraps when ``owner`` inherits ``attribute`` (a subclass's
    method defined on a base, an instance's method defined on its class): the value the base
    holds *at each call*, so a contract attached to the base (or the class) later, or removed
    from it, is seen; captured once, a removed contract kept checking through this layer.
    ``found`` (the value now) is returned unchanged where the lookup cannot be repeated."""
    cls, start = (owner, 1) if isinstance(owner, type) else (type(owner), 0)
    raw = _base_value(cls, attribute, start)
    if not isinstance(raw, (types.FunctionType, staticmethod, classmethod)):
        return found  # (__getattr__, a callable object, a C method: as found)

    if isinstance(owner, type):

        def call(*args: Any, **kwargs: Any) -> Any:  # args as the layer's descriptor passes them
            v = _base_value(cls, attribute, start)
            f = v.__func__ if isinstance(v, (staticmethod, classmethod)) else v
            return f(*args, **kwargs)

    else:
        ref = weakref.ref(owner)  # (the layer lives in the instance: no cycle through it)

        def call(*args: Any, **kwargs: Any) -> Any:
            v = _base_value(cls, attribute, start)
            return v.__get__(ref(), cls)(*args, **kwargs)

    return functools.wraps(found)(call)


def _install_value(stack: _Stack, plan: Plan) -> Any:
    wrapped = wrap(plan)
    wrapped.__contract_stack__ = stack  # type: ignore[attr-defined]
    return stack.kind(wrapped) if stack.kind is not None else wrapped


def attach(
    owner: Any,
    attribute: str,
    /,
    *,
    returns: Any = None,
    dims: Mapping[str, str] | None = None,
    **params: Any,
) -> Attachment:
    """Put a contract on ``owner.attribute`` (a class's method, a module's function, or a
    method of one instance).

    Several contracts on one attribute stack; each handle removes its own, in any order.

    Args:
        owner: a class, a module or an instance.
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
    with _LOCK:
        own = _own_value(owner, attribute)
        stack = _stack_of(owner, attribute, own)  # attached before (and not replaced since)
        if stack is not None:
            inner = stack.layers[-1]._installed_func()
        else:
            current = own if own is not _MISSING else _lookup(owner, attribute)
            kind = None
            func = current
            if isinstance(current, (staticmethod, classmethod)):
                func, kind = current.__func__, type(current)
            if not callable(func):
                raise AnnotationError(f"attach(): {attribute!r} of {owner!r} is not callable")
            if own is _MISSING:  # inherited: what a base (or the class) holds at each call
                func = _inherited(owner, attribute, func)
            stack = _Stack(owner, attribute, own, func, kind)
            inner = func
        try:
            sig = inspect.signature(inner)
            missing = set(params) - set(sig.parameters)
            if missing:
                raise AnnotationError(
                    f"attach(): {getattr(inner, '__qualname__', attribute)} has no parameter "
                    f"{', '.join(sorted(missing))}; its parameters are {', '.join(sig.parameters)}"
                )
        except ValueError:
            pass
        dict_returns = returns if isinstance(returns, Mapping) else None
        plan = build_plan(
            inner,
            ContractOptions(returns=dict_returns, dims=dims),
            hints=dict(params),
            return_hint=returns
            if dict_returns is None and returns is not None
            else inspect.Parameter.empty,
            qualname=f"{_owner_name(owner)}.{attribute}",
        )
        _register(stack, plan)
        handle = Attachment(stack, plan)
        setattr(owner, attribute, handle._installed)
        stack.layers.append(handle)
        return handle
