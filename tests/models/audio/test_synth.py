import numpy as np
import pytest
import torch

from models.audio import (
    HELDOUT_SPEAKERS,
    NOISE_TYPES,
    OOD_NOISE_TYPES,
    TRAIN_SPEAKERS,
    AudioError,
    make_mixtures,
    synth_noise,
)


def _same(a, b):
    return all(
        torch.equal(x.clean, y.clean) and torch.equal(x.noisy, y.noisy)
        and torch.equal(x.noise_ref, y.noise_ref) and x.noise_type == y.noise_type
        for x, y in zip(a, b, strict=True)
    )  # fmt: skip


def test_deterministic_given_seed():
    a = make_mixtures("train", 6, seed=3, seconds=0.1)
    b = make_mixtures("train", 6, seed=3, seconds=0.1)
    c = make_mixtures("train", 6, seed=4, seconds=0.1)
    assert _same(a, b)
    assert not torch.equal(a[0].clean, c[0].clean)


def test_splits_are_disjoint():
    assert not set(TRAIN_SPEAKERS) & set(HELDOUT_SPEAKERS)
    assert not set(NOISE_TYPES) & set(OOD_NOISE_TYPES)
    assert len(NOISE_TYPES) >= 5
    train = make_mixtures("train", 12, seed=0, seconds=0.1)
    held = make_mixtures("heldout", 12, seed=0, seconds=0.1)
    ood = make_mixtures("ood", 3, seed=0, seconds=0.1)
    assert {m.speaker for m in train} <= set(TRAIN_SPEAKERS)
    assert {m.speaker for m in held + ood} <= set(HELDOUT_SPEAKERS)
    assert [m.noise_type for m in held[:6]] == list(NOISE_TYPES)
    assert {m.noise_type for m in ood} <= set(OOD_NOISE_TYPES)
    # same seed, other split: other signals
    assert not torch.equal(train[0].clean, held[0].clean)


def test_mixture_fields_and_snr():
    for m in make_mixtures("heldout", 6, seed=1, seconds=0.25, snr_db=(0, 5)):
        n = round(0.25 * 16000)
        assert m.clean.shape == m.noisy.shape == m.noise_ref.shape == (n,)
        noise = (m.noisy - m.clean).double()
        snr = 10 * torch.log10(m.clean.double().pow(2).sum() / noise.pow(2).sum())
        assert 0 <= m.snr_db <= 5
        assert abs(snr.item() - m.snr_db) < 0.05
        # the reference is another excerpt of the same source, at the same gain
        assert not torch.allclose(m.noise_ref, noise.float(), atol=1e-4)
        ratio = m.noise_ref.pow(2).mean() / noise.pow(2).mean()
        assert 0.2 < ratio.item() < 5


def test_bad_arguments():
    with pytest.raises(AudioError, match=r"split.*valid: train, heldout, ood"):
        make_mixtures("test", 1, seed=0)
    with pytest.raises(AudioError, match="seconds"):
        make_mixtures("train", 1, seed=0, seconds=0.01)
    with pytest.raises(AudioError, match="unknown noise_type 'rain'"):
        synth_noise(np.random.default_rng(0), 100, "rain")
