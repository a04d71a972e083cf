"""NCSN++-lite U-Net on the complex STFT, time embedding and noise-reference encoder."""

from __future__ import annotations

import math
from typing import Annotated

import torch
import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor, nn

from models.audio import AudioError, stft
from models.audio._compat import Finite, contract, example

from ._config import ScoreModelConfig
from ._errors import ScoreModelError

__all__ = ["GaussianFourierProjection", "NoiseEncoder", "ResBlock", "UNet"]


def _groups(c: int) -> int:
    return max(1, min(8, c // 4))


@example(lambda: GaussianFourierProjection(8, 16.0))
class GaussianFourierProjection(nn.Module):
    """[sin(2 pi W log t), cos(2 pi W log t)] with frozen random W ~ N(0, scale^2)."""

    def __init__(self, dim: int, scale: float) -> None:
        super().__init__()
        if dim < 2 or dim % 2:
            raise ScoreModelError(
                f"GaussianFourierProjection: dim={dim}; expected an even number >= 2"
            )
        self.register_buffer("W", torch.randn(dim // 2) * scale)

    @contract
    def forward(self, t: Annotated[Float[Tensor, " B"], Finite()]) -> Float[Tensor, "B D"]:
        proj = torch.log(t.clamp_min(1e-12))[:, None] * self.W[None, :] * 2 * math.pi  # (B, D/2)
        return torch.cat([proj.sin(), proj.cos()], dim=-1)


class ResBlock(nn.Module):
    """GroupNorm-SiLU-Conv, + Dense(time emb), [FiLM(noise emb)], GroupNorm-SiLU-Conv, skip."""

    def __init__(self, cin: int, cout: int, temb_dim: int, emb_dim: int, film: bool) -> None:
        super().__init__()
        self.norm1 = nn.GroupNorm(_groups(cin), cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1)
        self.temb = nn.Linear(temb_dim, cout)
        self.norm2 = nn.GroupNorm(_groups(cout), cout)
        self.film = nn.Linear(emb_dim, 2 * cout) if film else None
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1)
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x: Tensor, temb: Tensor, cemb: Tensor) -> Tensor:
        h = self.conv1(F.silu(self.norm1(x)))  # (B, cout, F, T)
        h = h + self.temb(F.silu(temb))[:, :, None, None]
        h = self.norm2(h)
        if self.film is not None:
            scale, shift = self.film(cemb)[:, :, None, None].chunk(2, dim=1)  # (B, cout, 1, 1)
            h = h * (1 + scale) + shift
        h = self.conv2(F.silu(h))
        return (self.skip(x) + h) / math.sqrt(2.0)


class CrossAttention(nn.Module):
    """Bottleneck pixels attend to tokens made from the noise embedding."""

    def __init__(self, channels: int, emb_dim: int, n_tokens: int) -> None:
        super().__init__()
        self.n_tokens = n_tokens
        self.norm = nn.GroupNorm(_groups(channels), channels)
        self.to_tokens = nn.Linear(emb_dim // n_tokens, channels)
        self.attn = nn.MultiheadAttention(channels, num_heads=1, batch_first=True)

    def forward(self, h: Tensor, cemb: Tensor) -> Tensor:
        B, C, Fh, Th = h.shape
        tokens = self.to_tokens(cemb.view(B, self.n_tokens, -1))  # (B, K, C)
        q = self.norm(h).flatten(2).transpose(1, 2)  # (B, Fh*Th, C)
        out, _ = self.attn(q, tokens, tokens, need_weights=False)  # (B, Fh*Th, C)
        return h + out.transpose(1, 2).reshape(B, C, Fh, Th)  # (B, C, Fh, Th)


@example(lambda: NoiseEncoder(ScoreModelConfig.tiny()))
class NoiseEncoder(nn.Module):
    """Noise reference clip -> embedding ``[B, E]``.

    Compressed STFT magnitude ``[B, F, T]`` -> two 1-D convs over time -> mean and std pooling
    over time -> Linear. Any clip of at least one STFT frame works.
    """

    def __init__(self, cfg: ScoreModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        c = cfg.enc_channels
        self.conv1 = nn.Conv1d(cfg.n_freqs, c, 3, padding=1)
        self.conv2 = nn.Conv1d(c, c, 3, padding=2, dilation=2)
        self.out = nn.Linear(2 * c, cfg.emb_dim)

    @contract(dims={"E": "self.cfg.emb_dim"}, sizes={"L": (62, 200)})
    def forward(self, noise_ref: Annotated[Float[Tensor, "B L"], Finite()]) -> Float[Tensor, "B E"]:
        try:  # free unless it fails: no check on the hot path
            mag = stft(noise_ref, self.cfg.stft).abs()  # (B, F, T) compressed magnitude
            h = F.silu(self.conv1(mag))  # (B, C, T)
        except AudioError as err:
            raise ScoreModelError(
                f"NoiseEncoder.forward(): argument 'noise_ref' has {noise_ref.shape[-1]} "
                f"samples; a reference needs at least one STFT frame (n_fft={self.cfg.n_fft} "
                "samples)"
            ) from err
        h = F.silu(self.conv2(h)) + h  # (B, C, T)
        pooled = torch.cat([h.mean(-1), h.std(-1, unbiased=False)], dim=-1)  # (B, 2C)
        return self.out(pooled)


class UNet(nn.Module):
    """NCSN++-lite: one ResBlock per level down and up, a middle block, skip concatenation.

    Input ``[B, 4, F, T]`` (Re/Im of x_t and y), output ``[B, 2, F, T]`` (Re/Im). F and T must be
    multiples of ``2 ** (levels - 1)``
    after zero padding at the end (cropped off again).
    """

    def __init__(self, cfg: ScoreModelConfig) -> None:
        super().__init__()
        ch, td, ed = cfg.channels, cfg.temb_dim, cfg.emb_dim
        film = cfg.cond_mode == "film"
        self.conv_in = nn.Conv2d(4, ch[0], 3, padding=1)
        self.down = nn.ModuleList(
            ResBlock(ch[max(i - 1, 0)], ch[i], td, ed, film) for i in range(len(ch))
        )
        self.mid1 = ResBlock(ch[-1], ch[-1], td, ed, film)
        self.xattn = (
            CrossAttention(ch[-1], ed, cfg.xattn_tokens) if cfg.cond_mode == "xattn" else None
        )
        self.mid2 = ResBlock(ch[-1], ch[-1], td, ed, film)
        self.up = nn.ModuleList(
            ResBlock(ch[min(i + 1, len(ch) - 1)] + ch[i], ch[i], td, ed, film)
            for i in reversed(range(len(ch)))
        )
        self.norm_out = nn.GroupNorm(_groups(ch[0]), ch[0])
        self.conv_out = nn.Conv2d(ch[0], 2, 3, padding=1)
        nn.init.zeros_(self.conv_out.weight)  # start as "predict zero noise"
        nn.init.zeros_(self.conv_out.bias)

    def forward(self, x: Tensor, temb: Tensor, cemb: Tensor) -> Tensor:
        Fx, Tx = x.shape[-2:]
        m = 2 ** (len(self.down) - 1)
        x = F.pad(x, (0, -Tx % m, 0, -Fx % m))  # (B, 4, F', T') multiples of 2^(levels-1)
        h = self.conv_in(x)  # (B, C0, F', T')
        skips = []
        for i, block in enumerate(self.down):
            h = block(h, temb, cemb)  # (B, Ci, F/2^i, T/2^i)
            skips.append(h)
            if i < len(self.down) - 1:
                h = F.avg_pool2d(h, 2)
        h = self.mid1(h, temb, cemb)
        if self.xattn is not None:
            h = self.xattn(h, cemb)
        h = self.mid2(h, temb, cemb)
        for block in self.up:
            skip = skips.pop()
            if h.shape[-2:] != skip.shape[-2:]:
                h = F.interpolate(h, size=skip.shape[-2:], mode="nearest")
            h = block(torch.cat([h, skip], dim=1), temb, cemb)
        return self.conv_out(F.silu(self.norm_out(h)))[..., :Fx, :Tx]  # (B, 2, F, T)
