"""The fast path of the checker: call signatures already seen are not walked again.

A signature is what the shape walk of :mod:`contracts._check` depends on: for every checked
argument its shape and dtype (tensors) or its class (anything else), plus the dims bound from
``self``. The walk stays the reference: a new signature is walked (so a failure raises the
very same ``Fail``) and remembered when it passes; ``tests/contracts/test_fast_path.py`` checks
that both decide alike.
"""

from __future__ import annotations

import functools
import inspect
import math
import typing
from collections.abc import Callable
from typing import Any

import torch

from ._check import (
    Fail,
    check_inputs,
    check_outputs,
    check_pyrange,
    judge_values,
    returned_items,
    values_pending,
)
from ._config import FULL, SHAPES
from ._plan import FLOAT_NAMES, Plan, TensorSpec
from ._spec import Expr

__all__ = ["compile_checker"]


_CACHE_MAX = 256  # distinct input signatures remembered per contract
_NO_VALUE = object()


def compile_checker(plan: Plan) -> tuple[Callable, Callable]:
    """The checker of one plan, with a cache of the call signatures that already passed.

    Returns ``(inputs, outputs)``: ``inputs(args, kwargs, level) -> (bindings, self, entry)``
    and ``outputs(out, bindings, self, level, entry)``; both raise :class:`Fail`.

    A signature is what the shape walk depends on: for every checked argument its shape and
    dtype (tensors) or its class (anything else), plus the dims bound from ``self``. A signature
    seen before gives its bindings back without a walk; a new one is walked by
    :func:`check_inputs` (so a failure raises the very same :class:`Fail`) and remembered when it
    passes. Value constraints never come from the cache: in ``full`` mode they run every call,
    fused per device with one host read. Returns are cached the same way, per input signature, with the dims they bind.
    Ranges on Python numbers are checked every call in ``full`` mode. Plans whose checks depend
    on more than classes (beartype hints, f-string dims) always take the walk.
    """
    params = plan.params
    has_self = plan.has_self
    eligible = (
        not plan.uses_args
        and all(s.tensor is not None or s.plain_tensor or _plain_class(s.pyhint) for s in params)
        and all(
            s.tensor is not None or s.plain_tensor or (s.pyrange is None and _plain_class(s.pyhint))
            for s in plan.returns
        )
    )
    # ranges on Python numbers depend on the value, not the class: checked every call (full)
    py_ranges = tuple(s for s in params if s.tensor is None and s.pyrange is not None)
    slots = tuple(
        (s.position, s.name, s.default is not inspect.Parameter.empty, s.default, s.optional)
        for s in params
    )
    value_slots = tuple(
        (i, s) for i, s in enumerate(params) if s.tensor is not None and s.tensor.has_values
    )
    lane = _positional_lane(plan) if eligible else None
    single = plan.return_kind == "single"
    single_values = single and plan.returns[0].tensor is not None
    single_values = single_values and plan.returns[0].tensor.has_values
    cache: dict[tuple, tuple[dict, dict]] = {}
    cpu_ok: dict[str, Callable] = {}  # per slot: its CPU value check, specialised once
    tensor = torch.Tensor

    def signature(args: tuple, kwargs: dict) -> tuple | None:
        key: list = []
        if plan.self_dims:
            self_obj = args[0] if args else None
            try:
                for _name, e in plan.self_dims:
                    key.append(e({}, self_obj))
            except Exception:
                return None  # the walk words it
        nargs = len(args)
        for pos, name, has_default, default, _optional in slots:
            if 0 <= pos < nargs:
                x = args[pos]
            elif kwargs and name in kwargs:
                x = kwargs[name]
            elif has_default:
                x = default
            else:
                key.append(_NO_VALUE)
                continue
            if isinstance(x, tensor):
                key.append(x.shape)
                key.append(x.dtype)
            else:
                key.append(x.__class__)
        return tuple(key)

    def values_of(args: tuple, kwargs: dict) -> list:
        out = []
        nargs = len(args)
        for _i, s in value_slots:
            pos = s.position
            if 0 <= pos < nargs:
                x = args[pos]
            else:
                x = kwargs.get(s.name, s.default)
            if isinstance(x, tensor):
                out.append((s, x))
        return out

    def judge(items: list, b: dict, self_obj: Any) -> None:
        # on the CPU a host read costs no sync: judge each tensor at once, and hand any doubt
        # to the reference judge (which words the Fail); elsewhere fuse per device
        if all(x.is_cpu for _s, x in items):
            for slot, x in items:
                ok = cpu_ok.get(slot.name)
                if ok is None:
                    ok = cpu_ok[slot.name] = _cpu_checker(slot.tensor)
                if not ok(x, b, self_obj):
                    pending: list = []
                    values_pending(slot, x, pending)
                    judge_values(pending, b, self_obj)
            return
        pending = []
        for slot, x in items:
            values_pending(slot, x, pending)
        if pending:
            judge_values(pending, b, self_obj)

    def inputs(args: tuple, kwargs: dict, level: int) -> tuple[dict, Any, Any]:
        if not eligible:
            b, self_obj = check_inputs(plan, args, kwargs, level, None)
            return b, self_obj, None
        key = lane(args) if lane is not None and not kwargs else None
        if key is None:
            key = signature(args, kwargs)
            if key is None:
                b, self_obj = check_inputs(plan, args, kwargs, level, None)
                return b, self_obj, None
        self_obj = args[0] if has_self and args else None
        entry = cache.get(key)
        if entry is None:
            b, _ = check_inputs(plan, args, kwargs, SHAPES, None)  # values follow
            if len(cache) >= _CACHE_MAX:
                cache.clear()
            entry = cache[key] = (dict(b), {})
        else:
            b = entry[0].copy()
        if level == FULL:
            if py_ranges:
                nargs = len(args)
                for slot in py_ranges:
                    pos = slot.position
                    x = args[pos] if 0 <= pos < nargs else kwargs.get(slot.name, slot.default)
                    check_pyrange(slot, x, b, self_obj)
            if value_slots:
                judge(values_of(args, kwargs), b, self_obj)
        return b, self_obj, entry

    def outputs(out: Any, b: dict, self_obj: Any, level: int, entry: Any) -> None:
        if entry is None or len(b) != len(entry[0]):  # contracts.check bound new dims: walk
            check_outputs(plan, out, b, self_obj, level, None)
            return
        if single and out.__class__ is tensor:
            okey: tuple = (out.shape, out.dtype)
            values = [(plan.returns[0], out)] if level == FULL and single_values else ()
        else:
            try:
                items = returned_items(plan, out)
            except Fail:
                check_outputs(plan, out, b, self_obj, level, None)  # raises the same Fail
                return
            key: list = []
            values = []
            for slot, x in items:
                if isinstance(x, tensor):
                    key.append(x.shape)
                    key.append(x.dtype)
                    if level == FULL and slot.tensor is not None and slot.tensor.has_values:
                        values.append((slot, x))
                else:
                    key.append(x.__class__)
            okey = tuple(key)
        seen = entry[1]
        added = seen.get(okey)
        if added is None:
            n = len(b)
            check_outputs(plan, out, b, self_obj, SHAPES, None)  # values follow
            if len(seen) < _CACHE_MAX:
                seen[okey] = dict(list(b.items())[n:])  # the dims the return bound
        elif added:
            b.update(added)
        if values:
            judge(values, b, self_obj)

    return inputs, outputs


def _cpu_checker(spec: TensorSpec) -> Callable[[torch.Tensor, dict, Any], bool]:
    """A CPU value check specialised for one spec: the common float Range/Finite with number
    bounds skips the general case's questions; everything else is :func:`_cpu_values_ok`."""
    floats = spec.dtypes is not None and spec.dtypes <= FLOAT_NAMES
    lo, hi = spec.lo, spec.hi
    if spec.mask_axis is not None or not floats or isinstance(lo, Expr) or isinstance(hi, Expr):
        return functools.partial(_cpu_values_ok, spec)
    lo_v = -math.inf if lo is None else lo
    hi_v = math.inf if hi is None else hi
    aminmax = torch.aminmax

    def ok(x: torch.Tensor, b: dict, self_obj: Any) -> bool:
        if not x.numel():
            return True
        if x.requires_grad:
            x = x.detach()
        mn, mx = aminmax(x)
        mn, mx = mn.item(), mx.item()
        # NaN compares False; a value check also means finite: both fall to the reference
        return lo_v <= mn and mx <= hi_v and -math.inf < mn and mx < math.inf

    return ok


def _cpu_values_ok(spec: TensorSpec, x: torch.Tensor, b: dict, self_obj: Any) -> bool:
    """Whether a CPU tensor surely meets its value constraints (False: let the reference judge
    decide and word it). The same reductions as :func:`values_pending`, read at once."""
    if not x.numel():
        return True
    if x.requires_grad:
        x = x.detach()
    if spec.mask_axis is not None:
        return bool((~x if spec.mask_padding else x).any(dim=spec.mask_axis).all())
    floating = x.is_floating_point()
    if not floating:
        if x.is_complex():
            x = torch.view_as_real(x)
        elif spec.lo is None and spec.hi is None:
            return True  # integers are always finite
    mn, mx = torch.aminmax(x)
    mn, mx = mn.item(), mx.item()
    if not (math.isfinite(mn) and math.isfinite(mx)):
        return False
    lo, hi = spec.lo, spec.hi
    try:
        if lo is not None and mn < (lo(b, self_obj) if isinstance(lo, Expr) else lo):
            return False
        if hi is not None and mx > (hi(b, self_obj) if isinstance(hi, Expr) else hi):
            return False
    except Exception:
        return False  # a bound that cannot be evaluated: the reference judge words it
    return True


def _positional_lane(plan: Plan) -> Callable | None:
    """A generated signature function for the common call: every checked argument a tensor,
    passed positionally, nothing else. Returns None for any other call (the general loop runs).

    The key it builds equals the general loop's key for such calls, so both share one cache.
    """
    params = plan.params
    if not params or any(s.tensor is None or s.position < 0 for s in params):
        return None
    n = max(s.position for s in params) + 1
    lines = ["def lane(args):", f"    if len(args) != {n}:", "        return None"]
    parts = []
    for k, (_name, _e) in enumerate(plan.self_dims):
        lines.append("    try:")
        lines.append(f"        d{k} = dims[{k}]({{}}, args[0])")
        lines.append("    except Exception:")
        lines.append("        return None")
        parts.append(f"d{k}")
    for s in params:
        p = s.position
        lines.append(f"    x{p} = args[{p}]")
        lines.append(f"    if x{p}.__class__ is not Tensor:")
        lines.append("        return None")
        parts += [f"x{p}.shape", f"x{p}.dtype"]
    lines.append(f"    return ({', '.join(parts)},)")
    env = {"Tensor": torch.Tensor, "dims": [e for _n, e in plan.self_dims]}
    exec(compile("\n".join(lines), f"<contract signature of {plan.qualname}>", "exec"), env)
    return env["lane"]


def _plain_class(hint: Any) -> bool:
    return hint is None or (isinstance(hint, type) and typing.get_origin(hint) is None)
