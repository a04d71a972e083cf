"""Tokenizer, toy data, collation, masks and metrics."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from contracts import ContractError
from models.paraformer import (
    ParaformerConfig,
    SequenceAccuracy,
    TokenAccuracy,
    Tokenizer,
    ToySeq2SeqDataset,
    apply_mask,
    assert_shape,
    collate_fn,
    create_padding_mask,
)


@given(st.text(alphabet="abcd", max_size=10))
def test_tokenizer_round_trip(text):
    tok = Tokenizer("abcd")
    ids = tok.encode(text)
    assert ids[-1] == tok.eos_token_id and tok.decode(ids) == text
    assert tok.decode(tok.encode(text, add_bos=True)) == text


def test_batch_encode_pads_and_reports_lengths():
    tok = Tokenizer("abc")
    ids, lens = tok.batch_encode(["ab", "", "cab"])
    assert lens.tolist() == [3, 1, 4] and ids.shape == (3, 4)
    assert (ids[0, 3:] == tok.pad_token_id).all()


def test_toy_tokens_are_recoverable_from_features():
    """Nearest prototype at the centre frame of each segment gives back the tokens."""
    cfg = ParaformerConfig()
    ds = ToySeq2SeqDataset(cfg, num_samples=20)
    hits = total = 0
    for i in range(20):
        feats, tokens, flen, tlen = ds[i]
        assert feats.shape == (flen, cfg.n_feats) and tokens.shape == (tlen,)
        assert feats.abs().max() <= 2 and tokens[-1] == Tokenizer.eos_token_id
        protos = ds.prototypes[3:]  # characters only
        sims = (
            torch.nn.functional.normalize(feats, dim=1)
            @ torch.nn.functional.normalize(protos, dim=1).T
        )  # (T, V-3)
        best = sims.argmax(1) + 3
        # every character of the text is the best match of at least one frame, in order
        frames = [int(t) for t in best]
        dedup = [t for j, t in enumerate(frames) if j == 0 or t != frames[j - 1]]
        hits += sum(int(t) in dedup for t in tokens[:-1])
        total += tlen - 1
    assert hits / total > 0.95
    assert torch.equal(ds[3][0], ds[3][0])  # deterministic per index
    f, t = ds.generate_sequence(37)
    assert f.shape == (37, cfg.n_feats) and t[-1] == Tokenizer.eos_token_id


def test_collate_pads_and_returns_lengths():
    cfg = ParaformerConfig.tiny()
    ds = ToySeq2SeqDataset(cfg, num_samples=3)
    f, t, fl, tl = collate_fn([ds[0], ds[1], ds[2]])
    assert f.shape == (3, int(fl.max()), cfg.n_feats) and t.shape == (3, int(tl.max()))
    for i in range(3):
        assert torch.equal(f[i, : fl[i]], ds[i][0]) and (f[i, fl[i] :] == 0).all()


@settings(max_examples=20, deadline=None)
@given(st.lists(st.integers(1, 9), min_size=1, max_size=5), st.integers(0, 3))
def test_padding_mask_and_apply_mask(lengths, extra):
    T = max(lengths) + extra
    m = create_padding_mask(torch.tensor(lengths), T)
    assert m.sum(1).tolist() == lengths and m[:, 0].all()
    x = apply_mask(torch.ones(len(lengths), T, 2), m)
    assert x.sum().item() == 2 * sum(lengths)


def test_assert_shape_binds_and_names_the_axis():
    dims = {}
    assert_shape(torch.zeros(2, 5, 8), "B,T,D", "x", dims)
    assert dims == {"B": 2, "T": 5, "D": 8}
    with pytest.raises(ContractError, match=r"'mask', axis 1: expected size T=5, got 6") as e:
        assert_shape(torch.zeros(2, 6), "B,T", "mask", dims)
    assert e.value.argument == "mask" and e.value.axis == 1
    with pytest.raises(ContractError, match=r"expected 3 axes \[B, T, D\], got 2 axes"):
        assert_shape(torch.zeros(2, 6), "B T D", "x")
    with pytest.raises(ContractError, match=r"x looks like \[B, D, T\]; transpose\(1, 2\)\?"):
        assert_shape(torch.zeros(2, 8, 5), "B T D", "x", {"T": 5, "D": 8})
    assert_shape(torch.zeros(2, 8, 5), "B _ 5", "x")  # _ matches anything, integers must match


def test_accuracies():
    logits = torch.zeros(1, 3, 5)
    logits[0, [0, 1, 2], [1, 2, 4]] = 1.0
    mask = torch.tensor([[True, True, False]])
    assert TokenAccuracy()(logits, torch.tensor([[1, 3, 0]]), mask).item() == 0.5
    sa = SequenceAccuracy()
    p = torch.tensor([[3, 4, 2, 0], [3, 5, 2, 0]])
    t = torch.tensor([[3, 4, 2], [3, 4, 2]])
    assert sa(p, t, torch.tensor([3, 3]), torch.tensor([3, 3])).item() == 0.5
