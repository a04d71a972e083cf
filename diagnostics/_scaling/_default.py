"""The embedded default: the seeds' two scaling claims on the reference models.

* ``paraformer_encoder`` over ``T`` (frames): ``models.paraformer.Encoder`` at the trained toy
  width (D = 64, 4 heads, 2 SAN-M blocks, F = 20), ``max_len`` raised so long inputs fit. Seed
  004: "attention memory scales quadratically with sequence length".
* ``global_encoder`` over ``duration`` (seconds; 100 mel frames per second at 16 kHz, hop 160)
  and ``batch`` (5 s clips): ``models.audiosr.GlobalAudioEncoder`` at its default width. Seed
  000: "linear scaling confirmed" (memory at 1 / 5 / 10 s, batch processing linear in B).

Both run in eval mode under ``torch.no_grad`` with contracts off (the checks are not part of
the model's cost).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ._types import ScalingTarget

__all__ = ["DEFAULT_RUNS", "global_encoder", "paraformer_encoder"]

PARAFORMER_T = [16, 32, 64, 128, 256, 512, 1024, 2048]
DURATION_S = [1, 2, 5, 10, 20]
BATCH = [1, 2, 4, 8, 16]
BATCH_SECONDS = 5


def _contracts_off(model: nn.Module, batch: Any) -> Any:
    import contracts

    with contracts.mode("off"):
        return model(*batch)


def paraformer_encoder() -> ScalingTarget:
    """The Paraformer encoder over sequence length ``T`` (batch 1, all frames valid)."""
    from models.paraformer import Encoder, ParaformerConfig

    cfg = ParaformerConfig(max_len=8192)
    model = Encoder(cfg).eval()

    def make_t(t: int, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        feats = torch.randn(1, t, cfg.n_feats, generator=g).clamp(-2, 2)  # (B, T, F)
        return feats, torch.ones(1, t, dtype=torch.bool)  # (B, T) valid frames

    return ScalingTarget(
        model=model,
        axes={"T": make_t},
        forward=_contracts_off,
        sizes={"T": PARAFORMER_T},
        name="paraformer_encoder",
    )


def global_encoder() -> ScalingTarget:
    """The AudioSR-style global encoder over ``duration`` (s) and ``batch`` (5 s clips)."""
    from models.audiosr import AudioSRConfig, GlobalAudioEncoder

    cfg = AudioSRConfig(use_global_encoder=True)
    model = GlobalAudioEncoder(cfg).eval()
    fps = cfg.sample_rate / cfg.hop  # mel frames per second

    def mel(b: int, seconds: float, g: torch.Generator) -> tuple[torch.Tensor]:
        t = int(seconds * fps) + 1  # frames of a centered STFT: L // hop + 1
        return (torch.randn(b, cfg.n_mels, t, generator=g),)  # (B, M, T) normalized log-mel

    return ScalingTarget(
        model=model,
        axes={
            "duration": lambda s, g: mel(1, s, g),
            "batch": lambda b, g: mel(b, BATCH_SECONDS, g),
        },
        forward=_contracts_off,
        sizes={"duration": DURATION_S, "batch": BATCH},
        name="global_encoder",
    )


# (factory, axis) pairs of the default run, in order
DEFAULT_RUNS = [
    (paraformer_encoder, "T"),
    (global_encoder, "duration"),
    (global_encoder, "batch"),
]
