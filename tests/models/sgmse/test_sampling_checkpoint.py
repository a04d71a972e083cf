import numpy as np
import pytest
import soundfile as sf
import torch

from models.sgmse import (
    EMA,
    CheckpointError,
    ScoreModel,
    ScoreModelConfig,
    ScoreModelError,
    enhance,
    load_checkpoint,
    load_pretrained,
    save_checkpoint,
)
from models.sgmse._checkpoint import CHECKPOINT_DIR


@pytest.fixture
def tiny():
    torch.manual_seed(0)
    model = ScoreModel(ScoreModelConfig.tiny())
    ema = EMA(model, 0.9)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.01)
    ema.update(model)
    return model.eval(), ema


def test_sampler_runs_and_is_seeded(tiny):
    model, _ = tiny
    wave = torch.randn(400)
    ref = torch.randn(300)
    a = enhance(model, wave, ref, N=3, guidance_scale=2.0, seed=1)
    b = enhance(model, wave, ref, N=3, guidance_scale=2.0, seed=1)
    c = enhance(model, wave, None, N=3, corrector_steps=0, seed=2)
    assert a.shape == c.shape == (400,) and torch.isfinite(a).all()
    torch.testing.assert_close(a, b)


def test_enhance_short_clip_rejected(tiny):
    model, _ = tiny
    with pytest.raises(
        ScoreModelError, match=r"'noisy_wave' has 40 samples, shorter than one STFT"
    ):
        enhance(model, torch.randn(40), N=2)
    with pytest.raises(ScoreModelError, match=r"'noise_ref' has 40 samples"):
        enhance(model, torch.randn(400), torch.randn(40), N=2)


def test_ema_swapped_in_and_reported(tiny, tmp_path):
    model, ema = tiny
    path = save_checkpoint(tmp_path / "m.pt", model, ema, step=1)
    loaded = load_checkpoint(path)
    assert loaded.weights_used == "ema" and not loaded.training
    for k, v in loaded.state_dict().items():
        torch.testing.assert_close(v, ema.shadow[k])
    raw = load_checkpoint(path, weights="raw")
    assert raw.weights_used == "raw"
    torch.testing.assert_close(raw.unet.conv_in.weight, model.unet.conv_in.weight)
    assert not torch.equal(raw.unet.conv_in.weight, loaded.unet.conv_in.weight)
    no_ema = load_checkpoint(save_checkpoint(tmp_path / "n.pt", model, None, step=1))
    assert no_ema.weights_used == "raw"


def test_missing_and_incompatible_checkpoints(tiny, tmp_path):
    model, ema = tiny
    with pytest.raises(CheckpointError, match=r"checkpoint '.*nope.pt' does not exist"):
        load_checkpoint(tmp_path / "nope.pt")
    torch.save({"state_dict": {}}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match=r"other.pt' is not a torchdx SGMSE checkpoint"):
        load_checkpoint(tmp_path / "other.pt")
    path = save_checkpoint(tmp_path / "m.pt", model, ema, step=1)
    ckpt = torch.load(path, weights_only=True)
    ckpt["config"]["channels"] = [8, 8]
    torch.save(ckpt, tmp_path / "bad.pt")
    with pytest.raises(CheckpointError, match=r"ema weights in '.*bad.pt' do not fit its config"):
        load_checkpoint(tmp_path / "bad.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match=r"junk\.pt' is not a readable torch checkpoint"):
        load_checkpoint(tmp_path / "junk.pt")
    with pytest.raises(CheckpointError, match="'which' is 'big'; valid: cond, uncond"):
        load_pretrained("big")


@pytest.mark.parametrize("which", ["cond", "uncond"])
def test_shipped_checkpoints(which):
    path = CHECKPOINT_DIR / f"sgmse_{which}.pt"
    assert path.exists(), f"shipped checkpoint {path} is missing"
    assert path.stat().st_size < 5e6
    model = load_pretrained(which)
    assert model.weights_used == "ema" and not model.training
    assert model.cfg.p_uncond == (0.2 if which == "cond" else 1.0)


def test_cli_help_and_wav_round_trip(tiny, tmp_path, capsys):
    from models.sgmse import _enhance_cli, _train

    with pytest.raises(SystemExit) as e:
        _train.main(["--help"])
    assert e.value.code == 0
    assert "--p-uncond" in capsys.readouterr().out
    model, ema = tiny
    ckpt = save_checkpoint(tmp_path / "m.pt", model, ema, step=1)
    sf.write(str(tmp_path / "in.wav"), 0.1 * np.random.default_rng(0).standard_normal(800), 16000)
    rc = _enhance_cli.main(
        [
            str(tmp_path / "in.wav"),
            str(tmp_path / "out.wav"),
            "--ckpt",
            str(ckpt),
            "--N",
            "2",
            "--threads",
            "1",
        ]
    )
    assert rc == 0
    out, sr = sf.read(str(tmp_path / "out.wav"))
    assert sr == 16000 and out.shape == (800,)
    sf.write(str(tmp_path / "st.wav"), np.zeros((800, 2)), 16000)
    rc = _enhance_cli.main([str(tmp_path / "st.wav"), str(tmp_path / "o.wav"), "--ckpt", str(ckpt)])
    assert rc == 2
    assert "st.wav' has 2 channels" in capsys.readouterr().err


def test_train_cli_tiny(tmp_path):
    from models.sgmse import _train

    args = _train.build_parser().parse_args(
        ["--steps", "2", "--pool", "2", "--batch-size", "2", "--crop-frames", "5",
         "--channels", "4,8", "--emb-dim", "8", "--threads", "1", "--no-progress",
         "--out", str(tmp_path / "t.pt"), "--tensorboard", str(tmp_path / "tb"),
         "--seconds", "0.1"]
    )  # fmt: skip
    args.argv = ["--steps", "2"]
    out = _train.train(args)
    model = load_checkpoint(out)
    assert model.weights_used == "ema" and model.checkpoint["step"] == 2
    assert any((tmp_path / "tb").iterdir())


def test_train_cli_init_from_resumes_raw_and_ema(tmp_path):
    from models.sgmse import _train

    tiny = ["--pool", "2", "--batch-size", "2", "--crop-frames", "5", "--channels", "4,8",
            "--emb-dim", "8", "--threads", "1", "--no-progress", "--seconds", "0.1"]  # fmt: skip
    first = _train.build_parser().parse_args(
        [*tiny, "--steps", "3", "--out", str(tmp_path / "a.pt")]
    )
    first.argv = ["--steps", "3"]
    a = _train.train(first)
    args = _train.build_parser().parse_args(
        [*tiny, "--steps", "4", "--save-every", "2", "--init-from", str(a),
         "--out", str(tmp_path / "b.pt")]
    )  # fmt: skip
    args.argv = ["--steps", "4"]
    seen = []
    real_save = _train.save_checkpoint

    def spy(path, model, ema, step, **extra):
        seen.append((step, ema.num_updates))
        return real_save(path, model, ema, step, **extra)

    _train.save_checkpoint = spy
    try:
        b = _train.train(args)
    finally:
        _train.save_checkpoint = real_save
    assert seen == [(5, 5), (7, 7)]  # intermediate save at 3 + 2, final at 3 + 4; EMA count goes on
    ckpt = torch.load(b, weights_only=False)
    assert ckpt["init_from"] == str(a)
    # zero further steps reproduce the initial checkpoint's raw and EMA weights exactly
    args0 = _train.build_parser().parse_args(
        [*tiny, "--steps", "0", "--init-from", str(a), "--out", str(tmp_path / "c.pt")]
    )  # fmt: skip
    args0.argv = []
    c = _train.train(args0)
    ca, cc = torch.load(a, weights_only=False), torch.load(c, weights_only=False)
    for part in ("raw", "ema"):
        assert all(torch.equal(ca[part][k], cc[part][k]) for k in ca[part]), part
    assert not all(torch.equal(ca["raw"][k], ckpt["raw"][k]) for k in ca["raw"])
    bad = _train.build_parser().parse_args(
        [*tiny, "--channels", "4,4", "--steps", "1", "--init-from", str(a),
         "--out", str(tmp_path / "d.pt")]
    )  # fmt: skip
    bad.argv = []
    with pytest.raises(ScoreModelError, match=r"--init-from .* has config"):
        _train.train(bad)


def test_sampler_recovers_clean_with_the_oracle_score():
    """With the exact score of the OUVE marginal the PC sampler must land on the clean signal."""
    from models.audio import si_sdr, stft
    from models.sgmse import enhance_batch

    cfg = ScoreModelConfig.tiny()
    model = ScoreModel(cfg)
    g = torch.Generator().manual_seed(0)
    clean = torch.randn(2, 400, generator=g)
    noisy = clean + 0.7 * torch.randn(2, 400, generator=g)
    scale = noisy.abs().amax(-1, keepdim=True)
    x0 = stft(clean / scale, cfg.stft)

    class Oracle(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.cfg, self.sde = cfg, model.sde
            self.dummy = torch.nn.Parameter(torch.zeros(1))

        def forward(self, x, y, t, noise_ref=None, drop_cond=None):
            mean, std = self.sde.marginal_prob(x0, y, t)
            return -(x - mean) / std[:, None, None] ** 2

    est = enhance_batch(Oracle(), noisy, None, N=30, seed=0)
    assert (si_sdr(est, clean) > 25).all(), si_sdr(est, clean)
    assert (si_sdr(noisy, clean) < 5).all()
