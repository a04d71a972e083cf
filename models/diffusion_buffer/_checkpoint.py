"""Checkpoints of the diffusion buffer: config + weights + metadata, in the shared format."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from models._checkpoint import (
    build_from_checkpoint,
    check_save_args,
    load_weights,
    read_checkpoint,
    write_checkpoint,
)

from ._config import CheckpointError, DiffusionBufferConfig
from ._model import DiffusionBuffer

__all__ = ["load_checkpoint", "save_checkpoint"]


def save_checkpoint(
    model: DiffusionBuffer,
    path: str | Path,
    step: int = 0,
    metrics: dict[str, Any] | None = None,
    **extra: Any,
) -> Path:
    """Save config, weights and metadata (step, metrics, torch version) to ``path``.

    Example:
        >>> save_checkpoint(model, "runs/db.pt", step=200, metrics={"eval_loss": 0.2})
    """
    check_save_args(
        "save_checkpoint",
        model,
        path,
        DiffusionBuffer,
        "save_checkpoint(model, path, step=0, metrics=None)",
        CheckpointError,
    )
    return write_checkpoint(
        path, kind="diffusion_buffer", config=model.cfg.to_dict(),
        weights={"state_dict": model.state_dict()}, step=step, metrics=metrics, **extra,
    )  # fmt: skip


def load_checkpoint(path: str | Path) -> DiffusionBuffer:
    """Rebuild a :class:`DiffusionBuffer` (eval mode) from a checkpoint.

    Files written before the shared format (``{"config", "state_dict"}``) still load;
    ``model.checkpoint`` holds the step and metrics.

    Raises:
        CheckpointError: naming the file when it is missing, not a diffusion-buffer checkpoint,
            or its weights do not fit its config.

    Example:
        >>> model = load_checkpoint("runs/db.pt")
        >>> model.checkpoint["step"]
        200
    """
    ckpt = read_checkpoint(
        path, kind="diffusion_buffer", label="diffusion-buffer", error=CheckpointError,
        legacy_keys=("config", "state_dict"),
        hint="write it with models.diffusion_buffer.train --out",
    )  # fmt: skip
    model = build_from_checkpoint(
        path, ckpt, lambda c: DiffusionBuffer(DiffusionBufferConfig.from_dict(c)), CheckpointError
    )
    load_weights(path, model, ckpt["state_dict"], CheckpointError)
    model.checkpoint = {"path": str(path), "step": ckpt["step"], "metrics": ckpt["metrics"]}
    return model.eval()
