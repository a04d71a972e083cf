"""Semantic properties (hypothesis): padding invariance, masked loss, causal diagonal, no NaN,
beam 1 == greedy."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from models.paraformer import (
    Encoder,
    MaskedCrossEntropy,
    Paraformer,
    ParaformerConfig,
    beam_search,
    create_causal_mask,
    create_padding_mask,
    greedy_decode,
)

pytestmark = pytest.mark.contracts
CFG = ParaformerConfig.tiny()
FAST = settings(max_examples=15, deadline=None)


def _model(seed: int) -> Paraformer:
    torch.manual_seed(seed)
    return Paraformer(CFG).eval()


lengths_st = st.lists(st.integers(1, 10), min_size=1, max_size=3)


@FAST
@given(lengths=lengths_st, seed=st.integers(0, 3), fill=st.floats(-2, 2))
def test_outputs_at_valid_positions_ignore_padding_contents(lengths, seed, fill):
    model = _model(seed)
    T = max(lengths) + 2
    g = torch.Generator().manual_seed(seed)
    feats = torch.rand(len(lengths), T, CFG.n_feats, generator=g) * 2 - 1
    mask = create_padding_mask(torch.tensor(lengths), T)
    other = feats.masked_fill(~mask[..., None], fill)  # same valid frames, other padding
    tokens = torch.randint(3, CFG.vocab_size, (len(lengths), 3), generator=g)
    tm = torch.ones_like(tokens, dtype=torch.bool)
    with torch.no_grad():
        a, b = model(feats, tokens, mask, tm), model(other, tokens, mask, tm)
        enc_a, enc_b = model.encoder(feats, mask), model.encoder(other, mask)
    torch.testing.assert_close(enc_a[mask], enc_b[mask])
    torch.testing.assert_close(a["alphas"], b["alphas"])
    torch.testing.assert_close(a["logits"], b["logits"])
    torch.testing.assert_close(
        greedy_decode(model, feats, 20, mask, check="ignore"),
        greedy_decode(model, other, 20, mask, check="ignore"),
    )


@FAST
@given(lengths=lengths_st, seed=st.integers(0, 100))
def test_masked_cross_entropy_ignores_padded_targets(lengths, seed):
    g = torch.Generator().manual_seed(seed)
    B, T, V = len(lengths), max(lengths) + 1, 7
    logits = torch.randn(B, T, V, generator=g)
    targets = torch.randint(0, V, (B, T), generator=g)
    mask = create_padding_mask(torch.tensor(lengths), T)
    ce = MaskedCrossEntropy(0.1)
    other_t = torch.where(mask, targets, torch.randint(0, V, (B, T), generator=g))
    other_l = torch.where(mask[..., None], logits, 10 * torch.randn(B, T, V, generator=g))
    torch.testing.assert_close(ce(logits, targets, mask), ce(other_l, other_t, mask))
    # and equals the mean over valid positions only
    ref = torch.nn.functional.cross_entropy(logits[mask], targets[mask], label_smoothing=0.1)
    torch.testing.assert_close(ce(logits, targets, mask), ref)


@given(size=st.integers(1, 40))
def test_causal_mask_is_lower_triangular_with_diagonal(size):
    m = create_causal_mask(size)
    assert m.diagonal().all()
    assert torch.equal(m, torch.ones(size, size, dtype=torch.bool).tril())
    assert m.any(dim=-1).all()  # every row can attend somewhere -> no NaN softmax


@FAST
@given(lengths=lengths_st, seed=st.integers(0, 3), scale=st.sampled_from([0.0, 1.0, 2.0]))
def test_no_nan_when_every_row_has_a_valid_position(lengths, seed, scale):
    model = _model(seed)
    T = max(lengths)
    g = torch.Generator().manual_seed(seed)
    feats = ((torch.rand(len(lengths), T, CFG.n_feats, generator=g) * 2 - 1) * scale).clamp(-2, 2)
    mask = create_padding_mask(torch.tensor(lengths), T)
    enc = Encoder(CFG)(feats, mask)
    assert torch.isfinite(enc).all()
    tokens = torch.randint(0, CFG.vocab_size, (len(lengths), 2), generator=g)
    out = model.train()(feats, tokens, mask, torch.ones_like(tokens, dtype=torch.bool))
    out["loss"].backward()
    assert torch.isfinite(out["loss"])
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


@FAST
@given(lengths=lengths_st, seed=st.integers(0, 3))
def test_beam_one_equals_greedy(lengths, seed):
    model = _model(seed)
    T = max(lengths)
    g = torch.Generator().manual_seed(seed + 7)
    feats = torch.rand(len(lengths), T, CFG.n_feats, generator=g) * 2 - 1
    mask = create_padding_mask(torch.tensor(lengths), T)
    greedy = greedy_decode(model, feats, 20, mask, check="ignore")
    tokens, scores = beam_search(model, feats, 1, 20, mask)
    assert torch.equal(tokens[:, 0], greedy)
    # a wider beam keeps the greedy path's score as an upper bound on its best hypothesis
    _tokens4, scores4 = beam_search(model, feats, 4, 20, mask)
    assert (scores4[:, 0] >= scores[:, 0] - 1e-5).all()
    assert (scores4[:, :-1] >= scores4[:, 1:] - 1e-6).all()  # sorted best first
