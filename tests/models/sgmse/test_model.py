import pytest
import torch

from models.sgmse import ScoreModel, ScoreModelConfig, ScoreModelError
from models.sgmse._model import clamp_t

F = 32  # bins of the tiny config (n_fft 62)


def _inputs(B=2, T=6, L=200, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, F, T, dtype=torch.complex64, generator=g)
    y = torch.randn(B, F, T, dtype=torch.complex64, generator=g)
    ref = torch.randn(B, L, generator=g)
    return x, y, ref


@pytest.mark.parametrize("mode", ["add", "film", "xattn"])
def test_shapes_and_condition_paths(mode):
    torch.manual_seed(0)
    model = ScoreModel(ScoreModelConfig.tiny(cond_mode=mode)).eval()
    with torch.no_grad():  # a non-trivial output layer so conditions can matter
        model.unet.conv_out.weight.normal_()
        model.null_embedding.normal_()
    x, y, ref = _inputs()
    t = torch.tensor([0.5, 0.9])
    cond = model(x, y, t, ref)
    assert cond.shape == (2, F, 6) and cond.dtype == torch.complex64
    uncond = model(x, y, t)
    dropped = model(x, y, t, ref, torch.tensor([True, True]))
    torch.testing.assert_close(uncond, dropped)
    assert not torch.allclose(cond, uncond)
    mixed = model(x, y, t, ref, torch.tensor([True, False]))
    torch.testing.assert_close(mixed[0], uncond[0])
    torch.testing.assert_close(mixed[1], cond[1])


def test_noise_encoder_output_is_the_condition():
    model = ScoreModel(ScoreModelConfig.tiny(cond_mode="film")).eval()
    with torch.no_grad():
        model.unet.conv_out.weight.normal_()
    x, y, ref = _inputs()
    t = torch.tensor([0.5, 0.5])
    seen = []
    h = model.noise_encoder.register_forward_hook(lambda m, i, o: seen.append(o.shape))
    model(x, y, t, ref)
    h.remove()
    assert seen == [torch.Size([2, model.cfg.emb_dim])]
    # replacing the encoder output by the null embedding == unconditional
    h = model.noise_encoder.register_forward_hook(lambda m, i, o: model.null_embedding.expand_as(o))
    out = model(x, y, t, ref)
    h.remove()
    torch.testing.assert_close(out, model(x, y, t))


@pytest.mark.parametrize("bad", [0.0, 0.01, 1.5])
def test_t_outside_range_rejected(bad):
    model = ScoreModel(ScoreModelConfig.tiny())
    x, y, _ = _inputs()
    with pytest.raises(ValueError, match="'t'"):
        model(x, y, torch.tensor([0.5, bad]))


def test_clamp_t_never_below_t_eps():
    t = clamp_t(torch.linspace(1.0, 0.03, 30), 0.03)
    assert (t >= 0.03).all() and t[-1] < 0.0301


def test_loss_decreases_in_short_training():
    torch.manual_seed(0)
    model = ScoreModel(ScoreModelConfig.tiny(p_uncond=0.2))
    _, noise, ref = _inputs(B=4, T=8, seed=1)
    x0 = torch.zeros_like(noise)  # silence: the score is then a simple function of (x_t, y, t)
    y = 0.3 * noise

    def held_out_loss():  # same t, z and dropout draws before and after training
        with torch.random.fork_rng():
            torch.manual_seed(123)
            return sum(model.loss(x0, y, ref).item() for _ in range(4)) / 4

    before = held_out_loss()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(20):
        loss = model.loss(x0, y, ref)
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = held_out_loss()
    assert after < 0.9 * before, (before, after)
    assert 0.0 <= model.last_drop_fraction <= 1.0


def test_config_errors():
    with pytest.raises(ScoreModelError, match="cond_mode is 'concat'; valid: add, film, xattn"):
        ScoreModelConfig(cond_mode="concat")
    with pytest.raises(ScoreModelError, match=r"p_uncond is 1\.5"):
        ScoreModelConfig(p_uncond=1.5)
