import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from models.audio import AudioError, STFTConfig, istft, stft


@settings(max_examples=10, deadline=None)
@given(length=st.integers(510, 3000), batch=st.integers(1, 3), seed=st.integers(0, 2**16))
def test_round_trip_is_exact(length, batch, seed):
    x = torch.randn(batch, length, generator=torch.Generator().manual_seed(seed))
    y = istft(stft(x), length=length)
    assert y.shape == x.shape
    torch.testing.assert_close(y, x, atol=2e-5, rtol=0)


def test_shape_and_compression_formula():
    cfg = STFTConfig()
    x = torch.randn(2, 16000)
    spec = stft(x, cfg)
    assert spec.shape == (2, 256, 16000 // 128 + 1)
    assert spec.dtype == torch.complex64
    win = torch.hann_window(510, periodic=True)
    raw = torch.stft(x, 510, 128, window=win, center=True, return_complex=True)
    torch.testing.assert_close(spec.abs(), 0.15 * raw.abs() ** 0.5)
    big = raw.abs() > 1e-3  # phase is only defined where the bin is not ~0
    torch.testing.assert_close(
        torch.angle(spec * raw.conj())[big], torch.zeros(int(big.sum())), atol=1e-4, rtol=0
    )


def test_other_config_round_trip():
    cfg = STFTConfig(n_fft=62, hop=16, alpha=0.3, beta=0.5)
    x = torch.randn(1, 400)
    assert stft(x, cfg).shape == (1, 32, 400 // 16 + 1)
    torch.testing.assert_close(istft(stft(x, cfg), cfg, length=400), x, atol=1e-5, rtol=0)


def test_clip_shorter_than_one_frame():
    with pytest.raises(AudioError, match=r"'wave' has 300 samples, shorter than one STFT frame"):
        stft(torch.randn(1, 300))


def test_nan_samples_rejected():
    x = torch.randn(1, 1000)
    x[0, 10] = float("nan")
    with pytest.raises(ValueError, match="wave"):
        stft(x)


def test_istft_wrong_bins():
    with pytest.raises((AudioError, ValueError), match="spec"):
        istft(torch.zeros(1, 100, 5, dtype=torch.complex64))
