"""``contracts.contract``: runtime tensor contracts read from jaxtyping annotations.

Design: everything is parsed once, at decoration time, into a :class:`Plan` of plain tuples; a
call then walks those tuples (no ``inspect``, no jaxtyping machinery on the hot path). Values are
checked in ``full`` mode only, with one fused reduction per tensor (``aminmax`` gives range and
finiteness at once) and the scalars of a call fetched together (one host sync per device).
When a check fails, the checker runs again in "explain" mode to find where every dim binding
came from, so the fast path never pays for the words.
"""

from __future__ import annotations

import functools
import inspect
import math
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from . import _spec
from ._config import FULL, OFF, state
from ._constraints import Constraint, Finite, Mask, Range
from ._errors import ContractError
from ._messages import describe_value, permutation_hint, value_details
from ._registry import register
from ._spec import ELLIPSIS, EXPR, FIXED, NAME, VARIADIC, Expr

__all__ = ["Plan", "build_plan", "contract"]

_FLOAT = frozenset({torch.float16, torch.bfloat16, torch.float32, torch.float64})
_is_compiling = torch.compiler.is_compiling


def _torch_dtypes(jt_dtypes: Any) -> frozenset[torch.dtype] | None:
    """jaxtyping's dtype names -> torch dtypes (None = any dtype)."""
    if isinstance(jt_dtypes, str) or not isinstance(jt_dtypes, (tuple, list)):
        return None
    out = set()
    for name in jt_dtypes:
        dt = getattr(torch, name, None)
        if isinstance(dt, torch.dtype):
            out.add(dt)
    return frozenset(out)


def _dtype_words(dtypes: frozenset[torch.dtype] | None, category: str) -> str:
    if dtypes is None:
        return "any dtype"
    if dtypes == _FLOAT or category == "Float":
        return "float (float16/bfloat16/float32/float64)"
    if category in ("Int", "Integer"):
        return "integer (int8/16/32/64, uint8)"
    if category == "Bool":
        return "bool"
    if category == "Complex":
        return "complex (complex64/complex128)"
    return "/".join(sorted(str(d).replace("torch.", "") for d in dtypes))


@dataclass
class TensorSpec:
    """Everything a call needs to check one tensor (parsed once)."""

    dims: tuple[_spec.Dim, ...]
    dim_str: str
    dtypes: frozenset[torch.dtype] | None
    category: str  # Float, Int, Bool, Complex, Shaped, ...
    lo: float | Expr | None = None
    hi: float | Expr | None = None
    finite: bool = False
    mask_axis: int | None = None
    constraints: tuple[Constraint, ...] = ()
    # precomputed for the fast path
    fast: tuple = ()  # ((kind, value, broadcast), ...) when there is no variadic entry
    var_at: int = -1
    n_before: int = 0
    n_after: int = 0
    has_values: bool = False

    def __post_init__(self) -> None:
        kinds = [d.kind for d in self.dims]
        for i, k in enumerate(kinds):
            if k in (VARIADIC, ELLIPSIS):
                self.var_at = i
        if self.var_at >= 0:
            self.n_before = self.var_at
            self.n_after = len(self.dims) - self.var_at - 1
        self.fast = tuple((d.kind, d.value, d.broadcast) for d in self.dims)
        self.has_values = (
            self.lo is not None or self.hi is not None or self.finite or self.mask_axis is not None
        )

    def shape_words(self) -> str:
        return "[" + ", ".join(str(d) for d in self.dims) + "]" if self.dims else "[] (scalar)"


@dataclass
class Slot:
    """One checked argument or return element."""

    name: str  # "features", "return", "return[0]", "return['loss']"
    position: int  # positional index in the signature (-1 for returns / keyword-only)
    default: Any  # inspect.Parameter.empty when required
    optional: bool
    tensor: TensorSpec | None  # None for non-tensor hints
    pyhint: Any = None  # the non-tensor hint (checked with isinstance / beartype)
    pyrange: Range | None = None  # a Range on a Python number
    plain_tensor: bool = False  # annotated with torch.Tensor alone


@dataclass
class Plan:
    """The parsed contract of one function."""

    qualname: str
    module: str
    fn: Callable
    params: list[Slot]
    returns: list[Slot]
    return_kind: str  # "none", "single", "tuple", "dict"
    self_dims: tuple[tuple[str, Expr], ...] = ()
    has_self: bool = False
    allow_empty: bool = False
    generate: bool = True
    sizes: dict[str, tuple[int, int]] = field(default_factory=dict)
    strategies: dict[str, Callable] = field(default_factory=dict)
    outputs: tuple[str, ...] = ()
    notes: dict[str, str] = field(default_factory=dict)

    @property
    def owner_qualname(self) -> str | None:
        parts = self.qualname.split(".")
        return ".".join(parts[:-1]) if self.has_self and len(parts) > 1 else None


# --------------------------------------------------------------------------------------------
# building a plan


def _is_jaxtyping(hint: Any) -> bool:
    return isinstance(hint, type) and hasattr(hint, "dim_str") and hasattr(hint, "dtypes")


def _unwrap(hint: Any) -> tuple[Any, tuple, bool]:
    """Strip Annotated and Optional: -> (inner hint, metadata, optional)."""
    meta: tuple = ()
    optional = False
    for _ in range(4):
        origin = typing.get_origin(hint)
        if origin is typing.Annotated:
            meta = meta + tuple(hint.__metadata__)
            hint = hint.__origin__
            continue
        if origin in (typing.Union, types.UnionType):
            args = [a for a in typing.get_args(hint) if a is not type(None)]
            if len(args) < len(typing.get_args(hint)) and len(args) == 1:
                optional = True
                hint = args[0]
                continue
        break
    return hint, meta, optional


def _tensor_spec(where: str, hint: Any, meta: tuple) -> TensorSpec:
    dims = _spec.parse_shape(hint.dim_str)
    dtypes = _torch_dtypes(hint.dtypes)
    category = getattr(getattr(hint, "dtype", None), "__name__", "Shaped")
    spec = TensorSpec(dims=dims, dim_str=hint.dim_str, dtypes=dtypes, category=category)
    _apply_constraints(where, spec, meta)
    return spec


def _apply_constraints(where: str, spec: TensorSpec, meta: tuple) -> None:
    cons = [m for m in meta if isinstance(m, Constraint)]
    is_bool = spec.dtypes is not None and spec.dtypes <= {torch.bool}
    is_complex = spec.dtypes is not None and all(d.is_complex for d in spec.dtypes)
    for c in cons:
        if isinstance(c, Range):
            if is_bool:
                raise TypeError(f"{where}: Range on a Bool tensor makes no sense; use Mask()")
            if is_complex:
                raise TypeError(f"{where}: Range on a Complex tensor is undefined; use Finite()")
            if spec.lo is not None or spec.hi is not None:
                raise TypeError(f"{where}: more than one Range given")
            spec.lo, spec.hi, spec.finite = c.lo, c.hi, True
        elif isinstance(c, Finite):
            if is_bool:
                raise TypeError(f"{where}: Finite on a Bool tensor makes no sense")
            spec.finite = True
        elif isinstance(c, Mask):
            if not is_bool:
                raise TypeError(
                    f"{where}: Mask() needs a Bool[Tensor, ...] annotation, not {spec.category}"
                )
            if len(spec.dims) == 0:
                raise TypeError(f"{where}: Mask() needs at least one axis")
            spec.mask_axis = c.axis
    spec.constraints = tuple(cons)
    spec.__post_init__()


def _make_slot(where: str, name: str, position: int, default: Any, hint: Any) -> Slot | None:
    inner, meta, optional = _unwrap(hint)
    if default is None:
        optional = True
    if _is_jaxtyping(inner):
        if getattr(inner, "array_type", torch.Tensor) not in (torch.Tensor, torch.nn.Parameter):
            return None  # a numpy/jax annotation: not ours to check
        return Slot(name, position, default, optional, _tensor_spec(where, inner, meta))
    if inner is torch.Tensor:
        spec_meta = [m for m in meta if isinstance(m, Constraint)]
        slot = Slot(name, position, default, optional, None, plain_tensor=True)
        if spec_meta:
            spec = TensorSpec(
                dims=(_spec.Dim(ELLIPSIS, None),), dim_str="...", dtypes=None, category="Shaped"
            )
            _apply_constraints(where, spec, tuple(spec_meta))
            slot.tensor, slot.plain_tensor = spec, False
        return slot
    if inner is typing.Any or inner is inspect.Parameter.empty:
        return None
    ranges = [m for m in meta if isinstance(m, Range)]
    if any(isinstance(m, (Mask, Finite)) for m in meta) and not ranges:
        if any(isinstance(m, Mask) for m in meta):
            raise TypeError(f"{where}: Mask() applies to Bool tensors only")
    return Slot(
        name, position, default, optional, None, pyhint=inner, pyrange=ranges[0] if ranges else None
    )


def _return_slots(where: str, hint: Any, returns: Mapping[str, Any] | None) -> tuple[str, list]:
    if returns is not None:
        if not isinstance(returns, Mapping):
            raise TypeError(f"{where}: returns= must map dict keys to annotations")
        slots = []
        for k, h in returns.items():
            s = _make_slot(
                f"{where} return[{k!r}]", f"return[{k!r}]", -1, inspect.Parameter.empty, h
            )
            if s is not None:
                s.position = -2  # marks "dict key"
                s.pyhint = s.pyhint if s.tensor is None else None
                slots.append((k, s))
        return "dict", slots
    if hint is inspect.Parameter.empty or hint is None or hint is type(None):
        return "none", []
    inner, _meta, _opt = _unwrap(hint)
    if typing.get_origin(inner) is tuple:
        args = typing.get_args(inner)
        if len(args) == 2 and args[1] is Ellipsis:
            return "none", []
        slots = []
        for i, a in enumerate(args):
            s = _make_slot(f"{where} return[{i}]", f"return[{i}]", -1, inspect.Parameter.empty, a)
            slots.append((i, s))
        return "tuple", slots
    s = _make_slot(f"{where} return", "return", -1, inspect.Parameter.empty, hint)
    return ("single", [(None, s)]) if s is not None else ("none", [])


def _resolve_hints(fn: Callable) -> dict[str, Any]:
    try:
        return typing.get_type_hints(fn, include_extras=True)
    except Exception:
        # forward references that cannot resolve yet: resolve what we can, one by one
        out = {}
        glb = getattr(fn, "__globals__", {})
        for k, v in getattr(fn, "__annotations__", {}).items():
            if isinstance(v, str):
                try:
                    v = eval(v, glb)
                except NameError:
                    continue  # a forward reference: leave that argument unchecked
                except Exception as e:
                    qual = getattr(fn, "__qualname__", "?")
                    raise TypeError(
                        f"@contract on {qual}(): malformed annotation of {k!r} ({v}): "
                        f"{type(e).__name__}: {e}"
                    ) from None
            out[k] = v
        return out


def build_plan(
    fn: Callable,
    *,
    hints: Mapping[str, Any] | None = None,
    return_hint: Any = inspect.Parameter.empty,
    returns: Mapping[str, Any] | None = None,
    dims: Mapping[str, str] | None = None,
    allow_empty: bool = False,
    generate: bool = True,
    sizes: Mapping[str, tuple[int, int]] | None = None,
    strategies: Mapping[str, Callable] | None = None,
    outputs: tuple[str, ...] = (),
    notes: Mapping[str, str] | None = None,
    qualname: str | None = None,
) -> Plan:
    """Parse ``fn``'s annotations (or the given ``hints``) into a :class:`Plan`."""
    qual = qualname or getattr(fn, "__qualname__", getattr(fn, "__name__", repr(fn)))
    where = f"@contract on {qual}()"
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        sig = None
    if hints is None:
        hints = _resolve_hints(fn)
        if return_hint is inspect.Parameter.empty:
            return_hint = hints.get("return", inspect.Parameter.empty)
    params: list[Slot] = []
    has_self = False
    if sig is not None:
        names = list(sig.parameters)
        has_self = bool(names) and names[0] in ("self", "cls")
        for i, (name, p) in enumerate(sig.parameters.items()):
            if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
                continue
            if name not in hints:
                continue
            pos = i if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) else -1
            slot = _make_slot(f"{where} argument {name!r}", name, pos, p.default, hints[name])
            if slot is not None:
                params.append(slot)
        unknown = set(hints) - set(sig.parameters) - {"return"}
        if unknown:
            raise TypeError(f"{where}: no parameter named {', '.join(sorted(unknown))}")
    else:
        for name, h in hints.items():
            if name == "return":
                continue
            slot = _make_slot(f"{where} argument {name!r}", name, -1, inspect.Parameter.empty, h)
            if slot is not None:
                params.append(slot)
    kind, rslots = _return_slots(where, return_hint, returns)
    self_dims = []
    for k, src in (dims or {}).items():
        if not str(k).isidentifier():
            raise TypeError(f"{where}: dims= key {k!r} is not a dim name")
        e = _spec.compile_expr(src)
        if not has_self and e.uses_self:
            raise TypeError(f"{where}: dims={{{k!r}: {src!r}}} reads self, but there is no self")
        self_dims.append((k, e))
    for k, v in (sizes or {}).items():
        if not (isinstance(v, tuple) and len(v) == 2 and 0 <= v[0] <= v[1]):
            raise TypeError(f"{where}: sizes[{k!r}] must be a (min, max) tuple, got {v!r}")
    plan = Plan(
        qualname=qual,
        module=getattr(fn, "__module__", "") or "",
        fn=fn,
        params=params,
        returns=[s for _, s in rslots],
        return_kind=kind,
        self_dims=tuple(self_dims),
        has_self=has_self,
        allow_empty=allow_empty,
        generate=generate,
        sizes=dict(sizes or {}),
        strategies=dict(strategies or {}),
        outputs=tuple(outputs),
        notes=dict(notes or {}),
    )
    plan._return_keys = [k for k, _ in rslots]  # type: ignore[attr-defined]
    return plan


# --------------------------------------------------------------------------------------------
# checking


class _Fail(Exception):
    """Internal: one check failed (turned into a ContractError with context)."""

    def __init__(
        self,
        slot: str,
        axis: int | None,
        expected: str,
        actual: str,
        hint: str | None = None,
        detail: str | None = None,
        dim: str | None = None,
    ):
        self.slot, self.axis, self.expected, self.actual = slot, axis, expected, actual
        self.hint, self.detail, self.dim = hint, detail, dim


_EMPTY_HINT = (
    "empty batches and zero-length sequences are refused; pass allow_empty=True to @contract if "
    "they are meaningful here"
)


def _bind_axes(
    axes: Any,
    entries: Any,
    name: str,
    shape: tuple,
    b: dict,
    prov: dict | None,
    deferred: list,
    allow_empty: bool,
) -> None:
    """Check/bind each ``(axis, entry)``: the one loop every shape check runs."""
    for axis, (kind, val, bc) in zip(axes, entries):
        s = shape[axis]
        if kind is NAME:
            have = b.get(val)
            if have is None:
                b[val] = s
                if prov is not None:
                    prov[val] = f"{name}.shape[{axis}]"
            elif have != s and not (bc and s == 1):
                raise _Fail(name, axis, f"size {val}={have}", f"{s}", dim=val)
        elif kind is FIXED:
            if s != val and not (bc and s == 1):
                raise _Fail(name, axis, f"size {val}", f"{s}")
        elif kind is EXPR:
            deferred.append((name, axis, val, s, bc))
        if not s and not allow_empty:
            raise _Fail(name, axis, "a non-empty axis (size ≥ 1)", "size 0", hint=_EMPTY_HINT)


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
    if spec.var_at < 0:
        if nd != len(spec.fast):
            raise _Fail(
                name,
                None,
                f"{len(spec.fast)} axes {spec.shape_words()}",
                f"{nd} axes {list(shape)}",
            )
        _bind_axes(range(nd), spec.fast, name, shape, b, prov, deferred, allow_empty)
        return
    nb, na = spec.n_before, spec.n_after
    if nd < nb + na:
        raise _Fail(
            name, None, f"at least {nb + na} axes {spec.shape_words()}", f"{nd} axes {list(shape)}"
        )
    axes = [*range(nb), *range(nd - na, nd)]
    entries = spec.fast[:nb] + spec.fast[nb + 1 :]
    _bind_axes(axes, entries, name, shape, b, prov, deferred, allow_empty)
    vkind, vname, _ = spec.fast[nb]
    if vkind is VARIADIC:
        sub = tuple(shape[nb : nd - na])
        have = b.get("*" + vname)
        if have is None:
            b["*" + vname] = sub
            if prov is not None:
                prov["*" + vname] = f"{name}.shape[{nb}:{nd - na}]"
        elif have != sub:
            raise _Fail(name, nb, f"axes *{vname}={list(have)}", f"{list(sub)}", dim="*" + vname)


def _check_tensor(
    slot: Slot, x: Any, b: dict, prov: dict | None, deferred: list, allow_empty: bool
) -> None:
    spec = slot.tensor
    if not isinstance(x, torch.Tensor):
        if x is None:
            raise _Fail(
                slot.name,
                None,
                f"a tensor {spec.shape_words()}",
                "None",
                hint="this argument is not Optional; annotate it `X | None` if None is meaningful",
            )
        raise _Fail(
            slot.name,
            None,
            f"a torch.Tensor {spec.shape_words()} {_dtype_words(spec.dtypes, spec.category)}",
            f"{type(x).__name__}",
            hint=f"convert with torch.as_tensor({slot.name})"
            if isinstance(x, (list, tuple, int, float))
            else None,
        )
    if spec.dtypes is not None and x.dtype not in spec.dtypes:
        hint = None
        if spec.category == "Bool":
            hint = f"use {slot.name}.bool() (masks are True for valid positions)"
        elif spec.category in ("Int", "Integer") and x.is_floating_point():
            hint = f"use {slot.name}.long()"
        elif spec.category == "Float" and not x.is_floating_point():
            hint = f"use {slot.name}.float()"
        raise _Fail(
            slot.name,
            None,
            f"dtype {_dtype_words(spec.dtypes, spec.category)}",
            str(x.dtype).replace("torch.", ""),
            hint=hint,
        )
    _check_shape(spec, slot.name, x.shape, b, prov, deferred, allow_empty)


def _check_py(slot: Slot, x: Any, qual: str) -> None:
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
        from beartype.door import is_bearable

        try:
            ok = is_bearable(x, hint)
        except Exception:  # a hint beartype cannot check: leave it unchecked
            ok = True
    if not ok:
        raise _Fail(slot.name, None, f"{_hint_words(hint)}", f"{type(x).__name__} {x!r}"[:80])


def _hint_words(hint: Any) -> str:
    return getattr(hint, "__name__", None) or str(hint).replace("typing.", "")


def _bound_value(bound: Any, b: dict, self_obj: Any, slot: str) -> float | None:
    if bound is None or not isinstance(bound, Expr):
        return bound
    try:
        return bound(b, self_obj)
    except KeyError as e:
        raise _Fail(
            slot,
            None,
            f"a bound {bound.source!r} that can be evaluated",
            f"dim {e.args[0]} is not bound by any shape in this call",
            hint="bind it with a shape, or with @contract(dims={...})",
        ) from None
    except AttributeError as e:
        raise _Fail(slot, None, f"a bound {bound.source!r} that can be evaluated", str(e)) from None


def _round_to(v: float | None, dtype: torch.dtype) -> float | None:
    return None if v is None else torch.tensor(v, dtype=dtype).item()


def _interval(lo_b: Any, lo: Any, hi_b: Any, hi: Any, b: dict, prov: dict | None) -> str:
    left = "(-∞" if lo_b is None else "[" + _bound_words(lo_b, lo, b, prov)
    right = "∞)" if hi_b is None else _bound_words(hi_b, hi, b, prov) + "]"
    return f"{left}, {right}"


def _bound_words(bound: Any, value: float | None, b: dict, prov: dict | None) -> str:
    if not isinstance(bound, Expr):
        return str(bound)
    return f"{bound.source}={_num(value)}"


def _num(v: Any) -> str:
    if isinstance(v, float) and v.is_integer():
        return str(int(v))
    return str(v)


def _values_pending(slot: Slot, x: torch.Tensor, pending: list) -> None:
    spec = slot.tensor
    if x.numel() == 0:
        return
    if spec.mask_axis is not None:
        pending.append((slot, x, x.any(dim=spec.mask_axis).all()))
        return
    if not x.is_floating_point() and not x.is_complex():
        if spec.lo is None and spec.hi is None:
            return  # integers are always finite
    v = torch.view_as_real(x) if x.is_complex() else x
    pending.append((slot, x, torch.aminmax(v.detach())))


def _fetch(pending: list) -> list:
    """Bring the pending reductions to the host: one sync per device."""
    flat: list[torch.Tensor] = []
    for _, _, red in pending:
        if isinstance(red, tuple):
            flat.extend(red)
        else:
            flat.append(red)
    if all(t.device.type == "cpu" for t in flat):
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


def _judge_values(pending: list, b: dict, self_obj: Any, prov: dict | None) -> None:
    if not pending:
        return
    fetched = _fetch(pending)
    for (slot, x, _), got in zip(pending, fetched):
        spec = slot.tensor
        if spec.mask_axis is not None:
            if not got:
                axis = spec.mask_axis % x.ndim
                empty_rows = (~x.any(dim=axis)).nonzero()
                n = len(empty_rows)
                rows = int(x.any(dim=axis).numel())
                first = tuple(int(i) for i in empty_rows[0])
                inverted = bool((~x).any(dim=axis).all())
                hint = (
                    "masks are True for valid positions; this one looks inverted — pass "
                    f"~{slot.name}?"
                    if inverted and x.any()
                    else "every row needs at least one valid position (a fully masked row makes "
                    "softmax return NaN)"
                )
                raise _Fail(
                    slot.name,
                    axis,
                    f"at least one True (valid) position per row along axis {axis}",
                    f"{n} of {rows} rows have none; first at row {first}",
                    hint=hint,
                )
            continue
        mn, mx = got
        lo = _bound_value(spec.lo, b, self_obj, slot.name)
        hi = _bound_value(spec.hi, b, self_obj, slot.name)
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
        if ok:
            continue
        detail, info = value_details(x, lo, hi)
        if lo is None and hi is None:
            expected = "finite values (no NaN/Inf)"
        else:
            expected = f"values in {_interval(spec.lo, lo, spec.hi, hi, b, prov)}"
        hint = None
        if info["nan"] or info["+inf"] or info["-inf"]:
            hint = (
                "non-finite values upstream: run the step under diagnostics.NanWatch to "
                "find the module that produced them"
            )
        elif isinstance(spec.hi, Expr) and (
            spec.hi.uses_self
            or (prov and any(prov.get(n, "").startswith("self") for n in spec.hi.names))
        ):
            hint = (
                f"values reach {_num(info['max'])} but the bound {spec.hi.source} comes from "
                "the model: do the data/tokenizer and the model agree on it?"
            )
        elif (
            isinstance(spec.hi, Expr)
            and info["max"] is not None
            and hi is not None
            and info["max"] > hi
        ):
            hint = f"values exceed {spec.hi.source}={_num(hi)}: are lengths/indices off by one?"
        raise _Fail(slot.name, None, expected, detail, hint=hint)


class _Checker:
    """Runs one plan against one call (fast path; explain mode on failure)."""

    __slots__ = ()

    @staticmethod
    def inputs(plan: Plan, args: tuple, kwargs: dict, level: int, prov: dict | None):
        b: dict = {}
        self_obj = args[0] if plan.has_self and args else None
        for name, e in plan.self_dims:
            try:
                b[name] = e(b, self_obj)
            except Exception as exc:
                raise _Fail(
                    "self", None, f"dims[{name!r}] = {e.source}", f"{type(exc).__name__}: {exc}"
                ) from None
            if prov is not None:
                prov[name] = e.source
        deferred: list = []
        pending: list = []
        nargs = len(args)
        for slot in plan.params:
            pos = slot.position
            if 0 <= pos < nargs:
                x = args[pos]
            elif slot.name in kwargs:
                x = kwargs[slot.name]
            elif slot.default is not inspect.Parameter.empty:
                x = slot.default
            else:
                continue  # missing: the call itself will raise its own TypeError
            if x is None and slot.optional:
                continue
            _check_slot(plan, slot, x, b, prov, deferred, pending, level, self_obj)
        _finish(deferred, pending, b, self_obj, prov)
        return b, self_obj

    @staticmethod
    def outputs(plan: Plan, out: Any, b: dict, self_obj: Any, level: int, prov: dict | None):
        kind = plan.return_kind
        if kind == "single":
            items = [(plan.returns[0], out)]
        elif kind == "tuple":
            if not isinstance(out, (tuple, list)) or len(out) != len(plan.returns):
                raise _Fail(
                    "return",
                    None,
                    f"a tuple of {len(plan.returns)}",
                    f"{type(out).__name__}"
                    + (f" of {len(out)}" if isinstance(out, (tuple, list)) else ""),
                )
            items = list(zip(plan.returns, out))
        else:  # dict
            if not isinstance(out, Mapping):
                raise _Fail("return", None, "a dict", type(out).__name__)
            items = []
            for key, slot in zip(plan._return_keys, plan.returns):  # type: ignore[attr-defined]
                if key not in out:
                    raise _Fail(
                        slot.name,
                        None,
                        f"key {key!r} in the returned dict",
                        f"keys {sorted(map(str, out))}",
                    )
                items.append((slot, out[key]))
        deferred: list = []
        pending: list = []
        for slot, x in items:
            if x is None and slot.optional:
                continue
            _check_slot(plan, slot, x, b, prov, deferred, pending, level, self_obj)
        _finish(deferred, pending, b, self_obj, prov)


def _check_slot(
    plan: Plan,
    slot: Slot,
    x: Any,
    b: dict,
    prov: dict | None,
    deferred: list,
    pending: list,
    level: int,
    self_obj: Any,
) -> None:
    """Check one argument or returned value (shape/dtype now, values queued for one fetch)."""
    if slot.tensor is not None:
        _check_tensor(slot, x, b, prov, deferred, plan.allow_empty)
        if level == FULL and slot.tensor.has_values:
            _values_pending(slot, x, pending)
    elif slot.plain_tensor:
        if not isinstance(x, torch.Tensor):
            raise _Fail(slot.name, None, "a torch.Tensor", type(x).__name__)
    else:
        _check_py(slot, x, plan.qualname)
        if slot.pyrange is not None and level == FULL:
            _check_pyrange(slot, x, b, self_obj, prov)


def _finish(deferred: list, pending: list, b: dict, self_obj: Any, prov: dict | None) -> None:
    """Expression dims once every dim is bound, then all value checks with one fetch."""
    if deferred:
        _check_deferred(deferred, b, self_obj)
    if pending:
        _judge_values(pending, b, self_obj, prov)


def _check_pyrange(slot: Slot, x: Any, b: dict, self_obj: Any, prov: dict | None) -> None:
    r = slot.pyrange
    if not isinstance(x, (int, float)) or isinstance(x, bool):
        return
    lo = _bound_value(r.lo, b, self_obj, slot.name)
    hi = _bound_value(r.hi, b, self_obj, slot.name)
    if (
        (isinstance(x, float) and not math.isfinite(x))
        or (lo is not None and x < lo)
        or (hi is not None and x > hi)
    ):
        raise _Fail(
            slot.name, None, f"a value in {_interval(r.lo, lo, r.hi, hi, b, prov)}", repr(x)
        )


def _check_deferred(deferred: list, b: dict, self_obj: Any) -> None:
    for name, axis, expr, s, bc in deferred:
        try:
            want = expr(b, self_obj)
        except KeyError as e:
            raise _Fail(
                name, axis, f"size {expr.source}", f"{s} (dim {e.args[0]} is unbound)"
            ) from None
        if s != want and not (bc and s == 1):
            raise _Fail(name, axis, f"size {expr.source}={want}", f"{s}")


def _explain(
    plan: Plan, fail: _Fail, args: tuple, kwargs: dict, out: Any = None, phase: str = "inputs"
) -> ContractError:
    """Re-run the checks with provenance tracking and turn ``fail`` into a ContractError."""
    prov: dict = {}
    b: dict = {}
    level = FULL
    try:
        b, self_obj = _Checker.inputs(plan, args, kwargs, level, prov)
        if phase == "outputs":
            _Checker.outputs(plan, out, b, self_obj, level, prov)
    except _Fail as again:
        fail = again  # the explain pass sees the same first failure, now with provenance
    except Exception:
        pass
    # the bindings at the time of failure: rebuild them from what prov recorded
    bindings_words = (
        ", ".join(
            f"{k}={_binding_value(k, prov, args, kwargs, plan, out)} ({prov[k]})" for k in prov
        )
        or "(none yet)"
    )
    value = _find_value(plan, fail.slot, args, kwargs, out)
    lines = []
    head = f"{plan.qualname}(): {_slot_words(fail.slot)}"
    if fail.axis is not None:
        head += f", axis {fail.axis}"
    head += f": expected {fail.expected}, got {fail.actual}"
    lines.append(head)
    if fail.dim is not None and fail.dim in prov:
        lines.append(
            f"  {fail.dim}={_binding_value(fail.dim, prov, args, kwargs, plan, out)} "
            f"from {prov[fail.dim]}, but {fail.slot}.shape[{fail.axis}]="
            f"{fail.actual}"
        )
    if value is not _MISSING:
        lines.append(f"  {fail.slot}: {describe_value(value)}")
    lines.append(f"  bindings: {bindings_words}")
    hint = fail.hint
    if hint is None and isinstance(value, torch.Tensor):
        slot = _slot_by_name(plan, fail.slot)
        if slot is not None and slot.tensor is not None and slot.tensor.var_at < 0:
            names = [str(d) for d in slot.tensor.dims]
            known = []
            bb = {k: _binding_value(k, prov, args, kwargs, plan, out) for k in prov}
            for d in slot.tensor.dims:
                if d.kind == FIXED:
                    known.append(d.value)
                elif (
                    d.kind == NAME
                    and d.value in bb
                    and not prov.get(d.value, "").startswith(fail.slot + ".")
                ):
                    known.append(bb[d.value])
                else:
                    known.append(None)
            hint = permutation_hint(fail.slot, tuple(value.shape), names, known)
    if hint is None and fail.dim is not None:
        hint = _swap_hint(plan, fail, prov, args, kwargs, out)
    if hint:
        lines.append(f"  hint: {hint}")
    bindings = {k: _binding_value(k, prov, args, kwargs, plan, out) for k in prov}
    return ContractError(
        "\n".join(lines),
        function=plan.qualname,
        argument=fail.slot,
        axis=fail.axis,
        expected=fail.expected,
        actual=fail.actual,
        bindings=bindings,
    )


_MISSING = object()


def _swap_hint(
    plan: Plan, fail: _Fail, prov: dict, args: tuple, kwargs: dict, out: Any
) -> str | None:
    """A dim bound by an earlier argument clashes, and the clashing size is another axis of that
    same argument: the earlier argument is probably the transposed one."""
    src = prov.get(fail.dim, "")
    if ".shape[" not in src or ":" in src:
        return None
    arg, i = src.split(".shape[")
    i = int(i.rstrip("]"))
    for k, other in prov.items():
        if k == fail.dim or not other.startswith(arg + ".shape[") or ":" in other:
            continue
        j = int(other.split(".shape[")[1].rstrip("]"))
        if str(_binding_value(k, prov, args, kwargs, plan, out)) == str(fail.actual):
            slot = _slot_by_name(plan, arg)
            if slot is None or slot.tensor is None:
                return None
            names = [str(d) for d in slot.tensor.dims]
            if max(i, j) >= len(names):
                return None
            names[i], names[j] = names[j], names[i]
            a, z = sorted((i, j))
            return (
                f"{arg}.shape[{j}]={fail.actual} matches {fail.slot}.shape[{fail.axis}]: "
                f"{arg} looks like [{', '.join(names)}]; {arg}.transpose({a}, {z})?"
            )
    return None


def _slot_words(name: str) -> str:
    return name if name.startswith("return") or name == "self" else f"argument {name!r}"


def _slot_by_name(plan: Plan, name: str) -> Slot | None:
    for s in plan.params + plan.returns:
        if s.name == name:
            return s
    return None


def _find_value(plan: Plan, name: str, args: tuple, kwargs: dict, out: Any) -> Any:
    slot = _slot_by_name(plan, name)
    if slot is None:
        return _MISSING
    if name.startswith("return"):
        if plan.return_kind == "single":
            return out
        if plan.return_kind == "tuple":
            i = plan.returns.index(slot)
            return out[i] if isinstance(out, (tuple, list)) and i < len(out) else _MISSING
        key = plan._return_keys[plan.returns.index(slot)]  # type: ignore[attr-defined]
        return out.get(key, _MISSING) if isinstance(out, Mapping) else _MISSING
    if 0 <= slot.position < len(args):
        return args[slot.position]
    return kwargs.get(name, _MISSING)


def _binding_value(k: str, prov: dict, args: tuple, kwargs: dict, plan: Plan, out: Any) -> Any:
    src = prov[k]
    if "." not in src or ".shape[" not in src:
        # from self dims: evaluate again
        for name, e in plan.self_dims:
            if name == k:
                try:
                    return e({}, args[0] if args else None)
                except Exception:
                    return "?"
        return "?"
    argname, rest = src.split(".shape[", 1)
    value = _find_value(plan, argname, args, kwargs, out)
    if not isinstance(value, torch.Tensor):
        return "?"
    idx = rest.rstrip("]")
    if ":" in idx:
        a, z = idx.split(":")
        return list(value.shape[int(a) : int(z)])
    return value.shape[int(idx)]


# --------------------------------------------------------------------------------------------
# the decorator


def _wrap(plan: Plan) -> Callable:
    fn = plan.fn
    check_in = _Checker.inputs
    check_out = _Checker.outputs
    has_returns = plan.return_kind != "none"

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        __tracebackhide__ = True
        level = state.level
        if level == OFF or _is_compiling():
            return fn(*args, **kwargs)
        try:
            b, self_obj = check_in(plan, args, kwargs, level, None)
        except _Fail as f:
            raise _explain(plan, f, args, kwargs) from None
        out = fn(*args, **kwargs)
        if has_returns:
            try:
                check_out(plan, out, b, self_obj, level, None)
            except _Fail as f:
                raise _explain(plan, f, args, kwargs, out, phase="outputs") from None
        return out

    wrapper.__contract__ = plan  # type: ignore[attr-defined]
    return wrapper


def contract(
    fn: Callable | None = None,
    /,
    *,
    dims: Mapping[str, str] | None = None,
    returns: Mapping[str, Any] | None = None,
    allow_empty: bool = False,
    generate: bool = True,
    sizes: Mapping[str, tuple[int, int]] | None = None,
    strategies: Mapping[str, Callable] | None = None,
    outputs: tuple[str, ...] = (),
    notes: Mapping[str, str] | None = None,
) -> Any:
    """Check a function's tensor contract at every call.

    Shapes and dtypes come from jaxtyping annotations; value constraints (:class:`Range`,
    :class:`Finite`, :class:`Mask`, :class:`Probability`) from ``typing.Annotated`` metadata.
    Works on functions, methods and ``nn.Module.forward``. In mode ``off`` at decoration time
    the function itself is returned.

    Args:
        fn: the function (when used without parentheses).
        dims: pre-bind dims from ``self``: ``{"V": "self.vocab_size"}``.
        returns: annotations for the keys of a returned dict.
        allow_empty: accept zero-size axes (refused by default: they are usually a bug).
        generate: include this function in the generated property tests.
        sizes: ``{dim: (min, max)}`` for generated inputs (default ``(1, 8)``).
        strategies: ``{argument: lambda st: strategy}`` for non-tensor arguments of generated
            tests (``st`` is ``hypothesis.strategies``).
        outputs: names for the elements of a returned tuple (used by ``contracts.docs``).
        notes: ``{argument or output: text}`` for the Notes column of ``contracts.docs``.

    Example:
        >>> @contract
        ... def masked_mean(
        ...     x: Float[Tensor, "B T D"], mask: Annotated[Bool[Tensor, "B T"], Mask()]
        ... ) -> Float[Tensor, "B D"]:
        ...     m = mask.unsqueeze(-1).to(x.dtype)
        ...     return (x * m).sum(1) / m.sum(1)
    """
    options = dict(
        dims=dims,
        returns=returns,
        allow_empty=allow_empty,
        generate=generate,
        sizes=sizes,
        strategies=strategies,
        outputs=outputs,
        notes=notes,
    )

    def decorate(f: Callable) -> Callable:
        if not callable(f):
            raise TypeError(f"@contract decorates functions, not {type(f).__name__}")
        plan = build_plan(f, **options)
        register(plan)
        if state.level == OFF:
            return f
        return _wrap(plan)

    if fn is not None:
        return decorate(fn)
    return decorate
