"""Training loop behind ``python -m models.sgmse.train``."""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path

import torch

from contracts import TorchdxError
from contracts.cli import ArgumentParser
from models._training import error_line
from models.audio import make_mixtures, stft

from ._checkpoint import save_checkpoint
from ._config import COND_MODES, ScoreModelConfig
from ._errors import ScoreModelError
from ._model import EMA, ScoreModel

__all__ = ["build_parser", "main", "make_pool", "train"]


def build_parser() -> ArgumentParser:
    p = ArgumentParser(
        prog="python -m models.sgmse.train",
        description="Train the noise-conditioned SGMSE+ score model on synthetic noisy speech "
        "(models.audio.make_mixtures, training split) and save raw + EMA weights + config.",
    )
    p.add_argument("--out", default="runs/sgmse/model.pt", help="checkpoint path (.pt)")
    p.add_argument("--steps", type=int, default=800, help="optimizer steps")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--lr", type=float, default=5e-4, help="Adam learning rate")
    p.add_argument("--pool", type=int, default=512, help="training mixtures generated up front")
    p.add_argument("--seconds", type=float, default=1.0, help="length of each mixture")
    p.add_argument("--crop-frames", type=int, default=64, help="STFT frames per training crop")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--cond-mode", choices=COND_MODES, default="add")
    p.add_argument(
        "--p-uncond", type=float, default=0.2,
        help="CFG condition dropout; 1.0 trains the unconditional baseline",
    )  # fmt: skip
    p.add_argument("--emb-dim", type=int, default=128, help="noise embedding size E")
    p.add_argument("--channels", default="16,24,32,48", help="U-Net channels per level")
    p.add_argument("--ema-decay", type=float, default=0.999)
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    p.add_argument(
        "--tensorboard", default=None, metavar="DIR",
        help="TrainingMonitor logs to DIR every --log-every steps: loss, per-module grad norms, "
        "update ratios, histograms, CFG drop rate and the loss of conditioned vs dropped examples",
    )  # fmt: skip
    p.add_argument("--log-every", type=int, default=10)
    p.add_argument(
        "--init-from", default=None,
        help="continue from this checkpoint: raw + EMA weights and its step count (the optimizer "
        "starts fresh; checkpoints do not store it); --steps are added on top",
    )  # fmt: skip
    p.add_argument(
        "--save-every", type=int, default=0,
        help="also write the checkpoint every this many steps (0: only at the end)",
    )  # fmt: skip
    p.add_argument("--no-progress", action="store_true", help="no tqdm bar")
    return p


def make_pool(n: int, seed: int, seconds: float) -> dict[str, torch.Tensor]:
    """Training mixtures as tensors, each normalised by the peak of its noisy clip (as SGMSE+)."""
    mixes = make_mixtures("train", n, seed=seed, seconds=seconds)
    noisy = torch.stack([m.noisy for m in mixes])  # (P, L)
    scale = noisy.abs().amax(-1, keepdim=True).clamp_min(1e-8)  # (P, 1)
    return {
        "clean": torch.stack([m.clean for m in mixes]) / scale,
        "noisy": noisy / scale,
        "noise_ref": torch.stack([m.noise_ref for m in mixes]) / scale,
    }


def _batch(pool: dict, idx: torch.Tensor, crop: int, gen: torch.Generator) -> tuple:
    L = pool["noisy"].shape[-1]
    starts = torch.randint(0, max(1, L - crop + 1), (len(idx),), generator=gen)
    win = starts[:, None] + torch.arange(min(crop, L))[None, :]  # (B, crop)
    clean = pool["clean"][idx[:, None], win]  # (B, crop)
    noisy = pool["noisy"][idx[:, None], win]  # (B, crop)
    return clean, noisy, pool["noise_ref"][idx]


def _init_from(path: str, model: ScoreModel, ema: EMA) -> int:
    """Load raw + EMA weights of checkpoint ``path`` into ``model``/``ema``; returns its step."""
    from ._checkpoint import load_checkpoint

    raw = load_checkpoint(path, weights="raw")
    if raw.cfg != model.cfg:
        raise ScoreModelError(
            f"train: --init-from {path!r} has config {raw.cfg}, but the command line gives "
            f"{model.cfg}; pass the same --channels/--emb-dim/--cond-mode/--p-uncond"
        )
    model.load_state_dict(raw.state_dict())
    ema_model = load_checkpoint(path, weights="ema")
    ema.shadow = {k: v.detach().clone() for k, v in ema_model.state_dict().items()}
    step = int(raw.checkpoint.get("step") or 0)
    ema.num_updates = step
    return step


def _check_args(args: argparse.Namespace) -> None:
    """Refuse bad numbers before any work (one line from :func:`main`, exit status 2)."""
    for flag, lo in (
        ("steps", 0),
        ("batch_size", 1),
        ("pool", 1),
        ("threads", 1),
        ("log_every", 1),
        ("save_every", 0),
        ("crop_frames", 1),
    ):
        if getattr(args, flag) < lo:
            raise ScoreModelError(
                f"train: --{flag.replace('_', '-')}={getattr(args, flag)} must be >= {lo}"
            )
    for flag in ("lr", "seconds"):
        if not 0 < getattr(args, flag) < float("inf"):
            raise ScoreModelError(f"train: --{flag}={getattr(args, flag)} must be > 0")


def train(args: argparse.Namespace) -> Path:
    """Run training as described by parsed ``args``; returns the checkpoint path."""
    _check_args(args)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    channels = tuple(int(c) for c in str(args.channels).split(","))
    cfg = ScoreModelConfig(
        channels=channels, emb_dim=args.emb_dim, cond_mode=args.cond_mode,
        p_uncond=args.p_uncond, ema_decay=args.ema_decay,
    )  # fmt: skip
    model = ScoreModel(cfg)
    ema = EMA(model, cfg.ema_decay)
    start = 0
    if args.init_from:
        start = _init_from(args.init_from, model, ema)
    opt = torch.optim.Adam(model.parameters(), lr=args.lr)
    crop = (args.crop_frames - 1) * cfg.hop  # samples -> crop_frames STFT frames
    if crop < cfg.n_fft:
        raise ScoreModelError(f"train: --crop-frames {args.crop_frames} is shorter than one frame")
    t0 = time.perf_counter()
    pool = make_pool(args.pool, args.seed, args.seconds)
    t_data = time.perf_counter() - t0
    gen = torch.Generator().manual_seed(args.seed)
    monitor = None
    if args.tensorboard:
        from models._training import open_monitor

        monitor = open_monitor(args.tensorboard, every=args.log_every)(model, opt)
    # since the last logged step: loss sum and count of conditioned, then of dropped examples
    acc = torch.zeros(4)
    from tqdm import tqdm

    bar = tqdm(range(args.steps), desc="sgmse", disable=args.no_progress, dynamic_ncols=True)
    uncond = cfg.p_uncond >= 1.0
    smooth = None
    model.train()

    def save(step: int) -> Path:
        command = "python -m models.sgmse.train " + " ".join(shlex.quote(a) for a in args.argv)
        return save_checkpoint(
            args.out, model, ema, step=start + step, command=command,
            train_seconds=time.perf_counter() - t0, data_seconds=t_data, final_loss=smooth,
            metrics={"final_loss": smooth}, threads=args.threads, init_from=args.init_from,
        )  # fmt: skip

    try:
        for step in bar:
            idx = torch.randint(0, args.pool, (args.batch_size,), generator=gen)
            clean, noisy, ref = _batch(pool, idx, crop, gen)
            x0, y = stft(clean, cfg.stft), stft(noisy, cfg.stft)  # (B, F, crop_frames)
            loss = model.loss(x0, y, None if uncond else ref)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if monitor is not None:
                per, drop = model.last_example_loss, model.last_drop.float()
                acc += torch.stack([(per * (1 - drop)).sum(), (1 - drop).sum(), (per * drop).sum(),
                                    drop.sum()])  # fmt: skip
                if step % args.log_every == 0:
                    monitor.step(
                        start + step, loss=loss, loss_smooth=smooth if smooth is not None else loss,
                        **{"cfg/drop_fraction": acc[3] / (acc[1] + acc[3]).clamp_min(1),
                       "cfg/drop_n": acc[1] + acc[3], "cfg/p_uncond": cfg.p_uncond,
                           "cfg/loss_cond": acc[0] / acc[1].clamp_min(1),
                           "cfg/loss_uncond": acc[2] / acc[3].clamp_min(1)},
                    )  # fmt: skip
                    acc.zero_()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
            opt.step()
            ema.update(model)
            smooth = loss.item() if smooth is None else 0.95 * smooth + 0.05 * loss.item()
            bar.set_postfix(loss=f"{smooth:.4f}")
            if args.save_every and (step + 1) % args.save_every == 0 and step + 1 < args.steps:
                save(step + 1)
                print(f"step {start + step + 1}: saved {args.out}, smoothed loss {smooth:.4f}",
                      flush=True)  # fmt: skip
    finally:
        if monitor is not None:
            monitor.close()
    elapsed = time.perf_counter() - t0
    out = save(args.steps)
    print(
        f"saved {out} ({out.stat().st_size / 1e6:.2f} MB) after {start + args.steps} steps in "
        f"{elapsed / 60:.1f} min (data {t_data:.0f} s), smoothed loss {smooth if smooth is not None else float('nan'):.4f}"
    )
    return out


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    args.argv = argv
    try:
        train(args)
    except TorchdxError as err:  # ScoreModelError, AudioError (clip length), ContractError, ...
        print(error_line(err), file=sys.stderr)
        return 2
    return 0
