"""CIF predictor: integrate-and-fire against a sequential reference, scaling, tail, tools."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from models.paraformer import ParaformerConfig, Predictor, cif


def _cif_loop(hidden, alphas, threshold=1.0):
    """Sequential integrate-and-fire (the CIF paper's loop), one item."""
    out, acc, frame = [], 0.0, torch.zeros(hidden.shape[-1], dtype=torch.float64)
    for t in range(alphas.shape[0]):
        a = float(alphas[t])
        while acc + a >= threshold - 1e-12:
            need = threshold - acc
            out.append(frame + need * hidden[t])
            a -= need
            acc, frame = 0.0, torch.zeros_like(frame)
        acc += a
        frame = frame + a * hidden[t]
    return torch.stack(out) if out else torch.zeros(0, hidden.shape[-1], dtype=torch.float64)


@settings(max_examples=30, deadline=None)
@given(alphas=st.lists(st.floats(0, 1), min_size=1, max_size=12), seed=st.integers(0, 50))
def test_vectorised_cif_equals_sequential_integrate_and_fire(alphas, seed):
    a = torch.tensor(alphas, dtype=torch.float64)
    h = torch.randn(
        len(alphas), 3, generator=torch.Generator().manual_seed(seed), dtype=torch.float64
    )
    ref = _cif_loop(h, a)
    if ref.shape[0] == 0:
        return
    got = cif(h[None], a[None], 1.0, ref.shape[0])[0]
    torch.testing.assert_close(got, ref)


def test_training_scales_alphas_to_target_length_and_inference_uses_the_tail():
    cfg = ParaformerConfig.tiny()
    p = Predictor(cfg)
    enc = torch.randn(2, 10, cfg.d_model)
    mask = torch.ones(2, 10, dtype=torch.bool)
    mask[1, 6:] = False
    alphas = torch.full((2, 10), 0.3) * mask  # sums 3.0 and 1.8
    emb, counts, token_num = p.integrate(enc, alphas, mask, torch.tensor([4, 2]))
    assert emb.shape == (2, 4, cfg.d_model) and counts.tolist() == [4, 2]
    torch.testing.assert_close(token_num, torch.tensor([3.0, 1.8]))
    # every target token gets a full unit of (rescaled) weight: embeddings of a constant input
    const = torch.ones(2, 10, cfg.d_model)
    e, _, _ = p.integrate(const, alphas, mask, torch.tensor([4, 2]))
    torch.testing.assert_close(e[0, :, 0], torch.ones(4))
    torch.testing.assert_close(e[1, :2, 0], torch.ones(2))
    # inference: floor(sum + 0.45): 3.0 -> 3, 1.8 -> 2 (the tail completes the last token)
    _, counts, _ = p.integrate(enc, alphas, mask)
    assert counts.tolist() == [3, 2]


def test_predictor_alphas_are_masked_probabilities():
    cfg = ParaformerConfig.tiny()
    p = Predictor(cfg)
    mask = torch.tensor([[True] * 5 + [False] * 3])
    a = p(torch.randn(1, 8, cfg.d_model), mask)
    assert ((a >= 0) & (a <= 1)).all() and (a[~mask] == 0).all()


def test_token_positions_targets_and_figure():
    cfg = ParaformerConfig.tiny()
    p = Predictor(cfg)
    alphas = torch.tensor([[0.5, 0.5, 0.25, 0.75, 1.0, 0.0]])
    mask = torch.ones(1, 6, dtype=torch.bool)
    assert p.extract_token_positions(alphas, mask) == [[1, 3, 4]]
    tb = p.generate_alignment_targets([[1, 3]], 6, "boundary")
    assert tb.tolist() == [[0.0, 1.0, 0.0, 1.0, 0.0, 0.0]]
    tg = p.generate_alignment_targets([[1, 3]], 6, "gaussian")
    assert tg[0, 1] == 1.0 and 0 < tg[0, 2] < 1 and tg.max() <= 1
    with pytest.raises(ValueError, match="method='x'"):
        p.generate_alignment_targets([[1]], 6, "x")
    loss = p.compute_alignment_loss(alphas.clamp(0, 1), tb, mask)
    assert torch.isfinite(loss) and loss > 0
    viz = p.visualize_alignment(alphas, [[1, 3]], torch.tensor([6]))
    assert viz["fires"] == [[1, 3, 4]] and viz["expected_count"] == [3]
    assert viz["figure"].axes
    import matplotlib.pyplot as plt

    plt.close(viz["figure"])
