"""``contracts.check``: a contract on one intermediate value, inside any code.

Inside a contracted call the check shares that call's dim bindings (a ``"B T D"`` inside
``forward`` must agree with the ``B`` and ``T`` its arguments bound, and a new dim it binds is
seen by later checks and by the return check); outside one it binds fresh. The check finds the
innermost contracted call by walking up the caller frames to a contract wrapper's frame and
reading its locals, so contract calls pay nothing for it (a per-thread stack pushed by every
call cost ~0.09 us per call; the walk costs ~0.4 us per ``check``, where it is used).
"""

from __future__ import annotations

import inspect
import sys
from types import CodeType
from typing import Any

import torch

from ._check import Fail, check_slot, finish
from ._compiled import compiled_slot
from ._config import OFF, state
from ._errors import AnnotationError
from ._explain import explain_check, slot_words
from ._plan import CHECKED, Plan, Slot, make_slot, unwrap

_is_compiling = torch.compiler.is_compiling

__all__ = ["WRAPPER_CODES", "add_wrapper_code", "check", "enclosing_call"]

# the code objects of contract wrappers (the generic one and each generated one), by id; each
# names its locals plan, b, self_obj, args, kwargs. Keyed by id, not by the code object: a code
# object's hash reads its constants and names at every lookup, for every frame walked (about a
# third of a warm check's walk). Held here, so an id is never reused.
WRAPPER_CODES: dict[int, CodeType] = {}


def add_wrapper_code(code: CodeType) -> None:
    """Register a contract wrapper's code object (its frames are what :func:`enclosing_call`
    finds)."""
    WRAPPER_CODES[id(code)] = code


def enclosing_call(depth: int = 2) -> tuple[Plan, dict, Any, tuple, dict] | None:
    """The innermost contracted call in progress in this thread, as ``(plan, bindings, self,
    args, kwargs)``, or None. A wrapper frame that has not bound its checks (mode ``off``, or a
    call handed on to the generic wrapper) is passed over."""
    f = sys._getframe(depth)
    codes = WRAPPER_CODES
    while f is not None:
        code = f.f_code
        if codes.get(id(code)) is code:
            loc = f.f_locals
            b = loc.get("b")
            if isinstance(b, dict):
                return loc["plan"], b, loc.get("self_obj"), loc["args"], loc["kwargs"]
        f = f.f_back
    return None


TRACED: list[dict] = []  # bindings of the contracted calls Dynamo is tracing, innermost last

_SLOTS: dict[Any, Slot] = {}


def _label(annotation: Any) -> str:
    inner = getattr(annotation, "__origin__", annotation)  # Annotated[X, ...] -> X
    return str(getattr(inner, "__name__", inner)).replace("typing.", "")


def _key(annotation: Any, name: str | None) -> Any:
    """A cache key that is equal for equal annotations: jaxtyping builds a new class at every
    ``Float[Tensor, "B T"]``, so the class itself would miss the cache on every call. A bare
    jaxtyping class (the usual check) is read off its class dict, without unwrapping."""
    d = getattr(annotation, "__dict__", None)
    if d is not None and "dim_str" in d and "dtypes" in d:
        return (_jaxtyping_key(annotation), (), False, name)
    inner, meta, optional = unwrap(annotation)
    if hasattr(inner, "dim_str") and hasattr(inner, "dtypes"):
        inner = _jaxtyping_key(inner)
    return (inner, meta, optional, name)


def _jaxtyping_key(hint: Any) -> tuple:
    """What makes two jaxtyping classes check alike: dtype category, dims, dtypes, array type."""
    dts = hint.dtypes
    return (
        getattr(getattr(hint, "dtype", None), "__name__", None),
        hint.dim_str,
        tuple(dts) if isinstance(dts, (list, tuple)) else dts,
        getattr(hint, "array_type", None),
    )


def _slot(annotation: Any, name: str | None) -> Slot:
    try:
        key = _key(annotation, name)
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
            raise AnnotationError(
                f"contracts.check({label!r}): {annotation!r} is not a checkable annotation "
                "(use a jaxtyping annotation like Float[Tensor, 'B T'], optionally in Annotated)"
            )
        if key is not None:
            if len(_SLOTS) >= 4096:  # annotations built in a loop: do not grow without bound
                _SLOTS.clear()
            _SLOTS[key] = slot
    return slot


class _Store:
    """Parsed checks for compiled code, one attribute each (see :func:`_prime`)."""


_STORE = _Store()
_STORE_KEYS: dict[Any, str] = {}


@torch._dynamo.assume_constant_result
def _prime(annotation: Any, name: str | None) -> str:
    """Parse an annotation for a check in compiled code, outside the traced graph: Dynamo runs
    this while tracing and keeps its result, the name of the ``_STORE`` attribute holding
    ``(slot, words)``. One attribute per check, so Dynamo reads each fresh (a dict it had read
    before would be stale)."""
    key = _key(annotation, name)
    attr = _STORE_KEYS.get(key)
    if attr is None:
        slot = _slot(annotation, name)
        attr = _STORE_KEYS[key] = f"c{len(_STORE_KEYS)}"
        setattr(_STORE, attr, (slot, slot_words("contracts.check", slot)))
    return attr


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
    if _is_compiling():  # traced by torch.compile: fresh bindings, checks the graph keeps
        slot, words = getattr(_STORE, _prime(annotation, name))
        b = bindings if bindings is not None else (TRACED[-1] if TRACED else {})
        compiled_slot(words, slot, value, b, None, level, False)
        return value
    slot = _slot(annotation, name)
    if value is None and slot.optional:  # Float[Tensor, "B"] | None given None
        return value
    ctx = enclosing_call() if bindings is None else None
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
