"""The recorder: hooks on every module and parameter recording max|x| on the device."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from .._hooks import HookSet, amax_abs
from ._compiled import clean_name, is_compile_wrapper
from ._numerics import RngState, dense, is_producer, tensors_of
from ._source import Site, caller_site

__all__ = ["Call", "Recorder", "autocast_state", "changed_since_recorded"]

_RECENT = 4  # module outputs remembered for the next module's input


@dataclass
class Call:
    """One module call seen by the recorder (replay keeps references for the op pass)."""

    name: str
    module: nn.Module
    args: Any = None
    kwargs: Any = None
    outputs: Any = None
    rng: RngState | None = None
    grad_enabled: bool = True
    out_dtype: torch.dtype | None = None
    grad_output: Any = None
    grad_input: Any = None
    # replay only (keep_refs): the user line that called the module, which call of the module
    # this is (1-based, forward order), and the (tensor, version) of its inputs and outputs when
    # recorded: a later in-place write shows as a changed version (then the localizer takes a
    # copy of them in one more replay: snap_args / snap_kwargs / snap_outputs)
    site: Site | None = None
    index: int = 1  # 0: a recompute inside backward (activation checkpointing)
    seen: list[tuple[Tensor, int]] | None = None
    snap_args: Any = None
    snap_kwargs: Any = None
    snap_outputs: Any = None
    snapped: bool = False
    grad_fns: list[Any] | None = None  # autograd nodes of its outputs (to match its backward)
    autocast: tuple[tuple[str, torch.dtype], ...] = ()  # (device type, dtype) enabled at the call
    parent: Call | None = None  # replay only: the module call running when this one began
    # replay only: (buffer, copy) of the buffers in the module's subtree that the step writes in
    # place (BatchNorm's running statistics), as they were when the call began: its op pass
    # runs from them, not from what the rest of the replay left
    buffers: list[tuple[Tensor, Tensor]] | None = None
    in_max: float | None = None  # max|x| of its inputs (set by ``Recorder.analyze``)


_AUTOCAST_DEVICES = ("cuda", "cpu")


def autocast_state() -> tuple[tuple[str, torch.dtype], ...]:
    """The autocast regions the caller runs in, ``((device type, dtype), ...)``."""
    return tuple(
        (d, torch.get_autocast_dtype(d)) for d in _AUTOCAST_DEVICES if torch.is_autocast_enabled(d)
    )


def _versions(tensors: list[Tensor]) -> list[tuple[Tensor, int]]:
    out = []
    for t in tensors:
        try:
            out.append((t, t._version))
        except RuntimeError:  # inference tensors keep no version counter
            pass
    return out


def changed_since_recorded(call: Call) -> bool:
    """Whether an input or output of ``call`` was written in place after the recorder saw it
    (by the module itself, or later in the step): its recorded values are gone."""
    return any(t._version != v for t, v in call.seen or ())


_Pair = tuple[Tensor, Tensor]  # (min, max) of a set of tensors, float32 scalars, NaN-propagating


def _lohi(t: Tensor) -> _Pair:
    """(min, max) of one floating/complex tensor as float32 scalars (one ``aminmax``)."""
    t = t.detach()
    if t.is_complex():
        t = t.abs()
    if t.dtype == torch.float64:  # beyond float32's range: clamp the finite, keep the rest
        v = amax_abs(t)
        return v.neg(), v
    lo, hi = torch.aminmax(t)
    if t.dtype != torch.float32:
        lo, hi = lo.float(), hi.float()
    return lo, hi


def _pop_open(stack: list[Call], call: Call) -> None:
    """Remove ``call`` (by identity) from the stack of running calls; it is the last one unless
    a module's forward raised inside another's."""
    for i in range(len(stack) - 1, -1, -1):
        if stack[i] is call:
            del stack[i:]
            return


class Recorder:
    """Hooks on every module (+ parameters) recording max|x| of inputs/outputs/grads on device.

    Each value is kept as the (min, max) pair ``torch.aminmax`` gives (one read of the tensor,
    NaN-propagating); max|x| = max(-min, max) is formed for all events at once in
    :meth:`stacked`, which also makes the step's one host read possible. Event kinds: ``fwd``
    (in, out), ``gout`` (grad_output), ``gin`` (grad_input), ``gparam``.
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        keep_refs: bool,
        backward: bool,
        params: bool = True,
        mutable: list[Tensor] | None = None,
    ) -> None:
        self.model = model
        self._mutable = {id(b) for b in mutable or ()}  # keep_refs: buffers written in place
        self.keep_refs = keep_refs
        self.backward = backward
        self.params = params
        self.events: list[tuple[str, Call, str]] = []  # (kind, call, detail)
        self._values: list[Tensor] = []  # four float32 scalars per event (in lo/hi, out lo/hi)
        self.device: torch.device | None = None
        self._zero: Tensor | None = None
        self._stack: dict[int, list[tuple[Call | None, _Pair]]] = {}
        self._bstack: dict[int, list[tuple[Call, _Pair]]] = {}
        self._last_call: dict[int, Call] = {}
        self._last_gout: dict[int, _Pair] = {}
        self._calls: dict[int, Call] = {}  # without keep_refs: one Call per module, reused
        # keep_refs only: calls per module (count, and the forward calls whose backward has not
        # run yet: backward runs them in reverse creation order, so the last one is next)
        self.ncalls: dict[int, int] = {}
        self._pending: dict[int, list[Call]] = {}
        self.calls_of: dict[int, list[Call]] = {}
        self._plan: list[tuple[Any, ...]] | None = None
        self._open: list[Call] = []  # keep_refs only: the module calls running now, outermost first
        # the last few module outputs and their values: a module's input is usually the output
        # of the module called just before it, so its value is known without a reduction.
        # (tensor, version) are kept so that an id reused by a new tensor or an in-place change
        # is never mistaken for a hit; a handful of references, freed with the recorder
        self._recent: dict[int, tuple[Tensor, int, _Pair]] = {}

    def _remember(self, tensors: list[Tensor], value: _Pair) -> None:
        if len(tensors) != 1:
            return
        t = tensors[0]
        if len(self._recent) >= _RECENT:
            del self._recent[next(iter(self._recent))]  # oldest first (insertion order)
        self._recent[id(t)] = (t, t._version, value)

    def _input_value(self, tensors: list[Tensor]) -> _Pair:
        if tensors:
            t = tensors[0]
            hit = self._recent.get(id(t))
            if hit is not None and hit[0] is t and hit[1] == t._version:
                if len(tensors) == 1 or all(x is t for x in tensors[1:]):
                    return hit[2]
        return self._value(tensors)

    def _zero_on(self, device: torch.device) -> Tensor:
        if self._zero is None or self._zero.device != device:
            self._zero = torch.zeros((), device=device)
        return self._zero

    def _value(self, tensors: list[Tensor]) -> _Pair:
        """(min, max) over the floating/complex tensors, on the recorder's device (no sync)."""
        fl = [t for t in tensors if (t.is_floating_point() or t.is_complex()) and t.numel()]
        if not fl:  # (the device is learned from the first floating tensor)
            z = self._zero_on(self.device or torch.device("cpu"))
            return z, z
        if self.device is None:
            self.device = fl[0].device
        dev = self.device
        if len(fl) == 1:
            lo, hi = _lohi(fl[0])
        else:
            pairs = [_lohi(t) for t in fl]
            lo = torch.stack([p[0].to(dev) for p in pairs]).amin()
            hi = torch.stack([p[1].to(dev) for p in pairs]).amax()
        if lo.device != dev:
            lo, hi = lo.to(dev, non_blocking=True), hi.to(dev, non_blocking=True)
        return lo, hi

    def _event(self, kind: str, call: Call, detail: str, a: _Pair, b: _Pair) -> None:
        self.events.append((kind, call, detail))
        self._values += (a[0], a[1], b[0], b[1])

    def reset(self) -> None:
        """Forget the events of the last step (the hooks' plan is kept for the next install)."""
        self.events, self._values = [], []
        self._stack.clear()
        self._bstack.clear()
        self._last_call.clear()
        self._last_gout.clear()
        self._recent.clear()
        self.ncalls.clear()
        self._pending.clear()
        self.calls_of.clear()
        self._open.clear()

    def release(self) -> None:
        """Drop the references to recent module outputs (call when the step is over)."""
        self._recent.clear()
        self._stack.clear()
        self._open.clear()

    def _build_plan(self) -> list[tuple[Any, ...]]:
        plan = []
        for name, mod in self.model.named_modules():
            if is_compile_wrapper(mod):  # its original module (hooked below) does the work
                continue
            name = clean_name(name)
            if not self.keep_refs:
                self._calls[id(mod)] = Call(name, mod)
            bwd = (self._bpre(mod), self._bpost(mod)) if self.backward else None
            params = []
            if self.params:  # every parameter: which ones need grad is read at each install
                for pname, p in mod.named_parameters(prefix=name, recurse=False):
                    params.append((p, self._phook(mod, pname)))
            bufs = [b for b in mod.buffers() if id(b) in self._mutable] if self.keep_refs else []
            plan.append((mod, self._pre(name, bufs), self._post(name), bwd, params))
        return plan

    def install(self, hooks: HookSet) -> None:
        """Register every hook into ``hooks`` (the closures are built once per recorder; a
        parameter's hook only while it requires grad, read at each install)."""
        if self._plan is None:
            self._plan = self._build_plan()
        for mod, pre, post, bwd, params in self._plan:
            # first of the module's pre-hooks: its inputs are recorded as the caller passed them,
            # and a user's pre-hook runs once when the op pass calls the module again
            hooks.add(mod.register_forward_pre_hook(pre, with_kwargs=True, prepend=True), "fwd-pre")
            hooks.add(mod.register_forward_hook(post, with_kwargs=True), "fwd")
            if bwd is not None:
                hooks.add(mod.register_full_backward_pre_hook(bwd[0]), "bwd-pre")
                hooks.add(mod.register_full_backward_hook(bwd[1]), "bwd")
            for p, fn in params:
                if p.requires_grad:  # frozen or unfrozen since the last step: read now
                    hooks.add(p.register_hook(fn), "param")

    def _pre(self, name: str, bufs: list[Tensor]):
        def hook(mod: nn.Module, args: Any, kwargs: Any) -> None:
            if type(args) is tuple and len(args) == 1 and not kwargs and type(args[0]) is Tensor:
                tin = [args[0]]  # the common case, without walking containers
            else:
                tin = tensors_of(args) + tensors_of(kwargs) if kwargs else tensors_of(args)
            in_m = self._input_value(tin)
            call = None
            if self.keep_refs:
                call = Call(name, mod, grad_enabled=torch.is_grad_enabled())
                call.args, call.kwargs, call.rng = args, kwargs, RngState()
                call.site = caller_site()
                call.autocast = autocast_state()
                call.seen = _versions(tin)
                call.parent = self._open[-1] if self._open else None
                if bufs:
                    call.buffers = [(b, b.detach().clone()) for b in bufs]
                self._open.append(call)
                if torch._C._current_graph_task_id() == -1:  # not a recompute in backward
                    call.index = self.ncalls[id(mod)] = self.ncalls.get(id(mod), 0) + 1
                    self.calls_of.setdefault(id(mod), []).append(call)
                else:  # activation checkpointing: a forward re-run inside backward
                    call.index = 0
            self._stack.setdefault(id(mod), []).append((call, in_m))
            return None

        return hook

    def _post(self, name: str):
        def hook(mod: nn.Module, args: Any, kwargs: Any, output: Any) -> None:
            stack = self._stack.get(id(mod))
            if not stack:
                return None
            call, in_m = stack.pop()
            if call is None:
                call = self._calls[id(mod)]
            if type(output) is Tensor:
                touts = [output] if output.is_floating_point() or output.is_complex() else []
            else:
                touts = [t for t in tensors_of(output) if t.is_floating_point() or t.is_complex()]
            call.out_dtype = touts[0].dtype if touts else None
            if self.keep_refs:
                _pop_open(self._open, call)
                call.outputs = output
                outs = [output] if type(output) is Tensor else tensors_of(output)
                call.seen = (call.seen or []) + _versions(outs)
                if call.index and any(t.requires_grad for t in touts):  # its backward will run
                    call.grad_fns = [t.grad_fn for t in touts if t.grad_fn is not None]
                    self._pending.setdefault(id(mod), []).append(call)
            self._last_call[id(mod)] = call
            out_m = self._value(touts)
            self._remember(touts, out_m)
            self._event("fwd", call, "", in_m, out_m)
            return None

        return hook

    def _call_for(self, mod: nn.Module) -> Call:
        call = self._last_call.get(id(mod))
        if call is None:  # a module only reached through backward (should not happen)
            call = Call("?", mod)
        return call

    def _bwd_call(self, mod: nn.Module) -> Call:
        """The forward call whose backward starts now. For a module called several times (a
        shared module): the call whose outputs' autograd nodes the running backward-hook node
        feeds; else (none matched) its latest forward call whose backward has not run yet, as
        autograd runs the nodes of one device in reverse creation order."""
        pending = self._pending.get(id(mod))
        if not pending:
            return self._call_for(mod)
        idx = len(pending) - 1
        node = torch._C._current_autograd_node() if idx else None
        if node is not None:
            nexts = [f for f, _ in node.next_functions if f is not None]
            idx = next(
                (
                    i
                    for i in range(len(pending) - 1, -1, -1)
                    if any(f is g for g in pending[i].grad_fns or () for f in nexts)
                ),
                idx,
            )
        call = pending.pop(idx)
        self._last_call[id(mod)] = call  # parameter-gradient hooks fire after it
        return call

    def _bpre(self, mod: nn.Module):
        def hook(m: nn.Module, grad_output: Any) -> None:
            call = self._bwd_call(mod) if self.keep_refs else self._call_for(mod)
            v = self._value([g for g in grad_output if isinstance(g, Tensor)])
            self._bstack.setdefault(id(mod), []).append((call, v))
            self._last_gout[id(mod)] = v
            if self.keep_refs:
                call.grad_output = grad_output
            self._event("gout", call, "", v, v)
            return None

        return hook

    def _bpost(self, mod: nn.Module):
        def hook(m: nn.Module, grad_input: Any, grad_output: Any) -> None:
            stack = self._bstack.get(id(mod))
            call, gout = stack.pop() if stack else (self._call_for(mod), None)
            v = self._value([g for g in grad_input if isinstance(g, Tensor)])
            if self.keep_refs:
                call.grad_input = grad_input
            if gout is None:
                z = self._zero_on(v[0].device)
                gout = (z, z)
            self._event("gin", call, "", gout, v)
            return None

        return hook

    def _phook(self, mod: nn.Module, pname: str):
        def hook(grad: Tensor) -> None:
            call = self._call_for(mod)
            v = self._value([dense(grad)])  # a sparse gradient (Embedding(sparse=True))
            gout = self._last_gout.get(id(mod))
            if gout is None:  # no backward pre-hook ran (backward hooks off): assume finite
                z = self._zero_on(v[0].device)
                gout = (z, z)
            self._event("gparam", call, pname, gout, v)
            return None

        return hook

    def stacked(self) -> Tensor | None:
        """Every event's two max|x| values as one ``(E, 2)`` float32 tensor (no sync)."""
        if not self.events:
            return None
        dev = self.device or torch.device("cpu")
        vals = [v if v.device == dev else v.to(dev) for v in self._values]
        v = torch.stack(vals).reshape(-1, 2, 2)  # (E, in/out, lo/hi)
        return torch.maximum(v[..., 0].neg(), v[..., 1])  # (E, 2); NaN propagates

    def backward_from_grads(self, bad_params: list[str]) -> list[tuple[Call, str, float, float]]:
        """Backward candidates without backward hooks: the owners of the parameters whose
        gradient is non-finite, latest forward call first (backward runs in reverse, so a
        gradient that turned non-finite reaches every module called before its producer)."""
        owners: dict[str, str] = {}
        for pname in bad_params:
            owners.setdefault(pname.rpartition(".")[0], pname)
        out: list[tuple[Call, str, float, float]] = []
        for kind, call, _ in reversed(self.events):
            if kind == "fwd" and call.name in owners:
                out.append((call, owners.pop(call.name), 0.0, math.nan))
        return out

    def first_nonfinite_input(self, values: list[list[float]]) -> Call | None:
        """The first module to complete whose input held NaN/Inf (the innermost first user of
        a non-finite value that came into the model)."""
        for (kind, call, _), (a, _b) in zip(self.events, values, strict=False):
            if kind == "fwd" and not math.isfinite(a):
                return call
        return None

    def analyze(self, values: list[list[float]]) -> dict[str, Any]:
        """Producer candidates per phase from the synced event values."""
        fwd: list[tuple[Call, str, float, float]] = []
        bwd: list[tuple[Call, str, float, float]] = []
        headroom: list[tuple[str, float, float]] = []
        seen_head: set[str] = set()
        gout_of: dict[str, tuple[Call, float]] = {}  # module path -> its latest grad_output
        for (kind, call, detail), (a, b) in zip(self.events, values, strict=False):
            if kind == "fwd":
                call.in_max = a
                if is_producer(a, b):
                    fwd.append((call, "", a, b))
                dt = call.out_dtype
                if dt in (torch.float16, torch.bfloat16) and math.isfinite(b) and b > 0:
                    room = torch.finfo(dt).max / b
                    if room < 16 and call.name not in seen_head:
                        seen_head.add(call.name)
                        headroom.append((call.name, b, room))
            elif kind == "gout":
                gout_of[call.name] = (call, a)
                if call.name == "" and not math.isfinite(a):
                    bwd.append((call, "grad_output", 0.0, a))  # came in from the loss code
                elif call.name and not math.isfinite(a):
                    # a submodule's grad_output turned non-finite inside its parent, whose own
                    # grad_output was finite: the parent's code between the two produced it (it
                    # shows no grad_input when its inputs need no gradient)
                    parent = gout_of.get(call.name.rpartition(".")[0])
                    if parent is not None and is_producer(parent[1], a):
                        bwd.append((parent[0], "", parent[1], a))
            elif is_producer(a, b):
                bwd.append((call, detail, a, b))
        root_in = next(
            (
                a
                for (k, c, _), (a, _b) in zip(self.events, values, strict=False)
                if k == "fwd" and c.name == ""
            ),
            0.0,
        )
        return {"fwd": fwd, "bwd": bwd, "headroom": headroom, "root_input": root_in}
