"""Model-agnostic checks for a training loop (from seed 004's troubleshooting guide).

- :func:`check_padding_leak`: does a masked loss move when only padded positions change?
- :func:`check_no_retained_graph`: does a history object keep autograd graphs alive?
- :class:`LossWatch`: does the loss oscillate wildly or diverge (learning rate too high)?

Each raises :class:`TrainingCheckError` naming the culprit and the usual fix.

Example:
    >>> from diagnostics import LossWatch, check_no_retained_graph
    >>> watch = LossWatch(window=12)
    >>> for i in range(20): watch.update(3.0 * 0.9**i)
    >>> check_no_retained_graph([{"loss": 1.0}], "history")
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import is_dataclass
from types import SimpleNamespace
from typing import Any

import torch
from torch import Tensor

from contracts import TorchdxError

__all__ = ["LossWatch", "TrainingCheckError", "check_no_retained_graph", "check_padding_leak"]


class TrainingCheckError(TorchdxError, ValueError):
    """A training-loop check failed: padding in the loss, a retained graph, a wild loss."""

    __module__ = "diagnostics"


def check_padding_leak(
    loss_fn: Callable[[Tensor, Tensor, Tensor], Tensor],
    logits: Tensor,
    targets: Tensor,
    mask: Tensor,
    seed: int = 0,
) -> None:
    """Raise :class:`TrainingCheckError` if ``loss_fn(logits, targets, mask)`` depends on padding.

    Seed guide, "Padding tokens affect loss calculation": the targets and logits at padded
    positions (``mask`` False) are replaced by random values; a correctly masked loss does not
    move. Does not touch autograd state of the inputs.
    """
    if bool(mask.all()):
        raise TrainingCheckError(
            "check_padding_leak: mask has no padded position, so nothing can be checked; "
            "use a batch with padding"
        )
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        base = float(loss_fn(logits, targets, mask))
        # drawn on the host from the check's own generator (the caller's RNG is untouched),
        # then moved to the batch's device and dtype (a CUDA batch, int32 targets)
        noise_t = torch.randint(0, logits.shape[-1], targets.shape, generator=g)
        noise_l = 3 * torch.randn(logits.shape, generator=g, dtype=torch.float32)
        t2 = torch.where(mask, targets, noise_t.to(targets.device, targets.dtype))
        l2 = torch.where(mask[..., None], logits, noise_l.to(logits.device, logits.dtype))
        moved = float(loss_fn(l2, t2, mask))
    if not math.isclose(base, moved, rel_tol=1e-5, abs_tol=1e-6):
        raise TrainingCheckError(
            f"check_padding_leak: padding leaks into the loss -- changing only the padded "
            f"positions ({int((~mask).sum())} of {mask.numel()}) moved "
            f"{getattr(loss_fn, '__name__', type(loss_fn).__name__)} from {base:.6g} to "
            f"{moved:.6g}; mask the loss (MaskedCrossEntropy) or set ignore_index to the "
            "pad id"
        )


def check_no_retained_graph(obj: Any, name: str = "obj") -> None:
    """Raise :class:`TrainingCheckError` if ``obj`` holds a tensor attached to an autograd graph
    (a ``grad_fn``): a tensor, or one inside dicts (any mapping), lists, tuples, sets, deques,
    dataclass instances and ``SimpleNamespace`` records, nested (each container visited once,
    so a cycle ends). Other objects are not looked into.

    Seed guide, "Memory leak during training": keeping ``loss`` (not ``loss.item()``) in a
    history list keeps every step's graph alive, so memory grows with the step count. A leaf
    that requires grad (a parameter) holds no graph and is not flagged.
    """
    seen: set[int] = set()

    def walk(o: Any, path: str) -> None:
        if isinstance(o, Tensor):
            if o.grad_fn is not None:
                raise TrainingCheckError(
                    f"check_no_retained_graph: {path} is a tensor attached to an autograd "
                    f"graph (grad_fn={type(o.grad_fn).__name__}); it "
                    "keeps the step's whole graph alive and memory grows each step -- store "
                    ".item() or .detach()"
                )
            return
        if o is None or isinstance(o, (str, bytes, bytearray, int, float, complex, bool)):
            return
        if id(o) in seen:
            return
        seen.add(id(o))
        if isinstance(o, Mapping):
            for k, v in list(o.items()):
                walk(v, f"{path}[{k!r}]")
        elif isinstance(o, (list, tuple, deque)):
            for i, v in enumerate(list(o)):
                walk(v, f"{path}[{i}]")
        elif isinstance(o, (set, frozenset)):
            for v in list(o):
                walk(v, f"{path}{{...}}")
        elif (is_dataclass(o) and not isinstance(o, type)) or isinstance(o, SimpleNamespace):
            for k, v in list(vars(o).items()):  # a record of a step
                walk(v, f"{path}.{k}")

    walk(obj, name)


class LossWatch:
    """Flag a training loss that oscillates wildly or blows up instead of falling.

    Seed guide, "Loss oscillates wildly during training": over the last ``window`` steps, if
    the mean step-to-step change exceeds ``rel_jump`` x the mean ``|loss|``, the direction flips
    on more than ``flip_share`` of the steps and the second half of the window is not below the
    first -- or the second half's mean rose above the first's by more than the first half's
    mean ``|loss|`` (divergence: over twice the first for a positive loss) -- the learning rate
    is the usual cause. Negative losses are judged the same way (falling is improving).

    Example:
        >>> watch = LossWatch(optimizer)                     # doctest: +SKIP
        >>> for batch in loader: watch.update(train_step(model, batch, optimizer)["loss"])
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer | None = None,
        window: int = 20,
        rel_jump: float = 0.25,
        flip_share: float = 0.4,
    ) -> None:
        self.optimizer, self.window = optimizer, window
        self.rel_jump, self.flip_share = rel_jump, flip_share
        self.history: list[float] = []

    def update(self, loss: float) -> None:
        loss = float(loss)
        self.history.append(loss)
        step = len(self.history)
        lr = self.optimizer.param_groups[0]["lr"] if self.optimizer is not None else None
        lr_s = f"lr={lr:g}" if lr is not None else "the learning rate"
        if not math.isfinite(loss):
            raise TrainingCheckError(
                f"LossWatch: loss is {loss} at step {step}; {lr_s} may be too high (or the "
                "data holds NaN) -- lower it, add warm-up and gradient clipping"
            )
        if step < self.window:
            return
        w = torch.tensor(self.history[-self.window :], dtype=torch.float64)
        d = w.diff()
        jump = float(d.abs().mean() / w.abs().mean().clamp(min=1e-12))
        flips = float((d[1:].sign() * d[:-1].sign() < 0).double().mean())
        half = self.window // 2
        # rises and falls against the first half's magnitude, so a negative loss (a negative
        # log-likelihood, -SI-SDR) that keeps falling is not read as diverging
        first, second = float(w[:half].mean()), float(w[half:].mean())
        size = float(w[:half].abs().mean())
        falling = second < first - 0.05 * size
        if second - first > size:  # a positive loss: the second half's mean over twice the first
            raise TrainingCheckError(
                f"LossWatch: loss diverges over steps {step - self.window + 1}-{step} "
                f"({float(w[0]):.3g} -> {float(w[-1]):.3g}); learning rate too high ({lr_s}) -- "
                "lower it, use warm-up, clip gradients"
            )
        if jump > self.rel_jump and flips > self.flip_share and not falling:
            raise TrainingCheckError(
                f"LossWatch: loss oscillates wildly over steps {step - self.window + 1}-{step}"
                f" (mean jump {jump:.0%} of the loss, direction flips on {flips:.0%} of "
                f"steps, not decreasing); learning rate too high ({lr_s}) -- lower it, "
                "use warm-up, clip gradients or grow the batch"
            )
