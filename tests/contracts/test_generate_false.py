"""Hand-written property tests for the model contracts marked ``generate=False``.

Strategies cannot derive their inputs (lists of tensors, value relations between arguments,
models as arguments), so each gets a hypothesis test here; the contract's output side is checked
by the decorator in ``full`` mode on every example. ``test_every_contract_has_a_property_test``
keeps it so: a new ``generate=False`` contract without a test here fails the suite.
"""

from __future__ import annotations

import functools

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import contracts
from contracts._registry import all_plans, import_tree

pytestmark = pytest.mark.contracts

COVERED: set[str] = set()
FEW = settings(max_examples=6, deadline=None, derandomize=True, database=None)


def covers(qualname: str):
    """Mark a test as the property test of the contract ``module.qualname``."""
    COVERED.add(qualname)

    def deco(fn):
        @functools.wraps(fn)
        def run(*a, **k):
            with contracts.mode("full"):
                return fn(*a, **k)

        return run

    return deco


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# -- models.audio ---------------------------------------------------------------------------


@covers("models.audio._metrics.si_sdr")
@FEW
@given(st.lists(st.integers(1, 3), max_size=2), st.integers(8, 64), st.integers(0, 99))
def test_si_sdr(batch, n, seed):
    from models.audio import si_sdr

    g = _gen(seed)
    ref = torch.randn(*batch, n, generator=g)
    est = ref + 0.1 * torch.randn(*batch, n, generator=g)
    out = si_sdr(est, ref)
    assert out.shape == tuple(batch)
    assert (si_sdr(ref, ref) >= out - 1e-3).all()  # the reference scores best
    torch.testing.assert_close(si_sdr(3.0 * est, ref), out, rtol=1e-3, atol=1e-3)  # scale-free


# -- models.paraformer ----------------------------------------------------------------------


@functools.cache
def _paraformer():
    from models.paraformer import Paraformer, ParaformerConfig

    torch.manual_seed(0)
    return Paraformer(ParaformerConfig.tiny()).eval()


@covers("models.paraformer._masks.create_padding_mask")
@FEW
@given(st.lists(st.integers(1, 9), min_size=1, max_size=4), st.integers(0, 3))
def test_create_padding_mask(lengths, extra):
    from models.paraformer import create_padding_mask

    t = max(lengths) + extra
    m = create_padding_mask(torch.tensor(lengths), t)
    assert m.shape == (len(lengths), t)
    assert m.sum(1).tolist() == lengths and m[:, 0].all()


@covers("models.paraformer._data.collate_fn")
@FEW
@given(st.lists(st.tuples(st.integers(1, 6), st.integers(1, 4)), min_size=1, max_size=3))
def test_collate_fn(lens):
    from models.paraformer import collate_fn

    f = 5
    items = [(torch.rand(t, f) * 2 - 1, torch.randint(3, 9, (s,)), t, s) for t, s in lens]
    feats, tokens, flen, slen = collate_fn(items)
    assert feats.shape == (len(lens), max(t for t, _ in lens), f)
    assert flen.tolist() == [t for t, _ in lens] and slen.tolist() == [s for _, s in lens]
    for i, (t, s) in enumerate(lens):
        assert (feats[i, t:] == 0).all() and torch.equal(tokens[i, :s], items[i][1])


@covers("models.paraformer._decode.greedy_decode")
@FEW
@given(st.integers(1, 2), st.integers(2, 8), st.integers(1, 6))
def test_greedy_decode(b, t, max_len):
    from models.paraformer import greedy_decode

    model = _paraformer()
    x = torch.rand(b, t, model.cfg.n_feats) * 2 - 1
    out = greedy_decode(model, x, max_len=max_len, check="ignore")
    assert out.shape[0] == b and out.shape[1] <= max_len


@covers("models.paraformer._decode.beam_search")
@FEW
@given(st.integers(1, 2), st.integers(2, 6), st.integers(1, 3))
def test_beam_search(b, t, k):
    from models.paraformer import beam_search

    model = _paraformer()
    x = torch.rand(b, t, model.cfg.n_feats) * 2 - 1
    tokens, scores = beam_search(model, x, beam_size=k, max_len=4)
    assert tokens.shape[:2] == (b, k) and scores.shape == (b, k)
    assert (scores[:, :-1] >= scores[:, 1:] - 1e-5).all()  # beams sorted best first


@covers("models.paraformer._predictor.check_alphas")
@FEW
@given(st.integers(1, 3), st.integers(2, 20), st.integers(0, 99))
def test_check_alphas(b, t, seed):
    from models.paraformer import PredictorCollapseError, check_alphas

    mask = torch.ones(b, t, dtype=torch.bool)
    check_alphas(0.1 + 0.8 * torch.rand(b, t, generator=_gen(seed)), mask)  # healthy: silent
    with pytest.raises(PredictorCollapseError, match="collapsed"):
        check_alphas(torch.zeros(b, t), mask)


@covers("models.paraformer._predictor.Predictor.visualize_alignment")
@settings(max_examples=2, deadline=None, derandomize=True, database=None)
@given(st.integers(1, 2), st.integers(3, 8))
def test_visualize_alignment(b, t):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    probs = torch.rand(b, t)
    out = _paraformer().predictor.visualize_alignment(probs, feature_lengths=torch.full((b,), t))
    assert {"figure", "fires", "token_num"} <= set(out)
    plt.close(out["figure"])


@covers("models.paraformer._train.predict")
@FEW
@given(st.integers(2, 8), st.integers(1, 5))
def test_predict(t, max_len):
    from models.paraformer import Tokenizer, predict

    model = _paraformer()
    tok = Tokenizer("abcd")
    text = predict(model, tok, torch.rand(t, model.cfg.n_feats) * 2 - 1, max_len, check="ignore")
    assert isinstance(text, str) and set(text) <= set("abcd")


# -- models.sgmse -----------------------------------------------------------------------------


@functools.cache
def _score_model():
    from models.sgmse import ScoreModel, ScoreModelConfig

    torch.manual_seed(0)
    return ScoreModel(ScoreModelConfig.tiny()).eval()


@covers("models.sgmse._sde.OUVESDE.prior_sampling")
@FEW
@given(st.integers(1, 3), st.integers(1, 4), st.integers(1, 6), st.integers(0, 99))
def test_prior_sampling(b, f, t, seed):
    from models.sgmse import OUVESDE

    sde = OUVESDE()
    y = torch.randn(b, f, t, dtype=torch.complex64)
    x = sde.prior_sampling(y, generator=_gen(seed))
    assert x.shape == y.shape and x.dtype == y.dtype
    torch.testing.assert_close(sde.prior_sampling(y, generator=_gen(seed)), x)  # seeded


@covers("models.sgmse._sampling.enhance")
@settings(max_examples=3, deadline=None, derandomize=True, database=None)
@given(st.integers(600, 900), st.integers(0, 9))
def test_sgmse_enhance(n, seed):
    from models.sgmse import enhance

    noisy = torch.randn(n, generator=_gen(seed)) * 0.1
    out = enhance(_score_model(), noisy, N=2, corrector_steps=0, seed=seed)
    assert out.shape == (n,) and torch.isfinite(out).all()


# -- models.diffusion_buffer ----------------------------------------------------------------


@functools.cache
def _buffer():
    from models.diffusion_buffer import DiffusionBuffer, DiffusionBufferConfig

    torch.manual_seed(0)
    return DiffusionBuffer(DiffusionBufferConfig.tiny()).eval()


@covers("models.diffusion_buffer._sde.BBED.mean")
@FEW
@given(st.lists(st.integers(1, 3), min_size=1, max_size=3), st.floats(0.0, 1.0))
def test_bbed_mean(shape, t):
    sde = _buffer().sde
    x0, y = torch.randn(shape), torch.randn(shape)
    m = sde.mean(x0, y, torch.tensor(t))
    torch.testing.assert_close(m, (1 - t) * x0 + t * y)


@covers("models.diffusion_buffer._sde.BBED.bridge_step")
@FEW
@given(st.lists(st.integers(1, 3), min_size=1, max_size=3), st.floats(0.2, 0.9))
def test_bbed_bridge_step(shape, t):
    sde = _buffer().sde
    x, y, x0 = torch.randn(shape), torch.randn(shape), torch.randn(shape)
    out = sde.bridge_step(x, y, x0, torch.tensor(t), torch.tensor(t / 2))
    assert out.shape == x.shape and torch.isfinite(out).all()


@covers("models.diffusion_buffer._model.DiffusionBuffer.enhance")
@settings(max_examples=2, deadline=None, derandomize=True, database=None)
@given(st.integers(1, 2), st.integers(1, 2), st.integers(200, 400), st.integers(0, 9))
def test_buffer_enhance(b, c, n, seed):
    model = _buffer()
    mix = torch.randn(b, c, n, generator=_gen(seed)) * 0.1  # [B, C, L]: C mixed to mono
    out = model.enhance(mix, generator=_gen(seed))
    assert out.shape == (b, n)


# -- models.audiosr -------------------------------------------------------------------------


@functools.cache
def _audiosr():
    from models.audiosr import AudioSR, AudioSRConfig

    torch.manual_seed(0)
    return AudioSR(AudioSRConfig.tiny(use_global_encoder=True)).eval()


@covers("models.audiosr._model.AudioSR.sample")
@settings(max_examples=3, deadline=None, derandomize=True, database=None)
@given(st.integers(1, 2), st.sampled_from([4, 8]), st.integers(0, 9))
def test_audiosr_sample(b, t, seed):
    model = _audiosr()
    lo = torch.randn(b, model.cfg.n_mels, t)
    out = model.sample(lo, steps=2, generator=_gen(seed))
    assert out.shape == lo.shape and torch.isfinite(out).all()


@covers("models.audiosr._chunked.super_resolve_long")
@settings(max_examples=2, deadline=None, derandomize=True, database=None)
@given(st.sampled_from([12, 16]), st.integers(0, 9))
def test_super_resolve_long(t, seed):
    from models.audiosr import super_resolve_long

    model = _audiosr()
    lo = torch.randn(1, model.cfg.n_mels, t)
    out = super_resolve_long(model, lo, chunk_frames=8, overlap_frames=4, steps=2, seed=seed)
    assert out.shape == lo.shape


def test_every_contract_has_a_property_test():
    """Generated (strategies) or hand-written here: no contract goes untested."""
    assert not import_tree("models")
    missing = [
        f"{p.module}.{p.qualname}"
        for p in all_plans(("models",))
        if not p.generate and f"{p.module}.{p.qualname}" not in COVERED
    ]
    assert not missing, f"generate=False contracts without a property test: {missing}"
