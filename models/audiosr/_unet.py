"""A small AudioSR-style U-Net: ResBlocks with a time embedding and SpatialTransformers.

Follows ``openaimodel.py`` of AudioSR (sinusoidal time embedding -> MLP; ResBlock =
GroupNorm-SiLU-conv, + projected embedding, GroupNorm-SiLU-conv (zero init), skip; a
SpatialTransformer = GroupNorm, 1x1 conv in, [self-attention, cross-attention, GEGLU
feed-forward], 1x1 conv out (zero init), residual). The released AudioSR has no cross-attention
context, so its cross-attention attends to the feature map itself; the seeds'
:class:`GlobalConditionedSpatialTransformer` adds a cross-attention to a projected global context.
"""

from __future__ import annotations

import math
from typing import Annotated

import torch
import torch.nn.functional as F
from jaxtyping import Float, Int
from torch import Tensor, nn

import contracts
from contracts import Finite, Range, contract

from ._config import AudioSRConfig, AudioSRError

__all__ = [
    "CrossAttention",
    "GlobalConditionedSpatialTransformer",
    "ResBlock",
    "SpatialTransformer",
    "UNet",
    "timestep_embedding",
]


def timestep_embedding(t: Tensor, dim: int, max_period: float = 10000.0) -> Tensor:
    """Sinusoidal embedding ``[B, dim]`` of (possibly fractional) timesteps ``[B]``."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device) / half)
    args = t.float()[:, None] * freqs[None]  # (B, half)
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)  # (B, dim)


def _zero(module: nn.Module) -> nn.Module:
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


class ResBlock(nn.Module):
    """GroupNorm-SiLU-conv, + time embedding, GroupNorm-SiLU-conv (zero init), skip."""

    def __init__(self, c_in: int, c_out: int, emb_dim: int, groups: int) -> None:
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, c_in)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, padding=1)
        self.emb = nn.Linear(emb_dim, c_out)
        self.norm2 = nn.GroupNorm(groups, c_out)
        self.conv2 = _zero(nn.Conv2d(c_out, c_out, 3, padding=1))
        self.skip = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = h + self.emb(F.silu(emb))[:, :, None, None]  # (B, C, 1, 1)
        h = self.conv2(F.silu(self.norm2(h)))
        return self.skip(x) + h


class CrossAttention(nn.Module):
    """Multi-head attention of ``x`` ``[B, N, C]`` over ``context`` ``[B, M, D]`` (or itself)."""

    def __init__(self, query_dim: int, context_dim: int | None, heads: int) -> None:
        super().__init__()
        context_dim = context_dim or query_dim
        self.heads = heads
        self.to_q = nn.Linear(query_dim, query_dim, bias=False)
        self.to_k = nn.Linear(context_dim, query_dim, bias=False)
        self.to_v = nn.Linear(context_dim, query_dim, bias=False)
        self.to_out = nn.Linear(query_dim, query_dim)

    def forward(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        ctx = x if context is None else context
        b, n, c = x.shape
        h = self.heads
        q = self.to_q(x).view(b, n, h, c // h).transpose(1, 2)  # (B, h, N, c/h)
        k = self.to_k(ctx).view(b, ctx.shape[1], h, c // h).transpose(1, 2)  # (B, h, M, c/h)
        v = self.to_v(ctx).view(b, ctx.shape[1], h, c // h).transpose(1, 2)  # (B, h, M, c/h)
        out = F.scaled_dot_product_attention(q, k, v)  # (B, h, N, c/h)
        return self.to_out(out.transpose(1, 2).reshape(b, n, c))  # (B, N, C)


class _TransformerBlock(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.norm1, self.attn1 = nn.LayerNorm(dim), CrossAttention(dim, None, heads)
        self.norm2, self.attn2 = nn.LayerNorm(dim), CrossAttention(dim, None, heads)
        self.norm3 = nn.LayerNorm(dim)
        self.ff_in = nn.Linear(dim, dim * 8)  # GEGLU: 2 x 4*dim
        self.ff_out = nn.Linear(dim * 4, dim)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attn1(self.norm1(x))
        x = x + self.attn2(self.norm2(x))  # no context in the released AudioSR: attends to x
        a, gate = self.ff_in(self.norm3(x)).chunk(2, dim=-1)
        return x + self.ff_out(a * F.gelu(gate))


_ST_FACTORY = lambda: SpatialTransformer(16, 4, 4)  # noqa: E731
_GST_FACTORY = lambda: GlobalConditionedSpatialTransformer(16, 4, 4, context_dim=8, global_dim=8)  # noqa: E731


@contracts.example(lambda: _ST_FACTORY())
class SpatialTransformer(nn.Module):
    """AudioSR's SpatialTransformer on a feature map ``[B, C, H, W]``.

    Example:
        >>> st = SpatialTransformer(32, 4, 8)
        >>> st(torch.randn(2, 32, 8, 6)).shape
        torch.Size([2, 32, 8, 6])
    """

    def __init__(self, channels: int, heads: int, groups: int) -> None:
        super().__init__()
        self.channels = channels
        self.norm = nn.GroupNorm(groups, channels)
        self.proj_in = nn.Conv2d(channels, channels, 1)
        self.block = _TransformerBlock(channels, heads)
        self.proj_out = _zero(nn.Conv2d(channels, channels, 1))

    def _tokens(self, x: Tensor) -> Tensor:
        return self.proj_in(self.norm(x)).flatten(2).transpose(1, 2)  # (B, H*W, C)

    def _untokens(self, tok: Tensor, x: Tensor) -> Tensor:
        b, c, h, w = x.shape
        return x + self.proj_out(tok.transpose(1, 2).reshape(b, c, h, w))  # (B, C, H, W)

    @contract(dims={"C": "self.channels"}, sizes={"H": (1, 4), "W": (1, 4)})
    def forward(self, x: Annotated[Float[Tensor, "B C H W"], Finite()]) -> Float[Tensor, "B C H W"]:
        """Residual transformer over the ``H*W`` positions."""
        return self._untokens(self.block(self._tokens(x)), x)


@contracts.example(lambda: _GST_FACTORY())
class GlobalConditionedSpatialTransformer(SpatialTransformer):
    """SpatialTransformer + cross-attention to the projected global context (the seeds' class).

    The global context ``[B, G]`` is projected to one token ``[B, 1, context_dim]`` (the seed:
    ``[batch, 64] -> [batch, 1, 128]``); a pre-norm cross-attention of the feature tokens over
    that token is added after the base block. With a single key, the softmax weight is exactly 1,
    so this path adds ``to_out(to_v(proj(g)))`` -- the same vector at every position: a per-sample
    bias. ``sequence`` (``[B, T', G]``), when given, adds T' more tokens and makes it real
    attention. With ``zero_init`` the output projection starts at zero, so a checkpoint saved
    without the encoder computes exactly what it computed before.

    Example:
        >>> st = GlobalConditionedSpatialTransformer(32, 4, 8, context_dim=128, global_dim=64)
        >>> st(torch.randn(2, 32, 8, 6), torch.randn(2, 64)).shape
        torch.Size([2, 32, 8, 6])
    """

    def __init__(
        self, channels: int, heads: int, groups: int, *, context_dim: int, global_dim: int,
        zero_init: bool = True,
    ) -> None:  # fmt: skip
        super().__init__(channels, heads, groups)
        self.global_dim = global_dim
        self.global_proj = nn.Linear(global_dim, context_dim)
        self.global_norm = nn.LayerNorm(channels)
        self.global_attn = CrossAttention(channels, context_dim, heads)
        if zero_init:
            _zero(self.global_attn.to_out)

    @contract(
        dims={"C": "self.channels", "G": "self.global_dim"},
        sizes={"H": (1, 4), "W": (1, 4), "S": (1, 4)},
    )
    def forward(  # type: ignore[override]
        self,
        x: Annotated[Float[Tensor, "B C H W"], Finite()],
        global_ctx: Annotated[Float[Tensor, "B G"], Finite()] | None = None,
        sequence: Annotated[Float[Tensor, "B S G"], Finite()] | None = None,
    ) -> Float[Tensor, "B C H W"]:
        """Base block, then cross-attention to ``[proj(global)] (+ proj(sequence))``."""
        tok = self.block(self._tokens(x))  # (B, H*W, C)
        if global_ctx is not None or sequence is not None:
            parts = []
            if global_ctx is not None:
                parts.append(self.global_proj(global_ctx)[:, None])  # (B, 1, D)
            if sequence is not None:
                parts.append(self.global_proj(sequence))  # (B, S, D)
            ctx = torch.cat(parts, dim=1)  # (B, 1 [+ S], D)
            tok = tok + self.global_attn(self.global_norm(tok), ctx)
        return self._untokens(tok, x)


@contracts.example(lambda: UNet(AudioSRConfig.tiny()))
class UNet(nn.Module):
    """The denoiser: ``[x_t ; cond]`` (concat, ``2 * latent_channels``) -> v-prediction.

    Example:
        >>> cfg = AudioSRConfig.tiny()
        >>> net = UNet(cfg)
        >>> x = torch.randn(2, 4, 8, 8)
        >>> net(x, torch.tensor([3, 50]), x).shape
        torch.Size([2, 4, 8, 8])
    """

    def __init__(self, cfg: AudioSRConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.max_timestep = cfg.n_timesteps - 1
        ch, g = cfg.base_channels, cfg.groups
        emb = 4 * ch
        self.time_embed = nn.Sequential(nn.Linear(ch, emb), nn.SiLU(), nn.Linear(emb, emb))
        self.conv_in = nn.Conv2d(2 * cfg.latent_channels, ch, 3, padding=1)

        def attn(c: int) -> SpatialTransformer:
            if cfg.use_global_encoder:
                return GlobalConditionedSpatialTransformer(
                    c, cfg.num_heads, g, context_dim=cfg.context_dim,
                    global_dim=cfg.global_dim, zero_init=cfg.zero_init_global,
                )  # fmt: skip
            return SpatialTransformer(c, cfg.num_heads, g)

        self.down = nn.ModuleList()
        skips, c = [ch], ch
        for lv, mult in enumerate(cfg.channel_mults):
            for _ in range(cfg.num_res_blocks):
                layer = nn.ModuleList([ResBlock(c, ch * mult, emb, g)])
                c = ch * mult
                if lv in cfg.attention_levels:
                    layer.append(attn(c))
                self.down.append(layer)
                skips.append(c)
            if lv < len(cfg.channel_mults) - 1:
                self.down.append(nn.ModuleList([nn.Conv2d(c, c, 3, stride=2, padding=1)]))
                skips.append(c)
        self.mid = nn.ModuleList([ResBlock(c, c, emb, g), attn(c), ResBlock(c, c, emb, g)])
        self.up = nn.ModuleList()
        for lv, mult in reversed(list(enumerate(cfg.channel_mults))):
            for i in range(cfg.num_res_blocks + 1):
                layer = nn.ModuleList([ResBlock(c + skips.pop(), ch * mult, emb, g)])
                c = ch * mult
                if lv in cfg.attention_levels:
                    layer.append(attn(c))
                if lv > 0 and i == cfg.num_res_blocks:
                    layer.append(nn.Upsample(scale_factor=2, mode="nearest"))
                    layer.append(nn.Conv2d(c, c, 3, padding=1))
                self.up.append(layer)
        self.out = nn.Sequential(
            nn.GroupNorm(g, c), nn.SiLU(), _zero(nn.Conv2d(c, cfg.latent_channels, 3, padding=1))
        )

    def _apply(self, layer: nn.ModuleList, h: Tensor, emb: Tensor, g: Tensor | None) -> Tensor:
        for m in layer:
            if isinstance(m, ResBlock):
                h = m(h, emb)
            elif isinstance(m, GlobalConditionedSpatialTransformer):
                h = m(h, g)
            else:
                h = m(h)
        return h

    @contract(
        dims={"C": "self.cfg.latent_channels", "G": "self.cfg.global_dim"},
        sizes={"H": (4, 4), "W": (4, 4)},
    )
    def forward(
        self,
        x: Annotated[Float[Tensor, "B C H W"], Finite()],
        t: Annotated[Int[Tensor, "B"], Range(0, "self.max_timestep")],
        cond: Annotated[Float[Tensor, "B C H W"], Finite()],
        global_ctx: Annotated[Float[Tensor, "B G"], Finite()] | None = None,
    ) -> Float[Tensor, "B C H W"]:
        """Predict v from the noisy latent ``x`` and the low-resolution latent ``cond``.

        ``H`` and ``W`` must be divisible by ``2 ** (len(channel_mults) - 1)``.
        """
        try:  # free unless it fails: sizes are explained only after torch refused them
            emb = self.time_embed(timestep_embedding(t, self.cfg.base_channels))  # (B, 4ch)
            h = self.conv_in(torch.cat([x, cond], dim=1))  # (B, ch, H, W) -- concat conditioning
            hs = [h]
            for layer in self.down:
                h = self._apply(layer, h, emb, global_ctx)
                hs.append(h)
            h = self._apply(self.mid, h, emb, global_ctx)
            for layer in self.up:
                h = self._apply(layer, torch.cat([h, hs.pop()], dim=1), emb, global_ctx)
            return self.out(h)
        except RuntimeError as err:
            mult = 2 ** (len(self.cfg.channel_mults) - 1)
            for axis, name in ((2, "H"), (3, "W")):
                if x.shape[axis] % mult:
                    raise AudioSRError(
                        f"UNet.forward(): argument 'x', axis {axis}: {name}={x.shape[axis]} is not "
                        f"a multiple of 2**(levels-1) = {mult}, so the skip connections do not "
                        f"line up\n  hint: pad x and cond to a multiple of {mult} (AudioSR "
                        "pads mel frames with its silence value, see AudioSR._pad_frames)"
                    ) from err
            raise
