"""AudioSR-style latent diffusion: v-prediction, cosine schedule, DDIM with CFG."""

from __future__ import annotations

import math
from typing import Annotated

import torch
import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor, nn

import contracts
from contracts import Finite, Range, contract
from models._fields import is_int

from ._config import AudioSRConfig, AudioSRError
from ._encoder import GlobalAudioEncoder
from ._mel import LogMel, lowpass
from ._unet import UNet

__all__ = ["AudioSR", "cosine_alphas_cumprod"]


def cosine_alphas_cumprod(n_timesteps: int, s: float = 0.008) -> Tensor:
    """Cosine schedule (Nichol & Dhariwal): ``alpha_bar[t]`` for ``t = 0..n-1``, float64.

    Example:
        >>> a = cosine_alphas_cumprod(1000)
        >>> bool(a[0] > 0.99) and bool(a[-1] < 1e-3)
        True
    """
    steps = torch.arange(n_timesteps + 1, dtype=torch.float64) / n_timesteps
    f = torch.cos((steps + s) / (1 + s) * math.pi / 2) ** 2
    betas = (1 - f[1:] / f[:-1]).clamp(max=0.999)
    return torch.cumprod(1 - betas, dim=0)


@contracts.example(lambda: AudioSR(AudioSRConfig.tiny(use_global_encoder=True)))
class AudioSR(nn.Module):
    """Low-resolution mel -> high-resolution mel by latent diffusion (no VAE, no vocoder).

    Pipeline: waveform -> (``lowpass`` at ``cutoff_hz`` for the condition) -> normalized
    log-mel ``[B, M, T]`` -> space-to-depth latent ``[B, f*f, M/f, T/f]``. The U-Net sees
    ``[x_t ; cond_latent]`` (concat conditioning as in AudioSR's ``DiffusionWrapper``) and
    predicts v. With ``use_global_encoder`` the :class:`GlobalAudioEncoder` reads the whole
    low-resolution mel once and every SpatialTransformer cross-attends to its global context.

    Example:
        >>> model = AudioSR(AudioSRConfig.tiny())
        >>> loss = model(torch.randn(2, 2048))
        >>> loss.backward()
    """

    def __init__(self, cfg: AudioSRConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.mel = LogMel(cfg)
        self.unet = UNet(cfg)
        self.global_encoder = GlobalAudioEncoder(cfg) if cfg.use_global_encoder else None
        ab = cosine_alphas_cumprod(cfg.n_timesteps)
        self.register_buffer("sqrt_ab", ab.sqrt().float(), persistent=False)
        self.register_buffer("sqrt_1mab", (1 - ab).sqrt().float(), persistent=False)

    # ---- latent space (stands in for AudioSR's VAE) -------------------------------------------
    def _pad_frames(self, mel: Tensor) -> Tensor:
        t = mel.shape[-1]
        mult = self.cfg.frame_multiple
        pad = (-t) % mult
        return F.pad(mel, (0, pad), value=self.mel.silence) if pad else mel

    def to_latent(self, mel: Tensor) -> Tensor:
        """Normalized mel ``[B, M, T]`` (``T`` a multiple of ``frame_multiple``) -> latent."""
        return F.pixel_unshuffle(mel[:, None], self.cfg.latent_factor)  # (B, f*f, M/f, T/f)

    def from_latent(self, z: Tensor) -> Tensor:
        """Inverse of :meth:`to_latent`."""
        return F.pixel_shuffle(z, self.cfg.latent_factor)[:, 0]  # (B, M, T)

    def mels(self, wave: Tensor) -> tuple[Tensor, Tensor]:
        """(high-resolution mel, low-resolution mel) of waveforms ``[B, L]``."""
        lo = lowpass(wave, self.cfg.cutoff_hz, self.cfg.sample_rate)
        return self.mel(wave), self.mel(lo)

    @contract(dims={"M": "self.cfg.n_mels", "G": "self.cfg.global_dim"}, sizes={"T": (1, 12)})
    def global_context(
        self, lo_mel: Annotated[Float[Tensor, "B M T"], Finite()]
    ) -> Float[Tensor, "B G"] | None:
        """The global context of a whole low-resolution mel (None without the encoder)."""
        if self.global_encoder is None:
            return None
        return self.global_encoder(lo_mel)[0]

    def _uncond(self, cond: Tensor) -> Tensor:
        return torch.full_like(cond, self.mel.silence)  # AudioSR: a constant latent (-11.4981)

    # ---- training -------------------------------------------------------------------------------
    @contract(sizes={"L": (512, 1024)})
    def forward(self, wave: Annotated[Float[Tensor, "B L"], Range(-1, 1)]) -> Float[Tensor, ""]:
        """v-prediction MSE on a batch of high-resolution waveforms ``[B, L]`` in [-1, 1].

        The low-resolution condition is made on the fly (brick-wall low-pass); with probability
        ``cond_drop_prob`` a sample's condition is replaced by the constant latent (CFG).
        """
        hi, lo = self.mels(wave)
        g = self.global_context(lo)
        x0 = self.to_latent(self._pad_frames(hi))
        cond = self.to_latent(self._pad_frames(lo))
        b = x0.shape[0]
        drop = torch.rand(b, device=x0.device) < self.cfg.cond_drop_prob
        cond = torch.where(drop[:, None, None, None], self._uncond(cond), cond)
        t = torch.randint(0, self.cfg.n_timesteps, (b,), device=x0.device)
        eps = torch.randn_like(x0)
        a, s = self.sqrt_ab[t][:, None, None, None], self.sqrt_1mab[t][:, None, None, None]
        x_t = a * x0 + s * eps
        v = a * eps - s * x0
        return F.mse_loss(self.unet(x_t, t, cond, g), v)

    # ---- sampling -------------------------------------------------------------------------------
    @torch.no_grad()
    @contract(dims={"M": "self.cfg.n_mels", "G": "self.cfg.global_dim"}, generate=False)
    def sample(
        self,
        lo_mel: Annotated[Float[Tensor, "B M T"], Finite()],
        steps: int | None = None,
        guidance: float | None = None,
        global_ctx: Float[Tensor, "B G"] | None = None,
        generator: torch.Generator | None = None,
    ) -> Float[Tensor, "B M T"]:
        """DDIM (eta 0) with classifier-free guidance: low-res mel -> high-res mel.

        Args:
            lo_mel: normalized low-resolution log-mel ``[B, M, T]``.
            steps: DDIM steps (default ``cfg.ddim_steps``).
            guidance: CFG scale ``s`` (default ``cfg.guidance_scale``); 1 = no guidance.
            global_ctx: precomputed global context (chunked inference); computed from
                ``lo_mel`` when the model has an encoder and none is given.
            generator: RNG for the initial noise.
        """
        steps = self.cfg.ddim_steps if steps is None else steps  # steps=0 is an error, not None
        s_cfg = self.cfg.guidance_scale if guidance is None else guidance
        if not is_int(steps):
            raise AudioSRError(f"AudioSR.sample: steps={steps!r}; expected an int or None")
        if not 1 <= steps <= self.cfg.n_timesteps:
            raise AudioSRError(
                f"AudioSR.sample: steps={steps} outside [1, n_timesteps={self.cfg.n_timesteps}]"
            )
        if not math.isfinite(s_cfg):
            raise AudioSRError(f"AudioSR.sample: guidance={s_cfg!r}; expected a finite CFG scale")
        if global_ctx is not None and self.global_encoder is None:
            raise AudioSRError(
                "AudioSR.sample: argument 'global_ctx' was given but this model has no global "
                "encoder (use_global_encoder=False), so nothing would read it; drop it, or build "
                "the model with AudioSRConfig(use_global_encoder=True)"
            )
        return self._sample(lo_mel, steps, s_cfg, global_ctx, generator)

    def _sample(
        self,
        lo_mel: Tensor,
        steps: int,
        s_cfg: float,
        global_ctx: Tensor | None,
        generator: torch.Generator | None,
    ) -> Tensor:
        if global_ctx is None:
            global_ctx = self.global_context(lo_mel)
        t_len = lo_mel.shape[-1]
        cond = self.to_latent(self._pad_frames(lo_mel))
        uncond = self._uncond(cond)
        x = torch.randn(cond.shape, generator=generator, device=cond.device, dtype=cond.dtype)
        ts = torch.linspace(self.cfg.n_timesteps - 1, 0, steps).round().long().tolist()
        for i, t in enumerate(ts):
            tt = torch.full((x.shape[0],), t, device=x.device, dtype=torch.long)
            if s_cfg == 1.0:
                v = self.unet(x, tt, cond, global_ctx)
            else:
                v2 = self.unet(
                    torch.cat([x, x]), torch.cat([tt, tt]), torch.cat([cond, uncond]),
                    None if global_ctx is None else torch.cat([global_ctx, global_ctx]),
                )  # fmt: skip
                vc, vu = v2.chunk(2)
                v = vu + s_cfg * (vc - vu)
            a, s = self.sqrt_ab[t], self.sqrt_1mab[t]
            x0 = a * x - s * v
            eps = s * x + a * v
            if i + 1 < len(ts):
                tp = ts[i + 1]
                x = self.sqrt_ab[tp] * x0 + self.sqrt_1mab[tp] * eps
            else:
                x = x0
        return self.from_latent(x)[..., :t_len]
