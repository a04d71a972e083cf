"""AudioSR-style latent diffusion with the seeds' global encoder, small and under contracts.

Public surface: :class:`AudioSRConfig` (``use_global_encoder`` toggles the encoder),
:class:`AudioSR` (``forward(wave) -> loss``, ``sample``, ``global_context``), the U-Net parts
(:class:`UNet`, :class:`SpatialTransformer`, :class:`GlobalConditionedSpatialTransformer`),
:class:`GlobalAudioEncoder`, the mel front end, checkpoints with a :class:`LoadReport`, and
:func:`super_resolve_long` (chunked inference, global context computed once per file).

Example:
    >>> from models.audiosr import AudioSR, AudioSRConfig
    >>> model = AudioSR(AudioSRConfig.tiny(use_global_encoder=True))
    >>> loss = model(torch.rand(2, 2048) - 0.5)
"""

from ._checkpoint import LoadReport, load_checkpoint, load_state_into, save_checkpoint
from ._chunked import super_resolve_long
from ._config import AudioSRConfig, AudioSRError, CheckpointError
from ._encoder import GlobalAudioEncoder
from ._mel import LogMel, lowpass, mel_filterbank
from ._model import AudioSR, cosine_alphas_cumprod
from ._unet import (
    CrossAttention,
    GlobalConditionedSpatialTransformer,
    ResBlock,
    SpatialTransformer,
    UNet,
    timestep_embedding,
)

__all__ = [
    "AudioSR",
    "AudioSRConfig",
    "AudioSRError",
    "CheckpointError",
    "CrossAttention",
    "GlobalAudioEncoder",
    "GlobalConditionedSpatialTransformer",
    "LoadReport",
    "LogMel",
    "ResBlock",
    "SpatialTransformer",
    "UNet",
    "cosine_alphas_cumprod",
    "load_checkpoint",
    "load_state_into",
    "lowpass",
    "mel_filterbank",
    "save_checkpoint",
    "super_resolve_long",
    "timestep_embedding",
]
