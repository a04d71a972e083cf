"""The explainer: every word of a contract failure, in one place.

Runs only after a check has failed, so it may be slow and thorough: it re-runs the checker with
provenance tracking (where each dim binding came from), words the failure (expected, actual), and
looks for a hint (a transposed argument, an inverted mask, a dtype cast, an off-by-one bound).
Tensors are described by the project's one formatter, :func:`contracts.summarize`.
"""

from __future__ import annotations

import itertools
import typing
from collections.abc import Mapping
from typing import Any

import torch

from . import _check
from ._check import Fail
from ._config import FULL, OFF, SHAPES, state
from ._errors import ContractError
from ._plan import CHECKED, FLOAT_NAMES, Plan, Slot, TensorSpec
from ._spec import FIXED, NAME, Expr
from ._summary import summarize
from ._values import UNREDUCED, widened

__all__ = ["describe_value", "explain", "explain_check", "permutation_hint", "value_details"]

_MISSING = object()

EMPTY_HINT = (
    "empty batches and zero-length sequences are refused; pass allow_empty=True to @contract if "
    "they are meaningful here"
)
MASK_EMPTY_HINT = (
    "allow_empty=True accepts empty batches (a mask with no rows), not rows without a single "
    "position: a row with no valid position makes softmax return NaN"
)


# --------------------------------------------------------------------------------------------
# small words


def _fmt(x: float) -> str:
    if isinstance(x, int) or (isinstance(x, float) and x.is_integer() and abs(x) < 1e15):
        return str(int(x))
    return f"{x:.4g}"


def _num(v: Any) -> str:
    if isinstance(v, float) and v.is_integer():
        return str(int(v))
    return str(v)


def _dtype(dt: torch.dtype) -> str:
    return str(dt).replace("torch.", "")


def dtype_words(spec: TensorSpec) -> str:
    """``"float (float16/bfloat16/float32/float64)"``, ``"bool"``, ``"any dtype"``, ..."""
    names, category = spec.dtypes, spec.category
    if names is None:
        return "any dtype"
    if names == FLOAT_NAMES or category == "Float":
        return "float (float16/bfloat16/float32/float64)"
    if category in ("Int", "Integer"):
        return "integer (int8/16/32/64, uint8)"
    if category == "Bool":
        return "bool"
    if category == "Complex":
        return "complex (complex64/complex128)"
    return "/".join(sorted(_dtype(d) for d in _check.torch_dtypes(names)))


def _hint_words(hint: Any) -> str:
    """``int``, ``list[int]``, ``Optional[str]``: a generic alias by its whole text (its
    ``__name__`` is only the container's)."""
    if typing.get_origin(hint) is None and getattr(hint, "__name__", None):
        return hint.__name__
    return str(hint).replace("typing.", "")


def _beartype_reason(hint: Any, value: Any, name: str) -> str | None:
    """Which part of ``value`` breaks a generic ``hint``, and beartype's words on that part."""
    if typing.get_origin(hint) is None:
        return None
    bad = _check.misfit(value, hint)
    if bad is None:
        return None
    path, part, part_hint = bad
    text = f"{name}{path} = {part!r}"[:120] + f" does not satisfy {_hint_words(part_hint)}"
    try:
        from beartype.door import die_if_unbearable

        die_if_unbearable(part, part_hint)
    except Exception as e:
        reason = " ".join(str(e).split())
        if ", as " in reason:  # beartype's why, after its restatement of value and hint
            text += f" (beartype: {reason.split(', as ', 1)[1][:200].rstrip('.')})"
    return text


def _bound_words(bound: Any, value: float | None) -> str:
    if not isinstance(bound, Expr):
        return str(bound)
    return f"{bound.source}={_num(value)}"


def interval_words(lo_b: Any, lo: Any, hi_b: Any, hi: Any) -> str:
    """``"[0, V-1=9]"``, ``"(-∞, 1]"``: a Range with its bounds' values in this call."""
    left = "(-∞" if lo_b is None else "[" + _bound_words(lo_b, lo)
    right = "∞)" if hi_b is None else _bound_words(hi_b, hi) + "]"
    return f"{left}, {right}"


def describe_value(x: Any) -> str:
    """A short, never-whole description of an argument value (tensors summarized)."""
    if isinstance(x, torch.Tensor):
        return summarize(x)
    if x is None:
        return "None"
    r = repr(x)
    return f"{type(x).__name__} {r[:60] + '…' if len(r) > 60 else r}"


def value_details(x: torch.Tensor, lo: float | None, hi: float | None) -> tuple[str, dict]:
    """Count and locate the values of ``x`` outside ``[lo, hi]`` or non-finite."""
    with torch.no_grad():
        v = torch.view_as_real(x.detach()) if x.is_complex() else x.detach()
        if v.dtype in UNREDUCED:  # comparisons torch does not implement for these dtypes
            v = widened(v)
        if v.is_floating_point():
            nan = torch.isnan(v)
            posinf = torch.isposinf(v)
            neginf = torch.isneginf(v)
        else:
            nan = posinf = neginf = torch.zeros_like(v, dtype=torch.bool)
        bad = nan | posinf | neginf
        if lo is not None:
            bad |= v < lo
        if hi is not None:
            bad |= v > hi
        n_bad = int(bad.sum())
        idx = bad.nonzero()
        first = tuple(int(i) for i in idx[0]) if len(idx) else None
        finite = ~(nan | posinf | neginf)
        fv = v[finite]
        info = {
            "count": n_bad,
            "numel": v.numel(),
            "nan": int(nan.sum()),
            "+inf": int(posinf.sum()),
            "-inf": int(neginf.sum()),
            "min": fv.min().item() if fv.numel() else None,
            "max": fv.max().item() if fv.numel() else None,
            "first_bad_index": first,
        }
    parts = [f"{n_bad} of {info['numel']} values outside it"]
    nonfin = [
        f"{info[k]} {k.upper() if k == 'nan' else k.replace('inf', 'Inf')}"
        for k in ("nan", "+inf", "-inf")
        if info[k]
    ]
    if nonfin:
        parts.append("non-finite: " + ", ".join(nonfin))
    if info["min"] is not None:
        parts.append(f"finite min={_fmt(info['min'])}, max={_fmt(info['max'])}")
    if first is not None:
        parts.append(f"first bad at index {first}")
    return "; ".join(parts), info


def permutation_hint(
    argname: str, shape: tuple[int, ...], names: list[str], expected: list[int | None]
) -> str | None:
    """Suggest a transpose/permute when ``shape`` is a permutation of the expected sizes.

    ``expected[i]`` is the known size of axis i (or None when any size fits). Returns e.g.
    ``"features looks like [B, F, T]; transpose(1, 2)?"``.
    """
    n = len(shape)
    if n != len(expected) or n > 6 or all(e is None for e in expected):
        return None
    best: tuple[int, ...] | None = None
    for perm in itertools.permutations(range(n)):
        # perm[i] = which actual axis would go to expected position i
        if perm == tuple(range(n)):
            continue
        if all(expected[i] is None or shape[perm[i]] == expected[i] for i in range(n)):
            # the permutation must actually move a constrained axis
            moved = [i for i in range(n) if perm[i] != i]
            if not any(expected[i] is not None for i in moved):
                continue
            if best is None or len(moved) < sum(1 for i in range(n) if best[i] != i):
                best = perm
    if best is None:
        return None
    inv = [0] * n
    for i, p in enumerate(best):
        inv[p] = i
    looks = "[" + ", ".join(names[inv[a]] for a in range(n)) + "]"
    moved = [i for i in range(n) if best[i] != i]
    if len(moved) == 2:
        fix = f"transpose({moved[0]}, {moved[1]})"
    else:
        fix = f"permute({', '.join(map(str, best))})"
    return f"{argname} looks like {looks}; {fix}?"


# --------------------------------------------------------------------------------------------
# a Fail in words: (expected, actual, hint)


def _mask_want(axis: int, padding: bool) -> str:
    if padding:
        return f"at least one False (valid) position per row along axis {axis} (True = padded)"
    return f"at least one True (valid) position per row along axis {axis}"


def _mask_words(f: Fail) -> tuple[str, str, str]:
    x, axis = f.data["value"], f.axis
    padding = f.data.get("padding", False)
    valid = ~x if padding else x
    empty_rows = (~valid.any(dim=axis)).nonzero()
    rows = int(valid.any(dim=axis).numel())
    first = tuple(int(i) for i in empty_rows[0])
    inverted = bool((~valid).any(dim=axis).all())
    convention = (
        "key padding masks are True for padded positions"
        if padding
        else "masks are True for valid positions"
    )
    hint = (
        f"{convention}; this one looks inverted — pass ~{f.slot}?"
        if inverted and valid.any()
        else "every row needs at least one valid position (a fully masked row makes "
        "softmax return NaN)"
    )
    return (
        _mask_want(axis, padding),
        f"{len(empty_rows)} of {rows} rows have none; first at row {first}",
        hint,
    )


def _values_words(f: Fail, prov: dict) -> tuple[str, str, str | None]:
    spec, x, lo, hi = f.data["spec"], f.data["value"], f.data["lo"], f.data["hi"]
    detail, info = value_details(x, lo, hi)
    if lo is None and hi is None:
        expected = "finite values (no NaN/Inf)"
    else:
        expected = f"values in {interval_words(spec.lo, lo, spec.hi, hi)}"
    hint = None
    if info["nan"] or info["+inf"] or info["-inf"]:
        hint = (
            "non-finite values upstream: run the step under diagnostics.NanWatch to "
            "find the module that produced them"
        )
    elif isinstance(spec.hi, Expr) and (
        spec.hi.uses_self or any(prov.get(n, "").startswith("self") for n in spec.hi.names)
    ):
        hint = (
            f"values reach {_num(info['max'])} but the bound {spec.hi.source} comes from "
            "the model: do the data/tokenizer and the model agree on it?"
        )
    elif isinstance(spec.hi, Expr) and info["max"] is not None and hi is not None:
        if info["max"] > hi:
            hint = f"values exceed {spec.hi.source}={_num(hi)}: are lengths/indices off by one?"
    return expected, detail, hint


def words(f: Fail, prov: dict) -> tuple[str, str, str | None]:
    """The expected/actual/hint words of one failed check."""
    d, code = f.data, f.code
    if code == "dim":
        return f"size {d['dim']}={d['want']}", f"{d['got']}", None
    if code == "fixed":
        return f"size {d['want']}", f"{d['got']}", None
    if code == "empty":
        return "a non-empty axis (size ≥ 1)", "size 0", EMPTY_HINT
    if code == "ndim":
        spec, shape = d["spec"], d["shape"]
        return (
            f"{len(spec.dims)} axes {spec.shape_words()}",
            f"{len(shape)} axes {list(shape)}",
            None,
        )
    if code == "ndim_min":
        spec, shape = d["spec"], d["shape"]
        n = spec.n_before + spec.n_after
        return f"at least {n} axes {spec.shape_words()}", f"{len(shape)} axes {list(shape)}", None
    if code == "variadic":
        if d.get("broadcast"):
            return (
                f"axes that broadcast with {d['dim']}={list(d['want'])}",
                f"{list(d['got'])}",
                None,
            )
        return f"axes {d['dim']}={list(d['want'])}", f"{list(d['got'])}", None
    if code == "expr":
        return f"size {d['expr'].source}={d['want']}", f"{d['got']}", None
    if code == "expr_unbound":
        return f"size {d['expr'].source}", f"{d['got']} (dim {d['dim']} is unbound)", None
    if code == "none":
        return (
            f"a tensor {d['spec'].shape_words()}",
            "None",
            "this argument is not Optional; annotate it `X | None` if None is meaningful",
        )
    if code == "not_sequence":
        spec, x = d["spec"], d["value"]
        kind = getattr(d["each"], "__name__", str(d["each"]))
        return (
            f"a {kind} of torch.Tensor {spec.shape_words()} {dtype_words(spec)}",
            type(x).__name__,
            None,
        )
    if code == "not_tensor":
        spec, x = d["spec"], d["value"]
        hint = (
            f"convert with torch.as_tensor({f.slot})"
            if isinstance(x, (list, tuple, int, float))
            else None
        )
        return f"a torch.Tensor {spec.shape_words()} {dtype_words(spec)}", type(x).__name__, hint
    if code == "dtype":
        spec, got = d["spec"], d["got"]
        hint = None
        if spec.category == "Bool":
            hint = f"use {f.slot}.bool() (masks are True for valid positions)"
        elif spec.category in ("Int", "Integer") and d["floating"]:
            hint = f"use {f.slot}.long()"
        elif spec.category == "Float" and not d["floating"]:
            hint = f"use {f.slot}.float()"
        return f"dtype {dtype_words(spec)}", _dtype(got), hint
    if code == "plain_tensor":
        return "a torch.Tensor", type(d["value"]).__name__, None
    if code == "pytype":
        x = d["value"]
        return (
            _hint_words(d["hint"]),
            f"{type(x).__name__} {x!r}"[:80],
            _beartype_reason(d["hint"], x, f.slot),
        )
    if code == "pyrange":
        r = d["range"]
        return f"a value in {interval_words(r.lo, d['lo'], r.hi, d['hi'])}", repr(d["value"]), None
    if code == "bound_unbound":
        return (
            f"a bound {d['bound'].source!r} that can be evaluated",
            f"dim {d['dim']} is not bound by any shape in this call",
            "bind it with a shape, or with @contract(dims={...})",
        )
    if code == "bound_error":
        return f"a bound {d['bound'].source!r} that can be evaluated", d["error"], None
    if code == "self_dim":
        e = d["error"]
        return f"dims[{d['dim']!r}] = {d['expr'].source}", f"{type(e).__name__}: {e}", None
    if code == "return_arity":
        out = d["value"]
        n = f" of {len(out)}" if isinstance(out, (tuple, list)) else ""
        return f"a tuple of {d['want']}", f"{type(out).__name__}{n}", None
    if code == "return_dict":
        return "a dict", type(d["value"]).__name__, None
    if code == "return_key":
        return (
            f"key {d['key']!r} in the returned dict",
            f"keys {sorted(map(str, d['value']))}",
            None,
        )
    if code == "mask":
        return _mask_words(f)
    if code == "mask_empty":
        return (
            _mask_want(f.axis, d["padding"]),
            f"an empty axis (size 0), so none of its {d['rows']} rows has one",
            MASK_EMPTY_HINT,
        )
    if code == "values":
        return _values_words(f, prov)
    raise AssertionError(f"contracts: no words for check {code!r}")  # pragma: no cover


# --------------------------------------------------------------------------------------------
# the whole message


class _Call:
    """What a message needs from the failing call: its slots and their values by name."""

    def __init__(self, plan: Plan | None, args: tuple, kwargs: dict, out: Any) -> None:
        self.plan, self.args, self.kwargs, self.out = plan, args, kwargs, out
        self.extra: dict[str, tuple[Slot, Any]] = {}  # checked intermediates

    def slot(self, name: str) -> Slot | None:
        if name in self.extra:
            return self.extra[name][0]
        element = _element_of(name)
        if element is not None:  # "xs[3]": element 3 of a sequence slot
            seq = self.slot(element[0])
            return seq.element(element[1]) if seq is not None and seq.each else None
        return self.plan.slot(name) if self.plan is not None else None

    def value(self, name: str) -> Any:
        if name in self.extra:
            return self.extra[name][1]
        element = _element_of(name)
        if element is not None:
            seq = self.value(element[0])
            try:
                return seq[element[1]]
            except Exception:
                return _MISSING
        plan = self.plan
        slot = self.slot(name)
        if slot is None or plan is None:
            return _MISSING
        out = self.out
        if name.startswith("return"):
            if plan.return_kind == "single":
                return out
            i = plan.returns.index(slot)
            if plan.return_kind == "tuple":
                return out[i] if isinstance(out, (tuple, list)) and i < len(out) else _MISSING
            key = plan.return_keys[i]
            return out.get(key, _MISSING) if isinstance(out, Mapping) else _MISSING
        if 0 <= slot.position < len(self.args):
            return self.args[slot.position]
        return self.kwargs.get(name, _MISSING)


def _element_of(name: str) -> tuple[str, int] | None:
    """``("xs", 3)`` for the element name ``"xs[3]"`` (see ``Slot.element``), else None."""
    if not name.endswith("]") or "[" not in name or name.startswith("return"):
        return None
    base, _, index = name[:-1].rpartition("[")
    return (base, int(index)) if index.isdigit() else None


def _slot_words(slot: Slot | None, name: str) -> str:
    if slot is not None and slot.position == CHECKED:
        return f"checked value {name!r}"
    return name if name.startswith("return") or name == "self" else f"argument {name!r}"


def _swap_hint(call: _Call, f: Fail, actual: str, prov: dict, b: dict) -> str | None:
    """A dim bound by an earlier argument clashes, and the clashing size is another axis of that
    same argument: the earlier argument is probably the transposed one."""
    dim = f.data.get("dim")
    src = prov.get(dim, "")
    if ".shape[" not in src or ":" in src:
        return None
    arg, i = src.split(".shape[")
    i = int(i.rstrip("]"))
    for k, other in prov.items():
        if k == dim or not other.startswith(arg + ".shape[") or ":" in other:
            continue
        j = int(other.split(".shape[")[1].rstrip("]"))
        if str(b.get(k)) == actual:
            slot = call.slot(arg)
            if slot is None or slot.tensor is None:
                return None
            names = [str(d) for d in slot.tensor.dims]
            if max(i, j) >= len(names):
                return None
            names[i], names[j] = names[j], names[i]
            a, z = sorted((i, j))
            return (
                f"{arg}.shape[{j}]={actual} matches {f.slot}.shape[{f.axis}]: "
                f"{arg} looks like [{', '.join(names)}]; {arg}.transpose({a}, {z})?"
            )
    return None


def _transpose_hint(call: _Call, f: Fail, value: Any, prov: dict, b: dict) -> str | None:
    slot = call.slot(f.slot)
    if slot is None or slot.tensor is None or slot.tensor.var_at >= 0:
        return None
    names = [str(d) for d in slot.tensor.dims]
    known: list[int | None] = []
    for d in slot.tensor.dims:
        if d.kind == FIXED:
            known.append(d.value)
        elif d.kind == NAME and d.value in prov and not prov[d.value].startswith(f.slot + "."):
            known.append(b.get(d.value))
        else:
            known.append(None)
    return permutation_hint(f.slot, tuple(value.shape), names, known)


def _error(function: str, fail: Fail, call: _Call, prov: dict, b: dict) -> ContractError:
    """The worded ContractError of ``fail``, given the provenance of the bindings ``b``."""
    expected, actual, hint = words(fail, prov)
    bindings = {k: list(b[k]) if isinstance(b.get(k), tuple) else b.get(k, "?") for k in prov}
    bindings_words = ", ".join(f"{k}={bindings[k]} ({prov[k]})" for k in prov) or "(none yet)"
    value = call.value(fail.slot)
    head = f"{function}(): {_slot_words(call.slot(fail.slot), fail.slot)}"
    if fail.axis is not None:
        head += f", axis {fail.axis}"
    lines = [head + f": expected {expected}, got {actual}"]
    dim = fail.data.get("dim") if fail.code in ("dim", "variadic") else None
    if dim is not None and dim in prov:
        lines.append(
            f"  {dim}={bindings[dim]} from {prov[dim]}, but {fail.slot}.shape[{fail.axis}]={actual}"
        )
    if value is not _MISSING:
        lines.append(f"  {fail.slot}: {describe_value(value)}")
    lines.append(f"  bindings: {bindings_words}")
    if hint is None and isinstance(value, torch.Tensor):
        hint = _transpose_hint(call, fail, value, prov, b)
    if hint is None and dim is not None:
        hint = _swap_hint(call, fail, actual, prov, b)
    if hint:
        lines.append(f"  hint: {hint}")
    return ContractError(
        "\n".join(lines),
        function=function,
        argument=fail.slot,
        axis=fail.axis,
        expected=expected,
        actual=actual,
        bindings=bindings,
    )


def explain(
    plan: Plan,
    fail: Fail,
    args: tuple,
    kwargs: dict,
    out: Any = None,
    phase: str = "inputs",
    bound: list | None = None,
) -> ContractError:
    """Re-run the checks with provenance tracking and turn ``fail`` into a ContractError.

    ``bound``: the call's ``(dim, size)`` bindings as ``fn`` returned, with the dims
    ``contracts.check`` bound inside the call (the return was judged against them, so the
    explanation is too).
    """
    prov: dict = {}
    b: dict = {}
    level = _level()
    outputs = phase == "outputs"
    self_obj = args[0] if plan.has_self and args else None
    try:
        # a return's failure: the arguments passed on entry, and fn may have written to them
        # since (x.mul_(100)), so only their shapes are walked again, for the dims' provenance
        self_obj = _check.check_inputs(plan, args, kwargs, SHAPES if outputs else level, prov, b)[1]
    except Fail as again:
        if not outputs:
            fail = again  # the explain pass sees the same first failure, now with provenance
    except Exception:
        pass
    for k, v in bound or ():
        if k not in b:
            b[k], prov[k] = v, "a contracts.check in the call"
    if outputs:
        try:
            _check.check_outputs(plan, out, b, self_obj, level, prov)
        except Fail as again:
            fail = again
        except Exception:
            pass
    return _error(plan.qualname, fail, _Call(plan, args, kwargs, out), prov, b)


def _level() -> int:
    """The mode the failure was found in: the explain pass checks what that mode checks (in
    ``shapes`` mode an argument's unchecked value range must not become the culprit)."""
    return FULL if state.level == OFF else state.level


def explain_check(
    fail: Fail, slot: Slot, value: Any, ctx: tuple | None, given: dict | None
) -> ContractError:
    """The ContractError of a failed ``contracts.check`` (inside the call ``ctx`` or alone)."""
    prov: dict = {}
    b: dict = {}
    self_obj = None
    if ctx is not None:
        plan, b_now, self_obj, args, kwargs = ctx
        try:
            _check.check_inputs(plan, args, kwargs, _level(), prov, b)
        except Exception:
            pass
        for k, v in b_now.items():  # bound by earlier checks in this call
            if k not in b:
                b[k], prov[k] = v, "an earlier contracts.check"
        call, function = _Call(plan, args, kwargs, None), plan.qualname
    else:
        for k, v in (given or {}).items():
            b[k], prov[k] = v, "bindings="
        call, function = _Call(None, (), {}, None), "contracts.check"
    call.extra[slot.name] = (slot, value)
    try:
        deferred: list = []
        pending: list = []
        allow_empty = ctx[0].allow_empty if ctx is not None else False
        _check.check_slot(slot, value, b, prov, deferred, pending, _level(), self_obj, allow_empty)
        _check.finish(deferred, pending, b, self_obj)
    except Fail as again:
        fail = again
    return _error(function, fail, call, prov, b)


# --------------------------------------------------------------------------------------------
# words for checks compiled into a graph (torch.compile): fixed while tracing, so no values
# that are only known when the graph runs


def compiled_words(plan: Plan) -> dict[str, dict[str, str]]:
    """The fixed words of every slot's compiled checks, made once at decoration (so tracing
    reads strings and never formats the plan's numbers, which Dynamo may make symbolic)."""
    return {s.name: slot_words(plan.qualname, s) for s in plan.params + plan.returns}


def slot_words(function: str, slot: Slot) -> dict[str, str]:
    """The fixed words of one slot's compiled checks (see :func:`compiled_words`)."""
    where = f"{function}(): {_slot_words(slot, slot.name)}"
    w = {"where": where, "tensor": f"{where}: expected a torch.Tensor"}
    spec = slot.tensor
    if spec is not None:
        n = len(spec.dims) if spec.var_at < 0 else spec.n_before + spec.n_after
        least = "" if spec.var_at < 0 else "at least "
        w["rank"] = f"{where}: expected {least}{n} axes {spec.shape_words()}"
        w["tensor"] += f" {spec.shape_words()} {dtype_words(spec)}"
        if slot.each is not None:
            kind = getattr(slot.each, "__name__", str(slot.each))
            w["sequence"] = f"{where}: expected a {kind} of {w['tensor'].split('expected a ')[1]}"
            w["tensor"] = (
                f"{where}: every element: expected a {w['tensor'].split('expected a ')[1]}"
            )
        w["dtype"] = f"{where}: expected dtype {dtype_words(spec)}"
        w["values"] = f"{where}: expected {_values_want(spec)} (checked on the device)"
        if spec.mask_axis is not None:  # allow_empty: an empty mask axis under rows
            w["mask_empty"] = (
                f"{where}: expected {_mask_want(spec.mask_axis, spec.mask_padding)}, got an "
                "empty axis (size 0)"
            )
        n_dims = len(spec.dims)
        for j, d in enumerate(spec.dims):  # axis from the end after a variadic entry
            axis = j if spec.var_at < 0 or j < spec.var_at else j - n_dims
            w[f"size{j}"] = f"{where}, axis {axis}: expected size {d}"
            w[f"empty{j}"] = f"{where}, axis {axis}: expected a non-empty axis (size ≥ 1)"
    return w


def _values_want(spec: TensorSpec) -> str:
    if spec.mask_axis is not None:
        return _mask_want(spec.mask_axis, spec.mask_padding)
    if spec.lo is None and spec.hi is None:
        return "finite values (no NaN/Inf)"
    lo = "-∞" if spec.lo is None else getattr(spec.lo, "source", spec.lo)
    hi = "∞" if spec.hi is None else getattr(spec.hi, "source", spec.hi)
    return f"values in {'(' if spec.lo is None else '['}{lo}, {hi}{')' if spec.hi is None else ']'}"
