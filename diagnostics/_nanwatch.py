"""NanWatch: cheap non-finite detection per step, replay-based localization on failure.

The fairseq pattern as a library: watch cheaply, and when a step breaks, replay the *same* step
(same RNG state, same buffers, fresh gradients) with hooks on every module to find the module
that *produced* the first NaN/Inf from finite inputs, then re-run that module alone under a
``TorchDispatchMode`` to name the aten operation.

Healthy path cost: one RNG-state copy, one max-|x| reduction over the loss and every gradient
(``torch._foreach_norm(ord=inf)``), one host sync. No module hooks.

Producer rule (forward and backward alike): a module (or op) is a producer when its output has
NaN while its inputs have none, or its output has ±Inf while its inputs are all finite. So the
``-inf`` of an attention mask is not a fault, but the NaN that softmax makes of a fully masked
row is; and the Inf of an fp16 overflow is, not the NaN the next layer makes of it. Ops that
merely *write a constant* ``-inf``/NaN given as an argument (``masked_fill(m, -inf)``) are masks,
not producers.
"""

from __future__ import annotations

import contextlib
import math
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from contracts import TorchdxError

from . import _distributed as _dd
from ._hooks import HookSet, max_abs, tensors_in
from ._summary import summarize

__all__ = ["NanWatch", "NanWatchError", "NonFiniteError", "NonFiniteReport"]

_MODES = ("replay", "eager")
_CONTEXT_KEYS = ("padding_mask", "valid_mask", "t")
_MAX_OP_CANDIDATES = 8


# ----------------------------------------------------------------------------- errors / report
class NanWatchError(TorchdxError, ValueError):
    """NanWatch was misused: bad model, bad mode, a step that returns no scalar loss, ..."""

    __module__ = "diagnostics"


@dataclass
class NonFiniteReport:
    """Where the first non-finite value of a step came from.

    Attributes:
        module: dotted path of the producing module (``""`` = the root model); ``None`` when the
            value was produced outside every module (e.g. in the loss code of the step function).
        module_type: class name of that module.
        phase: ``"forward"`` or ``"backward"``.
        op: the producing aten op (``"aten._softmax.default"``; in backward with its autograd
            node, ``"aten.div.Tensor in DivBackward0"``) or ``None`` when not determined.
        kind: ``"nan"``, ``"inf"`` or ``"nan+inf"`` — what the producer emitted.
        inputs / outputs: :func:`summarize` lines of the producer's inputs and outputs (for
            backward: grad_output and grad_input / parameter gradient).
        op_inputs / op_outputs: the same for the producing op.
        bad_items: batch indices with non-finite values in the producer's first bad output.
        in_padding_only: with ``context={"padding_mask"|"valid_mask": ...}``: whether every bad
            value lies in a padded position (``None`` when unknown).
        bad_t: with ``context={"t": ...}``: ``{batch index: diffusion time}`` of the bad items.
        loss: summary of the step's loss.
        nonfinite_grads: parameters whose gradient is non-finite (first 20).
        candidates: every module that met the producer rule, in order (the first is usually it).
        headroom: ``(module, max|x|, finfo.max / max|x|)`` for fp16/bf16 module outputs within 16x
            of overflow in the replayed step.
        rank: under ``torch.distributed``: the rank where the fault arose (the lowest one whose
            own shard reproduced it in the local replay); ``None`` when not initialized.
        fault_ranks: every rank whose own step produced a non-finite value (empty outside
            torch.distributed).
        observed_on: the rank of the process holding this report (every rank raises the same
            report at the same step); ``None`` outside torch.distributed.
        step: index of the step within this NanWatch (0-based).
        mode: ``"replay"`` or ``"eager"``.
        replayable: ``False`` when the replay did not reproduce the original result.
        notes: anything else worth knowing (skipped mask ops, fallbacks).
    """

    module: str | None
    phase: str
    op: str | None = None
    module_type: str | None = None
    kind: str = "nan"
    inputs: list[str] = field(default_factory=list)
    outputs: list[str] = field(default_factory=list)
    op_inputs: list[str] = field(default_factory=list)
    op_outputs: list[str] = field(default_factory=list)
    bad_items: list[int] | None = None
    in_padding_only: bool | None = None
    bad_t: dict[int, float] | None = None
    loss: str | None = None
    nonfinite_grads: list[str] = field(default_factory=list)
    candidates: list[str] = field(default_factory=list)
    headroom: list[tuple[str, float, float]] = field(default_factory=list)
    rank: int | None = None
    fault_ranks: list[int] = field(default_factory=list)
    observed_on: int | None = None
    step: int = 0
    mode: str = "replay"
    replayable: bool = True
    notes: list[str] = field(default_factory=list)

    @property
    def where(self) -> str:
        if self.module is None:
            return "outside every module (step function code)"
        name = repr(self.module) if self.module else "'' (root model)"
        return f"module {name}" + (f" ({self.module_type})" if self.module_type else "")

    def headline(self) -> str:
        s = f"{self.kind.upper()} first produced in {self.phase} by {self.where}"
        if self.op:
            s += f" at op {self.op}"
        return s

    def __str__(self) -> str:
        lines = [self.headline()]
        lines.append(f"  step {self.step}, rank {self.rank}, mode {self.mode}")
        if self.observed_on is not None:
            lines.append(
                f"  fault arose on rank(s) {self.fault_ranks or '? (none reproduced it)'}; "
                f"this is rank {self.observed_on}"
            )
        if not self.replayable:
            lines.append("  NOT REPLAYABLE: the replay did not reproduce the original step")
        if self.loss is not None:
            lines.append(f"  loss: {self.loss}")
        for title, rows in (
            ("inputs", self.inputs),
            ("outputs", self.outputs),
            ("op inputs", self.op_inputs),
            ("op outputs", self.op_outputs),
        ):
            if rows:
                lines.append(f"  {title}:")
                lines += [f"    {r}" for r in rows]
        if self.bad_items is not None:
            lines.append(f"  bad batch items: {self.bad_items}")
        if self.in_padding_only is not None:
            lines.append(f"  bad values only in padded positions: {self.in_padding_only}")
        if self.bad_t:
            lines.append(f"  diffusion t of bad items: {self.bad_t}")
        if self.nonfinite_grads:
            lines.append(f"  non-finite grads: {', '.join(self.nonfinite_grads)}")
        if len(self.candidates) > 1:
            lines.append(
                f"  other producer candidates: {', '.join(map(repr, self.candidates[1:]))}"
            )
        for name, amax, room in self.headroom:
            lines.append(f"  fp16 headroom: {name!r} max|x|={amax:.4g} headroom={room:.3g}x")
        lines += [f"  note: {n}" for n in self.notes]
        return "\n".join(lines)

    def to_markdown(self) -> str:
        """The report as Markdown (used for the TensorBoard text panel)."""
        body = str(self).split("\n")
        return f"**{body[0]}**\n\n```\n" + "\n".join(body[1:]) + "\n```"


class NonFiniteError(TorchdxError, FloatingPointError):
    """A step produced NaN/Inf; ``.report`` (a :class:`NonFiniteReport`) says where."""

    __module__ = "diagnostics"

    def __init__(self, report: NonFiniteReport) -> None:
        super().__init__(f"NanWatch: {report}")
        self.report = report


# ----------------------------------------------------------------------------- small helpers
def _rank() -> int | None:
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank()
    return None


class _RngState:
    """CPU (+ initialized CUDA devices) generator states."""

    def __init__(self) -> None:
        self.cpu = torch.get_rng_state()
        self.cuda = (
            torch.cuda.get_rng_state_all()
            if torch.cuda.is_available() and torch.cuda.is_initialized()
            else None
        )

    def restore(self) -> None:
        torch.set_rng_state(self.cpu)
        if self.cuda is not None:
            torch.cuda.set_rng_state_all(self.cuda)


def _find_loss(result: Any) -> Tensor:
    if isinstance(result, Tensor):
        loss = result
    elif isinstance(result, Mapping) and isinstance(result.get("loss"), Tensor):
        loss = result["loss"]
    elif isinstance(result, (tuple, list)) and result and isinstance(result[0], Tensor):
        loss = result[0]
    else:
        raise NanWatchError(
            "NanWatch.run(step_fn): step_fn returned "
            f"{type(result).__name__}, not a loss; expected a scalar tensor, a tuple/list whose "
            "first item is the loss, or a dict with key 'loss'. hint: `return loss` at the end "
            "of the step (after loss.backward())"
        )
    if loss.numel() != 1:
        raise NanWatchError(
            f"NanWatch.run(step_fn): the loss must be a scalar, got shape {tuple(loss.shape)}; "
            "hint: reduce it (loss.mean()) before backward"
        )
    return loss


def _kind(nan: bool, inf: bool) -> str:
    return "nan+inf" if nan and inf else ("nan" if nan else "inf")


def _is_producer(in_m: float, out_m: float) -> bool:
    """NaN out of NaN-free inputs, or non-finite out of finite inputs."""
    return (math.isnan(out_m) and not math.isnan(in_m)) or (
        not math.isfinite(out_m) and math.isfinite(in_m)
    )


def _grads_max(grads: list[Tensor]) -> list[Tensor]:
    """max|g| per gradient (same order), fused per (device, dtype) group; float32 scalars."""
    groups: dict[tuple[torch.device, torch.dtype], list[tuple[int, Tensor]]] = {}
    out: list[Tensor] = [torch.zeros(())] * len(grads)
    for i, g in enumerate(grads):
        if g.is_sparse:
            g = g.coalesce().values()
        if g.numel():
            groups.setdefault((g.device, g.dtype), []).append((i, g))
        else:
            out[i] = torch.zeros((), device=g.device)
    for items in groups.values():
        norms = torch._foreach_norm([g for _, g in items], ord=math.inf)
        for (i, _), v in zip(items, norms, strict=True):
            out[i] = v.float()
    return out


@contextlib.contextmanager
def _quiet_hooks():
    """Silence torch's warning that full backward hooks fire w.r.t. outputs (expected here)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Full backward hook is firing")
        yield


def _pick(found: dict[str, Any], loss_value: float) -> tuple[str, list[Any]]:
    """(phase, producer candidates): forward producers first; a non-finite loss without one was
    made outside every module (the loss code); otherwise the backward producers."""
    if found["fwd"]:
        return "forward", found["fwd"]
    if not math.isfinite(loss_value):
        return "forward", []
    return "backward", found["bwd"]


def _grads_norm_all(grads: list[Tensor], device: torch.device) -> Tensor:
    """L2 norm over every gradient as one float32 scalar on ``device``: the healthy-path check.

    One ``_foreach_norm`` per (device, dtype) group (accumulated in float32) plus a stack; NaN or
    Inf anywhere makes it non-finite. It can also overflow on huge *finite* gradients (> ~1e19),
    so a non-finite value is confirmed element-wise before it counts (failure path only).
    ``ord=inf`` would not overflow but is ~20x slower on CPU.
    """
    groups: dict[tuple[torch.device, torch.dtype], list[Tensor]] = {}
    for g in grads:
        if g.is_sparse:
            g = g.coalesce().values()
        groups.setdefault((g.device, g.dtype), []).append(g)
    outs = []
    for gs in groups.values():
        norms = torch._foreach_norm(gs, 2, dtype=torch.float32)
        outs.append(torch.stack(norms).norm().to(device))
    if not outs:
        return torch.zeros((), device=device)
    return outs[0] if len(outs) == 1 else torch.stack(outs).norm()


def _nonfinite_kind(t: Tensor) -> tuple[bool, bool]:
    return bool(torch.isnan(t).any()), bool(torch.isinf(t).any())


# ----------------------------------------------------------------------------- op finder
class _OpFinder(TorchDispatchMode):
    """Runs every aten op and stops at the first one that *produces* NaN/Inf (one sync per op)."""

    def __init__(self, backward_only: bool = False) -> None:
        super().__init__()
        self.backward_only = backward_only
        self.found: dict[str, Any] | None = None
        self.constant_ops: list[str] = []
        self.n_ops = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[override]
        kwargs = kwargs or {}
        node = torch._C._current_autograd_node()
        check = self.found is None and not (self.backward_only and node is None)
        if check:
            flat_in, _ = tree_flatten((args, kwargs))
            tin = [a for a in flat_in if isinstance(a, Tensor)]
            in_m = max_abs(tin) if tin else None  # before the op: in-place ops overwrite inputs
        out = func(*args, **kwargs)
        if not check:
            return out
        self.n_ops += 1
        touts = [t for t in tensors_in(out) if t.is_floating_point() or t.is_complex()]
        if not touts:
            return out
        out_m = float(max_abs(touts))
        if math.isfinite(out_m):
            return out
        in_v = 0.0 if in_m is None else float(in_m)
        if not _is_producer(in_v, out_m):
            return out
        name = str(func).replace("::", ".")
        if any(isinstance(a, float) and not math.isfinite(a) for a in flat_in):
            self.constant_ops.append(name)  # masked_fill(m, -inf), full(-inf): a mask, not a fault
            return out
        nan = any(bool(torch.isnan(t).any()) for t in touts)
        self.found = {
            "op": name + (f" in {node.name()}" if node is not None else ""),
            "phase": "backward" if node is not None else "forward",
            "kind": _kind(nan, not nan or any(bool(torch.isinf(t).any()) for t in touts)),
            "inputs": [summarize(t) for t in tin][:6],
            "outputs": [summarize(t) for t in touts][:4],
        }
        return out


# ----------------------------------------------------------------------------- recorder
@dataclass
class _Call:
    """One module call seen by the recorder (replay keeps references for the op pass)."""

    name: str
    module: nn.Module
    args: Any = None
    kwargs: Any = None
    outputs: Any = None
    rng: _RngState | None = None
    grad_enabled: bool = True
    out_dtype: torch.dtype | None = None
    grad_output: Any = None
    grad_input: Any = None


class _Recorder:
    """Hooks on every module (+ parameters) recording max|x| of inputs/outputs/grads on device.

    Nothing is synced while the step runs; ``values()`` stacks everything for one host read.
    Event kinds: ``fwd`` (in, out), ``gout`` (grad_output), ``gin`` (grad_input), ``gparam``.
    """

    def __init__(self, model: nn.Module, *, keep_refs: bool, backward: bool) -> None:
        self.model = model
        self.keep_refs = keep_refs
        self.backward = backward
        self.events: list[tuple[str, _Call, str, Tensor]] = []  # (kind, call, detail, value)
        self.device: torch.device | None = None
        self._stack: dict[int, list[_Call]] = {}
        self._bstack: dict[int, list[tuple[_Call, Tensor]]] = {}
        self._last_call: dict[int, _Call] = {}
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
            call = _Call(name, mod, grad_enabled=torch.is_grad_enabled())
            tin = list(tensors_in((args, kwargs)))
            call_in = self._value(tin)
            if self.keep_refs:
                call.args, call.kwargs, call.rng = args, kwargs, _RngState()
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

    def _call_for(self, mod: nn.Module) -> _Call:
        call = self._last_call.get(id(mod))
        if call is None:  # a module only reached through backward (should not happen)
            call = _Call("?", mod)
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
        fwd: list[tuple[_Call, str, float, float]] = []
        bwd: list[tuple[_Call, str, float, float]] = []
        headroom: list[tuple[str, float, float]] = []
        seen_head: set[str] = set()
        for (kind, call, detail, _), (a, b) in zip(self.events, values, strict=False):
            if kind == "fwd":
                if _is_producer(a, b):
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
            elif _is_producer(a, b):
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


# ----------------------------------------------------------------------------- NanWatch
class NanWatch:
    """Watch training steps for NaN/Inf; on one, replay the step to find who produced it.

    Args:
        model: the module whose activations and gradients are watched.
        mode: ``"replay"`` (default): healthy steps cost one fused finiteness check; a failing
            step is replayed with full instrumentation. ``"eager"``: for steps that cannot be
            replayed (non-deterministic data); per-module max-|x| flags stay on the device during
            the step and are read once at its end (no op-level attribution).
        scaler: a ``torch.amp.GradScaler``. With it, a step whose loss is finite but whose
            gradients overflowed is the scaler's business: it is counted in ``skipped_steps``,
            ``last_status`` becomes ``"scaler_overflow"`` and no error is raised.
        batch_dim: batch axis of activations (used for ``bad_items``; a context mask or ``t``
            lets NanWatch find the batch axis by size instead).
        backward_hooks: use full backward hooks in the replay (falls back automatically when a
            model's in-place ops are incompatible with them).
        ddp: the ``DistributedDataParallel`` wrapper ``step_fn`` calls, when ``model`` is the
            inner module (passing the wrapper as ``model`` does the same). The replay runs under
            its ``no_sync()`` so it is local to each rank and issues no collective.
        timeout: seconds (or a ``timedelta``) bounding NanWatch's own collectives under
            torch.distributed; default ``$TORCHDX_DIST_TIMEOUT`` or 300 s.

    Under torch.distributed (see ``docs/DDP.md``) the healthy path adds ONE small all_reduce of
    every rank's ``[loss bad, grads bad]`` flags, so all ranks raise at the same step; each rank
    then replays its own shard under ``no_sync()`` and the reports are gathered, so every rank
    raises the report of the rank where the fault arose (``report.rank``, ``fault_ranks``). A
    failed or timed-out collective raises :class:`DistributedError` naming the rank that died,
    hung or raised.

    ``run(step_fn, *args, context=None, **kwargs)`` calls ``step_fn(*args, **kwargs)``, which
    must do forward + backward (no optimizer step) and return the loss (or a tuple/dict holding
    it), and returns what ``step_fn`` returned. ``context`` is NanWatch's own (never passed to
    ``step_fn``): a dict with any of ``padding_mask`` (bool ``[B, T]``, True = padded, PyTorch's
    ``key_padding_mask`` convention), ``valid_mask`` (bool ``[B, T]``, True = valid, the
    contracts ``Mask()`` convention) and ``t`` (``[B]`` diffusion times).

    Example:
        >>> watch = NanWatch(model)
        >>> def step(x, y):
        ...     loss = F.mse_loss(model(x), y)
        ...     loss.backward()
        ...     return loss
        >>> for x, y in loader:
        ...     opt.zero_grad()
        ...     loss = watch.run(step, x, y, context={"t": t})  # raises NonFiniteError
        ...     opt.step()
    """

    def __init__(
        self,
        model: nn.Module,
        mode: str = "replay",
        *,
        scaler: Any = None,
        batch_dim: int = 0,
        backward_hooks: bool = True,
        ddp: nn.Module | None = None,
        timeout: Any = None,
    ) -> None:
        if _dd._is_ddp(model):
            ddp, model = model, model.module
        if ddp is not None and not _dd._is_ddp(ddp):
            raise NanWatchError(
                f"NanWatch(ddp=...): expected a DistributedDataParallel wrapper, got "
                f"{type(ddp).__name__}"
            )
        if not isinstance(model, nn.Module):
            raise NanWatchError(
                f"NanWatch(model): expected an nn.Module, got {type(model).__name__}"
            )
        if mode not in _MODES:
            raise NanWatchError(
                f"NanWatch(mode={mode!r}): unknown mode; valid modes: {', '.join(_MODES)}"
            )
        self._named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        if not self._named:
            raise NanWatchError(
                f"NanWatch(model): {type(model).__name__} has no trainable parameters, so there "
                "are no gradients to watch; hint: pass the module that holds the parameters "
                "(or check requires_grad)"
            )
        self.model = model
        self.ddp = ddp
        self.timeout = timeout
        self._dist = _dd.check_launch("NanWatch")
        self.mode = mode
        self.scaler = scaler
        self.batch_dim = batch_dim
        self.backward_hooks = backward_hooks
        self.steps = 0
        self.skipped_steps = 0
        self.last_status = "none"
        self._params = [p for _, p in self._named]
        self._mutated_buffers: list[Tensor] | None = None  # None: snapshot all (first step)

    def __repr__(self) -> str:
        return (
            f"NanWatch({type(self.model).__name__}, mode={self.mode!r}, steps={self.steps}, "
            f"skipped={self.skipped_steps})"
        )

    # -- public ---------------------------------------------------------------------------
    def run(
        self,
        step_fn: Callable[..., Any],
        /,
        *args: Any,
        context: Mapping[str, Tensor] | None = None,
        **kwargs: Any,
    ) -> Any:
        """Run one step (forward + backward) under the watch; return ``step_fn``'s result.

        Raises:
            NonFiniteError: the loss or a gradient is NaN/Inf; ``.report`` localizes it.
            NanWatchError: bad usage (no loss returned, non-scalar loss, bad context).
        """
        ctx = self._check_context(context)
        step = self.steps
        self.steps += 1
        if self.mode == "eager":
            return self._run_eager(step_fn, args, kwargs, ctx, step)
        rng = _RngState()
        bufs = self._snapshot_buffers()
        versions = [p._version for p in self._params]
        result = self._call(step_fn, args, kwargs, step)
        loss = _find_loss(result)
        grads = [p.grad for p in self._params if p.grad is not None]
        lm = loss.detach().reshape(()).abs().float()
        gm = _grads_norm_all(grads, lm.device)
        if self._dist.distributed:
            self._learn_buffers(bufs)
            return self._run_dist(
                step_fn, args, kwargs, ctx, step, rng, bufs, versions, loss, result, lm, gm
            )
        flags = torch.stack([lm, gm]).isfinite().tolist()  # the one host sync of the step
        if flags[0] and not flags[1] and not self._nonfinite_grads():
            flags[1] = True  # the L2 norm overflowed on finite gradients: not a fault
        self._learn_buffers(bufs)
        if all(flags):
            self.last_status = "ok"
            return result
        if flags[0] and self._scaler_enabled():
            self.skipped_steps += 1
            self.last_status = "scaler_overflow"
            return result
        self.last_status = "nonfinite"
        report = self._localize(step_fn, args, kwargs, ctx, step, rng, bufs, versions, loss)
        raise NonFiniteError(report)

    # -- torch.distributed ----------------------------------------------------------------
    def _call(self, step_fn, args, kwargs, step: int) -> Any:
        """``step_fn(*args, **kwargs)``; under torch.distributed a failure is noted in the store
        (for the other ranks' messages) and a failed collective is turned into a message naming
        the rank that died, hung or raised."""
        if not self._dist.distributed:
            return step_fn(*args, **kwargs)
        try:
            return step_fn(*args, **kwargs)
        except Exception as exc:
            if _dd.is_comm_failure(exc):
                raise _dd.diagnose_peers(
                    f"nanwatch/{step}/step", f"NanWatch step {step}: a collective in step_fn", exc
                ) from exc
            _dd.note_failure(
                f"nanwatch/{step}",
                f"{type(exc).__name__}: {exc} (in step_fn, NanWatch step {step})",
            )
            raise

    def _local(self):
        """No DDP collectives while replaying: ``ddp.no_sync()`` when a wrapper is known."""
        return self.ddp.no_sync() if self.ddp is not None else contextlib.nullcontext()

    def _run_dist(
        self, step_fn, args, kwargs, ctx, step, rng, bufs, versions, loss, result, lm, gm
    ):
        """Healthy path under torch.distributed: one all_reduce of every rank's two flags."""
        tag = f"nanwatch/{step}"
        bad = (~torch.stack([lm, gm]).isfinite()).float()  # (2,) [loss bad, grads bad]
        flags = _dd.combine_flags(bad, tag=tag, what=f"NanWatch step {step} flag all_reduce",
                                  timeout=self.timeout)  # fmt: skip  # (W, 2), the one host sync
        if not bool(flags.any()):
            self.last_status = "ok"
            return result
        # failure path: confirm a non-finite L2 norm element-wise, agree again (second collective)
        mine = flags[self._dist.rank].tolist()
        if mine[1] and not mine[0] and not self._nonfinite_grads():
            mine[1] = 0.0  # the L2 norm overflowed on finite gradients: not a fault
        flags = _dd.combine_flags(torch.tensor(mine), tag=tag + "/confirm", timeout=self.timeout)
        loss_bad = flags[:, 0] > 0
        if not bool(flags.any()):
            self.last_status = "ok"
            return result
        if not bool(loss_bad.any()) and self._scaler_enabled():
            self.skipped_steps += 1
            self.last_status = "scaler_overflow"
            return result
        self.last_status = "nonfinite"
        self._replay_clean = False
        try:
            with self._local():
                report = self._localize(step_fn, args, kwargs, ctx, step, rng, bufs, versions, loss)
        except NonFiniteError as exc:  # the replay itself raised: still take part in the gather
            report = exc.report
        clean = self._replay_clean and not bool(loss_bad[self._dist.rank])
        raise NonFiniteError(self._agree(report, clean, loss_bad.tolist(), step))

    def _agree(self, report: NonFiniteReport, clean: bool, loss_bad: list[bool], step: int):
        """Gather every rank's local report; all ranks raise the one of the rank at fault."""
        me = self._dist.rank
        got = _dd.all_gather_objects(
            (clean, report), tag=f"nanwatch/{step}/reports",
            what=f"NanWatch step {step} report gather", timeout=self.timeout,
        )  # fmt: skip
        origins = [r for r, (c, _) in enumerate(got) if not c]
        reproduced = [r for r in origins if got[r][1].replayable]
        pick = (reproduced or origins or [me])[0]
        chosen = got[pick][1]
        chosen.rank = pick if origins else None
        chosen.fault_ranks = origins
        chosen.observed_on = me
        cleans = [r for r, (c, _) in enumerate(got) if c]
        if cleans:
            chosen.notes.append(
                f"rank(s) {cleans} replayed their own shard without a non-finite value: their "
                "non-finite gradients came in through DDP's all-reduce"
            )
        if not origins:
            chosen.notes.append(
                "no rank reproduced the fault in its local replay (non-deterministic step, or a "
                "fault in the all-reduce itself); ranks with a non-finite loss: "
                f"{[r for r, b in enumerate(loss_bad) if b]}"
            )
        if len(origins) > 1:
            chosen.notes.append(
                "other ranks at fault: "
                + "; ".join(f"rank {r}: {got[r][1].headline()}" for r in origins if r != pick)
            )
        return chosen

    # -- context / state ------------------------------------------------------------------
    def _check_context(self, context: Mapping[str, Tensor] | None) -> dict[str, Tensor]:
        if context is None:
            return {}
        if not isinstance(context, Mapping):
            raise NanWatchError(
                f"NanWatch.run(context=...): expected a dict, got {type(context).__name__}"
            )
        bad = sorted(set(context) - set(_CONTEXT_KEYS))
        if bad:
            raise NanWatchError(
                f"NanWatch.run(context=...): unknown key(s) {bad}; valid keys: "
                f"{', '.join(_CONTEXT_KEYS)}"
            )
        ctx = dict(context)
        for key in ("padding_mask", "valid_mask"):
            m = ctx.get(key)
            if m is not None and (
                not isinstance(m, Tensor) or m.dtype != torch.bool or m.dim() != 2
            ):
                raise NanWatchError(
                    f"NanWatch.run(context={{'{key}': ...}}): expected a bool tensor [B, T], got "
                    f"{summarize(m) if isinstance(m, Tensor) else type(m).__name__}"
                )
        return ctx

    def _scaler_enabled(self) -> bool:
        s = self.scaler
        return s is not None and bool(getattr(s, "is_enabled", lambda: True)())

    def _buffers(self) -> list[Tensor]:
        return [b for b in self.model.buffers() if b is not None]

    def _snapshot_buffers(self) -> list[tuple[Tensor, int, Tensor]]:
        bufs = self._buffers() if self._mutated_buffers is None else self._mutated_buffers
        return [(b, b._version, b.clone()) for b in bufs]

    def _learn_buffers(self, snap: list[tuple[Tensor, int, Tensor]]) -> None:
        if self._mutated_buffers is None:  # after the first step: snapshot only what changes
            self._mutated_buffers = [b for b, v, _ in snap if b._version != v]

    # -- eager ----------------------------------------------------------------------------
    def _run_eager(self, step_fn, args, kwargs, ctx, step: int) -> Any:
        rec = _Recorder(self.model, keep_refs=False, backward=self.backward_hooks)
        with HookSet() as hooks, _quiet_hooks():
            rec.install(hooks)
            result = self._call(step_fn, args, kwargs, step)
        loss = _find_loss(result)
        grads = [p.grad for p in self._params if p.grad is not None]
        dev = loss.device
        head = torch.stack(
            [
                loss.detach().abs().float().reshape(()).to(dev),
                torch.stack([v.to(dev) for v in _grads_max(grads)]).amax()
                if grads
                else torch.zeros((), device=dev),
            ]
        )
        ev = rec.stacked()
        allv = head if ev is None else torch.cat([head, ev.to(dev).reshape(-1)])
        vals = allv.tolist()  # the one host read of the step
        loss_v, grad_v = vals[0], vals[1]
        if self._dist.distributed:  # every rank's two flags, one all_reduce
            bad = torch.tensor([not math.isfinite(loss_v), not math.isfinite(grad_v)])
            flags = _dd.combine_flags(bad, tag=f"nanwatch/{step}", timeout=self.timeout)
            loss_v = math.nan if bool(flags[:, 0].any()) else loss_v
            grad_v = math.nan if bool(flags[:, 1].any()) else grad_v
        if math.isfinite(loss_v) and math.isfinite(grad_v):
            self.last_status = "ok"
            return result
        if math.isfinite(loss_v) and self._scaler_enabled():
            self.skipped_steps += 1
            self.last_status = "scaler_overflow"
            return result
        self.last_status = "nonfinite"
        pairs = [vals[2 + 2 * i : 4 + 2 * i] for i in range(len(rec.events))]
        found = rec.analyze(pairs)
        report = self._report_from(found, loss, ctx, step, mode="eager")
        report.notes.append(
            "eager mode: module-level attribution only (no op, no tensor summaries); use "
            "mode='replay' on a replayable step for the op"
        )
        if self._dist.distributed:  # local producers (forward or parameter-gradient hooks)
            clean = not found["fwd"] and not found["bwd"] and math.isfinite(vals[0])
            report = self._agree(report, clean, flags[:, 0].gt(0).tolist(), step)
        raise NonFiniteError(report)

    # -- replay ---------------------------------------------------------------------------
    def _report_from(self, found, loss, ctx, step, mode) -> NonFiniteReport:
        lv = float(loss.detach().float())
        phase, cands = _pick(found, lv)
        names = list(
            dict.fromkeys(c[0].name if c[1] != "grad_output" else "<loss code>" for c in cands)
        )
        if cands:
            call, detail, _a, b = cands[0]
            module = None if detail == "grad_output" else call.name
            mtype = None if module is None else type(call.module).__name__
            kind = _kind(math.isnan(b), not math.isnan(b))
        else:
            module, mtype, detail = None, None, ""
            kind = _kind(math.isnan(lv), math.isinf(lv))
        rep = NonFiniteReport(
            module=module,
            module_type=mtype,
            phase=phase,
            kind=kind,
            loss=summarize(loss),
            candidates=names,
            headroom=found["headroom"],
            rank=_rank(),
            step=step,
            mode=mode,
        )
        if detail and detail != "grad_output":
            rep.notes.append(f"first non-finite gradient: parameter {detail!r}")
        if not math.isfinite(found.get("root_input", 0.0)):
            rep.notes.append(
                "the model's own inputs already held NaN/Inf (max|x| = "
                f"{found['root_input']}): check the data before suspecting the model"
            )
        return rep

    def _localize(
        self, step_fn, args, kwargs, ctx, step, rng, bufs, versions, loss
    ) -> NonFiniteReport:
        # the user's post-step state, put back when we are done
        post_rng = _RngState()
        post_grads = [p.grad for p in self._params]
        post_bufs = [(b, b.clone()) for b in self._buffers()]
        orig_loss = loss.detach().clone()
        nonfinite = self._nonfinite_grads()
        changed = [n for (n, p), v in zip(self._named, versions, strict=False) if p._version != v]
        try:
            if changed:
                rep = self._report_from(
                    {"fwd": [], "bwd": [], "headroom": [], "root_input": 0.0},
                    loss,
                    ctx,
                    step,
                    "replay",
                )
                rep.replayable = False
                rep.notes.append(
                    f"step_fn modified parameters in place ({', '.join(changed[:5])}); an "
                    "optimizer.step() inside step_fn makes the step impossible to replay; move it "
                    "after watch.run(...) or use NanWatch(model, mode='eager')"
                )
                rep.nonfinite_grads = nonfinite
                return rep
            rep = self._replay(step_fn, args, kwargs, ctx, step, rng, bufs, orig_loss)
            rep.nonfinite_grads = nonfinite
            return rep
        finally:
            for p, g in zip(self._params, post_grads, strict=False):
                p.grad = g
            with torch.no_grad():
                for b, v in post_bufs:
                    b.copy_(v)
            post_rng.restore()

    def _nonfinite_grads(self) -> list[str]:
        named = [(n, p.grad) for n, p in self._named if p.grad is not None]
        if not named:
            return []
        vals = torch.stack([v.cpu() for v in _grads_max([g for _, g in named])]).tolist()
        return [n for (n, _), v in zip(named, vals, strict=False) if not math.isfinite(v)][:20]

    def _reset_to_pre_step(self, rng: _RngState, bufs) -> None:
        for p in self._params:
            p.grad = None
        with torch.no_grad():
            for b, _, v in bufs:
                b.copy_(v)
        rng.restore()

    def _replay(self, step_fn, args, kwargs, ctx, step, rng, bufs, orig_loss) -> NonFiniteReport:
        notes: list[str] = []
        # replay 1: forward hooks + parameter-gradient hooks (cheap); replay 2, only for a
        # backward fault: full backward hooks on every module as well
        plan = [False, True] if self.backward_hooks else [False]
        for i, backward in enumerate(plan):
            self._reset_to_pre_step(rng, bufs)
            rec = _Recorder(self.model, keep_refs=True, backward=backward)
            try:
                with HookSet() as hooks, _quiet_hooks():
                    rec.install(hooks)
                    result = step_fn(*args, **kwargs)
            except Exception as exc:
                if backward:
                    notes.append(
                        f"replay with full backward hooks failed ({type(exc).__name__}: "
                        f"{str(exc)[:120]}); backward attribution by parameter gradients only"
                    )
                    break
                rep = NonFiniteReport(module=None, phase="forward", step=step, rank=_rank())
                rep.replayable = False
                rep.loss = summarize(orig_loss)
                rep.notes = [*notes, f"the replay raised {type(exc).__name__}: {exc}"]
                raise NonFiniteError(rep) from exc
            loss = _find_loss(result).detach()
            ev = rec.stacked()
            values = ev.tolist() if ev is not None else []
            found, kept = rec.analyze(values), (rec, loss)
            if found["fwd"] or not math.isfinite(float(loss.float())) or i == len(plan) - 1:
                break
            if i < len(plan) - 1:
                for p in self._params:
                    p.grad = None
        rec, loss = kept
        rep = self._report_from(found, loss, ctx, step, mode="replay")
        rep.notes += notes
        same = torch.equal(loss, orig_loss) or (
            bool(torch.isnan(loss).all()) and bool(torch.isnan(orig_loss).all())
        )
        replay_grads_bad = bool(self._nonfinite_grads())
        self._replay_clean = math.isfinite(float(loss.float())) and not replay_grads_bad
        if not same or (math.isfinite(float(loss.float())) and not replay_grads_bad):
            rep.replayable = False
            rep.notes.append(
                f"not replayable: the replay gave loss {float(loss.float())!r} and "
                f"{'non-finite' if replay_grads_bad else 'finite'} gradients where the step gave "
                f"loss {float(orig_loss.float())!r} and non-finite values; the step is "
                "non-deterministic (data, RNG outside torch, state kept between calls). Use "
                "NanWatch(model, mode='eager') for such steps"
            )
        self._refine(rep, found, float(loss.float()), ctx, rng, bufs, step_fn, args, kwargs)
        return rep

    # -- op-level refinement --------------------------------------------------------------
    def _refine(self, rep, found, loss_value: float, ctx, rng, bufs, step_fn, args, kwargs) -> None:
        _, cands = _pick(found, loss_value)
        real = [] if cands and cands[0][1] == "grad_output" else cands
        if not real:  # produced outside every module: one op-level pass over the whole step
            self._reset_to_pre_step(rng, bufs)
            finder = _OpFinder()
            with finder:
                step_fn(*args, **kwargs)
            if finder.found:
                rep.op = finder.found["op"]
                rep.phase = finder.found["phase"]
                rep.kind = finder.found["kind"]
                rep.op_inputs = finder.found["inputs"]
                rep.op_outputs = finder.found["outputs"]
            if finder.constant_ops:
                rep.notes.append(f"mask-like constant ops skipped: {finder.constant_ops[:3]}")
            return
        seen: set[str] = set()
        chosen = None
        tried = 0
        for call, detail, _, _ in real:
            if call.name in seen or tried >= _MAX_OP_CANDIDATES:
                continue
            seen.add(call.name)
            tried += 1
            res = self._op_pass(call, rep.phase)
            if res is None or res.get("op") or res.get("unknown"):
                chosen = (call, detail, res)
                break
            rep.notes.append(
                f"module {call.name!r} only writes constant -inf/NaN ({res['constants'][:2]}): "
                "treated as a mask, not as the producer"
            )
        if chosen is None:
            call, detail, res = real[0][0], real[0][1], None
        else:
            call, detail, res = chosen
        rep.module, rep.module_type = call.name, type(call.module).__name__
        if rep.candidates and rep.candidates[0] != call.name:
            rep.candidates.remove(call.name) if call.name in rep.candidates else None
            rep.candidates.insert(0, call.name)
        if res and res.get("op"):
            rep.op = res["op"]
            rep.kind = res["kind"]
            rep.op_inputs, rep.op_outputs = res["inputs"], res["outputs"]
        elif res and res.get("unknown"):
            rep.notes.append(res["unknown"])
        self._describe(rep, call, detail, ctx)

    def _op_pass(self, call: _Call, phase: str) -> dict[str, Any] | None:
        """Re-run one module call under the op finder (forward, or its backward)."""
        if call.args is None or call.rng is None:
            return None
        saved = _RngState()
        try:
            call.rng.restore()
            if phase == "forward":
                finder = _OpFinder()
                with torch.set_grad_enabled(call.grad_enabled), finder:
                    call.module(*call.args, **call.kwargs)
            else:
                gout = call.grad_output
                if gout is None:
                    return {"unknown": "backward op unknown: no grad_output was captured"}
                args = tuple(
                    a.detach().requires_grad_(a.requires_grad) if isinstance(a, Tensor) else a
                    for a in call.args
                )
                with torch.enable_grad():
                    out = call.module(*args, **call.kwargs)
                outs = [t for t in tensors_in(out)]
                pairs = [
                    (o, g)
                    for o, g in zip(outs, gout, strict=False)
                    if g is not None and o.requires_grad
                ]
                wrt = [a for a in args if isinstance(a, Tensor) and a.requires_grad]
                wrt += [p for p in call.module.parameters() if p.requires_grad]
                finder = _OpFinder(backward_only=True)
                if pairs and wrt:
                    with finder:
                        torch.autograd.grad(
                            [o for o, _ in pairs], wrt, [g for _, g in pairs], allow_unused=True
                        )
        except Exception as exc:
            return {"unknown": f"op pass failed: {type(exc).__name__}: {str(exc)[:120]}"}
        finally:
            saved.restore()
        if finder.found:
            return finder.found
        if finder.constant_ops:
            return {"constants": finder.constant_ops}
        return {
            "unknown": "the op pass over the module alone did not reproduce the value "
            "(inputs modified in place, or the value depends on other calls)"
        }

    def _describe(self, rep: NonFiniteReport, call: _Call, detail: str, ctx) -> None:
        """Summaries, bad batch items, padding and t of the producer."""
        if rep.phase == "forward":
            ins = list(tensors_in((call.args, call.kwargs)))
            outs = list(tensors_in(call.outputs))
        else:
            ins = [g for g in (call.grad_output or ()) if isinstance(g, Tensor)]
            outs = [g for g in (call.grad_input or ()) if isinstance(g, Tensor)]
            if detail:
                p = dict(call.module.named_parameters()).get(detail.rsplit(".", 1)[-1])
                if p is not None and p.grad is not None:
                    outs = [*outs, p.grad]
        rep.inputs = [summarize(t) for t in ins[:8]]
        rep.outputs = [summarize(t) for t in outs[:8]]
        bad = next(
            (
                t
                for t in outs
                if (t.is_floating_point() or t.is_complex()) and not bool(torch.isfinite(t).all())
            ),
            None,
        )
        if bad is None:
            return
        mask = ctx.get("padding_mask")
        valid = ~mask if mask is not None else ctx.get("valid_mask")
        t = ctx.get("t")
        B = valid.shape[0] if valid is not None else (t.shape[0] if t is not None else None)
        nf = ~torch.isfinite(bad)
        b_ax = self.batch_dim if bad.dim() > self.batch_dim else None
        if B is not None and (b_ax is None or bad.shape[b_ax] != B):
            b_ax = next((i for i, s in enumerate(bad.shape) if s == B), None)
        if b_ax is None:
            return
        per_item = nf.movedim(b_ax, 0).reshape(bad.shape[b_ax], -1).any(1)  # (B,)
        rep.bad_items = per_item.nonzero().flatten().tolist()
        if t is not None and t.numel() == bad.shape[b_ax]:
            tv = t.detach().reshape(-1).float().tolist()
            rep.bad_t = {i: tv[i] for i in rep.bad_items}
        if valid is not None and bad.shape[b_ax] == valid.shape[0]:
            T = valid.shape[1]
            t_ax = next((i for i, s in enumerate(bad.shape) if s == T and i != b_ax), None)
            if t_ax is not None:
                bt = (
                    nf.movedim((b_ax, t_ax), (0, 1)).reshape(bad.shape[b_ax], T, -1).any(2)
                )  # (B, T)
                rep.in_padding_only = not bool((bt & valid.to(bt.device)).any())
