"""NanWatch's data types: the report of where a non-finite value came from, and its errors.

Writers (TensorBoard, Markdown) and callers depend on these types only, never on the engine.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from contracts import TorchdxError

__all__ = ["NanWatchError", "NonFiniteError", "NonFiniteReport"]


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
        source: where in the user's code, ``{"file", "line", "function", "code"}``: for a
            forward producer the innermost frame outside torch and torchdx that issued the
            producing op; for a backward producer the frame of the forward call that created the
            autograd node whose gradient turned non-finite. ``None`` when not determined.
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
        origin: where the non-finite value came from: ``"step"`` (produced during this step:
            ``module``/``op`` name the producer), ``"parameter"`` (it was already in a
            parameter before the step: ``nonfinite_params``; ``module``/``op`` name the first
            module/op that used it), ``"buffer"`` (already in a buffer, e.g. a BatchNorm's
            running statistics: ``nonfinite_buffers``), ``"input"`` (already in the step's
            arguments, i.e. the data: ``nonfinite_inputs``) or ``"stale_grad"`` (a ``.grad`` was
            non-finite before this step's backward, left by an earlier step without
            ``zero_grad()``: ``stale_grads``).
        nonfinite_params: ``(name, NaN count, Inf count, numel)`` of every parameter holding
            non-finite values before the step (checked on the failure path only).
        nonfinite_buffers: the same for buffers (replay mode: their pre-step values).
        nonfinite_inputs: the same for the tensors among the step function's arguments, named
            ``args[0]``, ``kwargs['x']``, ``args[0]['image']``.
        stale_grads: parameters whose ``.grad`` was non-finite before this step's backward.
        call_index / call_count: for a module called more than once in the step (a shared
            module): which call (1-based, in forward order) produced the value, and how many
            calls there were; ``None`` otherwise.
        uninitialized: ``{"op", "source"}`` when the non-finite values were read from memory
            allocated uninitialised (``empty``, ``new_empty``, ``empty_like``, ...) and not
            (fully) written before it was read: the allocating op and its line.
        masked_forward: ``{"op", "source"}`` for a backward fault whose NaN/Inf an op made in
            forward where the forward then masked it (``torch.where(h > 0, h.sqrt(), 0)``):
            autograd still multiplies the zero gradient of the masked branch by it.
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
    source: dict[str, Any] | None = None
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
    origin: str = "step"
    nonfinite_params: list[tuple[str, int, int, int]] = field(default_factory=list)
    nonfinite_buffers: list[tuple[str, int, int, int]] = field(default_factory=list)
    nonfinite_inputs: list[tuple[str, int, int, int]] = field(default_factory=list)
    stale_grads: list[str] = field(default_factory=list)
    call_index: int | None = None
    call_count: int | None = None
    uninitialized: dict[str, Any] | None = None
    masked_forward: dict[str, Any] | None = None
    step: int = 0
    mode: str = "replay"
    replayable: bool = True
    notes: list[str] = field(default_factory=list)

    @property
    def where(self) -> str:
        if self.module is None:
            return "outside every module (step function code)"
        name = repr(self.module) if self.module else "'' (root model)"
        info = [self.module_type] if self.module_type else []
        if self.call_count is not None and self.call_count > 1:
            info.append(f"call {self.call_index} of {self.call_count}")
        return f"module {name}" + (f" ({', '.join(info)})" if info else "")

    def headline(self) -> str:
        kind = self.kind.upper()
        held = {
            "parameter": (self.nonfinite_params, "parameter"),
            "buffer": (self.nonfinite_buffers, "buffer"),
            "input": (self.nonfinite_inputs, "the step's input"),
        }.get(self.origin)
        if held is not None and held[0]:
            s = f"{kind} already in {_params_phrase(held[0], held[1])} before this step, "
            s += "not produced by it"
            if self.origin == "input":
                s += " (check the data)"
            if self.module is not None or self.op:
                s += "; first used by " + (
                    self.where if self.module is not None else "the step function's code"
                )
                if self.op:
                    s += f" at op {self.op}"
            return s
        if self.origin == "stale_grad" and self.stale_grads:
            names = ", ".join(map(repr, self.stale_grads[:5]))
            more = f" and {len(self.stale_grads) - 5} more" if len(self.stale_grads) > 5 else ""
            return (
                f"{kind} in the .grad of {names}{more} from before this step: it was non-finite "
                "before this step's backward (a stale gradient, not produced by this step; .grad "
                "accumulates: call optimizer.zero_grad() between steps)"
            )
        if not self.replayable and self.module is None and self.op is None:
            return f"{kind} in this step, not localized (see the notes)"
        s = f"{kind} first produced in {self.phase} by {self.where}"
        if self.op:
            s += f" at op {self.op}"
        if self.uninitialized:
            s += f", from uninitialised memory allocated by {self.uninitialized.get('op')}"
        if self.masked_forward:
            s += (
                f": the gradient of a value that op {self.masked_forward.get('op')} made "
                "non-finite in forward and the forward masked"
            )
        return s

    def source_line(self) -> str:
        """``  at FILE:LINE in FUNCTION: CODE`` (a clickable location in most terminals/IDEs)."""
        s = self.source or {}
        verb = "forward call at" if self.phase == "backward" else "at"
        return f"  {verb} {s.get('file')}:{s.get('line')} in {s.get('function')}: {s.get('code')}"

    def __str__(self) -> str:
        lines = [self.headline()]
        if self.source:
            lines.append(self.source_line())
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
        if self.nonfinite_params:
            lines.append(
                "  non-finite parameters (before this step): "
                + ", ".join(_param_count(p) for p in self.nonfinite_params)
            )
        for title, rows in (
            ("non-finite buffers (before this step)", self.nonfinite_buffers),
            ("non-finite step inputs", self.nonfinite_inputs),
        ):
            if rows:
                lines.append(f"  {title}: " + ", ".join(_param_count(p) for p in rows))
        if self.stale_grads:
            lines.append(
                "  stale non-finite grads (before this step's backward): "
                + ", ".join(self.stale_grads)
            )
        if self.uninitialized:
            src = self.uninitialized.get("source") or {}
            where = f" at {src.get('file')}:{src.get('line')}: {src.get('code')}" if src else ""
            lines.append(f"  uninitialised memory: {self.uninitialized.get('op')}{where}")
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
        head = f"**{body[0]}**\n\n"
        if self.source:
            src = self.source
            head += (
                f"source: `{src.get('file')}:{src.get('line')}` in `{src.get('function')}`: "
                f"`{src.get('code')}`\n\n"
            )
            body = [b for b in body if b != self.source_line()]
        return head + "```\n" + "\n".join(body[1:]) + "\n```"


def _param_count(p: tuple[str, int, int, int]) -> str:
    name, nan, inf, n = p
    what = ", ".join(f"{c} {k}" for c, k in ((nan, "NaN"), (inf, "Inf")) if c) or "0 non-finite"
    return f"{name!r} ({what} of {n} values)"


def _params_phrase(params: list[tuple[str, int, int, int]], noun: str = "parameter") -> str:
    s = f"{noun} " if len(params) == 1 else f"{noun}s "
    s += ", ".join(_param_count(p) for p in params[:3])
    return s + (f" and {len(params) - 3} more" if len(params) > 3 else "")


class NonFiniteError(TorchdxError, FloatingPointError):
    """A step produced NaN/Inf; ``.report`` (a :class:`NonFiniteReport`) says where."""

    __module__ = "diagnostics"

    def __init__(self, report: NonFiniteReport) -> None:
        super().__init__(f"NanWatch: {report}")
        self.report = report
