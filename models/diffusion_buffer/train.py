"""Short real training of the diffusion buffer on synthetic noisy speech.

Run: ``python -m models.diffusion_buffer.train --steps 200 --logdir runs/diffusion_buffer``
(progress bar; TensorBoard scalars ``train/loss`` and ``eval/loss``).
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm import tqdm

from models.audio import make_mixtures

from ._config import DiffusionBufferConfig
from ._model import DiffusionBuffer

__all__ = ["TrainResult", "eval_loss", "main", "train"]


@dataclass
class TrainResult:
    """Losses of a run: per step, and the fixed-seed eval loss before and after."""

    model: DiffusionBuffer
    losses: list[float] = field(default_factory=list)
    eval_before: float = float("nan")
    eval_after: float = float("nan")


def _tensors(n: int, seed: int, seconds: float, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    mixes = make_mixtures(split, n, seed=seed, seconds=seconds)
    noisy = torch.stack([m.noisy for m in mixes])[:, None]  # (N, 1, L)
    clean = torch.stack([m.clean for m in mixes])[:, None]
    return noisy, clean


@torch.no_grad()
def eval_loss(
    model: DiffusionBuffer, noisy: torch.Tensor, clean: torch.Tensor, reps: int = 4
) -> float:
    """Mean loss over ``reps`` fixed-seed draws (RNG state restored afterwards)."""
    state = torch.get_rng_state()
    torch.manual_seed(1234)
    out = sum(model(noisy, clean).item() for _ in range(reps)) / reps
    torch.set_rng_state(state)
    return out


def train(
    cfg: DiffusionBufferConfig,
    steps: int = 200,
    batch: int = 8,
    lr: float = 2e-3,
    n_clips: int = 32,
    seconds: float = 0.5,
    seed: int = 0,
    logdir: str | None = None,
    progress: bool = True,
) -> TrainResult:
    """Train on ``n_clips`` synthetic clips; returns losses and the eval loss before/after.

    Example:
        >>> res = train(DiffusionBufferConfig.tiny(), steps=50, progress=False)
        >>> res.eval_after < res.eval_before
        True
    """
    torch.manual_seed(seed)
    model = DiffusionBuffer(cfg)
    noisy, clean = _tensors(n_clips, seed, seconds, "train")
    ev_noisy, ev_clean = _tensors(8, seed, seconds, "heldout")
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    res = TrainResult(model, eval_before=eval_loss(model, ev_noisy, ev_clean))
    writer = None
    if logdir:
        from torch.utils.tensorboard import SummaryWriter  # heavy: lazily

        writer = SummaryWriter(logdir)
    for step in tqdm(range(steps), desc="diffusion_buffer", disable=not progress):
        idx = torch.randint(0, n_clips, (batch,))
        loss = model(noisy[idx], clean[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        res.losses.append(loss.item())
        if writer is not None:
            writer.add_scalar("train/loss", loss.item(), step)
    res.eval_after = eval_loss(model, ev_noisy, ev_clean)
    if writer is not None:
        writer.add_scalar("eval/loss", res.eval_before, 0)
        writer.add_scalar("eval/loss", res.eval_after, steps)
        writer.close()
    return res


def main(argv: list[str] | None = None) -> int:
    """CLI entry point; returns the exit status."""
    p = argparse.ArgumentParser(prog="python -m models.diffusion_buffer.train", description=__doc__)
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--buffer-size", type=int, default=8)
    p.add_argument("--seconds", type=float, default=0.5)
    p.add_argument("--tiny", action="store_true", help="the test-suite model (n_fft 62)")
    p.add_argument("--amp", action="store_true", help="autocast the backbone")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--logdir", default="runs/diffusion_buffer")
    p.add_argument("--out", default=None, help="save the trained state_dict here")
    a = p.parse_args(argv)
    if a.steps < 1 or a.batch < 1:
        print(f"error: --steps={a.steps} and --batch={a.batch} must be >= 1", file=sys.stderr)
        return 2
    make = DiffusionBufferConfig.tiny if a.tiny else DiffusionBufferConfig
    cfg = make(buffer_size=a.buffer_size, use_amp=a.amp)
    torch.set_num_threads(1)  # small models: one thread is fastest on a shared machine
    res = train(cfg, a.steps, a.batch, a.lr, seconds=a.seconds, seed=a.seed, logdir=a.logdir)
    print(
        f"eval loss {res.eval_before:.4f} -> {res.eval_after:.4f} "
        f"({res.eval_after / res.eval_before:.2%} of the start); TensorBoard: {a.logdir}"
    )
    if a.out:
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        torch.save({"config": vars(cfg), "state_dict": res.model.state_dict()}, a.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
