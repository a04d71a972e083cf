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

from ._check import torch_dtypes
from ._errors import TorchdxError
from ._plan import Plan, Slot, TensorSpec
from ._registry import all_plans, example_factory
from ._spec import ELLIPSIS, EXPR, FIXED, NAME, VARIADIC, Expr

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
        ilo = math.ceil(lo) if lo is not None else 0
        ihi = math.floor(hi) if hi is not None else ilo + 9
        assume(ilo <= ihi)
        return torch.randint(ilo, ihi + 1, shape, generator=gen, dtype=_int_dtype(spec))
    dt = _float_dtype(spec)
    if lo is not None and hi is not None:
        assume(lo <= hi)
        x = lo + (hi - lo) * torch.rand(shape, generator=gen, dtype=torch.float64)
        return x.clamp(lo, hi).to(dt)
    x = torch.randn(shape, generator=gen, dtype=torch.float64)
    if lo is not None:
        x = lo + x.abs()
    elif hi is not None:
        x = hi - x.abs()
    return x.to(dt)


def _py_strategy(slot: Slot, plan: Plan, bindings: dict, self_obj: Any) -> Any:
    hint = slot.pyhint
    lo = hi = None
    if slot.pyrange is not None:
        lo = _bound(slot.pyrange.lo, bindings, self_obj)
        hi = _bound(slot.pyrange.hi, bindings, self_obj)
    if hint is bool:
        return st.booleans()
    if hint is int:
        ilo = math.ceil(lo) if lo is not None else 0
        ihi = math.floor(hi) if hi is not None else ilo + 16
        return st.integers(ilo, min(ihi, ilo + 64))
    if hint is float:
        flo = lo if lo is not None else -10.0
        fhi = hi if hi is not None else flo + 20.0
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
        A hypothesis strategy. ``args`` never contains ``self``: call ``bound(*args, **kwargs)``.

    Raises:
        CannotGenerate: an argument's contract gives nothing to draw from.
    """
    plan = plan_of(fn)
    self_obj = _resolve_instance(plan, fn, instance)
    size_of = {**plan.sizes, **(sizes or {})}
    names, variadics = _dim_names(plan)
    pre: dict[str, Any] = {}
    for name, e in plan.self_dims:
        pre[name] = e(pre, self_obj)
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

    @st.composite
    def draw(data: st.DrawFn) -> tuple[tuple, dict]:
        b = dict(pre)
        for n in names:
            if n not in b:
                lo, hi = size_of.get(n, DEFAULT_SIZES)
                b[n] = data(st.integers(max(lo, 1 if not plan.allow_empty else 0), hi))
        for v in variadics:
            k = data(st.integers(0, 2))
            b["*" + v] = tuple(data(st.integers(1, 4)) for _ in range(k))
        seed = data(st.integers(0, 2**31 - 1))
        gen = torch.Generator().manual_seed(seed)
        kwargs: dict[str, Any] = {}
        args: list[Any] = []
        for slot in plan.params:
            if slot.name in plan.strategies:
                value = data(plan.strategies[slot.name](st))
            elif slot.tensor is not None:
                if slot.optional and slot.default is None and data(st.booleans()):
                    value = None
                else:
                    shape: list[int] = []
                    for d in slot.tensor.dims:
                        if d.kind == FIXED:
                            shape.append(d.value)
                        elif d.kind == NAME:
                            shape.append(b[d.value])
                        elif d.kind == EXPR:
                            s = d.value(b, self_obj)
                            assume(isinstance(s, int) and s >= (0 if plan.allow_empty else 1))
                            shape.append(s)
                        elif d.kind == VARIADIC:
                            shape.extend(b["*" + d.value])
                        elif d.kind == ELLIPSIS:
                            shape.extend([2] * data(st.integers(0, 2)))
                        else:
                            shape.append(data(st.integers(1, 4)))
                    value = _make_tensor(slot.tensor, tuple(shape), gen, b, self_obj)
            elif slot.plain_tensor:
                continue
            elif slot.default is not inspect.Parameter.empty:
                continue
            else:
                value = data(_py_strategy(slot, plan, b, self_obj))
            if slot.position == 0 and plan.has_self:
                continue
            kwargs[slot.name] = value
        return tuple(args), kwargs

    return draw()


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
