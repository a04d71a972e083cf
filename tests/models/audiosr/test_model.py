"""AudioSR-style model: mel front end, encoder shapes, U-Net, schedule, DDIM + CFG."""

import pytest
import torch

import contracts
from models.audiosr import (
    AudioSR,
    AudioSRConfig,
    AudioSRError,
    GlobalAudioEncoder,
    GlobalConditionedSpatialTransformer,
    SpatialTransformer,
    UNet,
    cosine_alphas_cumprod,
    lowpass,
    mel_filterbank,
)


def _wave(b=2, n=2048, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(b, n, generator=g) - 0.5) * 1.8


def test_mel_filterbank_partition():
    fb = mel_filterbank(257, 40, 16000)
    assert fb.shape == (40, 257) and (fb >= 0).all()
    assert (fb.argmax(dim=1).diff() >= 0).all()  # centers increase


def test_lowpass_removes_high_band():
    x = _wave(1, 4000)
    lo = lowpass(x, 4000.0, 16000)
    spec = torch.fft.rfft(lo)
    freqs = torch.fft.rfftfreq(4000, 1 / 16000)
    assert spec[:, freqs > 4000].abs().max() < 1e-3
    with pytest.raises(AudioSRError, match=r"cutoff_hz=9000\.0 must lie in"):
        lowpass(x, 9000.0, 16000)


def test_encoder_shapes_and_seed_example():
    enc = GlobalAudioEncoder(AudioSRConfig(use_global_encoder=True))
    g, seq = enc(torch.randn(1, 64, 296))  # the seed's 2.96 s file
    assert g.shape == (1, 64) and seq.shape == (1, 296, 64)


def test_encoder_wrong_mel_count_is_a_contract_error():
    enc = GlobalAudioEncoder(AudioSRConfig.tiny(use_global_encoder=True))
    with pytest.raises(contracts.ContractError, match="mel"):
        enc(torch.randn(1, 17, 10))


def test_single_token_cross_attention_is_a_per_sample_bias():
    st = GlobalConditionedSpatialTransformer(16, 4, 4, context_dim=8, global_dim=8, zero_init=False)
    torch.nn.init.normal_(st.proj_out.weight)  # zero-initialized like AudioSR's
    x, g = torch.randn(2, 16, 4, 4), torch.randn(2, 8)
    delta = st(x, g) - st(x)
    # the same vector at every position (before proj_out, a 1x1 conv: still position-independent)
    torch.testing.assert_close(delta, delta[..., :1, :1].expand_as(delta), atol=1e-5, rtol=1e-5)
    seq = torch.randn(2, 5, 8)
    delta2 = st(x, g, seq) - st(x)  # with sequence tokens it is real attention
    assert not torch.allclose(delta2, delta2[..., :1, :1].expand_as(delta2), atol=1e-4)


def test_zero_init_global_path_is_a_noop():
    base = SpatialTransformer(16, 4, 4)
    glob = GlobalConditionedSpatialTransformer(16, 4, 4, context_dim=8, global_dim=8)
    glob.load_state_dict(base.state_dict(), strict=False)
    for p in base.proj_out.parameters():
        torch.nn.init.normal_(p)
    glob.proj_out.load_state_dict(base.proj_out.state_dict())
    x = torch.randn(2, 16, 4, 4)
    torch.testing.assert_close(glob(x, torch.randn(2, 8)), base(x))


def test_unet_counts_spatial_transformers():
    net = UNet(AudioSRConfig.tiny(use_global_encoder=True))
    kinds = [type(m) for m in net.modules() if isinstance(m, SpatialTransformer)]
    assert len(kinds) == 4 and set(kinds) == {GlobalConditionedSpatialTransformer}


def test_cosine_schedule():
    a = cosine_alphas_cumprod(1000)
    assert (a.diff() < 0).all() and a[0] > 0.999 and a[-1] < 1e-4


@pytest.mark.parametrize("use_global", [False, True])
def test_loss_and_sampling(use_global):
    torch.manual_seed(0)
    model = AudioSR(AudioSRConfig.tiny(use_global_encoder=use_global))
    loss = model(_wave())
    loss.backward()
    assert torch.isfinite(loss)
    _, lo = model.mels(_wave(1, 3000))
    out = model.sample(lo, steps=3, generator=torch.Generator().manual_seed(0))
    assert out.shape == lo.shape and torch.isfinite(out).all()


def test_cfg_scale_one_skips_uncond_and_differs():
    torch.manual_seed(0)
    model = AudioSR(AudioSRConfig.tiny())
    for p in model.unet.out.parameters():  # make the untrained net's output non-zero
        torch.nn.init.normal_(p, std=0.1)
    _, lo = model.mels(_wave(1, 3000))
    g = torch.Generator
    a = model.sample(lo, steps=2, guidance=1.0, generator=g().manual_seed(0))
    b = model.sample(lo, steps=2, guidance=3.5, generator=g().manual_seed(0))
    assert not torch.allclose(a, b)
    with pytest.raises(AudioSRError, match="steps=1000 outside"):
        model.sample(lo, steps=1000)


def test_waveform_out_of_range_is_refused():
    model = AudioSR(AudioSRConfig.tiny())
    with pytest.raises(contracts.ContractError, match="wave"):
        model(_wave() * 3)


def test_config_checks():
    with pytest.raises(AudioSRError, match="n_mels=30 must be divisible"):
        AudioSRConfig(n_mels=30)
    with pytest.raises(AudioSRError, match="cutoff_hz=9000"):
        AudioSRConfig(cutoff_hz=9000)
