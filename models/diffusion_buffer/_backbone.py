"""A small block-causal U-Net over the complex STFT with per-frame time conditioning.

Causal along time: every operation sees only the current and past frames (left-padded time
convolutions, a per-frame normalization over channels x frequency, down/up-sampling along
frequency only). The whole window -- old frames plus the B-frame buffer -- is computed in one
call ("block-causal": one network call advances the whole buffer block).
"""

from __future__ import annotations

import math
from typing import Annotated

import torch
import torch.nn.functional as F
from jaxtyping import Complex, Float
from torch import Tensor, nn

import contracts
from contracts import Finite, Range, contract

from ._config import DiffusionBufferConfig

__all__ = ["CausalUNet", "FrameNorm"]


class CausalConv(nn.Conv2d):
    """Conv2d with kernel (3 along frequency, ``kt`` along time), left-padded in time."""

    def __init__(self, c_in: int, c_out: int, kt: int) -> None:
        super().__init__(c_in, c_out, (3, kt))
        self.kt = kt

    def forward(self, x: Tensor) -> Tensor:
        return super().forward(F.pad(x, (self.kt - 1, 0, 1, 1)))  # (B, C, F, T)


class FrameNorm(nn.Module):
    """Normalize each frame over (channels, frequency); causal, unlike GroupNorm over time."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels, 1, 1))
        self.bias = nn.Parameter(torch.zeros(channels, 1, 1))

    def forward(self, x: Tensor) -> Tensor:
        mu = x.mean(dim=(1, 2), keepdim=True)  # (B, 1, 1, T)
        var = x.var(dim=(1, 2), keepdim=True, unbiased=False)
        return (x - mu) * torch.rsqrt(var + 1e-5) * self.weight + self.bias


class _ResBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, emb_dim: int, kt: int) -> None:
        super().__init__()
        self.norm1, self.conv1 = FrameNorm(c_in), CausalConv(c_in, c_out, kt)
        self.emb = nn.Linear(emb_dim, c_out)
        self.norm2, self.conv2 = FrameNorm(c_out), CausalConv(c_out, c_out, kt)
        self.skip = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = h + self.emb(emb).permute(0, 2, 1)[:, :, None]  # (B, C, 1, T): per-frame time
        h = self.conv2(F.silu(self.norm2(h)))
        return self.skip(x) + h


@contracts.example(lambda: CausalUNet(DiffusionBufferConfig.tiny()))
class CausalUNet(nn.Module):
    """``(x_t, y, t per frame)`` -> a complex output per time-frequency bin.

    Input channels: Re/Im of the state ``x_t`` and of the noisy observation ``y``. Time enters
    per frame as a Gaussian-Fourier projection of ``t`` (frozen W, ``fourier_scale``) -> MLP,
    added in every ResBlock (older frames have t = 0).

    Example:
        >>> cfg = DiffusionBufferConfig.tiny()
        >>> net = CausalUNet(cfg)
        >>> x = torch.randn(1, cfg.n_freqs, 10, dtype=torch.cfloat)
        >>> net(x, x, torch.zeros(1, 10)).shape
        torch.Size([1, 32, 10])
    """

    def __init__(self, cfg: DiffusionBufferConfig) -> None:
        super().__init__()
        self.cfg = cfg
        ch, kt, e = cfg.base_channels, cfg.time_kernel, cfg.emb_dim
        self.register_buffer("fourier_w", torch.randn(e // 2) * cfg.fourier_scale)
        self.time_mlp = nn.Sequential(nn.Linear(e, e), nn.SiLU(), nn.Linear(e, e))
        self.conv_in = CausalConv(4, ch, kt)
        self.down, self.pool = nn.ModuleList(), nn.ModuleList()
        c, skips = ch, []
        for i, mult in enumerate(cfg.channel_mults):
            self.down.append(_ResBlock(c, ch * mult, e, kt))
            c = ch * mult
            skips.append(c)
            last = i == len(cfg.channel_mults) - 1
            self.pool.append(nn.Identity() if last else nn.Conv2d(c, c, (3, 1), (2, 1), (1, 0)))
        self.mid = _ResBlock(c, c, e, kt)
        self.up = nn.ModuleList()
        for mult in reversed(cfg.channel_mults):
            self.up.append(_ResBlock(c + skips.pop(), ch * mult, e, kt))
            c = ch * mult
        self.norm_out = FrameNorm(c)
        self.conv_out = CausalConv(c, 2, kt)

    @contract(
        dims={"F": "self.cfg.n_freqs"},
        sizes={"T": (1, 6)},
    )
    def forward(
        self,
        x: Annotated[Complex[Tensor, "B F T"], Finite()],
        y: Annotated[Complex[Tensor, "B F T"], Finite()],
        t: Annotated[Float[Tensor, "B T"], Range(0, 1)],
    ) -> Complex[Tensor, "B F T"]:
        """Complex output ``[B, F, T]`` for every frame (the caller keeps the buffer frames)."""
        h = torch.stack([x.real, x.imag, y.real, y.imag], dim=1)  # (B, 4, F, T)
        proj = 2 * math.pi * t[..., None] * self.fourier_w  # (B, T, e/2)
        emb = self.time_mlp(torch.cat([proj.sin(), proj.cos()], dim=-1))  # (B, T, e)
        h = self.conv_in(h)
        hs = []
        for block, pool in zip(self.down, self.pool, strict=True):
            h = block(h, emb)
            hs.append(h)
            h = pool(h)  # (B, C, F/2, T) except at the last level
        h = self.mid(h, emb)
        for block in self.up:
            skip = hs.pop()
            if h.shape[2] != skip.shape[2]:
                h = F.interpolate(h, size=(skip.shape[2], h.shape[3]), mode="nearest")
            h = block(torch.cat([h, skip], dim=1), emb)
        out = self.conv_out(F.silu(self.norm_out(h))).float()  # (B, 2, F, T)
        return torch.complex(out[:, 0], out[:, 1])  # (B, F, T)
