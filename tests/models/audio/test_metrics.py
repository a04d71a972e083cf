import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from models.audio import AudioError, estoi_score, make_mixtures, pesq_score, si_sdr


def _si_sdr_np(est, ref):
    est, ref = est - est.mean(), ref - ref.mean()
    a = np.dot(est, ref) / np.dot(ref, ref)
    return 10 * np.log10(np.sum((a * ref) ** 2) / np.sum((est - a * ref) ** 2))


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 2**16), noise=st.floats(0.01, 3.0))
def test_si_sdr_matches_formula(seed, noise):
    g = torch.Generator().manual_seed(seed)
    ref = torch.randn(800, generator=g, dtype=torch.float64)
    est = ref + noise * torch.randn(800, generator=g, dtype=torch.float64)
    assert si_sdr(est, ref).item() == pytest.approx(_si_sdr_np(est.numpy(), ref.numpy()), abs=1e-6)
    # scale invariant, batched
    both = si_sdr(torch.stack([est, 3.0 * est]), torch.stack([ref, ref]))
    assert both.shape == (2,)
    assert both[0].item() == pytest.approx(both[1].item(), abs=1e-6)


def test_pesq_estoi_rank_clean_above_noisy():
    m = make_mixtures("heldout", 1, seed=0, snr_db=(0, 0))[0]
    assert pesq_score(m.clean, m.clean) > pesq_score(m.noisy, m.clean)
    assert estoi_score(m.clean, m.clean) > estoi_score(m.noisy, m.clean)
    with pytest.raises(AudioError, match="'sr' is 44100"):
        pesq_score(m.noisy, m.clean, 44100)
    with pytest.raises(AudioError, match="'est' has shape"):
        estoi_score(m.noisy[None], m.clean)
