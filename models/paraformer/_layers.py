"""Transformer building blocks (seed 004, "Transformer Components")."""

from __future__ import annotations

import math
from typing import Annotated

import torch
import torch.nn.functional as F
from jaxtyping import Bool, Float
from torch import Tensor, nn

import contracts
from contracts import Mask, contract

from ._config import ConfigError

__all__ = ["FeedForward", "MultiHeadAttention", "PositionalEncoding", "TransformerBlock"]


@contracts.example(lambda: MultiHeadAttention(8, 2))
class MultiHeadAttention(nn.Module):
    """Scaled dot-product attention over ``H`` heads (self- or cross-attention).

    Written out (not ``F.scaled_dot_product_attention``) so that a query row whose mask has no
    valid key gives NaN exactly as in the seed's guide; the ``Mask()`` contract on ``mask``
    rejects such a row before it happens.
    """

    def __init__(self, d_model: int, n_heads: int, dropout: float = 0.0) -> None:
        super().__init__()
        if d_model % n_heads:
            raise ConfigError(
                f"MultiHeadAttention: d_model={d_model} is not divisible by n_heads={n_heads}"
            )
        self.d_model, self.n_heads = d_model, n_heads
        self.q_proj = nn.Linear(d_model, d_model)
        self.k_proj = nn.Linear(d_model, d_model)
        self.v_proj = nn.Linear(d_model, d_model)
        self.out_proj = nn.Linear(d_model, d_model)
        self.dropout = nn.Dropout(dropout)

    @contract(dims={"D": "self.d_model"})
    def forward(
        self,
        query: Float[Tensor, "B T D"],
        key: Float[Tensor, "B S D"],
        value: Float[Tensor, "B S D"],
        mask: Annotated[Bool[Tensor, "B T S"], Mask()] | None = None,
    ) -> Float[Tensor, "B T D"]:
        """``mask[b, t, s]`` is True where query ``t`` may attend to key ``s``."""
        B, T, D = query.shape
        S = key.shape[1]
        H, hs = self.n_heads, D // self.n_heads
        q = self.q_proj(query).view(B, T, H, hs).transpose(1, 2)  # (B, H, T, hs)
        k = self.k_proj(key).view(B, S, H, hs).transpose(1, 2)  # (B, H, S, hs)
        v = self.v_proj(value).view(B, S, H, hs).transpose(1, 2)  # (B, H, S, hs)
        att = (q @ k.transpose(-2, -1)) / math.sqrt(hs)  # (B, H, T, S)
        if mask is not None:
            att = att.masked_fill(~mask[:, None, :, :], float("-inf"))  # (B, 1, T, S) bcast
        att = self.dropout(att.softmax(dim=-1))
        y = (att @ v).transpose(1, 2).reshape(B, T, D)  # (B, H, T, hs) -> (B, T, D)
        return self.out_proj(y)


@contracts.example(lambda: FeedForward(8, 16))
class FeedForward(nn.Module):
    """Linear -> ReLU -> Linear (Paraformer's PositionwiseFeedForward)."""

    def __init__(self, d_model: int, d_ff: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.d_model = d_model
        self.fc1 = nn.Linear(d_model, d_ff)
        self.fc2 = nn.Linear(d_ff, d_model)
        self.dropout = nn.Dropout(dropout)

    @contract(dims={"D": "self.d_model"})
    def forward(self, x: Float[Tensor, "B T D"]) -> Float[Tensor, "B T D"]:
        return self.fc2(self.dropout(F.relu(self.fc1(x))))


@contracts.example(lambda: TransformerBlock(8, 2, 16, fsmn_kernel=3))
class TransformerBlock(nn.Module):
    """Pre-norm block: self-attention (+ FSMN memory) [+ cross-attention] + feed-forward.

    ``fsmn_kernel > 0`` adds Paraformer's SAN-M memory: a depthwise Conv1d over the (padding
    zeroed) block input, summed with the self-attention output. ``cross=True`` adds attention
    to an encoder ``memory`` (decoder blocks).
    """

    def __init__(
        self,
        d_model: int,
        n_heads: int,
        d_ff: int,
        dropout: float = 0.0,
        fsmn_kernel: int = 0,
        cross: bool = False,
    ) -> None:
        super().__init__()
        self.d_model = d_model
        self.ln1 = nn.LayerNorm(d_model)
        self.attn = MultiHeadAttention(d_model, n_heads, dropout)
        self.fsmn = (
            nn.Conv1d(
                d_model, d_model, fsmn_kernel, padding=fsmn_kernel // 2, groups=d_model, bias=False
            )
            if fsmn_kernel
            else None
        )
        self.ln_cross = nn.LayerNorm(d_model) if cross else None
        self.cross_attn = MultiHeadAttention(d_model, n_heads, dropout) if cross else None
        self.ln2 = nn.LayerNorm(d_model)
        self.ffn = FeedForward(d_model, d_ff, dropout)
        self.dropout = nn.Dropout(dropout)

    @contract(dims={"D": "self.d_model"})
    def forward(
        self,
        x: Float[Tensor, "B T D"],
        mask: Annotated[Bool[Tensor, "B T T"], Mask()] | None = None,
        pad_mask: Annotated[Bool[Tensor, "B T"], Mask()] | None = None,
        memory: Float[Tensor, "B S D"] | None = None,
        memory_mask: Annotated[Bool[Tensor, "B T S"], Mask()] | None = None,
    ) -> Float[Tensor, "B T D"]:
        """``mask``: self-attention mask; ``pad_mask``: valid frames (FSMN input);
        ``memory``/``memory_mask``: encoder output and cross-attention mask."""
        h = self.ln1(x)
        a = self.attn(h, h, h, mask)
        if self.fsmn is not None:
            hm = h if pad_mask is None else h.masked_fill(~pad_mask[..., None], 0.0)
            a = a + self.fsmn(hm.transpose(1, 2)).transpose(1, 2)  # (B, D, T) -> (B, T, D)
        out = x + self.dropout(a)
        if self.cross_attn is not None:
            if memory is None:
                raise ConfigError("TransformerBlock(cross=True).forward: memory is required")
            out = out + self.dropout(
                self.cross_attn(self.ln_cross(out), memory, memory, memory_mask)
            )
        return out + self.dropout(self.ffn(self.ln2(out)))


@contracts.example(lambda: PositionalEncoding(8, max_len=64))
class PositionalEncoding(nn.Module):
    """Adds fixed sinusoidal position embeddings (Paraformer's SinusoidalPositionEncoder)."""

    def __init__(self, d_model: int, max_len: int = 1024, dropout: float = 0.0) -> None:
        super().__init__()
        self.d_model, self.max_len = d_model, max_len
        pos = torch.arange(max_len, dtype=torch.float32)[:, None]  # (L, 1)
        div = torch.exp(torch.arange(0, d_model, 2).float() * (-math.log(10000.0) / d_model))
        pe = torch.zeros(max_len, d_model)  # (L, D)
        pe[:, 0::2] = torch.sin(pos * div)
        pe[:, 1::2] = torch.cos(pos * div[: d_model // 2])
        self.register_buffer("pe", pe, persistent=False)
        self.dropout = nn.Dropout(dropout)

    @contract(dims={"D": "self.d_model"}, sizes={"T": (1, 64)})
    def forward(self, x: Float[Tensor, "B T D"]) -> Float[Tensor, "B T D"]:
        T = x.shape[1]
        if T > self.max_len:
            raise ConfigError(
                f"PositionalEncoding.forward: sequence length T={T} exceeds max_len="
                f"{self.max_len}; raise ParaformerConfig.max_len or truncate the input"
            )
        return self.dropout(x + self.pe[None, :T])  # (1, T, D) broadcast
