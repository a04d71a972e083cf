"""Errors of the SGMSE+ reference model."""

from __future__ import annotations

from contracts import TorchdxError

__all__ = ["CheckpointError", "ScoreModelError"]


class ScoreModelError(TorchdxError, ValueError):
    """Bad input to the score model or the sampler (t outside [t_eps, 1], short clips, ...)."""

    __module__ = "models.sgmse"


class CheckpointError(TorchdxError, ValueError):
    """A checkpoint that is missing, not a torchdx SGMSE checkpoint, or built for another config."""

    __module__ = "models.sgmse"
