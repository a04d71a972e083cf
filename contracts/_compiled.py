"""Contracts inside ``torch.compile``: the checks written so that Dynamo traces them.

While Dynamo traces a contracted call, the eager checker (caches, per-thread stacks, host
reads) is not what should run. This walk runs instead, on the same plan:

- every shape relation is a ``torch._check`` on the sizes: with static shapes the sizes are
  Python ints and a violation fails while tracing; with ``dynamic=True`` they are symbols and
  the check becomes a guard the compiled code keeps (a violating call fails the guard, is traced
  again and fails then); nothing here breaks the graph;
- every value constraint (``Range``, ``Finite``, ``Mask``) is one ``torch._assert_async`` on a
  reduction of the tensor: a device-side assert, no host read;
- the messages are the eager error's words (function, argument, axis, expected), fixed at
  decoration by ``_explain.compiled_words``: sizes are symbols while tracing (automatic dynamic
  shapes make them so even without ``dynamic=True``), so the actual size is not in them.

Where torch lets an exception through, it is the eager one; a failed ``torch._check`` while
tracing reaches the caller as Dynamo's error carrying these words, and a failed device assert
as torch's ``RuntimeError`` carrying them (see docs/CONTRACTS.md).
"""

from __future__ import annotations

import math
import typing
from collections.abc import Mapping
from typing import Any

import torch
from torch.fx.experimental.symbolic_shapes import guard_or_true

from ._check import call_arguments, torch_dtypes
from ._config import FULL
from ._plan import Plan, Slot, TensorSpec
from ._spec import EXPR, FIXED, NAME, VARIADIC, Expr

__all__ = ["compiled_inputs", "compiled_outputs", "compiled_slot"]


def _const(message: str) -> Any:
    return lambda: message  # torch._check needs a closure over constants only


def _require(cond: Any, message: Any) -> None:
    """``torch._check(cond, message)``; a symbolic ``cond`` that the call's own sizes already
    break fails the trace as a plain False does. Otherwise Dynamo would record the check as a
    graph node and fail running it on fake tensors, an error no fallback catches: a violating
    call would raise Dynamo's error after a recompilation (sizes made symbolic by automatic
    dynamic shapes) and the eager ContractError on a first trace. A backed symbol is guarded
    either way (``torch._check`` guards on it too); an unbacked one stays a runtime assert."""
    if not guard_or_true(cond):  # (a bool is returned as it is)
        cond = False
    torch._check(cond, message)


def _same(s: Any, want: Any, broadcast: bool) -> Any:
    """``s == want`` (a symbolic bool under dynamic shapes, so no guard is forced here)."""
    if broadcast:
        return s == want or s == 1  # "#name": size 1 broadcasts (this one guards on s == 1)
    return s == want


def _shape(w: dict, spec: TensorSpec, shape: Any, b: dict, self_obj: Any, allow_empty: bool):
    nd = len(shape)
    dims = spec.dims
    if spec.var_at < 0:
        _require(nd == len(dims), _const(w["rank"]))
        pairs = list(zip(range(nd), range(nd)))  # (axis, index in dims)
    else:
        nb, na = spec.n_before, spec.n_after
        _require(nd >= nb + na, _const(w["rank"]))
        pairs = list(zip(range(nb), range(nb)))
        pairs += list(zip(range(nd - na, nd), range(nb + 1, len(dims))))
        var = dims[nb]
        if var.kind == VARIADIC and not var.broadcast:  # "*#name": checked in eager only
            key = "*" + var.value
            sub = tuple(shape[nb : nd - na])
            have = b.get(key)
            if have is None:
                b[key] = sub
            else:
                msg = _const(w["variadic"])  # (no f-string here: Dynamo may hold nb as a symbol)
                _require(len(have) == len(sub), msg)
                for h, s in zip(have, sub):
                    _require(h == s, msg)
    deferred = []
    for axis, j in pairs:
        s = shape[axis]
        d = dims[j]
        if d.broadcast and isinstance(s, int) and s == 1:
            continue  # "#name": size 1 broadcasts and binds nothing
        if d.kind == NAME:
            have = b.get(d.value)
            if have is None:
                b[d.value] = s
            else:
                _require(_same(s, have, d.broadcast), _const(w["size"][j]))
        elif d.kind == FIXED:
            _require(_same(s, d.value, d.broadcast), _const(w["size"][j]))
        elif d.kind == EXPR:
            deferred.append((s, j, d))
        if not allow_empty:
            _require(s >= 1, _const(w["empty"][j]))
    for s, j, d in deferred:
        if d.value.uses_args:
            continue  # f-string dims read the call's arguments: checked in eager only
        _require(_same(s, d.value(b, self_obj), d.broadcast), _const(w["size"][j]))


def _mask_rows(w: dict, spec: TensorSpec, shape: Any) -> None:
    """A mask with rows but an empty checked axis: no row has a valid position (the eager
    shape walk's rule, ``_check._check_mask_rows``)."""
    nd = len(shape)
    axis = spec.mask_axis
    if not -nd <= axis < nd:
        return  # the rank check words it
    axis %= nd
    rows = math.prod(shape[:axis]) * math.prod(shape[axis + 1 :])
    _require(shape[axis] != 0 or rows == 0, _const(w["mask_empty"]))


def _bound(bound: Any, b: dict, self_obj: Any) -> Any:
    return bound(b, self_obj) if isinstance(bound, Expr) else bound


def _values(w: dict, spec: TensorSpec, x: torch.Tensor, b: dict, self_obj: Any) -> None:
    """One device-side assert per tensor, on one fused reduction: no host read."""
    x = x.detach()
    if spec.mask_axis is not None:
        ok = (~x if spec.mask_padding else x).any(dim=spec.mask_axis).all()
        torch._assert_async(ok, w["values"])
        return
    if x.is_complex():
        x = torch.view_as_real(x)
    elif not x.is_floating_point() and spec.lo is None and spec.hi is None:
        return  # integers are always finite
    mn, mx = torch.aminmax(x)  # one pass: range and finiteness (NaN propagates into both)
    ok = torch.isfinite(mn) & torch.isfinite(mx) if x.is_floating_point() else mn == mn
    lo, hi = _bound(spec.lo, b, self_obj), _bound(spec.hi, b, self_obj)
    if lo is not None:
        ok = ok & (mn >= lo)
    if hi is not None:
        ok = ok & (mx <= hi)
    torch._assert_async(ok, w["values"])


def compiled_slot(
    w: dict, slot: Slot, x: Any, b: dict, self_obj: Any, level: int, allow_empty: bool
) -> None:
    """Check one value while Dynamo traces (see the module docstring); ``w`` are its words."""
    spec = slot.tensor
    if slot.each is not None:  # a list/tuple/dict of tensors: each one (Dynamo unrolls it)
        ok = isinstance(x, slot.each) and not isinstance(x, (str, bytes, torch.Tensor))
        torch._check(ok, _const(w["sequence"]))
        for item in x.values() if slot.is_mapping else x:
            if item is None and slot.each_optional:
                continue
            _tensor(w, spec, item, b, self_obj, level, allow_empty)
        return
    if spec is None:
        if slot.plain_tensor:
            torch._check(isinstance(x, torch.Tensor), _const(w["tensor"]))
            return
        _python(w, slot, x)
        if level == FULL and slot.pyrange is not None:
            _python_range(w, slot, x, b, self_obj)
        return
    _tensor(w, spec, x, b, self_obj, level, allow_empty)


_SYMBOLIC = {int: (int, torch.SymInt), float: (int, float, torch.SymInt, torch.SymFloat)}


def _python(w: dict, slot: Slot, x: Any) -> None:
    """A Python argument's class (a plain class hint; generic hints are eager's, through
    beartype): a constant while tracing, or a symbol (``dynamic=True`` makes ints ``SymInt``)."""
    hint = slot.pyhint
    if not isinstance(hint, type) or typing.get_origin(hint) is not None:
        return
    ok = isinstance(x, _SYMBOLIC.get(hint, hint))
    if hint is int and isinstance(x, bool):
        ok = False  # (as eager: a bool is not an int argument)
    torch._check(ok, _const(w["pytype"]))


def _python_range(w: dict, slot: Slot, x: Any, b: dict, self_obj: Any) -> None:
    """A Range on a Python number (``_check.check_pyrange``), a guard when ``x`` is a symbol."""
    if isinstance(x, bool) or not isinstance(x, (int, float, torch.SymInt, torch.SymFloat)):
        return
    r = slot.pyrange
    lo, hi = _bound(r.lo, b, self_obj), _bound(r.hi, b, self_obj)
    msg = _const(w["pyrange"])
    if not isinstance(x, (int, torch.SymInt)):
        _require(x - x == 0, msg)  # finite (NaN and inf give NaN; math.isfinite is no op here)
    if lo is not None:
        _require(x >= lo, msg)
    if hi is not None:
        _require(x <= hi, msg)


def _tensor(
    w: dict, spec: TensorSpec, x: Any, b: dict, self_obj: Any, level: int, allow_empty: bool
) -> None:
    torch._check(isinstance(x, torch.Tensor), _const(w["tensor"]))
    dts = torch_dtypes(spec.dtypes)
    if dts is not None:
        torch._check(x.dtype in dts, _const(w["dtype"]))
    _shape(w, spec, x.shape, b, self_obj, allow_empty)
    if spec.mask_axis is not None and spec.var_at >= 0:  # the axis must exist ("*b T")
        nd = len(x.shape)
        torch._check(-nd <= spec.mask_axis < nd, _const(w["mask_axis"]))
    if allow_empty and spec.mask_axis is not None:  # (else the empty axis fails in _shape)
        _mask_rows(w, spec, x.shape)
    if level == FULL and spec.has_values and x.numel() != 0:
        _values(w, spec, x, b, self_obj)


def compiled_inputs(
    plan: Plan, words: dict, args: tuple, kwargs: dict, level: int
) -> tuple[dict, Any]:
    """The input contract of one call, while Dynamo traces it."""
    b: dict = {}
    self_obj = args[0] if plan.has_self and args else None
    ranged = []
    for name, e in plan.self_dims:
        v = e(b, self_obj)
        if isinstance(v, float) and v.is_integer():
            v = int(v)
        ok = hasattr(v, "__index__") and not isinstance(v, bool)  # (None: not set yet)
        msg = f"{plan.qualname}(): self: expected dims[{name!r}] = {e.source} to be a size"
        torch._check(ok, _const(msg))
        b[name] = v
    for slot, x in call_arguments(plan, args, kwargs):
        if slot.tensor is None and slot.pyrange is not None:  # its bounds may read dims that
            _python(words[slot.name], slot, x)  # later arguments bind: checked after them
            ranged.append((slot, x))
            continue
        compiled_slot(words[slot.name], slot, x, b, self_obj, level, plan.allow_empty)
    if level == FULL:
        for slot, x in ranged:
            _python_range(words[slot.name], slot, x, b, self_obj)
    return b, self_obj


def compiled_outputs(plan: Plan, words: dict, out: Any, b: dict, self_obj: Any, level: int) -> None:
    """The return contract of one call, while Dynamo traces it."""
    kind = plan.return_kind
    if kind == "single":
        items = [(plan.returns[0], out)]
    elif kind == "tuple" and out is None and plan.return_optional:
        items = []  # tuple[...] | None
    elif kind == "tuple":
        n = len(plan.returns)
        ok = isinstance(out, (tuple, list)) and len(out) == n
        torch._check(ok, _const(f"{plan.qualname}(): return: expected a tuple of {n}"))
        items = list(zip(plan.returns, out))
    else:
        torch._check(isinstance(out, Mapping), _const(f"{plan.qualname}(): return: a dict"))
        items = []
        for key, slot in zip(plan.return_keys, plan.returns):
            msg = f"{plan.qualname}(): {slot.name}: expected key {key!r} in the returned dict"
            torch._check(key in out, _const(msg))
            items.append((slot, out[key]))
    for slot, x in items:
        if x is None and slot.optional:
            continue
        compiled_slot(words[slot.name], slot, x, b, self_obj, level, plan.allow_empty)
