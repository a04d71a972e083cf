"""Hypothesis strategies derived from contracts.

``inputs_for(fn)`` draws ``(args, kwargs)`` that satisfy ``fn``'s input contract: each named dim
is drawn once and shared by every argument that uses it, dims bound from ``self`` keep the
instance's value, ranges and mask rules are respected, size-1 edges occur (sizes shrink to 1),
and sizes stay small so property tests are fast.

Example:
    >>> from hypothesis import given
    >>> from contracts.strategies import inputs_for
    >>> @given(inputs_for(pool))
    ... def test_pool_keeps_contract(ai):
    ...     args, kwargs = ai
    ...     pool(*args, **kwargs)  # output contract checked by the decorator
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable
from typing import Any

import torch
from hypothesis import assume
from hypothesis import strategies as st

from ._check import _size, torch_dtypes
from ._errors import TorchdxError
from ._plan import Plan, Slot, TensorSpec
from ._registry import all_plans, example_factory
from ._spec import ARGS, ELLIPSIS, EXPR, FIXED, NAME, VARIADIC, Expr, ExprError

__all__ = ["CannotGenerate", "inputs_for", "plan_of"]

DEFAULT_SIZES = (1, 8)


class CannotGenerate(TorchdxError, TypeError):
    """A contract does not say enough to generate inputs (e.g. a ``str`` argument without a
    default or a strategy)."""

    __module__ = "contracts.strategies"


def plan_of(fn: Callable) -> Plan:
    """The contract plan of a decorated function, method or bound method."""
    target = getattr(fn, "__func__", fn)
    plan = getattr(target, "__contract__", None)
    if plan is None and hasattr(fn, "forward"):
        plan = getattr(getattr(fn.forward, "__func__", fn.forward), "__contract__", None)
    if plan is None:
        for p in all_plans():
            if p.fn is target:
                return p
        raise CannotGenerate(f"{getattr(fn, '__qualname__', fn)!r} has no contract")
    return plan


def _float_dtype(spec: TensorSpec) -> torch.dtype:
    dts = torch_dtypes(spec.dtypes)
    if dts is None or torch.float32 in dts:
        return torch.float32
    for d in (torch.float64, torch.float16, torch.bfloat16):
        if d in dts:
            return d
    return torch.float32


def _int_dtype(spec: TensorSpec) -> torch.dtype:
    dts = torch_dtypes(spec.dtypes)
    if dts is None or torch.int64 in dts:
        return torch.int64
    return sorted(dts, key=str)[0]


def _bound(b: Any, bindings: dict, self_obj: Any) -> float | None:
    if isinstance(b, Expr):
        return b(bindings, self_obj)
    return b


def _int_bounds(lo: Any, hi: Any, span: int) -> tuple[int, int]:
    """The integers drawn for a Range on integers: ``[lo, hi]``; with one bound, from 0 or
    ``span`` past the bound given (``Range(None, -1)``: ``[-1 - span, -1]``); ``[0, span]``
    with none."""
    ilo = math.ceil(lo) if lo is not None else None
    ihi = math.floor(hi) if hi is not None else None
    if ilo is None:
        ilo = 0 if ihi is None or ihi >= 0 else ihi - span
    if ihi is None:
        ihi = ilo + span
    return ilo, ihi


def _make_tensor(
    spec: TensorSpec, shape: tuple[int, ...], gen: torch.Generator, bindings: dict, self_obj: Any
) -> torch.Tensor:
    lo = _bound(spec.lo, bindings, self_obj)
    hi = _bound(spec.hi, bindings, self_obj)
    dts = torch_dtypes(spec.dtypes)
    if dts is not None and dts <= {torch.bool}:
        x = torch.rand(shape, generator=gen) < 0.7
        if spec.mask_axis is not None and x.numel():
            axis = spec.mask_axis % len(shape)
            n = shape[axis]
            pick = torch.randint(0, n, shape[:axis] + shape[axis + 1 :], generator=gen)
            x |= torch.nn.functional.one_hot(pick, n).movedim(-1, axis).bool()
            if spec.mask_padding:
                x = ~x  # True marks padding: the guaranteed position is the valid False
        return x
    if dts is not None and all(d.is_complex for d in dts):
        dt = torch.complex64 if torch.complex64 in dts else sorted(dts, key=str)[0]
        return torch.randn(shape, generator=gen, dtype=dt)
    if dts is not None and not any(d.is_floating_point for d in dts):
        dt = _int_dtype(spec)
        info = torch.iinfo(dt)
        ilo, ihi = _int_bounds(lo, hi, 9)
        ilo, ihi = max(ilo, info.min), min(ihi, info.max)  # what the dtype holds
        if ilo > ihi:
            _no_values(spec, dt, lo, hi)
        return torch.randint(ilo, ihi + 1, shape, generator=gen, dtype=dt)
    dt = _float_dtype(spec)
    top = torch.finfo(dt).max
    if (lo is not None and lo > top) or (hi is not None and hi < -top):
        _no_values(spec, dt, lo, hi)
    lo = None if lo is None else max(lo, -top)  # the finite values the dtype holds
    hi = None if hi is None else min(hi, top)
    if lo is not None and hi is not None:
        assume(lo <= hi)
        x = lo + (hi - lo) * torch.rand(shape, generator=gen, dtype=torch.float64)
        return x.clamp(lo, hi).to(dt)
    x = torch.randn(shape, generator=gen, dtype=torch.float64)
    if lo is not None:
        x = (lo + x.abs()).clamp(max=top)
    elif hi is not None:
        x = (hi - x.abs()).clamp(min=-top)
    return x.to(dt)


def _no_values(spec: TensorSpec, dt: torch.dtype, lo: Any, hi: Any) -> None:
    """No value of ``dt`` lies in the range: with number bounds no draw can succeed (say so);
    with expression bounds this draw's dims made it empty (draw again)."""
    if isinstance(spec.lo, Expr) or isinstance(spec.hi, Expr):
        assume(False)
    left = "(-∞" if lo is None else f"[{lo}"
    right = "∞)" if hi is None else f"{hi}]"
    raise CannotGenerate(
        f"no {str(dt).replace('torch.', '')} value lies in {left}, {right}, the Range of a "
        f"tensor {spec.shape_words()}; widen the Range or the dtype"
    )


def _py_strategy(slot: Slot, plan: Plan, bindings: dict, self_obj: Any) -> Any:
    hint = slot.pyhint
    lo = hi = None
    if slot.pyrange is not None:
        lo = _bound(slot.pyrange.lo, bindings, self_obj)
        hi = _bound(slot.pyrange.hi, bindings, self_obj)
    if hint is bool:
        return st.booleans()
    if hint is int:
        ilo, ihi = _int_bounds(lo, hi, 16)
        if ilo > ihi:  # bounds from this draw's dims that leave no integer: draw again
            return st.nothing()
        return st.integers(ilo, min(ihi, ilo + 64))
    if hint is float:
        if lo is None:
            flo = -10.0 if hi is None or hi > -10.0 else hi - 20.0
        else:
            flo = lo
        fhi = hi if hi is not None else flo + 20.0
        if flo > fhi:
            return st.nothing()
        return st.floats(flo, fhi, allow_nan=False, allow_infinity=False)
    raise CannotGenerate(
        f"{plan.qualname}(): cannot generate argument {slot.name!r} of type "
        f"{getattr(hint, '__name__', hint)}; give it a default or pass "
        f"@contract(strategies={{{slot.name!r}: lambda st: ...}})"
    )


def _dim_names(plan: Plan) -> tuple[list[str], list[str]]:
    names: list[str] = []
    variadics: list[str] = []
    for slot in plan.params:
        if slot.tensor is None:
            continue
        for d in slot.tensor.dims:
            if d.kind == NAME and d.value not in names:
                names.append(d.value)
            elif d.kind == VARIADIC and d.value not in variadics:
                variadics.append(d.value)
    return names, variadics


def _resolve_instance(plan: Plan, fn: Callable, instance: Any) -> Any:
    if not plan.has_self:
        return None
    if instance is not None:
        return instance
    bound_self = getattr(fn, "__self__", None)
    if bound_self is not None:
        return bound_self
    if isinstance(fn, torch.nn.Module):
        return fn
    factory = example_factory(plan.module, plan.owner_qualname or "")
    if factory is None:
        raise CannotGenerate(
            f"{plan.qualname}() is a method and its class has no example instance; decorate the "
            f"class with @contracts.example(lambda: ...) or pass inputs_for(fn, instance=...)"
        )
    return factory()


def inputs_for(
    fn: Callable,
    *,
    instance: Any = None,
    sizes: dict[str, tuple[int, int]] | None = None,
) -> st.SearchStrategy[tuple[tuple, dict]]:
    """A strategy of ``(args, kwargs)`` satisfying ``fn``'s input contract.

    Args:
        fn: a decorated function, method, bound method or ``nn.Module`` (its ``forward``).
        instance: the ``self`` for methods (default: the bound instance, or the class's
            ``@contracts.example`` factory).
        sizes: ``{dim: (min, max)}``, overriding the contract's ``sizes`` and the default (1, 8).

    Returns:
        A hypothesis strategy. ``args`` holds the positional-only parameters, in order (one
        left to its default is passed as that default when a later one is drawn), ``kwargs``
        the others; ``args`` never contains ``self``: call ``bound(*args, **kwargs)``.

    Every dim form of the spec language is drawn consistently: named dims once per draw,
    expressions (``"T-1"``, ``"2*D"``, ``"T//2"``, ``"max(T,D)"``, ``"self.n"``) evaluated
    from them (a draw giving a size below 1, or below 0 with ``allow_empty``, is rejected), and
    f-string dims (``"{n}"``) from the drawn arguments. Under ``allow_empty`` a Mask's checked
    axis is not drawn empty under non-empty rows (the checker refuses that).

    Raises:
        CannotGenerate: an argument's contract gives nothing to draw from (a required
            parameter with no annotation to draw from and no strategy, or a dim read by an
            expression that no argument's shape binds: the checker refuses every call then).
    """
    plan = plan_of(fn)
    self_obj = _resolve_instance(plan, fn, instance)
    size_of = {**plan.sizes, **(sizes or {})}
    names, variadics = _dim_names(plan)
    pre: dict[str, Any] = {}
    for name, e in plan.self_dims:
        try:
            pre[name] = _size(e(pre, self_obj))  # (as the checker reads it: 3.0 is 3)
        except Exception as err:  # None (not set yet), a missing attribute
            raise CannotGenerate(
                f"{plan.qualname}(): dims[{name!r}] = {e.source}: {type(err).__name__}: {err}"
            ) from None
    # fail early (at strategy construction) for arguments we cannot draw
    for slot in plan.params:
        if slot.tensor is None and not slot.plain_tensor and slot.name not in plan.strategies:
            if slot.default is inspect.Parameter.empty and slot.pyhint not in (bool, int, float):
                _py_strategy(slot, plan, {}, self_obj)
        if slot.plain_tensor and slot.default is inspect.Parameter.empty:
            raise CannotGenerate(
                f"{plan.qualname}(): argument {slot.name!r} is a bare torch.Tensor; annotate its "
                "shape and dtype (Float[Tensor, '...']) so inputs can be generated"
            )
    _check_expression_names(plan, set(names) | set(pre))
    signature = _parameters(plan)
    unchecked = _unchecked_parameters(plan, signature)
    positional_only = [n for n, p in signature.items() if p.kind is p.POSITIONAL_ONLY]
    nonempty = _mask_axis_names(plan) if plan.allow_empty else set()
    keep = _needed_optionals(plan, set(pre))
    strategies = plan.strategies
    self_name = next(iter(_all_parameters(plan)), None) if plan.has_self else None

    @st.composite
    def draw(data: st.DrawFn) -> tuple[tuple, dict]:
        b = dict(pre)
        for n in names:
            if n not in b:
                lo, hi = size_of.get(n, DEFAULT_SIZES)
                least = 1 if not plan.allow_empty or n in nonempty else 0
                # (a mask axis sized (0, 0) keeps its sizes: only mask rows of none then pass)
                b[n] = data(st.integers(max(lo, least) if hi >= least else lo, hi))
        for v in variadics:
            k = data(st.integers(0, 2))
            b["*" + v] = tuple(data(st.integers(1, 4)) for _ in range(k))
        seed = data(st.integers(0, 2**31 - 1))
        gen = torch.Generator().manual_seed(seed)
        values: dict[str, Any] = {}
        later: list[Slot] = []  # tensors with f-string dims: drawn once the other values are
        for slot in plan.params:
            if slot.name in strategies:
                value = data(strategies[slot.name](st))
            elif slot.tensor is not None:
                if (
                    slot.optional
                    and slot.default is None
                    and slot.name not in keep
                    and data(st.booleans())
                ):
                    value = None
                elif _reads_arguments(slot.tensor):
                    later.append(slot)
                    continue
                else:
                    value = _draw_value(plan, slot, data, gen, b, self_obj)
            elif slot.plain_tensor:
                continue
            elif slot.default is not inspect.Parameter.empty:
                continue
            else:
                value = data(_py_strategy(slot, plan, b, self_obj))
            values[slot.name] = value
        for name in unchecked:  # parameters without a checked annotation, given a strategy
            values[name] = data(strategies[name](st))
        if later:
            given = {n: p.default for n, p in signature.items() if p.default is not p.empty}
            b[ARGS] = {**given, **values}
            for slot in later:
                values[slot.name] = _draw_value(plan, slot, data, gen, b, self_obj)
            del b[ARGS]
        if self_name is not None:
            values.pop(self_name, None)
        return _arrange(values, positional_only, signature)

    return draw()


def _draw_value(
    plan: Plan, slot: Slot, data: st.DrawFn, gen: torch.Generator, b: dict, self_obj: Any
) -> Any:
    """A tensor argument, or for a list/tuple/dict of tensors one to three of them (their dims
    shared, as the checker binds them; a dict's keys are drawn from its key hint)."""
    if slot.each is None:
        return _draw_tensor(plan, slot, data, gen, b, self_obj)
    n = data(st.integers(1, 3))
    items = [_draw_tensor(plan, slot, data, gen, b, self_obj) for _ in range(n)]
    if slot.is_mapping:
        keys = _KEYS.get(slot.each_key)
        if keys is None:
            raise CannotGenerate(
                f"{plan.qualname}(): cannot draw the keys of argument {slot.name!r} "
                f"({slot.each_key!r}); pass @contract(strategies={{{slot.name!r}: ...}})"
            )
        return dict(zip(data(st.lists(keys, min_size=n, max_size=n, unique=True)), items))
    return tuple(items) if slot.each is tuple else items


# the keys drawn for a dict of tensors, by key hint (None: dict[Any, X] or no key hint)
_KEYS = {
    str: st.text("abcdefgh", min_size=1, max_size=4),
    int: st.integers(0, 64),
    None: st.text("abcdefgh", min_size=1, max_size=4),
}


def _draw_tensor(
    plan: Plan, slot: Slot, data: st.DrawFn, gen: torch.Generator, b: dict, self_obj: Any
) -> torch.Tensor:
    """One tensor argument: its shape from the drawn dims (expressions evaluated, f-string
    dims read from the call's arguments in ``b``), then values meeting its constraints."""
    spec = slot.tensor
    least = 0 if plan.allow_empty else 1
    shape: list[int] = []
    for d in spec.dims:
        if d.kind == FIXED:
            shape.append(d.value)
        elif d.kind == NAME:
            shape.append(b[d.value])
        elif d.kind == EXPR:
            try:
                s = d.value(b, self_obj)
            except (KeyError, AttributeError, TypeError, ZeroDivisionError, ExprError) as e:
                if isinstance(e, ZeroDivisionError):
                    assume(False)  # a divisor drawn as 0: draw again
                raise CannotGenerate(
                    f"{plan.qualname}(): the dim {d.value.source!r} of argument {slot.name!r} "
                    f"cannot be evaluated from the drawn arguments ({type(e).__name__}: {e})"
                ) from None
            if isinstance(s, float) and s.is_integer():
                s = int(s)  # "T/2" with T even: the checker compares 2 == 2.0
            assume(isinstance(s, int) and not isinstance(s, bool) and s >= least)
            shape.append(s)
        elif d.kind == VARIADIC:
            shape.extend(b["*" + d.value])
        elif d.kind == ELLIPSIS:
            shape.extend([2] * data(st.integers(0, 2)))
        else:
            shape.append(data(st.integers(1, 4)))
    if spec.mask_axis is not None:
        assume(-len(shape) <= spec.mask_axis < len(shape))  # ("*b T": the axis must exist)
        # a mask needs a valid position in each row: no rows at all is fine (allow_empty), an
        # empty mask axis under non-empty rows is refused by the checker
        axis = spec.mask_axis % len(shape)
        rows = math.prod(shape[:axis] + shape[axis + 1 :])
        assume(not (shape[axis] == 0 and rows > 0))
    return _make_tensor(spec, tuple(shape), gen, b, self_obj)


def _reads_arguments(spec: TensorSpec) -> bool:
    return any(d.kind == EXPR and d.value.uses_args for d in spec.dims)


def _all_parameters(plan: Plan) -> dict[str, inspect.Parameter]:
    try:
        return dict(inspect.signature(plan.fn).parameters)
    except (TypeError, ValueError):
        return {}


def _parameters(plan: Plan) -> dict[str, inspect.Parameter]:
    """The parameters a generated call passes (``self`` left out), in signature order."""
    params = _all_parameters(plan)
    if plan.has_self and params:
        params.pop(next(iter(params)))
    return params


def _unchecked_parameters(plan: Plan, signature: dict[str, inspect.Parameter]) -> list[str]:
    """Required parameters without a checked annotation: drawn from ``strategies=``, else
    nothing can be generated (the call would lack them)."""
    checked = {s.name for s in plan.params}
    out = []
    for name, p in signature.items():
        if name in checked or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        if name in plan.strategies:
            out.append(name)
        elif p.default is p.empty:
            raise CannotGenerate(
                f"{plan.qualname}(): argument {name!r} has no tensor or number annotation to "
                f"draw from; annotate it, give it a default or pass "
                f"@contract(strategies={{{name!r}: lambda st: ...}})"
            )
    return out


def _arrange(
    values: dict[str, Any], positional_only: list[str], signature: dict[str, inspect.Parameter]
) -> tuple[tuple, dict]:
    """``(args, kwargs)`` for the drawn ``values``: positional-only parameters by position
    (one left to its default is passed as that default when a later one is passed), the rest
    by keyword."""
    args: list[Any] = []
    pending: list[Any] = []
    for name in positional_only:
        if name in values:
            args += [*pending, values.pop(name)]
            pending = []
        else:
            pending.append(signature[name].default)
    return tuple(args), values


def _expression_names(plan: Plan) -> list[tuple[str, str, frozenset[str]]]:
    """``(argument, expression, dim names)`` of every expression an input check evaluates:
    shape dims (``"T-1"``) and Range bounds (``"V-1"``); f-string dims are read at draw time."""
    out = []
    for slot in plan.params:
        exprs: list[Expr] = []
        if slot.tensor is not None:
            spec = slot.tensor
            exprs += [d.value for d in spec.dims if d.kind == EXPR and not d.value.uses_args]
            exprs += [x for x in (spec.lo, spec.hi) if isinstance(x, Expr)]
        if slot.pyrange is not None:
            exprs += [x for x in (slot.pyrange.lo, slot.pyrange.hi) if isinstance(x, Expr)]
        out += [(slot.name, e.source, e.names) for e in exprs]
    return out


def _check_expression_names(plan: Plan, bound: set[str]) -> None:
    """A dim read by an expression must be bound by an argument's shape or by ``dims=``: the
    checker refuses every call otherwise, so nothing can be generated."""
    for arg, source, used in _expression_names(plan):
        missing = sorted(used - bound)
        if missing:
            raise CannotGenerate(
                f"{plan.qualname}(): argument {arg!r} reads {', '.join(missing)} in "
                f"{source!r}, but no argument's shape binds it (a dim inside an expression is "
                "never bound by it, so the contract refuses every call); name it as an axis of "
                "an argument, or bind it from the model with dims="
            )


def _needed_optionals(plan: Plan, pre: set[str]) -> set[str]:
    """Optional tensor arguments never drawn as None: the only ones binding a dim that an
    expression reads (left out, that dim is unbound and the checker refuses the call)."""
    read = set().union(*(used for _arg, _src, used in _expression_names(plan)))
    required: set[str] = set(pre)
    optional: dict[str, set[str]] = {}
    for slot in plan.params:
        if slot.tensor is None:
            continue
        bound = {d.value for d in slot.tensor.dims if d.kind == NAME}
        if slot.optional and slot.default is None:
            optional[slot.name] = bound
        else:
            required |= bound
    return {name for name, bound in optional.items() if (bound & read) - required}


def _mask_axis_names(plan: Plan) -> set[str]:
    """Dims that are the checked axis of a Mask argument (drawn >= 1 even with allow_empty)."""
    out = set()
    for slot in plan.params:
        spec = slot.tensor
        if spec is None or spec.mask_axis is None or spec.var_at >= 0:
            continue
        d = spec.dims[spec.mask_axis % len(spec.dims)]
        if d.kind == NAME:
            out.add(d.value)
    return out


def bound_callable(plan: Plan, instance: Any = None) -> tuple[Callable, Any]:
    """The callable a generated test should call for ``plan`` (and the instance it used)."""
    import importlib

    module = importlib.import_module(plan.module)
    if not plan.has_self:
        obj: Any = module
        for part in plan.qualname.split("."):
            obj = getattr(obj, part)
        return obj, None
    inst = _resolve_instance(plan, plan.fn, instance)
    name = plan.qualname.split(".")[-1]
    if name == "forward" and isinstance(inst, torch.nn.Module):
        return inst, inst
    return getattr(inst, name), inst
