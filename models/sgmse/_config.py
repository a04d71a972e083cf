"""Configuration of the noise-conditioned score model."""

from __future__ import annotations

import functools
import math
from dataclasses import asdict, dataclass, fields
from typing import Any

from models._fields import check_types, require_positive
from models._fields import require as _require
from models.audio import STFTConfig

from ._errors import ScoreModelError

__all__ = ["COND_MODES", "ScoreModelConfig"]

COND_MODES = ("add", "film", "xattn")


@functools.lru_cache(maxsize=64)
def _stft_config(n_fft: int, hop: int) -> STFTConfig:
    return STFTConfig(n_fft=n_fft, hop=hop)


@dataclass
class ScoreModelConfig:
    """NCSN++-lite score model, OUVE SDE and CFG settings (defaults: the shipped small model).

    The public NCSN++ (sp-uhh/sgmse ``backbones/ncsnpp.py``) is far bigger; these defaults train
    on two CPU cores in minutes.
    """

    # --- STFT front end (SGMSE+)
    n_fft: int = 510  # -> 256 frequency bins
    hop: int = 128  # samples
    # --- U-Net
    channels: tuple[int, ...] = (16, 24, 32, 48)  # per resolution level (F, T halved each)
    fourier_dim: int = 32  # Gaussian-Fourier features of log(t)
    fourier_scale: float = 16.0  # std of the frozen random frequencies
    temb_dim: int = 64  # time embedding width
    # --- noise conditioning
    emb_dim: int = 128  # noise embedding E (the seed's system used 512)
    enc_channels: int = 64  # noise-encoder conv width
    cond_mode: str = "add"  # "add" (to time emb), "film" (per ResBlock), "xattn" (bottleneck)
    xattn_tokens: int = 4  # tokens the embedding is split into for "xattn"
    p_uncond: float = 0.2  # CFG: probability of replacing the condition by the null embedding
    # --- OUVE SDE (sgmse/sdes.py)
    theta: float = 1.5  # stiffness of the drift towards y
    sigma_min: float = 0.05
    sigma_max: float = 0.5
    t_eps: float = 0.03  # smallest diffusion time
    # --- training
    ema_decay: float = 0.999  # EMA of the weights (with warm-up (1+n)/(10+n))

    def __post_init__(self) -> None:
        check_types(self, ScoreModelError)
        self.channels = tuple(int(c) for c in self.channels)
        if self.cond_mode not in COND_MODES:
            raise ScoreModelError(
                f"ScoreModelConfig: cond_mode is {self.cond_mode!r}; valid: {', '.join(COND_MODES)}"
            )
        if not 0.0 <= self.p_uncond <= 1.0:
            raise ScoreModelError(
                f"ScoreModelConfig: p_uncond is {self.p_uncond}; expected a probability in [0, 1]"
            )
        if not 0.0 < self.t_eps < 1.0:
            raise ScoreModelError(
                f"ScoreModelConfig: t_eps is {self.t_eps}; expected 0 < t_eps < 1"
            )
        if any(c % 4 or c < 4 for c in self.channels) or not self.channels:
            raise ScoreModelError(
                f"ScoreModelConfig: channels {self.channels}; expected multiples of 4"
            )
        require = functools.partial(_require, self, ScoreModelError)
        require_positive(
            self, ScoreModelError, "hop", "temb_dim", "emb_dim", "enc_channels", "xattn_tokens"
        )
        require("n_fft", self.n_fft >= 2, ">= 2 (at least 2 frequency bins)")
        require(
            "hop",
            self.hop < self.n_fft,
            f"< n_fft={self.n_fft} (the windows must overlap for istft to invert the STFT)",
        )
        require(
            "fourier_dim",
            self.fourier_dim >= 2 and self.fourier_dim % 2 == 0,
            "an even number >= 2 (sin and cos halves)",
        )
        require("fourier_scale", 0 < self.fourier_scale < math.inf, "> 0 and finite")
        require("theta", 0 <= self.theta < math.inf, ">= 0 and finite")
        require("sigma_max", 0 < self.sigma_max < math.inf, "> 0 and finite")
        require(
            "sigma_min",
            0 < self.sigma_min < self.sigma_max,
            f"0 < sigma_min < sigma_max={self.sigma_max} (g(t) needs log(sigma_max / "
            "sigma_min) > 0)",
        )
        require("ema_decay", 0 <= self.ema_decay <= 1, "in [0, 1]")
        if self.emb_dim % self.xattn_tokens:
            raise ScoreModelError(
                f"ScoreModelConfig: emb_dim {self.emb_dim} is not divisible by "
                f"xattn_tokens {self.xattn_tokens}"
            )

    @property
    def stft(self) -> STFTConfig:
        """The STFT front end as a :class:`models.audio.STFTConfig` (one shared frozen instance
        per ``(n_fft, hop)``: the training step asks for it on every call)."""
        return _stft_config(self.n_fft, self.hop)

    @property
    def n_freqs(self) -> int:
        """Frequency bins F."""
        return self.n_fft // 2 + 1

    @classmethod
    def tiny(cls, **overrides: Any) -> ScoreModelConfig:
        """A very small model for tests and generated property tests (n_fft 62 -> 32 bins)."""
        kw: dict[str, Any] = dict(
            n_fft=62, hop=16, channels=(4, 8), fourier_dim=8, temb_dim=8, emb_dim=8,
            enc_channels=8, xattn_tokens=2,
        )  # fmt: skip
        kw.update(overrides)
        return cls(**kw)

    def to_dict(self) -> dict[str, Any]:
        """Plain dict (for checkpoints)."""
        d = asdict(self)
        d["channels"] = list(self.channels)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ScoreModelConfig:
        """Inverse of :meth:`to_dict`; unknown keys are an error."""
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ScoreModelError(f"ScoreModelConfig.from_dict: unknown keys {unknown}")
        return cls(**d)
