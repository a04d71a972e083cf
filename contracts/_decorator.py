"""``contracts.contract``: the thin decorator that joins plan, checker and explainer.

Everything is parsed once, at decoration time, into a :class:`~contracts._plan.Plan`; a call
runs the checker (``_check``) on it, and only a failing call pays for the explainer's words
(``_explain``).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import torch

from ._check import Fail
from ._compiled import compiled_inputs, compiled_outputs
from ._config import OFF, state
from ._errors import AnnotationError
from ._explain import compiled_words, explain
from ._fast import compile_checker, compile_wrapper
from ._inline import TRACED as traced
from ._inline import add_wrapper_code
from ._inputs import FAILED, explain_failure
from ._plan import ContractOptions, Plan, build_plan
from ._registry import register

__all__ = ["contract", "wrap"]

_is_compiling = torch.compiler.is_compiling


def wrap(plan: Plan) -> Callable:
    """The checking wrapper of ``plan.fn``."""
    fn = plan.fn
    has_returns = plan.return_kind != "none"
    check_in, check_out, cache = compile_checker(plan)
    words = compiled_words(plan)

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        __tracebackhide__ = True
        level = state.level
        if level == OFF:
            return fn(*args, **kwargs)
        if _is_compiling():  # traced by torch.compile: checks the graph keeps
            b, self_obj = compiled_inputs(plan, words, args, kwargs, level)
            traced.append(b)  # for contracts.check inside fn
            out = fn(*args, **kwargs)
            traced.pop()
            if has_returns:
                compiled_outputs(plan, words, out, b, self_obj, level)
            return out
        try:
            b, self_obj, entry = check_in(args, kwargs, level)
        except Fail as f:
            raise explain(plan, f, args, kwargs) from None
        try:
            out = fn(*args, **kwargs)  # contracts.check inside fn reads b, self_obj from here
        except FAILED as err:  # an input torch refused: a device or dtype the module lacks?
            explain_failure(plan, err, args, kwargs)
            raise
        if has_returns:
            nc = len(b)  # the dims bound so far (arguments, then contracts.check in fn)
            try:
                check_out(out, b, self_obj, level, entry)
            except Fail as f:
                bound = list(b.items())[:nc]
                raise explain(plan, f, args, kwargs, out, phase="outputs", bound=bound) from None
        return out

    add_wrapper_code(wrapper.__code__)  # for contracts.check (plan is a free variable there)
    fast = compile_wrapper(plan, cache, wrapper, check_out, explain)
    if fast is not None:  # the common call inlined; everything else goes to ``wrapper``
        fast = functools.wraps(fn)(fast)
        fast.__wrapped_generic__ = wrapper  # type: ignore[attr-defined]
        wrapper = fast
    wrapper.__contract__ = plan  # type: ignore[attr-defined]
    return wrapper


def contract(fn: Callable | None = None, /, **options: Any) -> Any:
    """Check a function's tensor contract at every call.

    Shapes and dtypes come from jaxtyping annotations; value constraints (:class:`Range`,
    :class:`Finite`, :class:`Mask`, :class:`Probability`) from ``typing.Annotated`` metadata.
    Works on functions, methods and ``nn.Module.forward``. In mode ``off`` at decoration time
    the function itself is returned.

    Args:
        fn: the function (when used without parentheses).
        **options: the fields of :class:`ContractOptions`: ``dims`` (pre-bind dims from
            ``self``: ``{"V": "self.vocab_size"}``), ``returns`` (annotations for the keys of a
            returned dict), ``allow_empty`` (accept zero-size axes), ``generate`` (include in
            the generated property tests), ``sizes`` (``{dim: (min, max)}`` for generated
            inputs), ``strategies`` (``{argument: lambda st: strategy}``), ``outputs`` (names
            of returned tuple elements, for the docs), ``notes`` (``{name: text}`` for the docs).

    Example:
        >>> @contract
        ... def masked_mean(
        ...     x: Float[Tensor, "B T D"], mask: Annotated[Bool[Tensor, "B T"], Mask()]
        ... ) -> Float[Tensor, "B D"]:
        ...     m = mask.unsqueeze(-1).to(x.dtype)
        ...     return (x * m).sum(1) / m.sum(1)
    """
    opts = ContractOptions.from_kwargs("@contract", options)

    def decorate(f: Callable) -> Callable:
        if isinstance(f, (staticmethod, classmethod)):  # @contract above @staticmethod
            return type(f)(decorate(f.__func__))
        if not callable(f):
            raise AnnotationError(f"@contract decorates functions, not {type(f).__name__}")
        if isinstance(f, type):  # wrapped, the class would become a function (no isinstance,
            # no subclassing), and its own annotations are not its constructor's
            raise AnnotationError(
                f"@contract decorates functions and methods, not classes ({f.__qualname__}); "
                "put it on the method to check (__init__, forward, __call__)"
            )
        plan = build_plan(f, opts)
        register(plan)
        if state.level == OFF:
            return f
        return wrap(plan)

    if fn is not None:
        return decorate(fn)
    return decorate
