"""Decoding: greedy (argmax per fired position) and beam search (seed 004, "Decoding").

Paraformer decodes all positions in one pass: the CIF predictor decides how many tokens there
are (``floor(sum(alpha) + 0.45)``), the decoder scores every position at once. Greedy is the
argmax per position; beam search keeps the ``beam_size`` best sequences of the per-position
distributions (exact k-best for a factorised model), so ``beam_size=1`` equals greedy.
"""

from __future__ import annotations

import warnings
from typing import Annotated

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from contracts import Mask, Range, contract

from ._config import DecodingError
from ._model import Paraformer, _finish
from ._tokenizer import Tokenizer

__all__ = ["DecodingWarning", "beam_search", "greedy_decode"]

PAD, EOS = Tokenizer.pad_token_id, Tokenizer.eos_token_id


class DecodingWarning(UserWarning):
    """Decoding was truncated or ended early (``check="warn"``)."""


def _default_mask(features: Tensor, feat_mask: Tensor | None) -> Tensor:
    if feat_mask is None:
        return torch.ones(features.shape[:2], dtype=torch.bool, device=features.device)
    return feat_mask


def _check_decoding(tokens: Tensor, counts: Tensor, max_len: int, check: str) -> None:
    """Seed guide, "Greedy decoding produces empty or truncated sequences"."""
    problems = []
    for b in range(tokens.shape[0]):
        n = int(counts[b])
        if n == 0:
            problems.append(f"item {b}: the predictor fired no token (sum(alpha) + tail < 1)")
            continue
        if n > max_len:
            problems.append(
                f"item {b}: truncated -- the predictor counts {n} tokens but max_len={max_len}; "
                "raise max_len"
            )
        eos = (tokens[b] == EOS).nonzero().flatten()
        last = min(n, max_len) - 1
        if len(eos) and int(eos[0]) < last:
            problems.append(
                f"item {b}: early EOS at position {int(eos[0])} of {min(n, max_len)} predicted "
                "positions; the output is cut there (check the EOS logit/bias and the "
                "training targets)"
            )
    if problems and check != "ignore":
        msg = "greedy_decode: " + "; ".join(problems)
        if check == "raise":
            raise DecodingError(msg)
        warnings.warn(msg, DecodingWarning, stacklevel=3)


@contract(generate=False)
def greedy_decode(
    model: Paraformer,
    features: Annotated[Float[Tensor, "B T_feat F"], Range(-2, 2)],
    max_len: Annotated[int, Range(1, None)] = 200,
    feat_mask: Annotated[Bool[Tensor, "B T_feat"], Mask()] | None = None,
    check: str = "warn",
) -> Annotated[Int[Tensor, "B T_out"], Range(0, None)]:
    """Greedy decoding: ``[B, T_out]`` token ids, EOS kept, PAD after it and past the count.

    Args:
        model: a :class:`Paraformer` (put it in ``eval()`` mode for inference).
        features: ``[B, T_feat, F]`` in [-2, 2].
        max_len: the most positions to decode.
        feat_mask: valid frames (default: all).
        check: what to do when the output is empty, truncated by ``max_len``, or cut by an
            EOS before the predicted length: ``"warn"`` (:class:`DecodingWarning`),
            ``"raise"`` (:class:`DecodingError`) or ``"ignore"``.

    Example:
        >>> tokens = greedy_decode(model.eval(), feats, max_len=50)  # doctest: +SKIP
    """
    if check not in ("warn", "raise", "ignore"):
        raise ValueError(f"greedy_decode: check={check!r}; use 'warn', 'raise' or 'ignore'")
    feat_mask = _default_mask(features, feat_mask)
    with torch.no_grad():
        enc, alphas = model.encode(features, feat_mask)
        logits, counts = model.decode_logits(enc, alphas, feat_mask, max_len)
    tokens = _finish(logits.argmax(dim=-1), counts)
    _check_decoding(tokens, counts, max_len, check)
    return tokens


@contract(generate=False, outputs=("tokens", "scores"))
def beam_search(
    model: Paraformer,
    features: Annotated[Float[Tensor, "B T_feat F"], Range(-2, 2)],
    beam_size: Annotated[int, Range(1, None)] = 4,
    max_len: Annotated[int, Range(1, None)] = 200,
    feat_mask: Annotated[Bool[Tensor, "B T_feat"], Mask()] | None = None,
) -> tuple[
    Annotated[Int[Tensor, "B K T_out"], Range(0, None)],
    Annotated[Float[Tensor, "B K"], Range(None, 0)],
]:
    """Beam search over the per-position log-probabilities.

    Returns ``(tokens [B, beam_size, T_out], scores [B, beam_size])``, best first; a score is
    the sum of log-probabilities up to and including EOS (or the predicted length). When
    fewer than ``beam_size`` distinct hypotheses exist, the best one is repeated.
    """
    feat_mask = _default_mask(features, feat_mask)
    with torch.no_grad():
        enc, alphas = model.encode(features, feat_mask)
        logits, counts = model.decode_logits(enc, alphas, feat_mask, max_len)
    logp = logits.log_softmax(dim=-1)  # (B, N, V)
    B, N, V = logp.shape
    K = beam_size
    scores = logp.new_zeros(B, 1)  # (B, Kc)
    seqs = torch.zeros(B, 1, 0, dtype=torch.long, device=logp.device)  # (B, Kc, t)
    done = torch.zeros(B, 1, dtype=torch.bool, device=logp.device)  # (B, Kc)
    frozen_row = torch.full((V,), float("-inf"), device=logp.device)
    frozen_row[PAD] = 0.0  # a finished beam (or a position past the count) only extends by PAD
    for t in range(N):
        Kc = scores.shape[1]
        past = (t >= counts)[:, None].expand(B, Kc)  # (B, Kc)
        step = torch.where((done | past)[..., None], frozen_row, logp[:, None, t, :])  # (B,Kc,V)
        cand = (scores[..., None] + step).reshape(B, Kc * V)  # (B, Kc*V)
        top, idx = cand.topk(min(K, Kc * V), dim=1)  # (B, K')
        beam, tok = idx // V, idx % V  # (B, K')
        seqs = torch.cat([seqs.gather(1, beam[..., None].expand(-1, -1, t)), tok[..., None]], 2)
        done = done.gather(1, beam) | (tok == EOS)
        scores = top
        bad = torch.isinf(scores)  # fewer real hypotheses than beams: repeat the best
        if bad.any():
            scores = torch.where(bad, scores[:, :1], scores)
            seqs = torch.where(bad[..., None], seqs[:, :1], seqs)
            done = torch.where(bad, done[:, :1], done)
    if scores.shape[1] < K:  # vocabulary smaller than the beam
        pad = K - scores.shape[1]
        scores = torch.cat([scores, scores[:, :1].expand(B, pad)], 1)
        seqs = torch.cat([seqs, seqs[:, :1].expand(B, pad, N)], 1)
    return _finish(seqs, counts), scores.clamp(max=0.0)
