"""The fast path of the checker: call signatures already seen are not walked again.

A signature is what the shape walk of :mod:`contracts._check` depends on: for every checked
argument its shape and dtype (tensors) or its class (anything else), plus the values read off
``self`` (``dims=`` and shape dims like ``"B self.n"``). The walk stays the reference: a new signature is walked (so a failure raises the
very same ``Fail``) and remembered when it passes; ``tests/contracts/test_fast_path.py`` checks
that both decide alike.
"""

from __future__ import annotations

import inspect
import re
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
from ._config import FULL, OFF, SHAPES, state
from ._inline import add_wrapper_code
from ._inputs import FAILED, explain_failure
from ._plan import Plan, TensorSpec
from ._spec import Expr
from ._values import (
    _INLINE_MAX,
    _LIST_MASK,
    _limits,
    cpu_value_check,
    remember_extrema,
    remember_mask,
    widened,
)

__all__ = ["compile_checker", "compile_wrapper", "judge_fused"]


_ATTRIBUTES = re.compile(r"self(\.[A-Za-z_][A-Za-z_0-9]*)+")  # a dim read straight off self
_CACHE_MAX = 256  # distinct input signatures remembered per contract
_NO_VALUE = object()


def compile_checker(plan: Plan) -> tuple[Callable, Callable, dict]:
    """The checker of one plan, with a cache of the call signatures that already passed.

    Returns ``(inputs, outputs, cache)``: ``inputs(args, kwargs, level) -> (bindings, self,
    entry)`` and ``outputs(out, bindings, self, level, entry)``, both raising :class:`Fail`, and
    the signature cache they share (read by :func:`compile_wrapper`; None when the plan always
    walks).

    A signature is what the shape walk depends on: for every checked argument its shape and
    dtype (tensors) or its class (anything else), plus the values read off ``self`` (``dims=``,
    and shape dims that read only ``self``, like ``"B self.n"``). A signature seen before gives
    its bindings back without a walk; a new one is walked by :func:`check_inputs` (so a failure
    raises the very same :class:`Fail`) and remembered when it passes; a key that cannot be
    hashed walks. Value constraints never come from the signature cache: in ``full`` mode they
    are decided every call, on the CPU tensor by tensor (``_values``, which remembers extrema
    and mask verdicts per tensor object and version), elsewhere fused per device with one host
    read. Returns are cached the same way, per input signature, with the dims they bind.
    Ranges on Python numbers are checked every call in ``full`` mode. Plans whose checks depend
    on more than classes and ``self`` (beartype hints, f-string dims, a shape dim mixing ``self``
    with other dims, a list or tuple of tensors) always take the walk.
    """
    params = plan.params
    has_self = plan.has_self
    key_self = _key_self(plan)
    eligible = (
        not plan.uses_args
        and not any(s.each is not None for s in (*params, *plan.returns))  # elements: walked
        and key_self is not None
        and all(s.tensor is not None or s.plain_tensor or _plain_class(s.pyhint) for s in params)
        and all(
            s.tensor is not None or s.plain_tensor or (s.pyrange is None and _plain_class(s.pyhint))
            for s in plan.returns
        )
    )
    # ranges on Python numbers depend on the value, not the class: checked every call (full)
    py_ranges = tuple(s for s in params if s.tensor is None and s.pyrange is not None)
    # a positional-only parameter is looked up in kwargs under None (no keyword is None):
    # the name there belongs to **kwargs
    slots = tuple(
        (
            s.position,
            s.name if s.keyword else None,
            s.default is not inspect.Parameter.empty,
            s.default,
            s.optional,
        )
        for s in params
    )
    value_slots = tuple(
        (s.name if s.keyword else None, s)
        for s in params
        if s.tensor is not None and s.tensor.has_values
    )
    single = plan.return_kind == "single"
    single_values = single and plan.returns[0].tensor is not None
    single_values = single_values and plan.returns[0].tensor.has_values
    cache: dict[tuple, tuple[dict, dict]] = {}
    cpu_ok: dict[str, Callable] = {}  # per slot: its CPU value check, specialised once
    tensor = torch.Tensor

    def signature(args: tuple, kwargs: dict) -> tuple | None:
        key: list = []
        if key_self:
            self_obj = args[0] if args else None
            try:
                for e in key_self:
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
        for name, s in value_slots:
            pos = s.position
            if 0 <= pos < nargs:
                x = args[pos]
            else:
                x = kwargs.get(name, s.default)
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
                    ok = cpu_ok[slot.name] = cpu_value_check(slot.tensor)
                try:
                    good = ok(x, b, self_obj)
                except Exception:  # a layout these checks do not read (sparse, quantized)
                    good = False
                if not good:
                    pending: list = []
                    values_pending(slot, x, pending)
                    judge_values(pending, b, self_obj)
            return
        judge_fused(items, b, self_obj)

    def inputs(args: tuple, kwargs: dict, level: int) -> tuple[dict, Any, Any]:
        if not eligible:
            b, self_obj = check_inputs(plan, args, kwargs, level, None)
            return b, self_obj, None
        try:
            key = signature(args, kwargs)
        except Exception:  # a tensor without one shape (nested): the walk words it
            key = None
        if key is None:
            b, self_obj = check_inputs(plan, args, kwargs, level, None)
            return b, self_obj, None
        self_obj = args[0] if has_self and args else None
        try:
            entry = cache.get(key)
        except TypeError:  # a value read off self that cannot be hashed: walk
            b, self_obj = check_inputs(plan, args, kwargs, level, None)
            return b, self_obj, None
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
                    name = slot.name if slot.keyword else None
                    x = args[pos] if 0 <= pos < nargs else kwargs.get(name, slot.default)
                    check_pyrange(slot, x, b, self_obj)
            if value_slots:
                judge(values_of(args, kwargs), b, self_obj)
        return b, self_obj, entry

    def outputs(out: Any, b: dict, self_obj: Any, level: int, entry: Any) -> None:
        if entry is None:
            check_outputs(plan, out, b, self_obj, level, None)
            return
        n = len(entry[0])
        # dims that contracts.check bound inside the call join the return's signature
        extra = tuple(list(b.items())[n:]) if len(b) != n else ()
        try:
            if single and out.__class__ is tensor:
                okey: tuple = (out.shape, out.dtype)
                values = [(plan.returns[0], out)] if level == FULL and single_values else ()
            else:
                items = returned_items(plan, out)
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
        except Exception:  # a wrong container (Fail), a tensor without one shape (nested)
            check_outputs(plan, out, b, self_obj, level, None)  # raises the worded Fail
            return
        if extra:
            okey = (okey, extra)
        seen = entry[1]
        try:
            added = seen.get(okey)
        except TypeError:  # a binding that cannot be hashed: walk
            check_outputs(plan, out, b, self_obj, level, None)
            return
        if added is None:
            n = len(b)
            check_outputs(plan, out, b, self_obj, SHAPES, None)  # values follow
            if len(seen) < _CACHE_MAX:
                seen[okey] = dict(list(b.items())[n:])  # the dims the return bound
        elif added:
            b.update(added)
        if values:
            judge(values, b, self_obj)

    return inputs, outputs, (cache if eligible else None)


def judge_fused(items: Any, b: dict, self_obj: Any) -> None:
    """The reference judge of ``(slot, tensor)`` pairs: their reductions queued, then read with
    one host sync per device (what a call on an accelerator pays); raises :class:`Fail`."""
    pending: list = []
    for slot, x in items:
        values_pending(slot, x, pending)
    if pending:
        judge_values(pending, b, self_obj)


def _key_self(plan: Plan) -> tuple[Expr, ...] | None:
    """What the signature key reads off ``self``, in key order: the ``dims=`` expressions, then
    the shape dims that read ``self`` (``Float[Tensor, "B self.n"]``; the walk's verdict depends
    on their values). None when a shape dim reads ``self`` and other dims (``"self.k*T"``): its
    value is known only inside the walk, so such a plan walks every call."""
    out: list[Expr] = [e for _name, e in plan.self_dims]
    for s in (*plan.params, *plan.returns):
        for d in s.tensor.dims if s.tensor is not None else ():
            e = d.value
            if isinstance(e, Expr) and e.uses_self:
                if e.names:
                    return None
                if e not in out:
                    out.append(e)
    return tuple(out)


def _plain_class(hint: Any) -> bool:
    return hint is None or (isinstance(hint, type) and typing.get_origin(hint) is None)


def compile_wrapper(
    plan: Plan, cache: dict | None, generic: Callable, check_out: Callable, explain: Callable
) -> Callable | None:
    """A wrapper generated for one plan's common calls, or None when the plan has none.

    A common call passes its arguments positionally (trailing ones with defaults may be left
    out), every tensor argument a plain tensor, its signature already in ``cache`` (that of
    :func:`compile_checker`), and returns what the contract says (a tensor, a tuple or a dict
    of plain tensors and numbers) with a signature seen before. The generated code has one
    branch per accepted number of arguments and inlines what ``generic`` does for such a call:
    no nested calls, no loops over slots. Any other call, and any doubt on the CPU (a signature
    not seen, a value check that does not surely pass), goes to ``generic``, the reference
    wrapper, before ``fn`` runs, so failures raise the very same errors. Value checks on a
    device are judged fused here (one host read per device), and a failure is worded by
    ``explain`` as ``generic`` would. Only a return the fast code doubts is handed to
    ``check_out`` (``fn`` has run).

    The signature key built here equals the one :func:`compile_checker` caches for the same call
    (tensors: shape and dtype; other values: their class; self dims first).
    """
    params = plan.params
    if cache is None or not params or any(s.position < 0 for s in params):
        return None
    if plan.return_kind == "single" and plan.returns[0].tensor is None:
        return None
    if any(
        s.default is not inspect.Parameter.empty and isinstance(s.default, torch.Tensor)
        for s in params
    ):
        return None
    n = max(s.position for s in params) + 1
    first = min(s.position for s in params)
    required = max(
        (s.position + 1 for s in params if s.default is inspect.Parameter.empty), default=first
    )
    env: dict[str, Any] = {
        "fn": plan.fn,
        "generic": generic,
        "check_out": check_out,
        "check_pyrange": check_pyrange,
        "judge_fused": judge_fused,
        "explain": explain,
        "Fail": Fail,
        "PLAN": plan,
        "cache_get": cache.get,
        "state": state,
        "OFF": OFF,
        "FULL": FULL,
        "is_compiling": torch.compiler.is_compiling,
        "Tensor": torch.Tensor,
        "FAILED": FAILED,
        "explain_failure": explain_failure,
    }
    L = ["def wrapper(*args, **kwargs):"]
    a = L.append
    a("    __tracebackhide__ = True")
    a("    level = state.level")
    a("    if level == OFF:")
    a("        return fn(*args, **kwargs)")
    a("    nargs = len(args)")
    a(f"    if kwargs or nargs < {required} or nargs > {n} or is_compiling():")
    a("        return generic(*args, **kwargs)")
    self_key = []
    key_self = _key_self(plan) or ()
    if key_self:  # the same values, in the same order, as compile_checker's key
        a("    try:")
        for k, e in enumerate(key_self):
            if _ATTRIBUTES.fullmatch(e.source):  # "self.cfg.d_model": read as written
                a(f"        d{k} = args[0]{e.source[4:]}")
            else:
                env[f"dfn{k}"] = e.fn
                a(f"        d{k} = dfn{k}({{}}, args[0])")
            self_key.append(f"d{k}")
        a("    except Exception:")
        a("        return generic(*args, **kwargs)  # the walk words it")
    for arity in range(n, required - 1, -1):
        a(f"    {'if' if arity == n else 'elif'} nargs == {arity}:")
        L += ["        " + line for line in _arity_branch(plan, arity, self_key, env)]
    a("    return generic(*args, **kwargs)")
    code = compile("\n".join(L), f"<contract of {plan.qualname}>", "exec")
    exec(code, env)
    add_wrapper_code(env["wrapper"].__code__)  # where contracts.check finds its call
    return env["wrapper"]


def _arity_branch(plan: Plan, arity: int, self_key: list[str], env: dict) -> list[str]:
    """The body of :func:`compile_wrapper` for calls passing ``arity`` positional arguments."""
    L: list[str] = []
    a = L.append
    present = [s for s in plan.params if s.position < arity]
    tensors = [s for s in present if s.tensor is not None or s.plain_tensor]
    key = list(self_key)
    for s in plan.params:
        x = f"x{s.position}"
        if s.position >= arity:  # left out: its default, a constant
            env[f"D{s.position}"] = s.default.__class__
            key.append(f"D{s.position}")
        elif s.tensor is not None or s.plain_tensor:
            key += [f"{x}.shape", f"{x}.dtype"]
        else:  # a plain class: the class decides
            key.append(f"{x}.__class__")
    for s in present:
        a(f"x{s.position} = args[{s.position}]")
    if tensors:
        a("if " + " or ".join(f"x{s.position}.__class__ is not Tensor" for s in tensors) + ":")
        a("    return generic(*args, **kwargs)")
    a("try:")
    a(f"    entry = cache_get(({', '.join(key)},))")
    a("except Exception:  # a value off self that cannot be hashed, a nested tensor: the walk")
    a("    return generic(*args, **kwargs)")
    a("if entry is None:")
    a("    return generic(*args, **kwargs)  # walks, and caches the signature if it passes")
    a("b = entry[0].copy()")
    a("nb = len(b)")
    a("self_obj = args[0]" if plan.has_self else "self_obj = None")
    valued = [s for s in tensors if s.tensor is not None and s.tensor.has_values]
    # a range on a Python number, passed or left to its default (checked like one passed: a
    # bound may read self or the call's dims)
    ranged = [s for s in plan.params if s.tensor is None and s.pyrange is not None]
    if valued or ranged:
        a("if level == FULL:")
        for s in ranged:  # the value decides, every call
            k = s.position
            env[f"S{k}"] = s
            x = f"x{k}"
            if k >= arity:  # left to its default: a constant of this branch
                x = f"DV{k}"
                env[x] = s.default
            pad = "    "
            r = s.pyrange
            if not (isinstance(r.lo, Expr) or isinstance(r.hi, Expr)):  # number bounds: inline
                env[f"LO{k}"], env[f"HI{k}"] = _limits(r.lo, r.hi)  # NaN and inf fall through
                a(f"    c = {x}.__class__")
                a(f"    if not ((c is int or c is float) and LO{k} <= {x} <= HI{k}):")
                pad = "        "
            a(f"{pad}try:")
            a(f"{pad}    check_pyrange(S{k}, {x}, b, self_obj)")
            a(f"{pad}except Fail:")
            a(f"{pad}    return generic(*args, **kwargs)")
        if valued:
            for s in valued:
                env[f"S{s.position}"] = s
            pairs = ", ".join(f"(S{s.position}, x{s.position})" for s in valued)
            a("    if not (" + " and ".join(f"x{s.position}.is_cpu" for s in valued) + "):")
            a("        try:  # on a device: the reductions fused, one host read per device")
            a(f"            judge_fused(({pairs},), b, self_obj)")
            a("        except Fail as f:")
            a("            raise explain(PLAN, f, args, kwargs) from None")
            a("    else:")
        for s in valued:
            a("        try:")
            L += _inline_values(s.tensor, f"x{s.position}", f"{s.position}", env, "            ")
            a("        except Exception:  # a layout the CPU checks do not read (sparse)")
            a("            good = False")
            a("        if not good:")
            a("            return generic(*args, **kwargs)  # the reference judges and words it")
    a("plan = PLAN")
    a("try:")
    a("    out = fn(*args)  # contracts.check inside fn reads plan, b, self_obj, args from here")
    a("except FAILED as err:  # an input torch refused: a device or dtype the module lacks?")
    a("    explain_failure(PLAN, err, args, kwargs)")
    a("    raise")
    if plan.return_kind != "none":
        a("nc = len(b)  # the dims bound so far (arguments, then contracts.check in fn)")
        L += _return_lines(plan, env)
    a("return out")
    return L


def _return_lines(plan: Plan, env: dict) -> list[str]:
    """The return check of :func:`compile_wrapper`: a signature of the returned values seen
    before (the same key :func:`compile_checker` builds), then their CPU value checks; any
    other return goes to ``check_out`` (the reference), which raises the worded error."""
    slots, kind = plan.returns, plan.return_kind
    L: list[str] = []
    a = L.append
    if kind == "single":
        names = ["out"]
        a("if out.__class__ is Tensor:")
    elif kind == "tuple":
        names = [f"r{i}" for i in range(len(slots))]
        a(f"if out.__class__ is tuple and len(out) == {len(slots)}:")
        a(f"    {', '.join(names)}, = out")
    else:  # a dict: a missing key reads as a sentinel no cached signature holds
        names = [f"r{i}" for i in range(len(slots))]
        env["MISSING"] = _NO_VALUE
        a("if out.__class__ is dict:")
        for i, key in enumerate(plan.return_keys):
            env[f"K{i}"] = key
            a(f"    r{i} = out.get(K{i}, MISSING)")
    tensors = [
        (s, r) for s, r in zip(slots, names, strict=True) if s.tensor is not None or s.plain_tensor
    ]
    key: list[str] = []
    for s, r in zip(slots, names, strict=True):
        key += (
            [f"{r}.shape", f"{r}.dtype"]
            if (s.tensor is not None or s.plain_tensor)
            else [f"{r}.__class__"]
        )
    pad = "    "
    if kind != "single" and tensors:  # (single: tested above)
        a("    if " + " and ".join(f"{r}.__class__ is Tensor" for _, r in tensors) + ":")
        pad = "        "
    a(f"{pad}try:")
    a(f"{pad}    okey = ({', '.join(key)},)")
    a(f"{pad}    if nc != nb:  # dims a contracts.check in fn bound join the key (as in outputs)")
    a(f"{pad}        okey = (okey, tuple(list(b.items())[nb:]))")
    a(f"{pad}    added = entry[1].get(okey)")
    a(f"{pad}except Exception:  # a binding that cannot be hashed, a nested tensor: the reference")
    a(f"{pad}    added = None")
    valued = [(s, r) for s, r in tensors if s.tensor is not None and s.tensor.has_values]
    if not valued:
        a(f"{pad}if added is not None:")
        a(f"{pad}    return out")
    else:
        a(f"{pad}if added is not None and level != FULL:")
        a(f"{pad}    return out")
        a(f"{pad}if added is not None:")
        if any(isinstance(s.tensor.lo, Expr) or isinstance(s.tensor.hi, Expr) for s, _ in valued):
            a(f"{pad}    if added:")
            a(f"{pad}        b.update(added)")
        for i, (s, _r) in enumerate(valued):
            env[f"SR{i}"] = s
        pairs = ", ".join(f"(SR{i}, {r})" for i, (_s, r) in enumerate(valued))
        a(f"{pad}    if not (" + " and ".join(f"{r}.is_cpu" for _, r in valued) + "):")
        a(f"{pad}        try:  # on a device: fused, one host read per device")
        a(f"{pad}            judge_fused(({pairs},), b, self_obj)")
        a(f"{pad}        except Fail as f:")
        a(f"{pad}            bound = list(b.items())[:nc]")
        a(f"{pad}            raise explain(plan, f, args, kwargs, out, 'outputs', bound) from None")
        a(f"{pad}        return out")
        a(f"{pad}    passed = True")
        for i, (s, r) in enumerate(valued):
            a(f"{pad}    try:")
            L += _inline_values(s.tensor, r, f"R{i}", env, pad + "        ")
            a(f"{pad}    except Exception:  # a layout the CPU checks do not read (sparse)")
            a(f"{pad}        good = False")
            a(f"{pad}    passed = passed and good")
        a(f"{pad}    if passed:")
        a(f"{pad}        return out")
    a("try:")
    a("    check_out(out, b, self_obj, level, entry)")
    a("except Fail as f:")
    a("    bound = list(b.items())[:nc]  # what the return was judged against")
    a("    raise explain(plan, f, args, kwargs, out, 'outputs', bound) from None")
    return L


def _inline_values(spec: TensorSpec, var: str, tag: str, env: dict, pad: str) -> list[str]:
    """Lines setting ``good`` to :func:`cpu_value_check`'s verdict on ``var``. While the check
    does not look up (its gate is closed), the small float-range and 2-D mask cases are
    written out, and what they find is remembered as the check would; every other case calls
    the check."""
    ok = env[f"ok{tag}"] = cpu_value_check(spec)
    call = f"good = ok{tag}({var}, b, self_obj)"
    kind = getattr(ok, "inline", None)  # None: bounds from bindings, a plain call
    if kind is not None and kind[0] == "range":
        env["aminmax"], env["INLINE_MAX"] = torch.aminmax, _INLINE_MAX
        env[f"lo{tag}"], env[f"hi{tag}"] = kind[1], kind[2]
        env["remember_extrema"], env["widened"] = remember_extrema, widened
        small = [
            "if 1 < n < INLINE_MAX:",
            "    try:",
            f"        mn, mx = aminmax({var}.detach() if {var}.requires_grad else {var})",
            "    except (RuntimeError, NotImplementedError):  # float8, uint16+: widened",
            f"        mn, mx = aminmax(widened({var}.detach()))",
            "    mn, mx = mn.item(), mx.item()",
            f"    good = lo{tag} <= mn and mx <= hi{tag}  # NaN compares False",
            f"    remember_extrema({var}, mn, mx)",
        ]
    elif kind is not None and spec.var_at < 0 and len(spec.dims) == 2:  # a [rows, cols] mask
        axis, padding = kind[1], kind[2]
        rows = f"{var}.tolist()" if axis in (1, -1) else f"zip(*{var}.tolist())"
        env["LIST_MASK"] = _LIST_MASK
        env["remember_mask"], env[f"C{tag}"] = remember_mask, ok.constraint
        small = [
            "if 0 < n <= LIST_MASK:",
            f"    rows = {rows}",
            f"    good = {'not any(map(all, rows))' if padding else 'all(map(any, rows))'}",
            "    if good:",
            f"        remember_mask({var}, C{tag})",
        ]
    else:
        return [pad + call]
    env[f"gate{tag}"], env[f"values{tag}"] = ok.gate, ok.values
    lines = [f"if gate{tag}[0]:", f"    gate{tag}[0] -= 1", f"    n = {var}.numel()"]
    lines += ["    " + line for line in small]
    lines += [
        "    else:",
        f"        good = values{tag}({var}, b, self_obj)",
        "else:",
        f"    {call}",
    ]
    return [pad + line for line in lines]
