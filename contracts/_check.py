"""The checker: runs a :class:`~contracts._plan.Plan` against one call. No words here.

A failed check raises :class:`Fail`, a plain record (a code, the slot, the axis and the raw
values involved); ``_explain`` turns it into a worded :class:`ContractError`. The same walk runs
with provenance tracking (``prov``, where each dim binding came from) when explaining, so the
fast path never pays for the words.

Values are checked in ``full`` mode only, with one fused reduction per tensor (``aminmax`` gives
range and finiteness at once) and the scalars of a call fetched together (one host sync per
device).
"""

from __future__ import annotations

import collections.abc
import inspect
import math
import typing
from collections.abc import Mapping
from typing import Any

import torch

from ._config import FULL
from ._plan import Plan, Slot, TensorSpec
from ._spec import ARGS, EXPR, FIXED, NAME, VARIADIC, Expr
from ._summary import _SPARSE
from ._summary import _values as summary_values
from ._values import UNREDUCED, widened

__all__ = ["Fail", "check_inputs", "check_outputs", "torch_dtypes"]


class Fail(Exception):
    """Internal: one check failed. ``code`` says which check; ``data`` holds the raw values."""

    def __init__(self, code: str, slot: str, axis: int | None = None, **data: Any) -> None:
        self.code, self.slot, self.axis, self.data = code, slot, axis, data


_DTYPES: dict[frozenset[str], frozenset[torch.dtype]] = {}


def torch_dtypes(names: frozenset[str] | None) -> frozenset[torch.dtype] | None:
    """Torch dtypes for a spec's dtype names (names torch does not know are dropped)."""
    if names is None:
        return None
    got = _DTYPES.get(names)
    if got is None:
        got = frozenset(dt for n in names if isinstance(dt := getattr(torch, n, None), torch.dtype))
        _DTYPES[names] = got
    return got


def _bind_axes(
    axes: Any,
    dims: Any,
    name: str,
    shape: tuple,
    b: dict,
    prov: dict | None,
    deferred: list,
    allow_empty: bool,
) -> None:
    """Check/bind each ``(axis, dim)``: the one loop every shape check runs."""
    for axis, d in zip(axes, dims):
        s = shape[axis]
        kind, val, bc = d.kind, d.value, d.broadcast
        if bc and s == 1:
            continue  # "#name": size 1 broadcasts, and binds nothing (as in jaxtyping)
        if kind is NAME:
            have = b.get(val)
            if have is None:
                b[val] = s
                if prov is not None:
                    prov[val] = f"{name}.shape[{axis}]"
            elif have != s and not (bc and s == 1):
                raise Fail("dim", name, axis, dim=val, want=have, got=s)
        elif kind is FIXED:
            if s != val and not (bc and s == 1):
                raise Fail("fixed", name, axis, want=val, got=s)
        elif kind is EXPR:
            deferred.append((name, axis, val, s, bc))
        if not s and not allow_empty:
            raise Fail("empty", name, axis)


def _check_shape(
    spec: TensorSpec,
    name: str,
    shape: tuple,
    b: dict,
    prov: dict | None,
    deferred: list,
    allow_empty: bool,
) -> None:
    nd = len(shape)
    dims = spec.dims
    if spec.var_at < 0:
        if nd != len(dims):
            raise Fail("ndim", name, spec=spec, shape=tuple(shape))
        _bind_axes(range(nd), dims, name, shape, b, prov, deferred, allow_empty)
        return
    nb, na = spec.n_before, spec.n_after
    if nd < nb + na:
        raise Fail("ndim_min", name, spec=spec, shape=tuple(shape))
    axes = [*range(nb), *range(nd - na, nd)]
    _bind_axes(axes, dims[:nb] + dims[nb + 1 :], name, shape, b, prov, deferred, allow_empty)
    var = dims[nb]
    if var.kind is VARIADIC:
        sub = tuple(shape[nb : nd - na])
        key = "*" + var.value
        have = b.get(key)
        if have is None:
            b[key] = sub
            if var.broadcast:
                b["#" + key] = True
            if prov is not None:
                prov[key] = f"{name}.shape[{nb}:{nd - na}]"
        elif var.broadcast or ("#" + key) in b:
            _broadcast_variadic(key, var.broadcast, have, sub, b, name, nb)
        elif have != sub and tuple(have) != sub:  # (bindings= may give a list)
            raise Fail("variadic", name, nb, dim=key, want=have, got=sub)


def _broadcast(a: tuple, b: tuple) -> tuple | None:
    """numpy's broadcast of two shapes, or None when they do not broadcast."""
    n = max(len(a), len(b))
    a, b = (1,) * (n - len(a)) + tuple(a), (1,) * (n - len(b)) + tuple(b)
    out = []
    for x, y in zip(a, b):
        if x != y and x != 1 and y != 1:
            return None
        out.append(max(x, y) if x != 1 and y != 1 else x * y)
    return tuple(out)


def _broadcast_variadic(key: str, bc: bool, have: tuple, sub: tuple, b: dict, name: str, nb: int):
    """``*#name``: the axes must broadcast with those seen before (jaxtyping's rule)."""
    prev_bc = b.get("#" + key, False)
    both = _broadcast(sub, have)
    if both is None:
        raise Fail("variadic", name, nb, dim=key, want=have, got=sub, broadcast=True)
    if prev_bc:
        if not bc and both != sub:
            raise Fail("variadic", name, nb, dim=key, want=have, got=sub, broadcast=True)
        b[key] = both
        if not bc:
            b.pop("#" + key, None)
    elif both != have:
        raise Fail("variadic", name, nb, dim=key, want=have, got=sub, broadcast=True)


def check_tensor(
    slot: Slot, x: Any, b: dict, prov: dict | None, deferred: list, allow_empty: bool
) -> None:
    """Type, dtype and shape of one tensor (binding its dims into ``b``)."""
    spec = slot.tensor
    if not isinstance(x, torch.Tensor):
        raise Fail("none" if x is None else "not_tensor", slot.name, spec=spec, value=x)
    dts = torch_dtypes(spec.dtypes)
    if dts is not None and x.dtype not in dts:
        raise Fail("dtype", slot.name, spec=spec, got=x.dtype, floating=x.is_floating_point())
    try:
        shape = x.shape
    except RuntimeError:  # a nested tensor: its components' sizes differ, it has no one shape
        raise Fail("nested", slot.name, spec=spec, value=x) from None
    _check_shape(spec, slot.name, shape, b, prov, deferred, allow_empty)
    if spec.mask_axis is not None:
        if spec.var_at >= 0 and not -len(shape) <= spec.mask_axis < len(shape):
            # (a fixed rank is checked at decoration; "*b T" has its rank from the call)
            raise Fail("mask_axis", slot.name, spec=spec, shape=tuple(shape))
        if allow_empty:  # (else the empty axis is refused above)
            _check_mask_rows(spec, slot.name, shape)


def _check_mask_rows(spec: TensorSpec, name: str, shape: tuple) -> None:
    """A mask whose checked axis is empty while it has rows: every row lacks a valid position.

    ``allow_empty`` accepts a mask with no rows (an empty batch: nothing to violate), never rows
    with no position at all. The shape alone decides it, so the shape walk checks it (in every
    mode that checks shapes, and before a signature is cached)."""
    nd = len(shape)
    axis = spec.mask_axis
    if not -nd <= axis < nd or shape[axis]:
        return
    axis %= nd
    rows = math.prod(shape[:axis]) * math.prod(shape[axis + 1 :])
    if rows:
        raise Fail("mask_empty", name, axis, rows=rows, padding=spec.mask_padding)


def _check_py(slot: Slot, x: Any) -> None:
    hint = slot.pyhint
    if hint is None:
        return
    if isinstance(hint, type) and typing.get_origin(hint) is None:
        ok = isinstance(x, hint)
        if ok and hint is int and isinstance(x, bool):
            ok = False
        if not ok and hint is float and isinstance(x, int) and not isinstance(x, bool):
            ok = True  # PEP 484 numeric tower
    else:
        try:
            ok = bearable(x, hint)
        except Exception:  # a hint beartype cannot check: warned about at decoration
            ok = True
    if not ok:
        raise Fail("pytype", slot.name, hint=hint, value=x)


def bearable(x: Any, hint: Any) -> bool:
    """Whether ``x`` satisfies ``hint``, every item of a container included: beartype checks
    one random item of a list (its O(1) strategy; O(n) is not implemented), so a bad item
    would pass or fail by chance. Lists, tuples, sets and dicts are walked here item by item
    (:func:`misfit`); anything else is beartype's."""
    return misfit(x, hint) is None


def misfit(x: Any, hint: Any, path: str = "") -> tuple[str, Any, Any] | None:
    """The first part of ``x`` that breaks ``hint``, as ``(path, value, hint)`` (``"[1]"``,
    ``"['a'][0]"``; ``""`` for ``x`` itself), or None when ``x`` satisfies it."""
    from beartype.door import is_bearable

    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    items: Any = None
    if origin in (list, set, frozenset, collections.abc.Sequence, collections.abc.Set) and args:
        if is_bearable(x, origin) and not isinstance(x, (str, bytes)):
            items = [(f"[{i}]", v, args[0]) for i, v in enumerate(x)]
    elif origin is tuple and args and isinstance(x, tuple):
        if len(args) == 2 and args[1] is Ellipsis:
            items = [(f"[{i}]", v, args[0]) for i, v in enumerate(x)]
        elif args != ((),) and len(x) == len(args):
            items = [(f"[{i}]", v, a) for i, (v, a) in enumerate(zip(x, args))]
    elif origin in (dict, collections.abc.Mapping) and len(args) == 2:
        if isinstance(x, collections.abc.Mapping):
            k, v = args
            items = [(f" key {a!r}", a, k) for a in x] + [(f"[{a!r}]", b, v) for a, b in x.items()]
    if items is None:
        return None if is_bearable(x, hint) else (path, x, hint)
    for where, v, h in items:
        bad = misfit(v, h, path + where)
        if bad is not None:
            return bad
    return None


def bound_value(bound: Any, b: dict, self_obj: Any, slot: str) -> float | None:
    """A Range bound's value in this call (a number, or an expression evaluated now)."""
    if bound is None or not isinstance(bound, Expr):
        return bound
    try:
        return bound(b, self_obj)
    except KeyError as e:
        raise Fail("bound_unbound", slot, bound=bound, dim=e.args[0]) from None
    except Exception as e:  # self without the attribute, a division by zero, ...
        raise Fail("bound_error", slot, bound=bound, error=f"{type(e).__name__}: {e}") from None


def check_pyrange(slot: Slot, x: Any, b: dict, self_obj: Any) -> None:
    r = slot.pyrange
    if not isinstance(x, (int, float)) or isinstance(x, bool):
        return
    lo = bound_value(r.lo, b, self_obj, slot.name)
    hi = bound_value(r.hi, b, self_obj, slot.name)
    if (
        (isinstance(x, float) and not math.isfinite(x))
        or (lo is not None and x < lo)
        or (hi is not None and x > hi)
    ):
        raise Fail("pyrange", slot.name, range=r, lo=lo, hi=hi, value=x)


def _check_deferred(deferred: list, b: dict, self_obj: Any) -> None:
    """Expression dims (``(name, axis, expr, size, broadcast)``) and ranges on Python numbers
    (``(slot, value)``), once every shape of the call has bound its dims."""
    for item in deferred:
        if len(item) == 2:
            check_pyrange(item[0], item[1], b, self_obj)
            continue
        name, axis, expr, s, bc = item
        try:
            want = expr(b, self_obj)
        except KeyError as e:
            raise Fail("expr_unbound", name, axis, expr=expr, got=s, dim=e.args[0]) from None
        except Exception as e:  # self without the attribute, an f-string argument that is no
            # size, a division by zero: words, not a traceback
            raise Fail("expr_error", name, axis, expr=expr, got=s, error=e) from None
        if s != want and not (bc and s == 1):
            raise Fail("expr", name, axis, expr=expr, want=want, got=s)


def values_pending(slot: Slot, x: torch.Tensor, pending: list) -> None:
    """Queue the one reduction that checks this tensor's values (fetched with the others)."""
    spec = slot.tensor
    if x.numel() == 0 or x.is_meta:  # a meta tensor has a shape but no values to check
        return
    if spec.mask_axis is not None:
        try:
            valid = ~x if spec.mask_padding else x
            red = valid.any(dim=spec.mask_axis).all()
        except (RuntimeError, NotImplementedError):  # a sparse mask: its rows, made dense
            valid = readable(x, dense=True)
            red = (~valid if spec.mask_padding else valid).any(dim=spec.mask_axis).all()
        pending.append((slot, x, red))
        return
    if not x.is_floating_point() and not x.is_complex():
        if spec.lo is None and spec.hi is None:
            return  # integers are always finite
    try:
        v = (torch.view_as_real(x) if x.is_complex() else x).detach()
        red = torch.aminmax(v)
    except (RuntimeError, NotImplementedError):  # a dtype or layout torch does not reduce
        v = readable(x.detach())
        red = torch.aminmax(torch.view_as_real(v) if v.is_complex() else v)
    pending.append((slot, x, red))


def readable(x: torch.Tensor, dense: bool = False) -> torch.Tensor:
    """A strided tensor that torch reduces and compares, with the extrema of ``x`` (of any
    layout and dtype): a sparse tensor's stored values, and a zero when it leaves elements
    unstored (``dense``: the tensor made dense, for the rows of a mask); a quantized tensor's
    dequantized values; float8 and wide unsigned dtypes widened (:func:`widened`). Called
    only when a reduction raised, so common tensors pay nothing for it."""
    if x.layout is not torch.strided:
        if dense or x.layout not in _SPARSE:
            x = x.to_dense()
        else:
            flat, _n, zeros = summary_values(x)
            x = torch.cat([flat, flat.new_zeros(1)]) if zeros else flat
    if x.is_quantized:
        x = x.dequantize()
    if x.is_complex():
        x = x.clone()  # (.real/.imag of a view into a compressed tensor raise)
    if x.dtype in UNREDUCED:
        x = widened(x)
    return x


def _fetch(pending: list) -> list:
    """Bring the pending reductions to the host: one sync per device."""
    flat: list[torch.Tensor] = []
    for _, _, red in pending:
        if isinstance(red, tuple):
            flat.extend(red)
        else:
            flat.append(red)
    if all(t.is_cpu for t in flat):
        vals = [t.item() for t in flat]
    else:
        by_dev: dict[torch.device, list[int]] = {}
        for i, t in enumerate(flat):
            by_dev.setdefault(t.device, []).append(i)
        vals = [None] * len(flat)
        for _dev, idx in by_dev.items():
            got = torch.stack([flat[i].to(torch.float64) for i in idx]).tolist()
            for i, g in zip(idx, got):
                vals[i] = g
    out, k = [], 0
    for _, _, red in pending:
        if isinstance(red, tuple):
            out.append((vals[k], vals[k + 1]))
            k += 2
        else:
            out.append(vals[k])
            k += 1
    return out


def _round_to(v: float | None, dtype: torch.dtype) -> float | None:
    return None if v is None else torch.tensor(v, dtype=dtype).item()


def judge_values(pending: list, b: dict, self_obj: Any) -> None:
    fetched = _fetch(pending)
    for (slot, x, _), got in zip(pending, fetched):
        spec = slot.tensor
        if spec.mask_axis is not None:
            if not got:
                raise Fail(
                    "mask", slot.name, spec.mask_axis % x.ndim, value=x, padding=spec.mask_padding
                )
            continue
        mn, mx = got
        lo = bound_value(spec.lo, b, self_obj, slot.name)
        hi = bound_value(spec.hi, b, self_obj, slot.name)
        ok = math.isfinite(mn) and math.isfinite(mx)
        if ok and lo is not None:
            ok = mn >= lo
        if ok and hi is not None:
            ok = mx <= hi
        if not ok and x.is_floating_point() and x.dtype != torch.float64:
            # compare as torch does: the bound rounded to the tensor's dtype (float32(0.03) is
            # "in [0.03, 1]" for torch, though it lies just below 0.03 in float64)
            lo, hi = _round_to(lo, x.dtype), _round_to(hi, x.dtype)
            ok = math.isfinite(mn) and math.isfinite(mx)
            ok = ok and (lo is None or mn >= lo) and (hi is None or mx <= hi)
        if not ok:
            raise Fail("values", slot.name, spec=spec, value=x, lo=lo, hi=hi)


def check_slot(
    slot: Slot,
    x: Any,
    b: dict,
    prov: dict | None,
    deferred: list,
    pending: list,
    level: int,
    self_obj: Any,
    allow_empty: bool,
) -> None:
    """Check one argument or returned value (shape/dtype now, values queued for one fetch)."""
    if slot.each is not None:
        _check_sequence(slot, x, b, prov, deferred, pending, level, allow_empty)
    elif slot.tensor is not None:
        check_tensor(slot, x, b, prov, deferred, allow_empty)
        if level == FULL and slot.tensor.has_values:
            values_pending(slot, x, pending)
    elif slot.plain_tensor:
        if not isinstance(x, torch.Tensor):
            raise Fail("plain_tensor", slot.name, value=x)
    else:
        _check_py(slot, x)
        if slot.pyrange is not None and level == FULL:
            deferred.append((slot, x))  # a bound may read a dim a later argument binds


def _check_sequence(
    slot: Slot,
    x: Any,
    b: dict,
    prov: dict | None,
    deferred: list,
    pending: list,
    level: int,
    allow_empty: bool,
) -> None:
    """A list/tuple/Sequence of tensors: every element against the element spec, its dims
    bound with the call's (all elements share them, as in jaxtyping); element ``i`` is named
    ``name[i]``. A dict/Mapping of tensors likewise, value by value (``name['key']``), each
    key against the key hint."""
    if not isinstance(x, slot.each) or isinstance(x, (str, bytes, torch.Tensor)):
        raise Fail("not_sequence", slot.name, spec=slot.tensor, each=slot.each, value=x)
    items = x.items() if slot.is_mapping else enumerate(x)
    key_hint = slot.each_key
    plain = isinstance(key_hint, type) and typing.get_origin(key_hint) is None
    for i, item in items:
        if key_hint is not None and not (
            isinstance(i, key_hint) if plain else bearable(i, key_hint)
        ):
            raise Fail("dict_key", slot.name, key=i, hint=key_hint)
        if item is None and slot.each_optional:
            continue
        el = slot.element(i)
        check_tensor(el, item, b, prov, deferred, allow_empty)
        if level == FULL and el.tensor.has_values:
            values_pending(el, item, pending)


def finish(deferred: list, pending: list, b: dict, self_obj: Any) -> None:
    """Expression dims once every dim is bound, then all value checks with one fetch."""
    if deferred:
        _check_deferred(deferred, b, self_obj)
    if pending:
        judge_values(pending, b, self_obj)


def check_inputs(
    plan: Plan, args: tuple, kwargs: dict, level: int, prov: dict | None, b: dict | None = None
) -> tuple[dict, Any]:
    """Check a call's arguments (binding into ``b``, a new dict by default); returns
    ``(bindings, self)``."""
    if b is None:
        b = {}
    self_obj = args[0] if plan.has_self and args else None
    if plan.uses_args:  # f-string dims read the call's arguments
        b[ARGS] = plan.bind_arguments(args, kwargs)
    for name, e in plan.self_dims:
        try:
            b[name] = _size(e(b, self_obj))
        except Exception as exc:
            raise Fail("self_dim", "self", dim=name, expr=e, error=exc) from None
        if prov is not None:
            prov[name] = e.source
    deferred: list = []
    pending: list = []
    for slot, x in call_arguments(plan, args, kwargs):
        check_slot(slot, x, b, prov, deferred, pending, level, self_obj, plan.allow_empty)
    finish(deferred, pending, b, self_obj)
    return b, self_obj


def _size(v: Any) -> int:
    """A ``dims=`` value as a size: an int (a NumPy integer or a 0-d integer tensor read as
    one, a float only when whole, ``"self.n / 2"``); anything else (None: an attribute not set
    yet) would leave the dim to be bound by the first shape that has it, unchecked."""
    if isinstance(v, float) and v.is_integer():
        return int(v)
    if isinstance(v, bool) or not hasattr(v, "__index__"):
        raise TypeError(f"{v!r} ({type(v).__name__}) is not a size")
    return v.__index__()


def call_arguments(plan: Plan, args: tuple, kwargs: dict) -> list[tuple[Slot, Any]]:
    """Each checked parameter with its value in this call (positional, keyword or default).

    A parameter the call leaves out is skipped (the call itself raises its own TypeError), and
    so is an optional one given as None.
    """
    out = []
    nargs = len(args)
    for slot in plan.params:
        pos = slot.position
        if 0 <= pos < nargs:
            x = args[pos]
        elif slot.keyword and slot.name in kwargs:  # (a positional-only name there is **kw's)
            x = kwargs[slot.name]
        elif slot.default is not inspect.Parameter.empty:
            x = slot.default
        else:
            continue
        if not (x is None and slot.optional):
            out.append((slot, x))
    return out


def returned_items(plan: Plan, out: Any) -> list[tuple[Slot, Any]]:
    """Pair each return slot with its value in ``out`` (refusing a wrong container)."""
    kind = plan.return_kind
    if kind == "single":
        return [(plan.returns[0], out)]
    if kind == "tuple":
        if out is None and plan.return_optional:  # tuple[...] | None
            return []
        if not isinstance(out, (tuple, list)) or len(out) != len(plan.returns):
            raise Fail("return_arity", "return", want=len(plan.returns), value=out)
        return list(zip(plan.returns, out))
    if not isinstance(out, Mapping):
        raise Fail("return_dict", "return", value=out)
    items = []
    for key, slot in zip(plan.return_keys, plan.returns):
        if key not in out:
            raise Fail("return_key", slot.name, key=key, value=out)
        items.append((slot, out[key]))
    return items


def check_outputs(
    plan: Plan, out: Any, b: dict, self_obj: Any, level: int, prov: dict | None
) -> None:
    """Check a call's return value against the bindings its arguments made."""
    deferred: list = []
    pending: list = []
    for slot, x in returned_items(plan, out):
        if x is None and slot.optional:
            continue
        check_slot(slot, x, b, prov, deferred, pending, level, self_obj, plan.allow_empty)
    finish(deferred, pending, b, self_obj)
