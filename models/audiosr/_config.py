"""Configuration of the AudioSR-style latent-diffusion super-resolution model."""

from __future__ import annotations

import functools
import math
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from contracts import TorchdxError
from models._fields import check_types, require_positive
from models._fields import require as _require

__all__ = ["AudioSRConfig", "AudioSRError", "CheckpointError"]


class AudioSRError(TorchdxError, ValueError):
    """Bad configuration or input of the AudioSR-style model."""

    __module__ = "models.audiosr"


class CheckpointError(AudioSRError):
    """A checkpoint does not fit the model it is loaded into."""

    __module__ = "models.audiosr"


@dataclass
class AudioSRConfig:
    """Settings of :class:`models.audiosr.AudioSR` (defaults: a small model at 16 kHz).

    AudioSR itself runs at 48 kHz with STFT 2048/480, 256 mel bins and a VAE that compresses
    time and mel by 8 into 16 channels. Here the "latent" is an invertible space-to-depth of the
    normalized log-mel (factor ``latent_factor``), which keeps the concat-conditioning and the
    U-Net faithful without training a VAE.

    Example:
        >>> cfg = AudioSRConfig.tiny()
        >>> cfg.latent_channels
        4
    """

    # front end
    sample_rate: int = 16000  # Hz of the "high-resolution" audio
    n_fft: int = 512  # STFT size of the mel front end
    hop: int = 160  # 10 ms frames, like AudioSR's 480 at 48 kHz
    n_mels: int = 64  # mel bins (AudioSR: 256)
    cutoff_hz: float = 4000.0  # bandwidth of the low-resolution input
    log_floor: float = 1e-5  # log(mel + floor)
    norm_mean: float = -4.0  # normalized = (log_mel - mean) / std
    norm_std: float = 4.0
    latent_factor: int = 2  # space-to-depth factor: latent [B, f*f, M/f, T/f]
    # U-Net (AudioSR: 128 base channels, mults [1, 2, 3, 5], attention at 8/4/2)
    base_channels: int = 32
    channel_mults: tuple[int, ...] = (1, 2)
    num_res_blocks: int = 1
    attention_levels: tuple[int, ...] = (1,)  # level indices that get SpatialTransformers
    num_heads: int = 4
    context_dim: int = 128  # width of the projected global context token (seed: 128)
    groups: int = 8  # GroupNorm groups
    # diffusion: v-prediction, cosine schedule, DDIM + CFG
    n_timesteps: int = 1000
    cond_drop_prob: float = 0.1  # probability of the unconditional (constant) latent in training
    guidance_scale: float = 3.5  # CFG scale s: uncond + s * (cond - uncond)
    ddim_steps: int = 50
    # global encoder (the seeds' addition)
    use_global_encoder: bool = False
    global_dim: int = 64  # global context [B, 64], sequence context [B, T', 64]
    encoder_channels: tuple[int, int, int] = (16, 32, 32)  # 3-layer CNN over the mel
    encoder_hidden: int = 128  # transformer width
    encoder_layers: int = 2
    encoder_heads: int = 4
    encoder_ff: int = 512  # transformer feed-forward width
    zero_init_global: bool = True  # new cross-attention starts as a no-op (old checkpoints load)
    extra: dict[str, Any] = field(default_factory=dict)  # free-form notes, saved with checkpoints

    def __post_init__(self) -> None:
        check_types(self, AudioSRError)
        self.channel_mults = tuple(self.channel_mults)
        self.attention_levels = tuple(self.attention_levels)
        self.encoder_channels = tuple(self.encoder_channels)  # type: ignore[assignment]
        require = functools.partial(_require, self, AudioSRError)
        require_positive(
            self,
            AudioSRError,
            "sample_rate",
            "hop",
            "n_mels",
            "latent_factor",
            "num_heads",
            "context_dim",
            "groups",
            "n_timesteps",
            "global_dim",
            "encoder_hidden",
            "encoder_layers",
            "encoder_heads",
            "encoder_ff",
        )
        require("n_fft", self.n_fft >= 2, ">= 2 (at least 2 frequency bins)")
        require("log_floor", 0 < self.log_floor < math.inf, "> 0 (log(mel + floor) must be finite)")
        require("norm_std", 0 < self.norm_std < math.inf, "> 0 and finite")
        require("norm_mean", math.isfinite(self.norm_mean), "finite")
        require("num_res_blocks", self.num_res_blocks >= 0, ">= 0")
        require(
            "channel_mults",
            len(self.channel_mults) > 0 and min(self.channel_mults) >= 1,
            "a non-empty tuple of ints >= 1",
        )
        require("encoder_channels", min(self.encoder_channels) >= 1, "three ints >= 1")
        require(
            "base_channels",
            self.base_channels >= 2 and self.base_channels % 2 == 0,
            "an even number >= 2 (the sinusoidal time embedding has base_channels entries)",
        )
        widths = sorted({self.base_channels * m for m in (1, *self.channel_mults)})
        require(
            "groups",
            all(w % self.groups == 0 for w in widths),
            f"a divisor of every level's width {widths} (GroupNorm)",
        )
        attended = sorted(
            {
                self.base_channels * self.channel_mults[lv]
                for lv in (*self.attention_levels, -1)
                if -len(self.channel_mults) <= lv < len(self.channel_mults)
            }
        )
        require(
            "num_heads",
            all(w % self.num_heads == 0 for w in attended),
            f"a divisor of the attended widths {attended} (heads split the channels)",
        )
        require("cond_drop_prob", 0 <= self.cond_drop_prob <= 1, "a probability in [0, 1]")
        require("guidance_scale", math.isfinite(self.guidance_scale), "finite")
        require(
            "ddim_steps",
            1 <= self.ddim_steps <= self.n_timesteps,
            f"in [1, n_timesteps={self.n_timesteps}]",
        )
        if self.n_mels % (self.latent_factor * 2 ** (len(self.channel_mults) - 1)):
            raise AudioSRError(
                f"AudioSRConfig: n_mels={self.n_mels} must be divisible by latent_factor * "
                f"2**(levels-1) = {self.latent_factor * 2 ** (len(self.channel_mults) - 1)}"
            )
        if not 0 < self.cutoff_hz < self.sample_rate / 2:
            raise AudioSRError(
                f"AudioSRConfig: cutoff_hz={self.cutoff_hz} must lie in (0, "
                f"{self.sample_rate / 2}) (the Nyquist frequency)"
            )
        if self.context_dim % self.num_heads or self.encoder_hidden % self.encoder_heads:
            raise AudioSRError(
                f"AudioSRConfig: context_dim={self.context_dim} / encoder_hidden="
                f"{self.encoder_hidden} must be divisible by the head counts "
                f"({self.num_heads}, {self.encoder_heads})"
            )
        bad = [lv for lv in self.attention_levels if not 0 <= lv < len(self.channel_mults)]
        if bad:
            raise AudioSRError(
                f"AudioSRConfig: attention_levels {bad} outside 0..{len(self.channel_mults) - 1}"
            )

    @property
    def latent_channels(self) -> int:
        """Channels of the latent (``latent_factor ** 2``)."""
        return self.latent_factor**2

    @property
    def frame_multiple(self) -> int:
        """Mel frame counts are padded to a multiple of this."""
        return self.latent_factor * 2 ** (len(self.channel_mults) - 1)

    @classmethod
    def tiny(cls, **overrides: Any) -> AudioSRConfig:
        """A very small model for tests and generated property tests."""
        base: dict[str, Any] = dict(
            n_mels=16, n_fft=256, hop=128, base_channels=16, context_dim=32,
            groups=4, encoder_channels=(4, 8, 8), encoder_hidden=32, encoder_ff=64,
            global_dim=16, n_timesteps=100, ddim_steps=4,
        )  # fmt: skip
        base.update(overrides)
        return cls(**base)

    def to_dict(self) -> dict[str, Any]:
        """Plain dict (for checkpoints)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> AudioSRConfig:
        """Inverse of :meth:`to_dict`; unknown keys are an error naming them."""
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise CheckpointError(f"AudioSRConfig.from_dict: unknown keys {unknown}")
        return cls(**d)
