"""The diffusion buffer with the BBED SDE: online diffusion-based speech enhancement.

Public surface: :class:`DiffusionBufferConfig` (time contract ``0 < t_eps < t_max < 1``),
:class:`BBED` (closed-form on-device σ(t)), :class:`CausalUNet`, :class:`DiffusionBuffer`
(``forward(mix, target) -> loss``, :meth:`~DiffusionBuffer.stream`,
:meth:`~DiffusionBuffer.enhance`), :class:`Streamer`, and the errors.

Example:
    >>> from models.diffusion_buffer import DiffusionBuffer, DiffusionBufferConfig
    >>> model = DiffusionBuffer(DiffusionBufferConfig.tiny())
    >>> loss = model(torch.randn(2, 1, 4000) * 0.1, torch.randn(2, 1, 4000) * 0.1)
"""

from ._backbone import CausalUNet, FrameNorm
from ._checkpoint import load_checkpoint, save_checkpoint
from ._config import (
    AmpOverflowError,
    BufferSizeError,
    CheckpointError,
    DiffusionBufferConfig,
    DiffusionBufferError,
    check_times,
)
from ._model import DiffusionBuffer, ScoreHead, Streamer
from ._sde import BBED, ein

__all__ = [
    "BBED",
    "AmpOverflowError",
    "BufferSizeError",
    "CausalUNet",
    "CheckpointError",
    "DiffusionBuffer",
    "DiffusionBufferConfig",
    "DiffusionBufferError",
    "FrameNorm",
    "ScoreHead",
    "Streamer",
    "check_times",
    "ein",
    "load_checkpoint",
    "save_checkpoint",
]
