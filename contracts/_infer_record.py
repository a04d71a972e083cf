"""Recording for contract inference: run a model on sample batches with hooks on its modules.

Every hooked call is stored as a :class:`Call`: the module's dotted path, its class, and every
tensor reachable in its inputs (bound to the forward's parameter names) and outputs (through
tuples, lists and dicts) as a :class:`Leaf` with shape, dtype and a few value statistics. The
statistics are reduced on the tensor's device and fetched once per batch (one host sync), and a
tensor seen by several hooks (one module's output is the next one's input) is reduced once.

Example:
    >>> rec = record(InferTarget(model, [batch1, batch2]))
    >>> rec.calls[0][0].inputs["features"].shape
    (2, 20, 6)
"""

from __future__ import annotations

import contextlib
import fnmatch
import gc
import inspect
import math
import weakref
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ._errors import TorchdxError

__all__ = ["Call", "InferError", "InferTarget", "Leaf", "Recording", "record"]

MAX_DEPTH = 3  # how deep into nested tuples / dicts leaves are collected


class InferError(TorchdxError, ValueError):
    """Bad input to contract inference (target, batches, or a model that raises)."""

    __module__ = "contracts.infer"


@dataclass
class InferTarget:
    """What a ``--target`` factory of ``python -m contracts.infer`` returns.

    Args:
        model: the ``nn.Module`` to observe.
        batches: at least two sample inputs (two or more with different batch sizes and
            lengths, so that the dims that vary can be told apart from fixed sizes).
        forward: ``forward(model, batch)``; default ``model(**batch)`` for a dict,
            ``model(*batch)`` for a tuple or list, ``model(batch)`` otherwise.

    Example:
        >>> InferTarget(nn.Linear(4, 3), [torch.randn(2, 4), torch.randn(5, 4)])
        InferTarget(Linear, 2 batches)
    """

    model: nn.Module
    batches: Sequence[Any]
    forward: Callable[[nn.Module, Any], Any] | None = None

    __module__ = "contracts"

    def __repr__(self) -> str:
        n = len(self.batches) if isinstance(self.batches, Sequence) else "?"
        return f"InferTarget({type(self.model).__name__}, {n} batches)"


def validate_target(obj: Any, where: str) -> InferTarget:
    """Check what a factory returned; raise :class:`InferError` naming what is wrong."""
    if not isinstance(obj, InferTarget):
        raise InferError(
            f"{where} returned {type(obj).__name__}, expected contracts.InferTarget(model, "
            "batches, forward=None)"
        )
    if not isinstance(obj.model, nn.Module):
        raise InferError(
            f"{where}: InferTarget.model is {type(obj.model).__name__}, expected a torch.nn.Module"
        )
    if isinstance(obj.batches, (str, bytes, torch.Tensor)) or not isinstance(obj.batches, Sequence):
        raise InferError(
            f"{where}: InferTarget.batches is {type(obj.batches).__name__}, expected a list of "
            "sample inputs"
        )
    if len(obj.batches) == 0:
        raise InferError(f"{where}: InferTarget.batches is empty; give at least two sample batches")
    if obj.forward is not None and not callable(obj.forward):
        raise InferError(f"{where}: InferTarget.forward is not callable")
    return obj


@dataclass
class Leaf:
    """One tensor (or a non-tensor value) found in a call's inputs or outputs."""

    shape: tuple[int, ...] | None  # None for a non-tensor
    dtype: torch.dtype | None
    kind: str  # "float", "complex", "int", "bool", or the Python type name of a non-tensor
    stat: int = -1  # index into the batch's statistics (-1: none)
    lo: float | None = None  # filled after the batch: min (real and imaginary parts for complex)
    hi: float | None = None  # max
    mask_ok: bool | None = None  # bool tensors: every row along the last axis has a True

    @property
    def is_tensor(self) -> bool:
        return self.shape is not None

    @property
    def finite(self) -> bool | None:
        if self.lo is None or self.hi is None:
            return None
        return math.isfinite(self.lo) and math.isfinite(self.hi)


@dataclass
class Call:
    """One hooked module call."""

    path: str  # dotted module path, "" for the root
    cls: type
    module: nn.Module
    inputs: dict[str, Leaf] = field(default_factory=dict)  # "features", "x[0]", "cfg['k']"
    outputs: dict[str, Leaf] = field(default_factory=dict)  # "return", "return[0]", ...
    out_kind: str = "none"  # "single", "tuple", "dict", "none", "other"
    out_keys: tuple = ()  # tuple indices or dict keys of a depth-1 tuple / dict output
    params: tuple[str, ...] = ()  # bound parameter names (in signature order)
    var_params: frozenset[str] = frozenset()  # *args / **kwargs parameter names
    done: bool = False
    failed: bool = False  # its inputs could not be read: left out


@dataclass
class Recording:
    """Calls per batch, in call order (a parent before its children)."""

    calls: list[list[Call]]
    hooked: list[tuple[str, type]]
    seconds: float = 0.0
    errors: list[str] = field(default_factory=list)  # calls left out, with why


def _kind(t: torch.Tensor) -> str:
    if t.dtype == torch.bool:
        return "bool"
    if t.is_complex():
        return "complex"
    if t.is_floating_point():
        return "float"
    return "int"


class _Stats:
    """Value statistics of one batch, reduced on device and fetched with one sync per device
    and dtype: ``(min, max)`` for numbers (real and imaginary parts for complex), ``(any row
    empty?, -)`` for bool."""

    def __init__(self) -> None:
        self.lo: list[torch.Tensor] = []
        self.hi: list[torch.Tensor] = []
        self.leaves: list[list[Leaf]] = []
        self._seen: dict[int, tuple[weakref.ref, int, int]] = {}

    def add(self, t: torch.Tensor, leaf: Leaf) -> None:
        key = id(t)
        hit = self._seen.get(key)
        if hit is not None and hit[0]() is t and hit[1] == t._version:
            leaf.stat = hit[2]
            self.leaves[hit[2]].append(leaf)
            return
        if t.numel() == 0 or t.is_meta:
            return
        try:
            x = t.detach()  # no autograd graph, whatever the grad mode
            if x.dtype == torch.bool:
                lo = hi = x.any(-1).all() if x.dim() >= 1 else x  # every row has a True
            else:
                if x.is_complex():
                    x = torch.view_as_real(x)
                if x.dtype in (torch.float16, torch.bfloat16) and x.device.type == "cpu":
                    x = x.float()
                lo, hi = torch.aminmax(x)
        except Exception:  # sparse, quantized, ...: shape and dtype only
            return
        idx = len(self.lo)
        self.lo.append(lo)
        self.hi.append(hi)
        self.leaves.append([leaf])
        leaf.stat = idx
        try:
            self._seen[key] = (weakref.ref(t), t._version, idx)
        except TypeError:  # not weak-referenceable: no cache
            pass

    def fetch(self) -> None:
        """Fill ``lo``/``hi``/``mask_ok`` of every leaf (one transfer per device and dtype)."""
        groups: dict[tuple[torch.device, torch.dtype], list[int]] = {}
        for i, t in enumerate(self.lo):
            groups.setdefault((t.device, t.dtype), []).append(i)
        for idxs in groups.values():
            lo = torch.stack([self.lo[i] for i in idxs]).tolist()
            hi = torch.stack([self.hi[i] for i in idxs]).tolist()
            for i, a, b in zip(idxs, lo, hi, strict=True):
                for leaf in self.leaves[i]:
                    if leaf.kind == "bool":
                        leaf.mask_ok = bool(a)
                        leaf.lo, leaf.hi = 0.0, 1.0
                    else:
                        leaf.lo, leaf.hi = float(a), float(b)
        self._seen.clear()


def _leaves(value: Any, name: str, stats: _Stats, out: dict[str, Leaf], depth: int = 0) -> None:
    if isinstance(value, torch.Tensor):
        try:
            shape = tuple(int(n) for n in value.shape)
        except Exception:  # nested or otherwise shapeless tensors
            out[name] = Leaf(None, None, "Tensor without a shape")
            return
        leaf = Leaf(shape, value.dtype, _kind(value))
        stats.add(value, leaf)
        out[name] = leaf
    elif depth < MAX_DEPTH and isinstance(value, (tuple, list)):
        out[name] = Leaf(None, None, type(value).__name__)
        for i, v in enumerate(value):
            _leaves(v, f"{name}[{i}]", stats, out, depth + 1)
    elif depth < MAX_DEPTH and isinstance(value, Mapping):
        out[name] = Leaf(None, None, type(value).__name__)
        for k, v in value.items():
            _leaves(v, f"{name}[{k!r}]", stats, out, depth + 1)
    else:
        out[name] = Leaf(None, None, type(value).__name__)


@dataclass
class _Sig:
    """A forward's signature, with what a fast bind needs."""

    sig: inspect.Signature
    positional: tuple[str, ...]  # positional-or-keyword names after self
    keywords: frozenset[str]  # names that may be given by keyword
    var: frozenset[str]  # *args / **kwargs names
    order: tuple[str, ...]  # every parameter name after self, in order


def _signature(cls: type, cache: dict[type, _Sig | None]) -> _Sig | None:
    if cls not in cache:
        try:
            sig = inspect.signature(cls.forward)
        except (TypeError, ValueError):
            cache[cls] = None
            return None
        params = list(sig.parameters.values())[1:]  # without self
        P = inspect.Parameter
        cache[cls] = _Sig(
            sig,
            tuple(p.name for p in params if p.kind in (P.POSITIONAL_ONLY, P.POSITIONAL_OR_KEYWORD)),
            frozenset(
                p.name for p in params if p.kind in (P.POSITIONAL_OR_KEYWORD, P.KEYWORD_ONLY)
            ),
            frozenset(p.name for p in params if p.kind in (P.VAR_POSITIONAL, P.VAR_KEYWORD)),
            tuple(p.name for p in params),
        )
    return cache[cls]


def _bind(sg: _Sig, mod: nn.Module, args: tuple, kwargs: dict) -> dict[str, Any] | None:
    """Arguments by parameter name (in signature order), or None when they don't fit."""
    if len(args) <= len(sg.positional):
        named = dict(zip(sg.positional, args))
        if not kwargs:
            return named
        for k in kwargs:
            if k not in sg.keywords or k in named:
                break
        else:
            named.update(kwargs)
            return {k: named[k] for k in sg.order if k in named}
    try:
        bound = sg.sig.bind(mod, *args, **kwargs)
    except TypeError:
        return None
    return dict(list(bound.arguments.items())[1:])  # without self


def _matches(path: str, cls: type, patterns: Sequence[str] | None) -> bool:
    if not patterns:
        return True
    return any(
        fnmatch.fnmatchcase(path, p) or fnmatch.fnmatchcase(cls.__name__, p) for p in patterns
    )


@contextlib.contextmanager
def frozen_gc() -> Iterator[None]:
    """Inference allocates many small objects; without this the cycle collector would walk every
    long-lived object (torch, the model) again and again. Objects made inside stay collectable;
    a process that froze its own objects already is left as it is."""
    if gc.get_freeze_count():
        yield
        return
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


def default_forward(model: nn.Module, batch: Any) -> Any:
    """``model(**batch)`` for a dict, ``model(*batch)`` for a tuple/list, else ``model(batch)``."""
    if isinstance(batch, Mapping):
        return model(**batch)
    if isinstance(batch, (tuple, list)):
        return model(*batch)
    return model(batch)


def record(
    target: InferTarget,
    modules: Sequence[str] | None = None,
    progress: Callable[[Sequence[Any]], Any] | None = None,
) -> Recording:
    """Run ``target.model`` on every batch (under ``torch.no_grad()``) with hooks on its modules.

    Hooks go on every module whose dotted path or class name matches one of ``modules`` (glob
    patterns; all modules when empty) and are removed even when the model raises, which is
    re-raised as :class:`InferError` naming the batch and the innermost module being run.
    """
    import time

    model = target.model
    fwd = target.forward or default_forward
    sigs: dict[type, _Sig | None] = {}
    hooked = [(p, m) for p, m in model.named_modules() if _matches(p, type(m), modules)]
    if not hooked:
        raise InferError(
            f"--modules {' '.join(modules or [])!s}: no module of {type(model).__name__} "
            "matches (patterns match dotted paths like 'encoder.layers.0' or class names)"
        )
    state: dict[str, Any] = {"calls": [], "stats": None}
    errors: list[str] = []  # calls the hooks could not read (left out, never raised)
    stack: list[Call] = []

    def pre(path: str) -> Callable:
        def hook(mod: nn.Module, args: tuple, kwargs: dict) -> None:
            call = Call(path, type(mod), mod)
            stack.append(call)
            try:  # a hook never breaks the forward: a call it cannot read is left out
                sg = _signature(type(mod), sigs)
                named = _bind(sg, mod, args, kwargs) if sg is not None else None
                if named is not None:
                    call.var_params = sg.var  # type: ignore[union-attr]
                else:
                    named = {f"arg{i}": a for i, a in enumerate(args)} | dict(kwargs)
                    call.var_params = frozenset(named)
                call.params = tuple(named)
                for k, v in named.items():
                    _leaves(v, k, state["stats"], call.inputs)
            except Exception as e:
                call.failed = True
                errors.append(f"{path or '(root)'} inputs: {type(e).__name__}: {e}")
                return
            state["calls"].append(call)

        return hook

    def post(mod: nn.Module, args: tuple, kwargs: dict, output: Any) -> None:
        for i in range(len(stack) - 1, -1, -1):
            if stack[i].module is mod:
                call = stack.pop(i)
                break
        else:  # pragma: no cover - a hook pair always matches
            return
        if call.failed:
            return
        try:
            if isinstance(output, torch.Tensor):
                call.out_kind = "single"
            elif isinstance(output, tuple):
                call.out_kind, call.out_keys = "tuple", tuple(range(len(output)))
            elif isinstance(output, Mapping):
                call.out_kind, call.out_keys = "dict", tuple(output.keys())
            elif output is None:
                call.out_kind = "none"
            else:
                call.out_kind = "other"
            _leaves(output, "return", state["stats"], call.outputs)
            call.done = True
        except Exception as e:
            errors.append(f"{call.path or '(root)'} outputs: {type(e).__name__}: {e}")

    handles = []
    all_calls: list[list[Call]] = []
    t0 = time.perf_counter()
    with frozen_gc():
        try:
            for path, m in hooked:
                try:
                    h = m.register_forward_pre_hook(pre(path), with_kwargs=True)
                except Exception as e:  # e.g. a scripted module: not observable, left out
                    errors.append(f"{path or '(root)'}: no hooks: {type(e).__name__}: {e}")
                    continue
                handles.append(h)
                handles.append(m.register_forward_hook(post, with_kwargs=True))
            items = progress(target.batches) if progress is not None else target.batches
            for b, batch in enumerate(items):
                state["calls"], state["stats"] = [], _Stats()
                stack.clear()
                try:
                    with torch.no_grad():
                        fwd(model, batch)
                except Exception as e:
                    where = ""
                    if stack:
                        inner = stack[-1]
                        where = f" inside '{inner.path or '(root)'}' ({inner.cls.__name__})"
                    msg = str(e).strip().splitlines()[0] if str(e).strip() else ""
                    raise InferError(
                        f"the model raised on batch {b}{where}: {type(e).__name__}: {msg}"
                    ) from e
                state["stats"].fetch()
                all_calls.append([c for c in state["calls"] if c.done])
        finally:
            for h in handles:
                h.remove()
            stack.clear()
    return Recording(
        all_calls,
        [(p, type(m)) for p, m in hooked],
        seconds=time.perf_counter() - t0,
        errors=errors,
    )
