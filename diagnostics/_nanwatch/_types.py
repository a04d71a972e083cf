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
        if not self.replayable and self.module is None and self.op is None:
            return f"{self.kind.upper()} in this step, not localized (see the notes)"
        s = f"{self.kind.upper()} first produced in {self.phase} by {self.where}"
        if self.op:
            s += f" at op {self.op}"
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


class NonFiniteError(TorchdxError, FloatingPointError):
    """A step produced NaN/Inf; ``.report`` (a :class:`NonFiniteReport`) says where."""

    __module__ = "diagnostics"

    def __init__(self, report: NonFiniteReport) -> None:
        super().__init__(f"NanWatch: {report}")
        self.report = report
