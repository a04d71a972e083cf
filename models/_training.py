"""The short training loop and CLI shared by the AudioSR and diffusion-buffer references.

Both train a model whose ``forward`` returns its loss on clips of synthetic speech, with Adam,
gradient clipping at 1.0, a tqdm bar, optional TensorBoard scalars, a fixed-seed held-out loss
before and after, and a checkpoint in the shared format (:mod:`models._checkpoint`). A model
package supplies a :class:`TrainSpec`: how to build the model, draw a batch and save it.

A *monitor* is any object with ``step(step, loss=..., **scalars)`` and ``close()`` (for example
``diagnostics.TrainingMonitor``); models never import diagnostics, the caller passes one in.

Example:
    >>> res = run_training(spec, cfg, steps=50, progress=False)  # doctest: +SKIP
    >>> res.eval_after < res.eval_before  # doctest: +SKIP
    True
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn

from contracts import TorchdxError
from contracts.cli import ArgumentParser
from models._fields import is_int

__all__ = [
    "Monitor",
    "TrainResult",
    "TrainSpec",
    "TrainingError",
    "add_common_arguments",
    "error_line",
    "eval_loss",
    "open_loss_watch",
    "open_monitor",
    "run_cli",
    "run_training",
]


class TrainingError(TorchdxError, ValueError):
    """A bad argument of :func:`run_training` (steps, batch, clips, learning rate)."""

    __module__ = "models._training"


class Monitor(Protocol):
    """What a training loop calls after each backward pass (``diagnostics.TrainingMonitor``)."""

    def step(self, step: int, loss: Any = None, **scalars: Any) -> None: ...

    def close(self) -> None: ...


@dataclass
class TrainResult:
    """Losses of a run: per step, and the fixed-seed eval loss before and after."""

    model: nn.Module
    losses: list[float] = field(default_factory=list)
    eval_before: float = float("nan")
    eval_after: float = float("nan")


@dataclass
class TrainSpec:
    """What one model package contributes to the shared loop.

    Attributes:
        name: progress-bar label and CLI program (``"audiosr"`` -> ``models.audiosr.train``).
        build: config -> model.
        data: ``(n_clips, seed, seconds, split)`` -> tuple of tensors with clips on dim 0.
        scalars: optional ``(model) -> {name: tensor}`` read after each step for the monitor
            (the model-specific signals its seed asks for).
        save: ``(model, path, step, metrics) -> None``.
    """

    name: str
    build: Callable[[Any], nn.Module]
    data: Callable[[int, int, float, str], tuple[torch.Tensor, ...]]
    save: Callable[..., Any]
    scalars: Callable[[nn.Module], dict[str, Any]] | None = None


@torch.no_grad()
def eval_loss(
    model: nn.Module, tensors: torch.Tensor | Sequence[torch.Tensor], reps: int = 4
) -> float:
    """Mean of ``model(*tensors)`` (or ``model(tensor)``) over ``reps`` fixed-seed draws (RNG
    state restored).

    Example:
        >>> eval_loss(model, (noisy, clean))  # doctest: +SKIP
        0.41
    """
    args = (tensors,) if isinstance(tensors, torch.Tensor) else tuple(tensors)
    state = torch.get_rng_state()
    torch.manual_seed(1234)
    out = sum(model(*args).item() for _ in range(reps)) / reps
    torch.set_rng_state(state)
    return out


def run_training(
    spec: TrainSpec,
    cfg: Any,
    steps: int = 200,
    batch: int = 8,
    lr: float = 2e-3,
    n_clips: int = 32,
    seconds: float = 0.5,
    seed: int = 0,
    logdir: str | None = None,
    progress: bool = True,
    monitor: Monitor | Callable[[nn.Module, torch.optim.Optimizer], Monitor] | None = None,
) -> TrainResult:
    """Train ``spec.build(cfg)`` on ``n_clips`` synthetic clips.

    Args:
        monitor: a :class:`Monitor`, or a factory ``(model, optimizer) -> Monitor`` (the model
            is built here); called after every backward pass with the loss and ``spec.scalars``.
        logdir: plain TensorBoard scalars ``train/loss`` and ``eval/loss`` (None: none).

    Returns:
        a :class:`TrainResult`.
    """
    for name, value, lo in (("steps", steps, 0), ("batch", batch, 1), ("n_clips", n_clips, 1)):
        if not is_int(value) or value < lo:
            raise TrainingError(
                f"run_training: argument {name!r} = {value!r} is invalid: expected an int >= {lo}"
            )
    if not 0 < lr < float("inf"):
        raise TrainingError(f"run_training: argument 'lr' = {lr!r} is invalid: expected > 0")
    torch.manual_seed(seed)
    model = spec.build(cfg)
    train_t = spec.data(n_clips, seed, seconds, "train")
    eval_t = spec.data(8, seed, seconds, "heldout")
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    res = TrainResult(model, eval_before=eval_loss(model, eval_t))
    if monitor is not None and not hasattr(monitor, "step"):
        monitor = monitor(model, opt)
    if monitor is not None:
        monitor.step(0, val_loss=res.eval_before)
    writer = None
    if logdir:
        from torch.utils.tensorboard import SummaryWriter  # heavy: lazily

        writer = SummaryWriter(logdir)
    from tqdm import tqdm

    try:
        for step in tqdm(range(steps), desc=spec.name, disable=not progress):
            idx = torch.randint(0, n_clips, (batch,))
            loss = model(*(t[idx] for t in train_t))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if monitor is not None:
                extra = spec.scalars(model) if spec.scalars is not None else {}
                monitor.step(step, loss=loss, **extra)
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            res.losses.append(loss.item())
            if writer is not None:
                writer.add_scalar("train/loss", res.losses[-1], step)
        res.eval_after = eval_loss(model, eval_t)
        if writer is not None:
            writer.add_scalar("eval/loss", res.eval_before, 0)
            writer.add_scalar("eval/loss", res.eval_after, steps)
        if monitor is not None:
            monitor.step(steps, val_loss=res.eval_after)
    finally:
        if writer is not None:
            writer.close()
        if monitor is not None:
            monitor.close()
    return res


def error_line(err: BaseException) -> str:
    """``"error: ..."`` in one line for a CLI: the error's first line plus its hint, if any."""
    lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
    hint = next((ln for ln in lines[1:] if ln.startswith("hint:")), None)
    return "error: " + " ".join(
        [lines[0] if lines else type(err).__name__, *([hint] if hint else [])]
    )


def open_monitor(logdir: str, **kwargs: Any) -> Callable[[nn.Module, Any], Monitor]:
    """A factory of ``diagnostics.TrainingMonitor`` writing to ``logdir`` (for ``--tensorboard``).

    The only place models reach diagnostics, and only at run time from a CLI: the monitor is an
    application-level choice, so the import is lazy and the library code above never makes it.
    """

    def make(model: nn.Module, optimizer: Any) -> Monitor:
        from diagnostics import TrainingMonitor

        return TrainingMonitor(model, logdir, optimizer=optimizer, **kwargs)

    return make


def open_loss_watch(**kwargs: Any) -> Callable[[Any], Any]:
    """A factory ``optimizer -> diagnostics.LossWatch`` (for a CLI; lazy, as :func:`open_monitor`)."""

    def make(optimizer: Any) -> Any:
        from diagnostics import LossWatch

        return LossWatch(optimizer, **kwargs)

    return make


def add_common_arguments(p: ArgumentParser, logdir: str) -> None:
    """The flags both short-training CLIs share."""
    p.add_argument("--steps", type=int, default=200, help="optimizer steps (default 200)")
    p.add_argument("--batch", type=int, default=8, help="clips per step (default 8)")
    p.add_argument("--lr", type=float, default=2e-3, help="Adam learning rate")
    p.add_argument("--seconds", type=float, default=0.5, help="clip length in seconds")
    p.add_argument("--tiny", action="store_true", help="the test-suite model")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--logdir", default=logdir, help="plain TensorBoard scalars (loss only)")
    p.add_argument(
        "--tensorboard",
        default=None,
        metavar="DIR",
        help="TrainingMonitor logs (loss, per-module grad norms, update ratios, histograms and "
        "this model's own signals) to DIR",
    )
    p.add_argument("--out", default=None, help="save a checkpoint (config + weights) here")


def run_cli(spec: TrainSpec, args: argparse.Namespace, cfg: Any) -> int:
    """Run the training a parsed command line asks for; returns the exit status.

    ``cfg`` is the config, or a zero-argument factory of it (so that a bad flag that the config
    refuses is reported like any other bad argument: one line, exit status 2).
    """
    if args.steps < 1 or args.batch < 1:
        print(f"error: --steps={args.steps} and --batch={args.batch} must be >= 1", file=sys.stderr)
        return 2
    if not 0 < args.lr < float("inf") or not 0 < args.seconds < float("inf"):
        print(f"error: --lr={args.lr} and --seconds={args.seconds} must be > 0", file=sys.stderr)
        return 2
    try:
        if callable(cfg):
            cfg = cfg()
        torch.set_num_threads(1)  # small models: one thread is fastest on a shared machine
        monitor = open_monitor(args.tensorboard) if args.tensorboard else None
        res = run_training(
            spec,
            cfg,
            args.steps,
            args.batch,
            args.lr,
            seconds=args.seconds,
            seed=args.seed,
            logdir=args.logdir,
            monitor=monitor,
        )
    except TorchdxError as err:  # a config, clip length or buffer the model refuses
        print(error_line(err), file=sys.stderr)
        return 2
    print(
        f"eval loss {res.eval_before:.4f} -> {res.eval_after:.4f} "
        f"({res.eval_after / res.eval_before:.2%} of the start); TensorBoard: "
        f"{args.tensorboard or args.logdir}"
    )
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        metrics = {"eval_before": res.eval_before, "eval_after": res.eval_after}
        spec.save(res.model, args.out, step=args.steps, metrics=metrics)
    return 0
