"""The seeds' GlobalAudioEncoder: a 3-layer CNN over the mel, then a small transformer."""

from __future__ import annotations

from typing import Annotated

from jaxtyping import Float
from torch import Tensor, nn

import contracts
from contracts import Finite, contract

from ._config import AudioSRConfig

__all__ = ["GlobalAudioEncoder"]


@contracts.example(lambda: GlobalAudioEncoder(AudioSRConfig.tiny(use_global_encoder=True)))
class GlobalAudioEncoder(nn.Module):
    """Whole-file context: mel ``[B, M, T]`` -> global ``[B, G]`` and sequence ``[B, T, G]``.

    Three Conv2d layers (3x3, stride 2 along mel, stride 1 along time, GELU) shrink the mel
    axis by 8 and keep the frame rate (the seed reports ``[1, 296, 64]`` for 2.96 s at 10 ms
    frames, so time is not downsampled); the flattened features are projected to
    ``encoder_hidden`` (128), run through a ``encoder_layers``-layer (2), ``encoder_heads``-head
    (4) pre-norm transformer, projected to ``global_dim`` (64) per frame (sequence context),
    and mean-pooled + projected for the global context.

    Example:
        >>> enc = GlobalAudioEncoder(AudioSRConfig(use_global_encoder=True))
        >>> g, seq = enc(torch.randn(1, 64, 296))
        >>> g.shape, seq.shape
        (torch.Size([1, 64]), torch.Size([1, 296, 64]))
    """

    def __init__(self, cfg: AudioSRConfig) -> None:
        super().__init__()
        self.cfg = cfg
        c1, c2, c3 = cfg.encoder_channels
        self.cnn = nn.Sequential(
            nn.Conv2d(1, c1, 3, stride=(2, 1), padding=1), nn.GELU(),
            nn.Conv2d(c1, c2, 3, stride=(2, 1), padding=1), nn.GELU(),
            nn.Conv2d(c2, c3, 3, stride=(2, 1), padding=1), nn.GELU(),
        )  # fmt: skip
        m = cfg.n_mels
        for _ in range(3):
            m = (m + 1) // 2  # mel bins after each stride-2 conv (padding 1, kernel 3)
        self.in_proj = nn.Linear(c3 * m, cfg.encoder_hidden)
        layer = nn.TransformerEncoderLayer(
            cfg.encoder_hidden, cfg.encoder_heads, cfg.encoder_ff, dropout=0.0,
            activation="gelu", batch_first=True, norm_first=True,
        )  # fmt: skip
        self.transformer = nn.TransformerEncoder(
            layer, cfg.encoder_layers, enable_nested_tensor=False
        )
        self.seq_proj = nn.Linear(cfg.encoder_hidden, cfg.global_dim)
        self.global_proj = nn.Linear(cfg.encoder_hidden, cfg.global_dim)

    @contract(
        dims={"M": "self.cfg.n_mels", "G": "self.cfg.global_dim"},
        sizes={"T": (1, 16)},
    )
    def forward(
        self, mel: Annotated[Float[Tensor, "B M T"], Finite()]
    ) -> tuple[Float[Tensor, "B G"], Float[Tensor, "B T G"]]:
        """Normalized log-mel ``[B, M, T]`` -> (global ``[B, G]``, sequence ``[B, T, G]``)."""
        b, _, t = mel.shape
        h = self.cnn(mel[:, None])  # (B, C3, M/8, T)
        h = h.permute(0, 3, 1, 2).reshape(b, t, -1)  # (B, T, C3 * M/8)
        h = self.transformer(self.in_proj(h))  # (B, T, hidden)
        return self.global_proj(h.mean(dim=1)), self.seq_proj(h)
