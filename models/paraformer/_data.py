"""Toy speech-like data whose tokens are recoverable from the features, and collation."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Annotated

import torch
from jaxtyping import Float, Int
from torch import Tensor

import contracts
from contracts import Range, contract

from ._config import BatchError, ParaformerConfig
from ._tokenizer import Tokenizer

__all__ = ["ToySeq2SeqDataset", "collate_fn"]

EOS_FRAMES = 2  # the utterance ends with a short low-energy "closure" segment read as EOS


@contracts.example(lambda: ToySeq2SeqDataset(ParaformerConfig.tiny(), num_samples=4))
class ToySeq2SeqDataset(torch.utils.data.Dataset):
    """Synthetic ASR data: each character is a segment of 3-5 frames around a fixed random
    prototype vector, shaped by a smooth envelope, with temporally correlated noise.

    The text can be read back from the features (nearest prototype per segment), so a model
    that learns must reach high token accuracy. Deterministic per ``(seed, index)``; the
    prototypes depend only on ``cfg.proto_seed``, so train and validation sets (different
    ``seed``) share the same "acoustics".

    Example:
        >>> ds = ToySeq2SeqDataset(ParaformerConfig(), num_samples=10)
        >>> feats, tokens, feat_len, token_len = ds[0]
        >>> feats.shape[1] == 20 and tokens[-1].item() == 2   # F = 20, ends in EOS
        True
    """

    def __init__(self, cfg: ParaformerConfig, num_samples: int = 1000, seed: int = 0) -> None:
        if num_samples < 1:
            raise BatchError(f"ToySeq2SeqDataset: num_samples={num_samples} must be >= 1")
        self.cfg = cfg
        self.num_samples = num_samples
        self.seed = seed
        self.tokenizer = Tokenizer(cfg.alphabet)
        self.vocab_size = self.tokenizer.vocab_size
        g = torch.Generator().manual_seed(cfg.proto_seed)
        # (V, F) prototypes; rows 0/1 (PAD/BOS) unused, row 2 (EOS) is a quiet closure pattern
        protos = (0.8 * torch.randn(self.vocab_size, cfg.n_feats, generator=g)).clamp(-1.4, 1.4)
        protos[Tokenizer.eos_token_id] *= 0.3
        self.prototypes = protos

    def __len__(self) -> int:
        return self.num_samples

    def _rng(self, index: int) -> torch.Generator:
        return torch.Generator().manual_seed(self.seed * 1_000_003 + index)

    def _durations(self, n_tokens: int, g: torch.Generator) -> list[int]:
        lo, hi = self.cfg.min_frames_per_token, self.cfg.max_frames_per_token
        return torch.randint(lo, hi + 1, (n_tokens,), generator=g).tolist()

    def _render(self, tokens: list[int], durations: list[int], g: torch.Generator) -> Tensor:
        """Features ``[T, F]`` for token ids with per-token durations (frames)."""
        frames = []
        for tok, d in zip(tokens, durations, strict=True):
            i = torch.arange(d, dtype=torch.float32)
            env = 0.4 + 0.6 * torch.sin(math.pi * (i + 0.5) / d)  # (d,) smooth onset/offset
            frames.append(env[:, None] * self.prototypes[tok][None, :])  # (d, F)
        x = torch.cat(frames)  # (T, F)
        x = x + 0.15 * torch.randn(x.shape, generator=g)
        # correlate neighbouring frames like a real filterbank: 3-tap smoothing over time
        padded = torch.cat([x[:1], x, x[-1:]])  # (T+2, F)
        x = 0.25 * padded[:-2] + 0.5 * padded[1:-1] + 0.25 * padded[2:]  # (T, F)
        return x.clamp(-2.0, 2.0)

    @contract(
        dims={"F": "self.cfg.n_feats", "V": "self.vocab_size"},
        strategies={"length": lambda st: st.integers(10, 40)},
    )
    def generate_sequence(
        self, length: Annotated[int, Range(10, 500)], seed: int = 0
    ) -> tuple[
        Annotated[Float[Tensor, "T F"], Range(-2, 2)],
        Annotated[Int[Tensor, " S"], Range(0, "V-1")],
    ]:
        """Features of exactly ``length`` frames and their tokens (characters + EOS)."""
        g = torch.Generator().manual_seed(seed)
        lo, hi = self.cfg.min_frames_per_token, self.cfg.max_frames_per_token
        budget = length - EOS_FRAMES
        durations: list[int] = []
        while budget > 0:
            d = min(int(torch.randint(lo, hi + 1, (1,), generator=g)), budget)
            if 0 < budget - d < lo:  # never leave a stub shorter than a token
                d = budget
            durations.append(d)
            budget -= d
        chars = torch.randint(3, self.vocab_size, (len(durations),), generator=g).tolist()
        tokens = [*chars, Tokenizer.eos_token_id]
        feats = self._render(tokens, [*durations, EOS_FRAMES], g)
        return feats, torch.tensor(tokens, dtype=torch.long)

    @contract(
        dims={"F": "self.cfg.n_feats", "V": "self.vocab_size"},
        strategies={"index": lambda st: st.integers(0, 3)},
    )
    def __getitem__(
        self, index: Annotated[int, Range(0, None)]
    ) -> tuple[
        Annotated[Float[Tensor, "T_feat F"], Range(-2, 2)],
        Annotated[Int[Tensor, " T_token"], Range(0, "V-1")],
        int,
        int,
    ]:
        """``(features [T_feat, F], tokens [T_token], feat_len, token_len)``."""
        if not 0 <= index < self.num_samples:
            raise IndexError(
                f"ToySeq2SeqDataset.__getitem__: index={index} out of range [0, {self.num_samples})"
            )
        g = self._rng(index)
        n = int(torch.randint(self.cfg.min_tokens, self.cfg.max_tokens + 1, (1,), generator=g))
        chars = torch.randint(3, self.vocab_size, (n,), generator=g).tolist()
        tokens = [*chars, Tokenizer.eos_token_id]
        feats = self._render(tokens, [*self._durations(n, g), EOS_FRAMES], g)
        return feats, torch.tensor(tokens, dtype=torch.long), feats.shape[0], len(tokens)

    def text(self, index: int) -> str:
        """The transcript of item ``index``."""
        return self.tokenizer.decode(self[index][1])

    def get_avg_length(self) -> float:
        """Mean number of frames (seed guide: compare train/val distributions)."""
        n = min(len(self), 200)
        return sum(self[i][2] for i in range(n)) / n


# generate=False: the inputs are Python lists of tensors, which strategies cannot derive.
@contract(generate=False)
def collate_fn(
    batch: Sequence[tuple[Tensor, Tensor, int, int]], pad_id: int = Tokenizer.pad_token_id
) -> tuple[
    Annotated[Float[Tensor, "B T_max F"], Range(-2, 2)],
    Annotated[Int[Tensor, "B S_max"], Range(0, None)],
    Annotated[Int[Tensor, " B"], Range(1, "T_max")],
    Annotated[Int[Tensor, " B"], Range(1, "S_max")],
]:
    """Pad a list of dataset items into ``(features, tokens, feat_lens, token_lens)``.

    The lengths are part of the batch on purpose: without them padding cannot be masked
    (seed guide, "Variable-length batching causes errors").

    Raises:
        BatchError: empty batch, or an item with a zero-length sequence.

    Example:
        >>> ds = ToySeq2SeqDataset(ParaformerConfig(), num_samples=4)
        >>> f, t, fl, tl = collate_fn([ds[0], ds[1]])
        >>> f.shape[0], int(fl.max()) == f.shape[1]
        (2, True)
    """
    if len(batch) == 0:
        raise BatchError("collate_fn: empty batch (0 items); check the sampler/batch_size")
    for i, item in enumerate(batch):
        if len(item) != 4:
            raise BatchError(
                f"collate_fn: item {i} has {len(item)} fields; expected "
                "(features, tokens, feat_len, token_len)"
            )
        f, t, fl, tl = item
        if f.ndim != 2 or t.ndim != 1:
            raise BatchError(
                f"collate_fn: item {i} has features {tuple(f.shape)} and tokens {tuple(t.shape)}; "
                "expected features [T_feat, F] and tokens [T_token] (one utterance per item)"
            )
        if fl < 1 or tl < 1 or f.shape[0] == 0 or t.shape[0] == 0:
            raise BatchError(
                f"collate_fn: item {i} has a zero-length sequence (feat_len={fl}, "
                f"token_len={tl}); drop empty utterances before batching"
            )
        if fl > f.shape[0] or tl > t.shape[0]:
            raise BatchError(
                f"collate_fn: item {i} says feat_len={fl}, token_len={tl} but holds "
                f"{f.shape[0]} frames and {t.shape[0]} tokens; a length cannot exceed its "
                "sequence (compute the lengths from the tensors)"
            )
        if f.shape[1] != batch[0][0].shape[1]:
            raise BatchError(
                f"collate_fn: item {i} has F={f.shape[1]} feature bins but item 0 has "
                f"F={batch[0][0].shape[1]}; every item needs the same front end (is one of them "
                "[F, T] instead of [T, F]?)"
            )
    feats, toks, flens, tlens = zip(*batch, strict=True)
    n_feats = feats[0].shape[-1]
    out_f = torch.zeros(len(batch), max(flens), n_feats, dtype=feats[0].dtype)  # (B, T_max, F)
    out_t = torch.full((len(batch), max(tlens)), pad_id, dtype=torch.long)  # (B, S_max)
    for i, (f, t, fl, tl) in enumerate(zip(feats, toks, flens, tlens, strict=True)):
        out_f[i, :fl] = f[:fl]
        out_t[i, :tl] = t[:tl]
    return (
        out_f,
        out_t,
        torch.tensor(flens, dtype=torch.long),
        torch.tensor(tlens, dtype=torch.long),
    )
