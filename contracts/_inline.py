"""``contracts.check``: a contract on one intermediate value, inside any code.

Inside a contracted call the check shares that call's dim bindings (a ``"B T D"`` inside
``forward`` must agree with the ``B`` and ``T`` its arguments bound, and a new dim it binds is
seen by later checks and by the return check); outside one it binds fresh. The wrapper of every
contracted call pushes its bindings on a per-thread stack for the duration of the call.
"""

from __future__ import annotations

import inspect
import threading
from typing import Any

from ._check import Fail, check_slot, finish
from ._config import OFF, state
from ._explain import explain_check
from ._plan import CHECKED, Plan, Slot, make_slot

__all__ = ["CALLS", "check"]


class _Calls(threading.local):
    """Per thread: the contracted calls in progress, innermost last, as
    ``(plan, bindings, self, args, kwargs)``."""

    def __init__(self) -> None:
        self.stack: list[tuple[Plan, dict, Any, tuple, dict]] = []


CALLS = _Calls()

_SLOTS: dict[Any, Slot] = {}


def _label(annotation: Any) -> str:
    inner = getattr(annotation, "__origin__", annotation)  # Annotated[X, ...] -> X
    return str(getattr(inner, "__name__", inner)).replace("typing.", "")


def _slot(annotation: Any, name: str | None) -> Slot:
    key = (annotation, name)
    try:
        slot = _SLOTS.get(key)
    except TypeError:  # an unhashable annotation: parse every time
        key, slot = None, None
    if slot is None:
        label = name if name is not None else _label(annotation)
        slot = None
        if not isinstance(annotation, str):  # a string would be taken as a forward reference
            where = f"contracts.check({label!r})"
            slot = make_slot(where, label, CHECKED, inspect.Parameter.empty, annotation)
        if slot is None:
            raise TypeError(
                f"contracts.check({label!r}): {annotation!r} is not a checkable annotation "
                "(use a jaxtyping annotation like Float[Tensor, 'B T'], optionally in Annotated)"
            )
        if key is not None:
            _SLOTS[key] = slot
    return slot


def check(value: Any, annotation: Any, *, name: str | None = None, bindings: dict | None = None):
    """Check one value against a jaxtyping annotation (with ``Annotated`` constraints).

    Inside a contracted call the value's dims must agree with the bindings of that call;
    outside one they bind fresh (or into ``bindings``, a dict updated in place, to share dims
    across several checks). Costs nothing in mode ``off``; value constraints are checked in
    mode ``full`` only.

    Args:
        value: the value to check (returned unchanged).
        annotation: e.g. ``Float[Tensor, "B T D"]`` or ``Annotated[Int[Tensor, "B N"], Range(0, "V-1")]``.
        name: how the error names the value (default: the annotation).
        bindings: outside a contracted call, a ``{dim: size}`` dict to bind into.

    Returns:
        ``value``, so a check can wrap an expression.

    Raises:
        ContractError: the value breaks the annotation; the message names ``name``, the axis,
            expected vs actual, and where each dim binding came from.

    Example:
        >>> h = contracts.check(self.encoder(x), Float[Tensor, "B T D"], name="h")
    """
    __tracebackhide__ = True
    level = state.level
    if level == OFF:
        return value
    slot = _slot(annotation, name)
    stack = CALLS.stack
    ctx = stack[-1] if stack and bindings is None else None
    if ctx is not None:
        b, self_obj, allow_empty = ctx[1], ctx[2], ctx[0].allow_empty
    else:
        b, self_obj, allow_empty = ({} if bindings is None else bindings), None, False
    deferred: list = []
    pending: list = []
    try:
        check_slot(slot, value, b, None, deferred, pending, level, self_obj, allow_empty)
        finish(deferred, pending, b, self_obj)
    except Fail as f:
        raise explain_check(f, slot, value, ctx, b if ctx is None else None) from None
    return value
