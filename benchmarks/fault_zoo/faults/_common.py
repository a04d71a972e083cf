"""Small shared builders: tiny reference-model batches, a tiny Whisper, plain conditioned nets."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from contracts import TorchdxError

__all__ = [
    "CondNet",
    "ZooFinding",
    "paraformer_batch",
    "tiny_whisper",
    "whisper_batch",
]


class ZooFinding(TorchdxError):
    """A torchdx report that flags something, raised by a probe so the zoo can score it."""


def paraformer_batch(cfg, n: int = 4, seed: int = 0):
    """A padded toy batch ``(features, tokens, feat_lens, token_lens)`` for ``cfg``."""
    from models.paraformer import ToySeq2SeqDataset, collate_fn

    ds = ToySeq2SeqDataset(cfg, num_samples=n, seed=seed)
    return collate_fn([ds[i] for i in range(n)])


def tiny_whisper():
    """A 1-layer Whisper from a small config (no download), and its config."""
    from transformers import WhisperConfig, WhisperForConditionalGeneration

    cfg = WhisperConfig(
        vocab_size=40, num_mel_bins=8, encoder_layers=1, decoder_layers=1,
        encoder_attention_heads=2, decoder_attention_heads=2, d_model=16,
        encoder_ffn_dim=32, decoder_ffn_dim=32, max_source_positions=8,
        max_target_positions=16, decoder_start_token_id=1, pad_token_id=0,
        eos_token_id=2, bos_token_id=1, attn_implementation="eager",
        init_std=0.2,  # 0.02 leaves the tiny encoder almost blind to its input
    )  # fmt: skip
    return WhisperForConditionalGeneration(cfg), cfg


def whisper_batch(cfg, b: int = 3, s: int = 5) -> tuple[Tensor, Tensor]:
    """``input_features [B, n_mels, 2 * max_source_positions]`` and ``labels [B, S]``."""
    feats = torch.randn(b, cfg.num_mel_bins, 2 * cfg.max_source_positions)
    labels = torch.randint(3, cfg.vocab_size, (b, s))
    return feats, labels


class CondNet(nn.Module):
    """A small conditioned denoiser: ``x [B, T, D]``, time ``t [B]``, condition ``cond [B, E]``.

    The time enters as a sinusoidal embedding added to the features, the condition through a
    cond encoder and a cross-attention over condition tokens (``mode="xattn"``), FiLM
    (``"film"``) or as an output bias only (``"bias"``).
    """

    def __init__(self, d: int = 16, e: int = 8, tokens: int = 2, mode: str = "xattn") -> None:
        super().__init__()
        self.d, self.tokens, self.mode = d, tokens, mode
        self.inp = nn.Linear(d, d)
        self.time = nn.Linear(d, d)
        self.cond_encoder = nn.Sequential(nn.Linear(e, 32), nn.SiLU(), nn.Linear(32, d * tokens))
        self.xattn = nn.MultiheadAttention(d, 2, batch_first=True)
        self.film = nn.Linear(d * tokens, 2 * d)
        self.bias = nn.Linear(d * tokens, d)
        self.out = nn.Sequential(nn.LayerNorm(d), nn.Linear(d, d))
        self.sever = False  # the fault: cross-attention attends to the features, not the cond

    def temb(self, t: Tensor) -> Tensor:
        half = self.d // 2
        f = torch.exp(-math.log(1000.0) * torch.arange(half, device=t.device) / half)
        a = t[:, None] * 100.0 * f[None]  # (B, d/2)
        return torch.cat([a.sin(), a.cos()], dim=-1)  # (B, d)

    def forward(self, x: Tensor, t: Tensor, cond: Tensor) -> Tensor:
        B, _, D = x.shape  # (B, T, D)
        h = self.inp(x) + self.time(self.temb(t))[:, None, :]  # (B, T, D)
        c = self.cond_encoder(cond)  # (B, D * K)
        if self.mode == "xattn":
            toks = c.view(B, self.tokens, D)  # (B, K, D)
            kv = h if self.sever else toks
            a, _ = self.xattn(h, kv, kv, need_weights=False)
            h = h + a
        elif self.mode == "film":
            scale, shift = self.film(c)[:, None, :].chunk(2, dim=-1)  # (B, 1, D)
            h = h * (1 + scale) + shift
        out = self.out(F.silu(h))  # (B, T, D)
        if self.mode == "bias":
            out = out + self.bias(c)[:, None, :]
        return out


def whisper_task(cfg, b: int, seed: int) -> tuple[Tensor, Tensor]:
    """Features and labels where label ``j`` is the loudest mel bin of frames ``2j, 2j+1``:
    a task the decoder can only solve by listening to the encoder."""
    g = torch.Generator().manual_seed(seed)
    feats = torch.randn(b, cfg.num_mel_bins, 2 * cfg.max_source_positions, generator=g)
    s = 5
    loud = feats[..., : 2 * s].reshape(b, cfg.num_mel_bins, s, 2).mean(-1)  # (B, M, S)
    return feats, 3 + loud.argmax(1)  # (B, S) ids in [3, 3 + M)
