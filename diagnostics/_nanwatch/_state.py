"""The state of one watched step: what the ending and, on failure, the replays need."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from torch import Tensor

from ._numerics import RngState
from ._sidestate import ObjectStates

__all__ = ["StepState"]


@dataclass
class StepState:
    """One call of ``NanWatch.run``: the step function with its arguments, and the pre-step
    state the replays start from.

    Attributes:
        fn / args / kwargs: the user's step function and its arguments.
        ctx: NanWatch's own context (``padding_mask``, ``valid_mask``, ``t``).
        index: the step's index within the watch (0-based).
        rng: the RNG state before the step (replay mode).
        bufs: ``(buffer, version before the step, copy before the step)`` of the buffers the
            step may mutate.
        buf_versions: every buffer's ``_version`` before the step (None on the first step,
            when all of them are copied): a buffer not copied that changes is learned.
        unsaved: buffers the step changed although their pre-step values were not copied
            (first changed in this step): a replay starts from their post-step values.
        versions: every watched parameter's ``_version`` before the step (an in-place change
            of a parameter, i.e. an optimizer step inside ``fn``, makes the step unreplayable).
        saved: the GradScaler's and the ``stateful`` objects' state before the step (None when
            the watch has neither).
        stale: parameters whose ``.grad`` was already non-finite before the step (looked at only
            after a step that did not end healthy, and before a watch's first step).
        result / loss: what ``fn`` returned, and the loss found in it.
    """

    fn: Callable[..., Any]
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    ctx: dict[str, Tensor]
    index: int
    rng: RngState | None = None
    bufs: list[tuple[Tensor, int, Tensor]] = field(default_factory=list)
    buf_versions: list[int] | None = None
    unsaved: list[str] = field(default_factory=list)
    versions: list[int] = field(default_factory=list)
    saved: ObjectStates | None = None
    stale: list[str] = field(default_factory=list)
    result: Any = None
    loss: Tensor | None = None

    def call(self) -> Any:
        """Run the step function once more with the same arguments."""
        return self.fn(*self.args, **self.kwargs)
