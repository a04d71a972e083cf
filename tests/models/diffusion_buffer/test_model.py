"""Diffusion buffer: shapes, buffer checks, causality, streaming, seed-003 failure modes."""

import pytest
import torch

import contracts
from models.diffusion_buffer import (
    AmpOverflowError,
    BufferSizeError,
    CausalUNet,
    DiffusionBuffer,
    DiffusionBufferConfig,
)


@pytest.fixture
def model():
    torch.manual_seed(0)
    return DiffusionBuffer(DiffusionBufferConfig.tiny())


def _clip(b=2, c=1, n=2048, scale=0.1, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, c, n, generator=g) * scale


def test_buffer_times(model):
    t = model.buffer_times(10)
    assert (t[:6] == 0).all() and torch.all(t[6:].diff() > 0)
    assert t[6].item() == pytest.approx(0.03) and t[-1].item() == pytest.approx(0.999)


def test_loss_is_finite_and_backprops(model):
    loss = model(_clip(), _clip(seed=1))
    loss.backward()
    assert torch.isfinite(loss)
    assert all(p.grad is not None for p in model.backbone.parameters() if p.requires_grad)


def test_stereo_is_averaged_to_mono(model):
    mix = _clip(c=2)
    torch.manual_seed(3)
    a = model(mix, mix)
    torch.manual_seed(3)
    b = model(mix.mean(1, keepdim=True), mix.mean(1, keepdim=True))
    torch.testing.assert_close(a, b)


def test_mismatched_channel_counts_refused(model):
    with pytest.raises(contracts.ContractError, match="target") as ei:
        model(_clip(c=2), _clip(c=1))
    assert ei.value.argument == "target"


def test_buffer_larger_than_frames_refused():
    model = DiffusionBuffer(DiffusionBufferConfig.tiny(buffer_size=40))
    with pytest.raises(BufferSizeError, match=r"gives 33 STFT frames but buffer_size=40.*"
                       r"1024 samples at n_fft=62, hop=32"):  # fmt: skip
        model(_clip(n=1024), _clip(n=1024))


def test_clip_shorter_than_fft_refused(model):
    with pytest.raises(BufferSizeError, match="gives 0 STFT frames but buffer_size=4"):
        model(_clip(n=40), _clip(n=40))


def test_backbone_is_causal_with_documented_receptive_field():
    cfg = DiffusionBufferConfig.tiny()
    net = CausalUNet(cfg)
    for p in net.parameters():  # avoid zero-gradient coincidences
        torch.nn.init.normal_(p, std=0.3)
    n, probe = 40, 35
    x = torch.randn(1, cfg.n_freqs, n, dtype=torch.cfloat, requires_grad=True)
    y = torch.randn(1, cfg.n_freqs, n, dtype=torch.cfloat)
    out = net(x, y, torch.rand(1, n))
    (grad,) = torch.autograd.grad(out[..., probe].abs().sum(), x)
    reach = grad.abs().sum(dim=(0, 1))  # (T,)
    assert (reach[probe + 1 :] == 0).all(), "future frames influence the output"
    first = int(torch.nonzero(reach)[0])
    assert probe - first + 1 == cfg.receptive_frames


def test_streaming_latency_and_alignment(model):
    model.eval()
    mix = _clip(b=1, n=1024)
    spec = model._spectra(mix, "mix")
    st = model.stream(1, torch.Generator().manual_seed(0))
    outs = [st.push(spec[..., i]) for i in range(spec.shape[-1])]
    b = model.cfg.buffer_size
    assert all(o is None for o in outs[: b - 1]) and all(o is not None for o in outs[b - 1 :])
    assert len(st.flush()) == b - 1
    wave = model.enhance(mix, torch.Generator().manual_seed(0))
    assert wave.shape == (1, 1024) and torch.isfinite(wave).all()


def test_streaming_output_does_not_depend_on_later_input(model):
    model.eval()
    a = _clip(b=1, n=1536)
    b = a.clone()
    b[..., 1024:] += 0.5  # change the future only
    wa = model.enhance(a, torch.Generator().manual_seed(0))
    wb = model.enhance(b, torch.Generator().manual_seed(0))
    # frames up to (1024 - n_fft) / hop - buffer are fixed before the change arrives
    safe = (1024 // 32 - 1 - model.cfg.buffer_size - 2) * 32
    torch.testing.assert_close(wa[..., :safe], wb[..., :safe])
    assert not torch.allclose(wa, wb)


def test_amp_float16_overflow_is_named():
    torch.manual_seed(0)
    loud = _clip(scale=1e12)
    amp = DiffusionBuffer(DiffusionBufferConfig.tiny(use_amp=True, amp_dtype="float16"))
    with pytest.raises(AmpOverflowError, match=r"non-finite under autocast \(float16\).*65504"):
        amp(loud, loud)
    plain = DiffusionBuffer(DiffusionBufferConfig.tiny())
    plain.load_state_dict(amp.state_dict())
    assert torch.isfinite(plain(loud, loud))  # float32: no overflow
    assert torch.isfinite(amp(_clip(), _clip()))  # normal levels are fine under fp16


def test_bf16_amp_runs():
    m = DiffusionBuffer(DiffusionBufferConfig.tiny(use_amp=True))
    assert torch.isfinite(m(_clip(), _clip()))


def test_t_eps_zero_gives_nan_when_contracts_off():
    with contracts.mode("off"):
        torch.manual_seed(0)
        m = DiffusionBuffer(DiffusionBufferConfig.tiny(t_eps=0.0))
        loss = m(_clip(), _clip(seed=1))
    assert torch.isnan(loss)


def test_t_eps_zero_nan_localized_by_nanwatch():
    import diagnostics

    nanwatch, nonfinite = diagnostics.NanWatch, diagnostics.NonFiniteError
    with contracts.mode("off"):
        torch.manual_seed(0)
        m = DiffusionBuffer(DiffusionBufferConfig.tiny(t_eps=0.0))
        mix, tgt = _clip(), _clip(seed=1)

        def step():
            loss = m(mix, tgt)
            loss.backward()
            return loss

        with pytest.raises(nonfinite) as ei:
            nanwatch(m).run(step)
    assert ei.value.report.module == "score_head"
    assert ei.value.report.phase == "forward"
