"""Checkpoints: config + raw weights + EMA weights; loading swaps EMA in and says so."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from models._checkpoint import (
    build_from_checkpoint,
    check_save_args,
    checkpoint_format,
    load_weights,
    read_checkpoint,
    write_checkpoint,
)

from ._config import ScoreModelConfig
from ._errors import CheckpointError
from ._model import EMA, ScoreModel

__all__ = ["CHECKPOINT_DIR", "FORMAT", "load_checkpoint", "load_pretrained", "save_checkpoint"]

FORMAT = checkpoint_format("sgmse")
CHECKPOINT_DIR = Path(__file__).parent / "checkpoints"
PRETRAINED = {"cond": "sgmse_cond.pt", "uncond": "sgmse_uncond.pt"}


def save_checkpoint(
    path: str | Path, model: ScoreModel, ema: EMA | None, step: int, **extra: Any
) -> Path:
    """Write ``{"format", "config", "raw", "ema", "step", "metrics", "torch_version", **extra}``.

    ``extra`` may hold ``metrics={...}``; everything else is kept as metadata.

    Example:
        >>> save_checkpoint("runs/sgmse.pt", model, ema, step=600, command="...")
    """
    check_save_args(
        "save_checkpoint",
        model,
        path,
        ScoreModel,
        "save_checkpoint(path, model, ema, step)",
        CheckpointError,
    )
    if ema is not None and not isinstance(ema, EMA):
        raise CheckpointError(
            f"save_checkpoint: argument 'ema' is a {type(ema).__name__}, expected an EMA or None"
        )
    metrics = extra.pop("metrics", None)
    extra.pop("torch_version", None)  # written by the shared helper
    return write_checkpoint(
        path,
        kind="sgmse",
        config=model.cfg.to_dict(),
        weights={"raw": model.state_dict(), "ema": ema.state_dict() if ema is not None else None},
        step=step,
        metrics=metrics,
        **extra,
    )


def load_checkpoint(path: str | Path, weights: str = "ema") -> ScoreModel:
    """Load a checkpoint written by :func:`save_checkpoint` into a :class:`ScoreModel` (eval mode).

    Args:
        path: the ``.pt`` file.
        weights: ``"ema"`` (default; falls back to raw weights with a warning-free record when the
            checkpoint has no EMA) or ``"raw"``.

    Returns:
        the model, with ``model.weights_used`` set to ``"ema"`` or ``"raw"`` and
        ``model.checkpoint`` holding ``{"path", "step", ...}`` metadata.

    Raises:
        CheckpointError: naming the file when it is missing, not a torchdx SGMSE checkpoint, or its
            weights do not fit its config.

    Example:
        >>> model = load_checkpoint("runs/sgmse.pt")
        >>> model.weights_used
        'ema'
    """
    if weights not in ("ema", "raw"):
        raise CheckpointError(
            f"load_checkpoint: argument 'weights' is {weights!r}; valid: ema, raw"
        )
    path = Path(path)
    ckpt = read_checkpoint(
        path, kind="sgmse", label="SGMSE", error=CheckpointError,
        hint="write it with models.sgmse.train",
    )  # fmt: skip
    model = build_from_checkpoint(
        path, ckpt, lambda c: ScoreModel(ScoreModelConfig.from_dict(c)), CheckpointError
    )
    used = "ema" if weights == "ema" and ckpt.get("ema") is not None else "raw"
    if not isinstance(ckpt.get(used), dict):
        raise CheckpointError(f"load_checkpoint: {str(path)!r} holds no {used} weights")
    load_weights(path, model, ckpt[used], CheckpointError, what=f"{used} weights")
    model.eval()
    model.weights_used = used
    model.checkpoint = {
        "path": str(path),
        "step": ckpt.get("step"),
        **{k: v for k, v in ckpt.items() if k not in ("raw", "ema", "config")},
    }
    return model


def load_pretrained(which: str = "cond", weights: str = "ema") -> ScoreModel:
    """The small checkpoints shipped in ``models/sgmse/checkpoints/``.

    Args:
        which: ``"cond"`` (noise-conditioned, CFG dropout p=0.2) or ``"uncond"`` (same network
            trained with the null embedding only: the baseline).
        weights: ``"ema"`` (default) or ``"raw"``.

    Example:
        >>> model = load_pretrained("cond")
        >>> model.weights_used
        'ema'
    """
    if which not in PRETRAINED:
        raise CheckpointError(
            f"load_pretrained: argument 'which' is {which!r}; valid: {', '.join(PRETRAINED)}"
        )
    path = CHECKPOINT_DIR / PRETRAINED[which]
    if not path.is_file():
        raise CheckpointError(
            f"load_pretrained: shipped checkpoint {str(path)!r} is missing; train it with the "
            "command in docs/SGMSE.md"
        )
    return load_checkpoint(path, weights=weights)
