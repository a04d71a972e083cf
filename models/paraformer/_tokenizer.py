"""Character tokenizer with PAD/BOS/EOS (seed 004, "Tokenizer")."""

from __future__ import annotations

from typing import Annotated

import torch
from jaxtyping import Int
from torch import Tensor

import contracts
from contracts import Range, contract

from ._config import BatchError, ParaformerConfig, VocabError

__all__ = ["Tokenizer"]


@contracts.example(lambda: Tokenizer("abcd"))
class Tokenizer:
    """Character-level tokenizer: ids 0 PAD, 1 BOS, 2 EOS, then one id per character.

    Paraformer is non-autoregressive, so :meth:`encode` appends EOS but no BOS by default (the
    CIF predictor counts the EOS too, FunASR's ``predictor_bias=1``); ``add_bos=True`` gives the
    ``[BOS, ..., EOS]`` form of the seed's examples.

    Example:
        >>> tok = Tokenizer("abc")
        >>> tok.encode("cab").tolist()
        [5, 3, 4, 2]
        >>> tok.decode(tok.encode("cab"))
        'cab'
    """

    pad_token_id = 0
    bos_token_id = 1
    eos_token_id = 2
    n_special = 3

    def __init__(self, alphabet: str) -> None:
        if not alphabet or len(set(alphabet)) != len(alphabet):
            raise VocabError(
                f"Tokenizer: alphabet={alphabet!r} must be non-empty without duplicates"
            )
        self.alphabet = alphabet
        self._ids = {ch: i + self.n_special for i, ch in enumerate(alphabet)}

    @classmethod
    def from_config(cls, cfg: ParaformerConfig) -> Tokenizer:
        return cls(cfg.alphabet)

    @property
    def vocab_size(self) -> int:
        """V = 3 specials + len(alphabet)."""
        return self.n_special + len(self.alphabet)

    def __repr__(self) -> str:
        return f"Tokenizer(alphabet={self.alphabet!r}, vocab_size={self.vocab_size})"

    @contract(
        dims={"V": "self.vocab_size"},
        strategies={
            "text": lambda st: st.text(alphabet="abcd", max_size=6),
            "add_bos": lambda st: st.booleans(),
        },
    )
    def encode(
        self, text: str, add_bos: bool = False
    ) -> Annotated[Int[Tensor, " T"], Range(0, "V-1")]:
        """Text -> ``[T]`` int64 ids ending in EOS (and starting with BOS if ``add_bos``).

        Raises:
            VocabError: a character is outside the alphabet (no silent UNK).
        """
        unknown = sorted({ch for ch in text if ch not in self._ids})
        if unknown:
            pos = next(i for i, ch in enumerate(text) if ch not in self._ids)
            raise VocabError(
                f"Tokenizer.encode: text has characters outside the vocabulary {unknown} "
                f"(first at index {pos} of {text!r}); alphabet is {self.alphabet!r}"
            )
        ids = [self.bos_token_id] if add_bos else []
        ids += [self._ids[ch] for ch in text] + [self.eos_token_id]
        return torch.tensor(ids, dtype=torch.long)

    @contract(dims={"V": "self.vocab_size"})
    def decode(self, tokens: Annotated[Int[Tensor, " T"], Range(0, "V-1")]) -> str:
        """``[T]`` ids -> text: stops at the first EOS, drops PAD/BOS."""
        out = []
        for t in tokens.tolist():
            if t == self.eos_token_id:
                break
            if t >= self.n_special:
                out.append(self.alphabet[t - self.n_special])
        return "".join(out)

    @contract(
        dims={"V": "self.vocab_size"},
        strategies={
            "texts": lambda st: st.lists(
                st.text(alphabet="abcd", max_size=5), min_size=1, max_size=4
            )
        },
    )
    def batch_encode(
        self, texts: list[str]
    ) -> tuple[
        Annotated[Int[Tensor, "B T"], Range(0, "V-1")],
        Annotated[Int[Tensor, " B"], Range(1, "T")],
    ]:
        """Encode and right-pad with PAD: returns ``(tokens [B, T], lengths [B])``.

        Raises:
            BatchError: ``texts`` is empty.
        """
        if len(texts) == 0:
            raise BatchError("Tokenizer.batch_encode: texts is empty (a batch of 0 texts)")
        seqs = [self.encode(t) for t in texts]
        lengths = torch.tensor([len(s) for s in seqs], dtype=torch.long)
        out = torch.full((len(seqs), int(lengths.max())), self.pad_token_id, dtype=torch.long)
        for i, s in enumerate(seqs):
            out[i, : len(s)] = s
        return out, lengths
