"""Checkpoints of the diffusion buffer: config + weights + metadata, in the shared format."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from models._checkpoint import read_checkpoint, write_checkpoint

from ._config import CheckpointError, DiffusionBufferConfig, DiffusionBufferError
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
    try:
        cfg = DiffusionBufferConfig.from_dict(ckpt["config"])
    except (DiffusionBufferError, TypeError) as err:
        raise CheckpointError(f"load_checkpoint: {str(path)!r} has a bad config: {err}") from err
    model = DiffusionBuffer(cfg)
    try:
        model.load_state_dict(ckpt["state_dict"], strict=True)
    except RuntimeError as err:
        first = str(err).strip().splitlines()[0]
        raise CheckpointError(
            f"load_checkpoint: the weights in {str(path)!r} do not fit its config ({first})"
        ) from err
    model.checkpoint = {"path": str(path), "step": ckpt["step"], "metrics": ckpt["metrics"]}
    return model.eval()
