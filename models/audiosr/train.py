"""Short real training of the AudioSR-style model on synthetic speech (clean signals).

Run: ``python -m models.audiosr.train --steps 200 --global-encoder --out runs/audiosr/ge.pt``
(progress bar; plain TensorBoard scalars ``train/loss`` and ``eval/loss`` in ``--logdir``;
``--tensorboard DIR`` adds the TrainingMonitor with the global encoder's gradient share).
"""

from __future__ import annotations

import sys
from typing import Any

import torch

from contracts.cli import ArgumentParser
from models._training import (
    TrainResult,
    TrainSpec,
    add_common_arguments,
    eval_loss,
    run_cli,
    run_training,
)
from models.audio import make_mixtures

from ._checkpoint import save_checkpoint
from ._config import AudioSRConfig
from ._model import AudioSR

__all__ = ["SPEC", "TrainResult", "eval_loss", "main", "train"]


def _waves(n: int, seed: int, seconds: float, split: str) -> tuple[torch.Tensor]:
    clean = torch.stack([m.clean for m in make_mixtures(split, n, seed=seed, seconds=seconds)])
    return (clean / clean.abs().amax(dim=-1, keepdim=True).clamp(min=1e-8) * 0.9,)  # (N, L)


def _scalars(model: AudioSR) -> dict[str, Any]:
    """Seed 001/002: does any gradient reach the global encoder? Its share of the grad norm."""
    if model.global_encoder is None:
        return {}
    enc = [p.grad for p in model.global_encoder.parameters() if p.grad is not None]
    allg = [p.grad for p in model.parameters() if p.grad is not None]
    if not allg:
        return {}
    enc_sq = torch.stack(torch._foreach_norm(enc)).square().sum() if enc else torch.zeros(())
    all_sq = torch.stack(torch._foreach_norm(allg)).square().sum()
    return {"cond/encoder_grad_share": (enc_sq / all_sq.clamp_min(1e-30)).sqrt()}


SPEC = TrainSpec(name="audiosr", build=AudioSR, data=_waves, save=save_checkpoint, scalars=_scalars)


def train(
    cfg: AudioSRConfig,
    steps: int = 200,
    batch: int = 8,
    lr: float = 2e-3,
    n_clips: int = 32,
    seconds: float = 0.5,
    seed: int = 0,
    logdir: str | None = None,
    progress: bool = True,
    monitor: Any = None,
) -> TrainResult:
    """Train on ``n_clips`` synthetic clips; returns losses and the eval loss before/after.

    ``monitor``: a ``diagnostics.TrainingMonitor`` (or a factory ``(model, optimizer) -> one``).

    Example:
        >>> res = train(AudioSRConfig.tiny(), steps=50, progress=False)
        >>> res.eval_after < res.eval_before
        True
    """
    return run_training(
        SPEC, cfg, steps, batch, lr, n_clips, seconds, seed, logdir, progress, monitor
    )


def main(argv: list[str] | None = None) -> int:
    """CLI entry point; returns the exit status."""
    p = ArgumentParser(prog="python -m models.audiosr.train", description=__doc__)
    add_common_arguments(p, "runs/audiosr")
    p.add_argument("--global-encoder", action="store_true", help="use_global_encoder=True")
    a = p.parse_args(argv)
    make = AudioSRConfig.tiny if a.tiny else AudioSRConfig
    return run_cli(SPEC, a, lambda: make(use_global_encoder=a.global_encoder))


if __name__ == "__main__":
    sys.exit(main())
