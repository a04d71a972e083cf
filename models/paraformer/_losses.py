"""Losses and metrics (seed 004, "Loss Functions" and "Metrics")."""

from __future__ import annotations

from typing import Annotated

import torch
import torch.nn.functional as F
from jaxtyping import Bool, Float, Int
from torch import Tensor, nn

import contracts
from contracts import Finite, Mask, Probability, Range, contract

__all__ = ["MaskedCrossEntropy", "PredictorLoss", "SequenceAccuracy", "TokenAccuracy"]


@contracts.example(lambda: MaskedCrossEntropy(0.1))
class MaskedCrossEntropy(nn.Module):
    """Label-smoothed cross-entropy averaged over valid (mask True) positions only.

    Padded targets never count, whatever token id the padding holds.

    Example:
        >>> ce = MaskedCrossEntropy(label_smoothing=0.0)
        >>> logits = torch.zeros(1, 2, 4); targets = torch.tensor([[1, 3]])
        >>> round(ce(logits, targets, torch.tensor([[True, False]])).item(), 4)  # log(4)
        1.3863
    """

    def __init__(self, label_smoothing: float = 0.1) -> None:
        super().__init__()
        self.label_smoothing = label_smoothing

    @contract
    def forward(
        self,
        logits: Annotated[Float[Tensor, "B T V"], Finite()],
        targets: Annotated[Int[Tensor, "B T"], Range(0, "V-1")],
        mask: Annotated[Bool[Tensor, "B T"], Mask()],
    ) -> Annotated[Float[Tensor, ""], Range(0, None)]:
        B, T, V = logits.shape
        ls = self.label_smoothing
        try:
            ce = F.cross_entropy(
                logits.reshape(B * T, V),
                targets.reshape(B * T),  # (B*T, V), (B*T,)
                reduction="none",
                label_smoothing=ls,
            ).view(B, T)  # (B, T)
        except RuntimeError:
            if targets.dtype == torch.long:
                raise
            # The contract takes any signed integer ids, cross_entropy only int64: convert here,
            # after the fact, so that int64 targets (the training step) pay nothing for it.
            flat = targets.reshape(B * T).long()
            ce = F.cross_entropy(
                logits.reshape(B * T, V), flat, reduction="none", label_smoothing=ls
            ).view(B, T)
        return ce.masked_fill(~mask, 0.0).sum() / mask.sum()


@contracts.example(lambda: PredictorLoss())
class PredictorLoss(nn.Module):
    """Paraformer's quantity loss: mean over the batch of ``|N_b - sum_t alpha_bt|``.

    Seed 004's table has per-frame duration targets ``[B, T]``; Paraformer trains the CIF
    predictor only through the token count, so the targets here are the target lengths
    ``[B]`` (the alphas need no frame alignment). L1 needs no log or division by a
    prediction, so it cannot produce the NaN the seed's BCE version guards against.
    """

    @contract
    def forward(
        self,
        alphas: Annotated[Float[Tensor, "B T"], Range(0, None)],
        mask: Annotated[Bool[Tensor, "B T"], Mask()],
        target_lengths: Annotated[Int[Tensor, " B"], Range(1, None)],
    ) -> Annotated[Float[Tensor, ""], Range(0, None)]:
        token_num = alphas.masked_fill(~mask, 0.0).sum(dim=1)  # (B,)
        return (target_lengths.to(alphas.dtype) - token_num).abs().mean()


@contracts.example(lambda: TokenAccuracy())
class TokenAccuracy(nn.Module):
    """Share of valid positions where ``argmax(logits) == targets``."""

    @contract
    def forward(
        self,
        logits: Float[Tensor, "B T V"],
        targets: Annotated[Int[Tensor, "B T"], Range(0, "V-1")],
        mask: Annotated[Bool[Tensor, "B T"], Mask()],
    ) -> Annotated[Float[Tensor, ""], Probability()]:
        hits = (logits.argmax(dim=-1) == targets) & mask  # (B, T)
        return hits.sum().float() / mask.sum().float()


@contracts.example(lambda: SequenceAccuracy())
class SequenceAccuracy(nn.Module):
    """Share of sequences decoded exactly: same length and same tokens up to it.

    ``predictions`` and ``targets`` may be padded to different lengths (decoding decides its
    own); ``pred_lens`` may be 0 (an empty hypothesis), unlike the seed's ``[1, T]``.
    """

    @contract
    def forward(
        self,
        predictions: Annotated[Int[Tensor, "B T_p"], Range(0, None)],
        targets: Annotated[Int[Tensor, "B T_t"], Range(0, None)],
        pred_lens: Annotated[Int[Tensor, " B"], Range(0, "T_p")],
        target_lens: Annotated[Int[Tensor, " B"], Range(1, "T_t")],
    ) -> Annotated[Float[Tensor, ""], Probability()]:
        T = max(predictions.shape[1], targets.shape[1])
        p = F.pad(predictions, (0, T - predictions.shape[1]))  # (B, T)
        t = F.pad(targets, (0, T - targets.shape[1]))  # (B, T)
        pos = torch.arange(T, device=p.device)[None, :]  # (1, T)
        p = p.masked_fill(pos >= pred_lens[:, None], -1)
        t = t.masked_fill(pos >= target_lens[:, None], -1)
        return (p == t).all(dim=1).float().mean()
