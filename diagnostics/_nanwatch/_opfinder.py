"""The op finder: a ``TorchDispatchMode`` that names the first aten op producing NaN/Inf.

Besides the producer rule it knows two sources of non-finite values that are not produced by
an op from finite inputs:

- memory allocated uninitialised (``empty``, ``new_empty``, ``empty_like``, ``empty_strided``,
  ...) holds whatever was there before: such an allocation is never the producer. It is
  remembered, and when an op reads non-finite values from it before it was overwritten, that
  op is named together with the allocation (``uninit``); an allocation that still holds
  non-finite values when the pass ends is named on its own (``leftover``);
- a parameter, buffer or step input that already held NaN/Inf before the step (``params``):
  the first op whose non-finite output comes from it is named (``param_use``; one whose output
  holds NaN from a source holding NaN is preferred: an Inf source is often a mask).
"""

from __future__ import annotations

import math
import weakref
from typing import Any

import torch
from torch import Tensor
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from .._hooks import amax_abs, max_abs, tensors_in
from .._summary import summarize
from ._numerics import is_producer, kind_of
from ._source import Site, from_node, from_stack, source_of

__all__ = ["UNINITIALIZED_OPS", "OpFinder"]

# ops whose result is uninitialised memory (aten overload packet names)
UNINITIALIZED_OPS = frozenset(
    {
        "empty",
        "empty_like",
        "new_empty",
        "empty_strided",
        "new_empty_strided",
        "empty_permuted",
    }
)
# ops that pass values through unchanged besides views (copies, casts): a non-finite value they
# pass on is followed to the op that uses it
_PASS_THROUGH = frozenset(
    {"clone", "_to_copy", "contiguous", "detach", "alias", "lift_fresh", "lift_fresh_copy"}
)
# in-place ops that write every element of their target whatever it held
_OVERWRITES = frozenset(
    {
        "fill_",
        "zero_",
        "copy_",
        "normal_",
        "uniform_",
        "random_",
        "bernoulli_",
        "exponential_",
        "geometric_",
        "log_normal_",
        "cauchy_",
    }
)


def _storage(t: Tensor) -> int | None:
    try:
        return t.untyped_storage().data_ptr()
    except Exception:  # sparse, nested, tensor subclasses without a plain storage
        return None


def _all_finite(t: Tensor) -> bool:
    if not (t.is_floating_point() or t.is_complex()) or t.numel() == 0:
        return True
    return bool(torch.isfinite(t).all())


def _amax_or_none(t: Tensor) -> Tensor | None:
    if (t.is_floating_point() or t.is_complex()) and t.numel() and not t.is_sparse:
        return amax_abs(t)
    return None


def _input_line(t: Tensor, before: Tensor | None) -> str:
    """The summary of an op's input, read after the op ran: an input the op wrote into (an
    in-place op, batch norm's running statistics) is marked with its max|x| before the op."""
    line = summarize(t)
    if before is None:
        return line
    b, a = float(before), float(amax_abs(t))
    if b == a or (math.isnan(a) and math.isnan(b)):
        return line
    return f"{line}  (written by this op; max|x| before it: {b:.4g})"


class OpFinder(TorchDispatchMode):
    """Runs every aten op and stops at the first one that *produces* NaN/Inf (one sync per op).

    Args:
        backward_only: check only ops run by autograd nodes (the backward op pass).
        record_forward: with ``backward_only``, also remember the first *forward* op producing
            NaN/Inf (``fwd_found``): a value the forward masked (``torch.where(h > 0,
            h.sqrt(), 0)``) whose gradient is non-finite all the same.
        stop: the code object of the op pass's own frame: the source line is looked for only in
            the frames inside it (the module re-run), so an op of a torch built-in module is not
            attributed to whatever user code called the op pass.
        site: the user line that called the module in the replay, used when no frame inside
            the module is user code (``nn.Linear``, ``nn.LayerNorm``, ...).
        params: ``{storage pointer: name}`` of the parameters (buffers, step inputs) holding
            non-finite values.
        where: a callable naming the module running now (the whole-step pass), or None.
    """

    def __init__(
        self,
        backward_only: bool = False,
        *,
        record_forward: bool = False,
        stop: Any = None,
        site: Site | None = None,
        params: dict[int, str] | None = None,
        where: Any = None,
    ) -> None:
        super().__init__()
        self.where = where
        self.backward_only = backward_only
        self.record_forward = record_forward
        self.fwd_found: dict[str, Any] | None = None
        self.stop = stop
        self.site = site
        self.params = params or {}
        self.found: dict[str, Any] | None = None
        self.param_use: dict[str, Any] | None = None
        self.param_use_nan: dict[str, Any] | None = None
        self.uninit_read: dict[str, Any] | None = None
        self._uninit: dict[int, tuple[Any, str, Any]] = {}  # storage -> (weakref, op, source)
        self.constant_ops: list[str] = []
        self.n_ops = 0

    def _source(self, node: Any) -> dict[str, Any] | None:
        """Forward: the user line running now; backward: the forward line that made the node;
        either within the op pass's module call, else the line that called the module."""
        src = from_stack(self.stop) if node is None else from_node(node, self.stop)
        return src if src is not None else source_of(self.site)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[override]
        kwargs = kwargs or {}
        node = torch._C._current_autograd_node()
        forward_only = self.backward_only and node is None  # a forward op in a backward pass
        check = self.found is None and (
            not forward_only or (self.record_forward and self.fwd_found is None)
        )
        if check:
            flat_in, _ = tree_flatten((args, kwargs))
            tin = [a for a in flat_in if isinstance(a, Tensor)]
            # before the op (in-place ops, and kernels such as batch norm's that update an
            # argument, overwrite inputs): per input, then their max
            pre = [_amax_or_none(t) for t in tin]
            vals = [v for v in pre if v is not None]
            in_m = None
            if vals:
                dev = vals[0].device
                in_m = vals[0] if len(vals) == 1 else torch.stack([v.to(dev) for v in vals]).amax()
        out = func(*args, **kwargs)
        if not check:
            return out
        self.n_ops += 1
        packet = func.overloadpacket.__name__
        if packet in UNINITIALIZED_OPS:  # never a producer: remember what it allocated
            self._allocated(out, str(func).replace("::", "."), node)
            return out
        if self._uninit:
            self._overwritten(func, packet, args, kwargs)
        touts = [t for t in tensors_in(out) if t.is_floating_point() or t.is_complex()]
        if not touts:
            return out
        out_m = float(max_abs(touts))
        if math.isfinite(out_m):
            return out
        in_v = 0.0 if in_m is None else float(in_m)
        name = str(func).replace("::", ".")
        if not is_producer(in_v, out_m):  # non-finite in, non-finite out: a consumer
            through = func.is_view or packet in _PASS_THROUGH or packet == "copy_"
            if self.params:
                self._param_read(name, tin, touts, node, through)
            if self._uninit:
                self._uninit_read(name, tin, touts, node, through)
            return out
        if any(isinstance(a, float) and not math.isfinite(a) for a in flat_in):
            self.constant_ops.append(name)  # masked_fill(m, -inf), full(-inf): a mask, not a fault
            return out
        found = self._finding(name, tin, touts, node, pre)
        found["from_finite"] = math.isfinite(in_v)  # not NaN made of an Inf input
        if self._uninit:  # finite but arbitrary values read from uninitialised memory
            alloc = self._uninit_input(tin, finite=True)
            if alloc is not None:
                found["uninit"] = alloc
        if forward_only:
            self.fwd_found = found
        else:
            self.found = found
        return out

    def _finding(
        self,
        name: str,
        tin: list[Tensor],
        touts: list[Tensor],
        node: Any,
        pre: list[Tensor | None] | None = None,
    ) -> dict[str, Any]:
        nan = any(bool(torch.isnan(t).any()) for t in touts)
        return {
            "op": name + (f" in {node.name()}" if node is not None else ""),
            "phase": "backward" if node is not None else "forward",
            "kind": kind_of(nan, not nan or any(bool(torch.isinf(t).any()) for t in touts)),
            "inputs": [_input_line(t, pre[i] if pre else None) for i, t in enumerate(tin[:6])],
            "outputs": [summarize(t) for t in touts][:4],
            "source": self._source(node),
            "module": self.where() if self.where is not None else None,
        }

    # -- parameters holding non-finite values -----------------------------------------------
    def _param_read(
        self, name: str, tin: list[Tensor], touts: list[Tensor], node: Any, through: bool
    ) -> None:
        """An op whose non-finite output comes from a parameter (buffer, step input) that held
        NaN/Inf: a view, copy or cast passes it on (its output is followed); the first other op
        is named, and the first one making NaN of a source holding NaN (an Inf source is often
        a mask, a NaN one never)."""
        srcs = [
            (pname, t)
            for t in tin
            if (pname := self.params.get(_storage(t))) is not None and not _all_finite(t)
        ]  # the parameter, a view or a copy of it
        if not srcs:
            return
        if through:
            for o in touts:
                key = _storage(o)
                if key is not None:
                    self.params.setdefault(key, srcs[0][0])
            return
        nan_src = next((p for p, t in srcs if bool(torch.isnan(t).any())), None)
        nan = (
            self.param_use_nan is None
            and nan_src is not None
            and any(bool(torch.isnan(o).any()) for o in touts)
        )
        if self.param_use is None or nan:
            use = self._finding(name, tin, touts, node)
            use["param"] = nan_src if nan else srcs[0][0]
            self.param_use = self.param_use or use
            if nan:
                self.param_use_nan = use

    # -- uninitialised memory ---------------------------------------------------------------
    def _allocated(self, out: Any, name: str, node: Any) -> None:
        for t in tensors_in(out):
            key = _storage(t)
            if key is not None and (t.is_floating_point() or t.is_complex()):
                self._uninit[key] = (weakref.ref(t), name, self._source(node))

    def _overwritten(self, func: Any, packet: str, args: Any, kwargs: Any) -> None:
        """Forget an allocation that an op writes whole (``fill_``, ``copy_``, ``out=``)."""
        written = []
        if packet in _OVERWRITES and args and isinstance(args[0], Tensor):
            written.append(args[0])
        out = kwargs.get("out")
        written += tensors_in(out) if out is not None else []
        for t in written:
            key = _storage(t)
            entry = self._uninit.get(key) if key is not None else None
            base = entry[0]() if entry is not None else None
            if base is not None and t.data_ptr() == base.data_ptr() and t.numel() >= base.numel():
                del self._uninit[key]

    def _uninit_read(
        self, name: str, tin: list[Tensor], touts: list[Tensor], node: Any, through: bool
    ) -> None:
        """An op whose non-finite output comes from uninitialised memory: a view, copy or cast
        passes it on (its output is followed); the first other op is named."""
        alloc = self._uninit_input(tin, finite=False)
        if alloc is None:
            return
        if through:
            for o in touts:
                key = _storage(o)
                if key is not None and key not in self._uninit:
                    self._uninit[key] = (weakref.ref(o), alloc["op"], alloc["source"])
        elif self.uninit_read is None:
            self.uninit_read = self._finding(name, tin, touts, node)
            self.uninit_read["uninit"] = alloc

    def _uninit_input(self, tin: list[Tensor], *, finite: bool) -> dict[str, Any] | None:
        """The allocation an input was read from (a non-finite input, unless ``finite``)."""
        for t in tin:
            key = _storage(t)
            entry = self._uninit.get(key) if key is not None else None
            if entry is None or entry[0]() is None:  # freed: the pointer may be reused
                continue
            if finite or not _all_finite(t):
                return {"op": entry[1], "source": entry[2]}
        return None

    def leftover(self) -> dict[str, Any] | None:
        """An uninitialised allocation that still holds non-finite values (never fully
        written): the source of a module output that no op produced."""
        for ref, name, src in self._uninit.values():
            t = ref()
            if t is not None and not _all_finite(t):
                return {"op": name, "source": src}
        return None

    def result(self) -> dict[str, Any] | None:
        """The finding: the producing op; else the first op that read a non-finite parameter
        or uninitialised memory (``param_use`` / ``uninit``); else None."""
        if self.found is not None:
            return self.found
        return self.param_use_nan or self.param_use or self.uninit_read
