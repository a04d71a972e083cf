"""The explainer: every word of a contract failure, in one place.

Runs only after a check has failed, so it may be slow and thorough: it re-runs the checker with
provenance tracking (where each dim binding came from), words the failure (expected, actual), and
looks for a hint (a transposed argument, an inverted mask, a dtype cast, an off-by-one bound).
Tensors are described by the project's one formatter, :func:`contracts.summarize`.
"""

from __future__ import annotations

import ast
import inspect
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
from ._spec import FIXED, NAME, Expr, ExprError
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


# jaxtyping's dtype classes in words, when the annotation accepts the whole class
_CATEGORY_WORDS = {
    "Int": "signed integer",
    "UInt": "unsigned integer",
    "Integer": "integer",
    "Complex": "complex",
    "Num": "numeric",
    "Real": "integer or float",
    "Inexact": "float or complex",
}
_FLOATS = ("float16", "bfloat16", "float32", "float64")


def _dtype_list(names: frozenset[str]) -> str:
    """The torch dtypes of ``names``, grouped: ``"uint8/16/32/64, int8/16/32/64"``."""
    parts = ["bool"] if "bool" in names else []
    for family in ("uint", "int"):
        bits = [b for b in (8, 16, 32, 64) if f"{family}{b}" in names]
        if bits:
            parts.append(family + "/".join(map(str, bits)))
    floats = [n for n in _FLOATS if n in names]
    if floats:
        parts.append("/".join(floats))
    parts += sorted(n for n in names if n.startswith("float8"))
    complexes = [n for n in ("complex32", "complex64", "complex128") if n in names]
    if complexes:
        parts.append("/".join(complexes))
    return ", ".join(parts)


def dtype_words(spec: TensorSpec) -> str:
    """``"float (float16/bfloat16/float32/float64)"``, ``"signed integer (int8/16/32/64)"``,
    ``"bool"``, ``"any dtype"``, ``"float32"``: what the annotation accepts, in words that list
    exactly the dtypes it accepts (``Int`` refuses uint8, ``Integer`` takes it)."""
    names, category = spec.dtypes, spec.category
    if names is None:
        return "any dtype"
    if names == FLOAT_NAMES or category == "Float":
        return "float (float16/bfloat16/float32/float64)"
    if category == "Bool":
        return "bool"
    known = frozenset(_dtype(d) for d in _check.torch_dtypes(names))
    listed = _dtype_list(known)
    if category in _CATEGORY_WORDS and len(known) > 1:
        return f"{_CATEGORY_WORDS[category]} ({listed})"
    return listed.replace(", ", "/")


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
    text = f"{name}{path} = {short_repr(part, 100)} does not satisfy {_hint_words(part_hint)}"
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


def short_repr(x: Any, limit: int = 60) -> str:
    """``repr(x)`` cut to about ``limit`` characters, with every tensor in it (also inside a
    list, tuple or dict) summarized on one line instead of printed whole."""
    if isinstance(x, torch.Tensor):
        return summarize(x)
    if isinstance(x, (list, tuple, dict)) and _holds_tensor(x):
        if isinstance(x, dict):
            shown = [f"{k!r}: {short_repr(v, limit)}" for k, v in list(x.items())[:3]]
            left, right = "{", "}"
        else:
            shown = [short_repr(v, limit) for v in x[:3]]
            left, right = ("(", ")") if isinstance(x, tuple) else ("[", "]")
        if len(x) > 3:
            shown.append(f"… ({len(x)} items)")
        return left + ", ".join(shown) + right
    r = repr(x)
    return r[:limit] + "…" if len(r) > limit else r


def _holds_tensor(x: Any) -> bool:
    values = x.values() if isinstance(x, dict) else x
    return any(isinstance(v, (torch.Tensor, list, tuple, dict)) for v in values)


def describe_value(x: Any) -> str:
    """A short, never-whole description of an argument value (tensors summarized)."""
    if isinstance(x, torch.Tensor):
        return summarize(x)
    if x is None:
        return "None"
    return f"{type(x).__name__} {short_repr(x)}"


_DENSE_MAX = 1 << 24  # a sparse tensor up to this many elements is made dense to locate values


def _comparable(x: torch.Tensor) -> tuple[torch.Tensor, str]:
    """``x`` as a strided tensor torch compares, and how its indices read: a sparse tensor
    made dense when small enough (else its stored values, and a zero for the unstored ones:
    ``"stored values"``), a quantized one dequantized, float8 and wide unsigned dtypes
    widened."""
    v = x.detach()
    where = ""
    if v.layout is not torch.strided:
        if v.numel() <= _DENSE_MAX:
            v = v.to_dense()
        else:
            v, where = _check.readable(v), "stored values"
    if v.is_quantized:
        v = v.dequantize()
    if v.dtype in UNREDUCED:  # comparisons torch does not implement for these dtypes
        v = widened(v)
    return v, where


def value_details(x: torch.Tensor, lo: float | None, hi: float | None) -> tuple[str, dict]:
    """Count and locate the values of ``x`` outside ``[lo, hi]`` or non-finite (for a complex
    tensor: the elements with a non-finite part, or a part outside the bounds)."""
    with torch.no_grad():
        v, where = _comparable(x)
        part = 0
        if v.is_complex():  # judged per element: a bad real or imaginary part makes it bad
            v, part = torch.view_as_real(v), 1
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
        if part:
            bad, nan = bad.any(-1), nan.any(-1)
            posinf, neginf = posinf.any(-1), neginf.any(-1)
        n_bad = int(bad.sum())
        idx = bad.nonzero()
        first = tuple(int(i) for i in idx[0]) if len(idx) else None
        finite = ~(nan | posinf | neginf)
        fv = v[finite]
        info = {
            "count": n_bad,
            "numel": bad.numel(),
            "nan": int(nan.sum()),
            "+inf": int(posinf.sum()),
            "-inf": int(neginf.sum()),
            "min": fv.min().item() if fv.numel() and not part else None,
            "max": fv.max().item() if fv.numel() and not part else None,
            "first_bad_index": first,
        }
    parts = [f"{n_bad} of {info['numel']} {where or 'values'} outside it"]
    nonfin = [
        f"{info[k]} {k.upper() if k == 'nan' else k.replace('inf', 'Inf')}"
        for k in ("nan", "+inf", "-inf")
        if info[k]
    ]
    if nonfin:
        parts.append("non-finite: " + ", ".join(nonfin))
    if info["min"] is not None:
        parts.append(f"finite min={_fmt(info['min'])}, max={_fmt(info['max'])}")
    if first is not None and not where:
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
    if x.layout is not torch.strided:  # a sparse mask: its rows, made dense
        x = x.to_dense()
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
    if code == "expr_error":
        e = d["error"]
        why = str(e) if isinstance(e, ExprError) else f"{type(e).__name__}: {e}"
        return f"size {d['expr'].source}", f"{d['got']} (the size cannot be evaluated: {why})", None
    if code == "nested":
        spec = d["spec"]
        return (
            f"a tensor {spec.shape_words()}",
            "a nested tensor (its components differ in size: it has no one shape to check)",
            "check each component (contracts.check in a loop over .unbind()), or pass a padded "
            "tensor and a mask",
        )
    if code == "none":
        if f.slot == "return":  # (not return[0]: a tuple's element is no missing return)
            hint = (
                "the function returned None: a missing return statement? (annotate the "
                "return `X | None` if None is meaningful)"
            )
        else:
            hint = f"{f.slot} is not Optional; annotate it `X | None` if None is meaningful"
        return f"a tensor {d['spec'].shape_words()}", "None", hint
    if code == "not_sequence":
        spec, x = d["spec"], d["value"]
        kind = getattr(d["each"], "__name__", str(d["each"]))
        return (
            f"a {kind} of torch.Tensor {spec.shape_words()} {dtype_words(spec)}",
            type(x).__name__,
            None,
        )
    if code == "dict_key":
        key = d["key"]
        return f"keys of type {_hint_words(d['hint'])}", f"key {key!r} ({type(key).__name__})", None
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
        elif spec.category in ("Int", "Integer") and (d["floating"] or got.is_complex):
            hint = f"use {f.slot}.long()"
        elif spec.category == "Int" and got.is_signed is False and got != torch.bool:
            hint = f"Int is jaxtyping's signed integers; use {f.slot}.long(), or annotate Integer"
        elif spec.category == "Float" and not d["floating"]:
            hint = f"use {f.slot}.float()"
        return f"dtype {dtype_words(spec)}", _dtype(got), hint
    if code == "plain_tensor":
        return "a torch.Tensor", type(d["value"]).__name__, None
    if code == "pytype":
        x = d["value"]
        return (
            _hint_words(d["hint"]),
            f"{type(x).__name__} {short_repr(x, 70)}",
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
    if code == "mask_axis":
        spec, shape = d["spec"], d["shape"]
        axis = spec.mask_axis
        least = axis + 1 if axis >= 0 else -axis
        return (
            f"a mask with an axis {axis} to check (at least {least} axes) {spec.shape_words()}",
            f"{len(shape)} axes {list(shape)}",
            None,
        )
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

    def _direct(self, name: str) -> Slot | None:
        if name in self.extra:
            return self.extra[name][0]
        return self.plan.slot(name) if self.plan is not None else None

    def _element(self, name: str) -> tuple[Slot, Any] | None:
        """``(container slot, index or key)`` for an element name (``"xs[3]"``,
        ``"feats['a']"``, ``"return[0][1]"``; see ``Slot.element``), else None."""
        if not name.endswith("]"):
            return None
        for i, c in enumerate(name):
            if c != "[":
                continue
            seq = self._direct(name[:i])
            if seq is None or seq.each is None:
                continue
            try:
                return seq, ast.literal_eval(name[i + 1 : -1])
            except (ValueError, SyntaxError):
                return None
        return None

    def slot(self, name: str) -> Slot | None:
        direct = self._direct(name)
        if direct is not None:
            return direct
        element = self._element(name)
        return element[0].element(element[1]) if element is not None else None

    def is_default(self, name: str) -> bool:
        """Whether argument ``name`` was left to its default in this call."""
        slot = self._direct(name)
        if slot is None or name in self.extra or name.startswith("return") or slot.position < -1:
            return False
        return not (0 <= slot.position < len(self.args) or (slot.keyword and name in self.kwargs))

    def value(self, name: str) -> Any:
        if name in self.extra:
            return self.extra[name][1]
        plan = self.plan
        slot = self._direct(name)
        if slot is None:
            element = self._element(name)
            if element is None:
                return _MISSING
            try:
                return self.value(element[0].name)[element[1]]
            except Exception:
                return _MISSING
        if plan is None:
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
        if slot.keyword and name in self.kwargs:
            return self.kwargs[name]
        if slot.default is not inspect.Parameter.empty:
            return slot.default
        return _MISSING


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
        axes = f"{fail.axis}"
        if fail.code == "variadic":  # the axes it spans, as its binding's provenance reads
            axes += f":{fail.axis + len(fail.data['got'])}"
        lines.append(
            f"  {dim}={bindings[dim]} from {prov[dim]}, but {fail.slot}.shape[{axes}]={actual}"
        )
    if value is not _MISSING:
        default = " (its default)" if call.is_default(fail.slot) else ""
        lines.append(f"  {fail.slot}{default}: {describe_value(value)}")
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
    if slot.tensor is None and not slot.plain_tensor:  # a Python value
        w["pytype"] = f"{where}: expected {_hint_words(slot.pyhint)}"
        if slot.pyrange is not None:
            w["pyrange"] = f"{where}: expected a value in {slot.pyrange.describe()}"
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
        if spec.mask_axis is not None:  # "*b T": the rank the checked axis needs
            axis = spec.mask_axis
            w["mask_axis"] = (
                f"{where}: expected a mask with an axis {axis} to check (at least "
                f"{axis + 1 if axis >= 0 else -axis} axes) {spec.shape_words()}"
            )
        if spec.mask_axis is not None:  # allow_empty: an empty mask axis under rows
            w["mask_empty"] = (
                f"{where}: expected {_mask_want(spec.mask_axis, spec.mask_padding)}, got an "
                "empty axis (size 0)"
            )
        n_dims = len(spec.dims)
        sizes, empties = [], []  # per entry of the shape (tuples: while tracing, Dynamo may
        for j, d in enumerate(spec.dims):  # hold an index as a symbol, which no key formats)
            axis = j if spec.var_at < 0 or j <= spec.var_at else j - n_dims  # from the end
            sizes.append(f"{where}, axis {axis}: expected size {d}")  # after a variadic entry
            empties.append(f"{where}, axis {axis}: expected a non-empty axis (size ≥ 1)")
        w["size"], w["empty"] = tuple(sizes), tuple(empties)  # type: ignore[assignment]
        if spec.var_at >= 0:  # the variadic entry's axes, from where they start
            w["variadic"] = f"{where}, axis {spec.var_at}: expected axes {spec.dims[spec.var_at]}"
    return w


def _values_want(spec: TensorSpec) -> str:
    if spec.mask_axis is not None:
        return _mask_want(spec.mask_axis, spec.mask_padding)
    if spec.lo is None and spec.hi is None:
        return "finite values (no NaN/Inf)"
    lo = "-∞" if spec.lo is None else getattr(spec.lo, "source", spec.lo)
    hi = "∞" if spec.hi is None else getattr(spec.hi, "source", spec.hi)
    return f"values in {'(' if spec.lo is None else '['}{lo}, {hi}{')' if spec.hi is None else ']'}"
