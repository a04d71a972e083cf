"""Command line behind ``python -m models.sgmse.enhance``: WAV in -> WAV out."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch

from contracts import TorchdxError
from contracts.cli import ArgumentParser
from models._training import error_line
from models.audio import read_wav

from ._checkpoint import PRETRAINED, load_checkpoint, load_pretrained
from ._sampling import enhance

__all__ = ["build_parser", "main"]


def build_parser() -> ArgumentParser:
    p = ArgumentParser(
        prog="python -m models.sgmse.enhance",
        description="Enhance a noisy mono WAV with the (noise-conditioned) SGMSE+ score model.",
    )
    p.add_argument("input", help="noisy mono WAV at the model's sample rate (16 kHz)")
    p.add_argument("output", help="where to write the enhanced WAV")
    p.add_argument("--noise-ref", default=None, help="noise-only reference WAV (conditioning)")
    p.add_argument(
        "--ckpt", default="cond",
        help=f"checkpoint path, or a shipped one: {', '.join(PRETRAINED)} (default: cond)",
    )  # fmt: skip
    p.add_argument("--weights", choices=("ema", "raw"), default="ema")
    p.add_argument("--N", type=int, default=30, help="reverse steps")
    p.add_argument("--snr", type=float, default=0.5, help="corrector SNR")
    p.add_argument("--corrector-steps", type=int, default=1)
    p.add_argument("--guidance-scale", "-w", type=float, default=1.0, help="CFG scale w")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.threads < 1:
        print(f"error: --threads={args.threads} must be >= 1", file=sys.stderr)
        return 2
    torch.set_num_threads(args.threads)
    try:
        if args.ckpt in PRETRAINED:
            model = load_pretrained(args.ckpt, weights=args.weights)
        else:
            model = load_checkpoint(args.ckpt, weights=args.weights)
        noisy = read_wav(args.input, 16000)
        ref = read_wav(args.noise_ref, 16000) if args.noise_ref else None
        t0 = time.perf_counter()
        est = enhance(
            model, noisy, ref, N=args.N, snr=args.snr, corrector_steps=args.corrector_steps,
            guidance_scale=args.guidance_scale, seed=args.seed,
        )  # fmt: skip
        elapsed = time.perf_counter() - t0
    except TorchdxError as err:  # AudioError, CheckpointError, ScoreModelError, ContractError
        print(error_line(err), file=sys.stderr)
        return 2
    import soundfile as sf

    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    sf.write(args.output, est.numpy(), 16000)
    print(
        f"wrote {args.output} ({len(est) / 16000:.2f} s) in {elapsed:.1f} s "
        f"[{model.weights_used} weights, N={args.N}, w={args.guidance_scale}, "
        f"{'conditioned' if ref is not None else 'unconditional'}]"
    )
    return 0
