"""The recorder: hooks on every module and parameter recording max|x| on the device."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from .._hooks import HookSet, max_abs, tensors_in
from ._numerics import RngState, is_producer

__all__ = ["Call", "Recorder"]


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


class Recorder:
    """Hooks on every module (+ parameters) recording max|x| of inputs/outputs/grads on device.

    Nothing is synced while the step runs; ``values()`` stacks everything for one host read.
    Event kinds: ``fwd`` (in, out), ``gout`` (grad_output), ``gin`` (grad_input), ``gparam``.
    """

    def __init__(self, model: nn.Module, *, keep_refs: bool, backward: bool) -> None:
        self.model = model
        self.keep_refs = keep_refs
        self.backward = backward
        self.events: list[tuple[str, Call, str, Tensor]] = []  # (kind, call, detail, value)
        self.device: torch.device | None = None
        self._stack: dict[int, list[Call]] = {}
        self._bstack: dict[int, list[tuple[Call, Tensor]]] = {}
        self._last_call: dict[int, Call] = {}
        self._last_gout: dict[int, Tensor] = {}

    def _value(self, tensors: list[Tensor]) -> Tensor:
        v = max_abs(tensors, self.device)
        if self.device is None:
            self.device = v.device
        return v

    def install(self, hooks: HookSet) -> None:
        owner: dict[int, str] = {}
        for name, mod in self.model.named_modules():
            hooks.add(mod.register_forward_pre_hook(self._pre(name), with_kwargs=True), "fwd-pre")
            hooks.add(mod.register_forward_hook(self._post(name), with_kwargs=True), "fwd")
            if self.backward:
                hooks.add(mod.register_full_backward_pre_hook(self._bpre(mod)), "bwd-pre")
                hooks.add(mod.register_full_backward_hook(self._bpost(mod)), "bwd")
            for pname, p in mod.named_parameters(prefix=name, recurse=False):
                owner.setdefault(id(p), name)
                if p.requires_grad:
                    hooks.add(p.register_hook(self._phook(mod, pname)), "param")

    def _pre(self, name: str):
        def hook(mod: nn.Module, args: Any, kwargs: Any) -> None:
            call = Call(name, mod, grad_enabled=torch.is_grad_enabled())
            tin = list(tensors_in((args, kwargs)))
            call_in = self._value(tin)
            if self.keep_refs:
                call.args, call.kwargs, call.rng = args, kwargs, RngState()
            self._stack.setdefault(id(mod), []).append(call)
            call.grad_input = call_in  # stash the input value until the forward hook
            return None

        return hook

    def _post(self, name: str):
        def hook(mod: nn.Module, args: Any, kwargs: Any, output: Any) -> None:
            stack = self._stack.get(id(mod))
            if not stack:
                return None
            call = stack.pop()
            in_m, call.grad_input = call.grad_input, None
            touts = [t for t in tensors_in(output) if t.is_floating_point() or t.is_complex()]
            call.out_dtype = touts[0].dtype if touts else None
            if self.keep_refs:
                call.outputs = output
            self._last_call[id(mod)] = call
            self.events.append(("fwd", call, "", torch.stack([in_m, self._value(touts)])))
            return None

        return hook

    def _call_for(self, mod: nn.Module) -> Call:
        call = self._last_call.get(id(mod))
        if call is None:  # a module only reached through backward (should not happen)
            call = Call("?", mod)
        return call

    def _bpre(self, mod: nn.Module):
        def hook(m: nn.Module, grad_output: Any) -> None:
            call = self._call_for(mod)
            v = self._value([g for g in grad_output if isinstance(g, Tensor)])
            self._bstack.setdefault(id(mod), []).append((call, v))
            self._last_gout[id(mod)] = v
            if self.keep_refs:
                call.grad_output = grad_output
            self.events.append(("gout", call, "", v))
            return None

        return hook

    def _bpost(self, mod: nn.Module):
        def hook(m: nn.Module, grad_input: Any, grad_output: Any) -> None:
            stack = self._bstack.get(id(mod))
            call, gout = stack.pop() if stack else (self._call_for(mod), None)
            v = self._value([g for g in grad_input if isinstance(g, Tensor)])
            if self.keep_refs:
                call.grad_input = grad_input
            zero = torch.zeros((), device=v.device)
            self.events.append(
                ("gin", call, "", torch.stack([gout if gout is not None else zero, v]))
            )
            return None

        return hook

    def _phook(self, mod: nn.Module, pname: str):
        def hook(grad: Tensor) -> None:
            call = self._call_for(mod)
            gout = self._last_gout.get(id(mod))
            if gout is None:  # no backward pre-hook ran (backward hooks off): assume finite
                gout = torch.zeros((), device=grad.device)
            v = self._value([grad])
            self.events.append(("gparam", call, pname, torch.stack([gout.to(v.device), v])))
            return None

        return hook

    def stacked(self) -> Tensor | None:
        if not self.events:
            return None
        vals = []
        for kind, _, _, v in self.events:
            vals.append(v.reshape(-1) if kind != "gout" else torch.stack([v, v]))
        return torch.stack([v.to(self.device) for v in vals])  # (E, 2)

    def analyze(self, values: list[list[float]]) -> dict[str, Any]:
        """Producer candidates per phase from the synced event values."""
        fwd: list[tuple[Call, str, float, float]] = []
        bwd: list[tuple[Call, str, float, float]] = []
        headroom: list[tuple[str, float, float]] = []
        seen_head: set[str] = set()
        for (kind, call, detail, _), (a, b) in zip(self.events, values, strict=False):
            if kind == "fwd":
                if is_producer(a, b):
                    fwd.append((call, "", a, b))
                dt = call.out_dtype
                if dt in (torch.float16, torch.bfloat16) and math.isfinite(b) and b > 0:
                    room = torch.finfo(dt).max / b
                    if room < 16 and call.name not in seen_head:
                        seen_head.add(call.name)
                        headroom.append((call.name, b, room))
            elif kind == "gout":
                if call.name == "" and not math.isfinite(a):
                    bwd.append((call, "grad_output", 0.0, a))  # came in from the loss code
            elif is_producer(a, b):
                bwd.append((call, detail, a, b))
        root_in = next(
            (
                a
                for (k, c, _, _), (a, _b) in zip(self.events, values, strict=False)
                if k == "fwd" and c.name == ""
            ),
            0.0,
        )
        return {"fwd": fwd, "bwd": bwd, "headroom": headroom, "root_input": root_in}
