"""Train the reference Paraformer on toy data (CPU friendly).

Usage:
    python -m models.paraformer.train                      # defaults: ~600 steps, runs/paraformer
    python -m models.paraformer.train --steps 200 --d-model 32 --out /tmp/pf
    tensorboard --logdir runs/paraformer                   # scalars train/* and val/*
    python -m models.paraformer.train --tensorboard runs/pf_mon   # + TrainingMonitor (α sums)

Exit status: 0 when training completed, 2 for bad arguments (one line on stderr).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from contracts.cli import ArgumentParser

from ._config import ConfigError, ParaformerConfig


def build_parser() -> ArgumentParser:
    p = ArgumentParser(
        prog="python -m models.paraformer.train",
        description=(
            "Train the torchdx reference Paraformer (encoder -> CIF predictor -> "
            "non-autoregressive decoder) on synthetic speech-like toy data, with a tqdm "
            "progress bar, TensorBoard scalars (OUT/tb) and a checkpoint (OUT/paraformer.pt). "
            "Prints the held-out metrics as JSON at the end."
        ),
    )
    d = ParaformerConfig()
    p.add_argument("--steps", type=int, default=600, help="optimisation steps (default 600)")
    p.add_argument(
        "--out", default="runs/paraformer", help="output directory (default %(default)s)"
    )
    p.add_argument("--train-samples", type=int, default=2000, help="toy training utterances")
    p.add_argument("--val-samples", type=int, default=256, help="held-out toy utterances")
    p.add_argument("--eval-every", type=int, default=100, help="validation period in steps")
    p.add_argument(
        "--target-accuracy",
        type=float,
        default=None,
        help="stop once held-out token accuracy reaches this value",
    )
    p.add_argument("--time-budget", type=float, default=None, help="stop after this many seconds")
    p.add_argument("--d-model", type=int, default=d.d_model, help="hidden size D")
    p.add_argument("--layers", type=int, default=d.n_enc_layers, help="encoder and decoder blocks")
    p.add_argument("--lr", type=float, default=d.lr, help="peak AdamW learning rate")
    p.add_argument("--batch-size", type=int, default=d.batch_size, help="utterances per step")
    p.add_argument("--seed", type=int, default=d.seed, help="random seed")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    p.add_argument("--no-tensorboard", action="store_true", help="do not write TensorBoard logs")
    p.add_argument(
        "--tensorboard",
        default=None,
        metavar="DIR",
        help="TrainingMonitor logs to DIR: losses, per-module grad norms, update ratios, "
        "histograms, and the CIF predictor's alpha sums vs target lengths",
    )
    p.add_argument("--no-loss-watch", action="store_true", help="do not run LossWatch")
    return p


def train(cfg: ParaformerConfig, **kwargs: Any) -> dict[str, Any]:
    """The training entry point (as in every reference model): :func:`fit` with ``kwargs``.

    Example:
        >>> res = train(ParaformerConfig.tiny(), steps=20, progress=False)  # doctest: +SKIP
    """
    from ._train import fit

    return fit(cfg, **kwargs)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.steps < 1 or args.train_samples < 1 or args.val_samples < 1:
            raise ConfigError("--steps, --train-samples and --val-samples must be >= 1")
        if args.eval_every < 1 or args.threads < 1:
            raise ConfigError(
                f"--eval-every={args.eval_every} and --threads={args.threads} must be >= 1"
            )
        cfg = ParaformerConfig(
            d_model=args.d_model,
            n_enc_layers=args.layers,
            n_dec_layers=args.layers,
            lr=args.lr,
            batch_size=args.batch_size,
            seed=args.seed,
        )
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    import torch

    from models._training import open_loss_watch, open_monitor

    torch.set_num_threads(args.threads)
    out = Path(args.out)
    result = train(
        cfg,
        loss_watch=None if args.no_loss_watch else open_loss_watch(),
        monitor=open_monitor(args.tensorboard) if args.tensorboard else None,
        steps=args.steps,
        train_samples=args.train_samples,
        val_samples=args.val_samples,
        log_dir=None if args.no_tensorboard else out / "tb",
        checkpoint=out / "paraformer.pt",
        eval_every=args.eval_every,
        target_accuracy=args.target_accuracy,
        time_budget_s=args.time_budget,
        progress=not args.no_progress,
    )
    summary = {
        "steps": result["steps"],
        "seconds": round(result["seconds"], 1),
        "checkpoint": str(out / "paraformer.pt"),
        **result["val"],
    }
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
