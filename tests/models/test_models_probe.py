"""Adversarial probe of the four reference models, as a researcher would misuse them.

Each test pins one finding: a bad input that used to end in a raw torch traceback deep inside a
model (or, worse, in a silent NaN / a silently ignored argument) now raises the package's own
error naming the function, the argument and what was expected, with a hint; a good input that
used to fail now works. The wording the messages promise is pinned here.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from contracts import ContractError, TorchdxError
from models._guards import DeviceError, DtypeError

LOW = [torch.float16, torch.bfloat16]


def _main(module: str, argv: list[str]) -> tuple[int, str]:
    """Run ``module.main(argv)`` in-process; returns (exit status, stderr)."""
    import importlib

    main = importlib.import_module(module).main
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            rc = main(argv)
        except SystemExit as e:  # argparse
            rc = e.code
    return rc, err.getvalue()


# =============================================================================== Paraformer


@pytest.fixture
def pf():
    from models.paraformer import (
        Paraformer,
        ParaformerConfig,
        ToySeq2SeqDataset,
        collate_fn,
        create_padding_mask,
    )

    torch.manual_seed(0)
    cfg = ParaformerConfig.tiny()
    ds = ToySeq2SeqDataset(cfg, num_samples=2)
    f, t, fl, tl = collate_fn([ds[0], ds[1]])
    masks = create_padding_mask(fl, f.shape[1]), create_padding_mask(tl, t.shape[1])
    return Paraformer(cfg), (f, t, *masks)


@pytest.mark.parametrize("dtype", [*LOW, torch.float64])
def test_paraformer_features_of_another_dtype_name_the_argument_and_the_cast(pf, dtype):
    from models.paraformer import greedy_decode

    model, (f, t, fm, tm) = pf
    name = str(dtype).replace("torch.", "")
    with pytest.raises(DtypeError) as e:
        model(f.to(dtype), t, fm, tm)
    msg = str(e.value)
    assert msg.startswith(
        f"Paraformer.forward(): argument 'features' has dtype {name} but the model's "
        "parameters are float32"
    ), msg
    assert "features.to(torch.float32)" in msg and f"model.to(torch.{name})" in msg
    assert e.value.argument == "features" and e.value.actual == name
    assert isinstance(e.value, ContractError)  # ``except ContractError`` catches it too
    with pytest.raises(DtypeError, match=r"Paraformer\.encode\(\): argument 'features'"):
        greedy_decode(model, f.to(dtype), 5, fm)


def test_paraformer_components_name_their_own_argument(pf):
    from models.paraformer import FeedForward, MultiHeadAttention, TransformerBlock

    model, _ = pf
    h, ones = torch.randn(2, 5, 8).half(), torch.ones(2, 5, dtype=torch.bool)
    cases = [
        (lambda: model.encoder(torch.rand(2, 5, 6).half(), ones), "Encoder.forward", "features"),
        (lambda: model.predictor(h, ones), "Predictor.forward", "encoder_out"),
        (
            lambda: model.decoder(torch.randn(2, 5, 8), h, ones, ones),
            "Decoder.forward",
            "acoustic_embeds",
        ),
        (lambda: MultiHeadAttention(8, 2)(h, h, h), "MultiHeadAttention.forward", "query"),
        (lambda: FeedForward(8, 16)(h), "FeedForward.forward", "x"),
        (lambda: TransformerBlock(8, 2, 16, fsmn_kernel=3)(h), "TransformerBlock.forward", "x"),
    ]
    for call, where, arg in cases:
        with pytest.raises(DtypeError, match=rf"^{where}\(\): argument '{arg}' has dtype float16"):
            call()


def test_inputs_on_another_device_name_the_argument(pf):
    """The ``meta`` device stands in for a CUDA tensor fed to a CPU model (or the reverse)."""
    from models.audiosr import AudioSR, AudioSRConfig
    from models.paraformer import FeedForward

    model, (f, t, fm, tm) = pf
    with pytest.raises(
        DeviceError,
        match=r"(?s)^Paraformer\.forward\(\): argument 'features' is "
        r"on device meta but the model's parameters are on cpu.*features\.to\('cpu'\)",
    ):
        model(f.to("meta"), t, fm, tm)
    with pytest.raises(DeviceError, match=r"^FeedForward\.forward\(\): argument 'x' is on device"):
        FeedForward(8, 16)(torch.empty(2, 3, 8, device="meta"))
    unet = AudioSR(AudioSRConfig.tiny()).unet
    x = torch.empty(2, 4, 8, 8, device="meta")
    with pytest.raises(DeviceError, match=r"^UNet\.forward\(\): argument 'x' is on device meta"):
        unet(x, torch.tensor([1, 2]), x)


def test_paraformer_int32_tokens_train_like_int64(pf):
    """The contract accepts any signed integer ids; cross_entropy only took int64."""
    model, (f, t, fm, tm) = pf
    model.eval()
    a = model(f, t, fm, tm)["loss"]
    b = model(f, t.int(), fm, tm)["loss"]
    assert torch.allclose(a, b)


def test_encode_layer_index_out_of_range_names_the_blocks(pf):
    from models.paraformer import ParaformerError

    model, _ = pf
    x, m = torch.randn(1, 4, 8), torch.ones(1, 4, 4, dtype=torch.bool)
    with pytest.raises(
        ParaformerError,
        match=r"encode_layer\(\): argument 'index' = 3 is out of "
        r"range: the encoder has 1 block\(s\).*expected 0 <= index < 1",
    ):
        model.encoder.encode_layer(x, m, 3)


def test_collate_rejects_items_that_cannot_be_batched():
    from models.paraformer import BatchError, ParaformerConfig, ToySeq2SeqDataset, collate_fn

    ds = ToySeq2SeqDataset(ParaformerConfig.tiny(), num_samples=2)
    (f0, t0, fl0, tl0), item1 = ds[0], ds[1]
    with pytest.raises(
        BatchError,
        match=r"item 1 has F=3 feature bins but item 0 has F=6.*"
        r"\[F, T\] instead of \[T, F\]",
    ):
        collate_fn([ds[0], (torch.zeros(5, 3), item1[1], 5, item1[3])])
    with pytest.raises(BatchError, match=rf"item 0 says feat_len={fl0 + 3}.*holds {fl0} frames"):
        collate_fn([(f0, t0, fl0 + 3, tl0)])
    with pytest.raises(BatchError, match=r"item 0 has features \(1, \d+, 6\).*expected features"):
        collate_fn([(f0[None], t0, fl0, tl0)])


def test_fit_refuses_a_zero_eval_period_before_training():
    from models.paraformer import ConfigError, ParaformerConfig, fit

    with pytest.raises(ConfigError, match=r"fit: argument 'eval_every' = 0 is invalid"):
        fit(
            ParaformerConfig.tiny(),
            steps=1,
            train_samples=4,
            val_samples=2,
            eval_every=0,
            progress=False,
        )


@pytest.mark.parametrize(
    ("override", "pattern"),
    [
        ({"d_model": "64"}, r"d_model='64' is invalid: expected an int \(got str\)"),
        ({"d_model": 64.0}, r"d_model=64\.0 is invalid: expected an int \(got float\)"),
        ({"d_model": True}, r"d_model=True is invalid: expected an int \(got bool\)"),
        ({"alphabet": ["a", "b"]}, r"alphabet=\['a', 'b'\] is invalid: expected a str"),
        ({"grad_clip": -1.0}, r"grad_clip=-1\.0 is invalid: must be >= 0 .*flip the gradients"),
        ({"weight_decay": -0.1}, r"weight_decay=-0\.1 is invalid"),
        ({"warmup_steps": -5}, r"warmup_steps=-5 is invalid"),
        ({"lr": math.nan}, r"lr=nan is invalid: the learning rate must be > 0"),
        ({"threshold": math.nan}, r"threshold=nan is invalid: the integrate-and-fire"),
    ],
)
def test_paraformer_config_checks_types_and_ranges(override, pattern):
    from models.paraformer import ConfigError, ParaformerConfig

    with pytest.raises(ConfigError, match=r"^ParaformerConfig\." + pattern):
        ParaformerConfig.tiny(**override)


def test_paraformer_checkpoint_whose_weights_do_not_fit_names_the_file(pf, tmp_path):
    from models.paraformer import CheckpointError, load_checkpoint, save_checkpoint

    model, _ = pf
    path = save_checkpoint(model, tmp_path / "pf.pt")
    ckpt = torch.load(path, weights_only=True)
    ckpt["config"]["d_model"] = 16  # edited by hand: no longer the config of these weights
    torch.save(ckpt, tmp_path / "edited.pt")
    with pytest.raises(
        CheckpointError,
        match=r"weights in '.*edited\.pt' do not fit its config"
        r" \(size mismatch for ",
    ):
        load_checkpoint(tmp_path / "edited.pt")
    ckpt["config"]["d_model"] = "8"
    torch.save(ckpt, tmp_path / "typed.pt")
    with pytest.raises(
        CheckpointError,
        match=r"'.*typed\.pt' has a bad config: ParaformerConfig"
        r"\.d_model='8' is invalid",
    ):
        load_checkpoint(tmp_path / "typed.pt")


def test_paraformer_cli_refuses_bad_numbers_in_one_line():
    for argv, flag in (
        (["--eval-every", "0"], "--eval-every=0"),
        (["--threads", "0"], "--threads=0"),
    ):
        rc, err = _main("models.paraformer.train", [*argv, "--steps", "1", "--out", "/nonexistent"])
        assert rc == 2 and err.count("\n") == 1 and flag in err, err


# ============================================================================== checkpoints


def _models():
    from models.audiosr import AudioSR, AudioSRConfig
    from models.audiosr import save_checkpoint as save_a
    from models.diffusion_buffer import DiffusionBuffer, DiffusionBufferConfig
    from models.diffusion_buffer import save_checkpoint as save_d
    from models.paraformer import Paraformer, ParaformerConfig
    from models.paraformer import save_checkpoint as save_p
    from models.sgmse import ScoreModel, ScoreModelConfig
    from models.sgmse import save_checkpoint as save_s

    return [
        (save_p, Paraformer(ParaformerConfig.tiny()), "save_checkpoint(model, path)"),
        (save_d, DiffusionBuffer(DiffusionBufferConfig.tiny()), "save_checkpoint(model, path"),
        (save_a, AudioSR(AudioSRConfig.tiny()), "save_checkpoint(model, path"),
    ], (save_s, ScoreModel(ScoreModelConfig.tiny()), "save_checkpoint(path, model, ema, step)")


def test_save_checkpoint_with_swapped_arguments_says_so(tmp_path):
    model_first, sgmse = _models()
    for save, model, signature in model_first:
        with pytest.raises(
            TorchdxError,
            match=r"argument 'model' is a PosixPath.*the arguments "
            r"look swapped; the signature is " + re.escape(signature),
        ):
            save(tmp_path / "x.pt", model)
    save, model, signature = sgmse
    with pytest.raises(
        TorchdxError, match=r"argument 'model' is a PosixPath.*" + re.escape(signature)
    ):
        save(model, tmp_path / "x.pt", None, 1)  # the order of the other three models
    assert not (tmp_path / "x.pt").exists()


def test_reserved_checkpoint_keys_are_refused_even_under_python_O(tmp_path):
    code = (
        "from models._checkpoint import write_checkpoint\n"
        f"write_checkpoint({str(tmp_path / 'x.pt')!r}, kind='k', config={{}}, weights={{}}, "
        "format='x')\n"
    )
    r = subprocess.run(
        [sys.executable, "-O", "-c", code],
        capture_output=True,
        text=True,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert r.returncode != 0 and "reuses reserved keys ['format']" in r.stderr, r.stderr[-800:]


def test_every_config_round_trips_through_json():
    from models.audiosr import AudioSRConfig
    from models.diffusion_buffer import DiffusionBufferConfig
    from models.paraformer import ParaformerConfig
    from models.sgmse import ScoreModelConfig

    for cfg in (
        ParaformerConfig.tiny(),
        ScoreModelConfig.tiny(cond_mode="film"),
        DiffusionBufferConfig.tiny(),
        AudioSRConfig.tiny(use_global_encoder=True),
    ):
        back = type(cfg).from_dict(json.loads(json.dumps(cfg.to_dict())))
        assert back == cfg, type(cfg).__name__


# =================================================================================== SGMSE+


@pytest.fixture
def score_model():
    from models.sgmse import ScoreModel, ScoreModelConfig

    torch.manual_seed(0)
    return ScoreModel(ScoreModelConfig.tiny()).eval()


@pytest.mark.parametrize(
    ("kwargs", "pattern"),
    [
        ({"N": 0}, r"argument 'N' = 0; expected an int >= 1"),  # was ZeroDivisionError
        ({"N": -1}, r"argument 'N' = -1; expected an int >= 1"),
        ({"corrector_steps": -1}, r"argument 'corrector_steps' = -1; expected an int >= 0"),
        ({"snr": -1.0}, r"argument 'snr' = -1\.0; expected >= 0"),
    ],
)
def test_enhance_batch_validates_the_sampler_arguments(score_model, kwargs, pattern):
    from models.sgmse import ScoreModelError, enhance_batch

    with pytest.raises(ScoreModelError, match="^enhance_batch: " + pattern):
        enhance_batch(score_model, torch.randn(1, 400) * 0.1, **kwargs)


def test_enhance_batch_refuses_a_noise_ref_that_would_broadcast(score_model):
    """[1, L] references used to broadcast silently over a batch of 2 (each rescaled by another
    clip's peak)."""
    from models.sgmse import ScoreModelError, enhance_batch

    noisy = torch.randn(2, 400) * 0.1
    for ref in (torch.randn(1, 200), torch.randn(200)):
        with pytest.raises(
            ScoreModelError,
            match=r"argument 'noise_ref' is shape .*expected "
            r"float clips \[B=2, L_ref\].*noise_ref\.expand\(B, -1\)",
        ):
            enhance_batch(score_model, noisy, ref, N=1)


@pytest.mark.parametrize("dtype", [*LOW, torch.float64])
def test_enhance_accepts_audio_of_any_float_dtype(score_model, dtype):
    from models.sgmse import enhance

    g = torch.Generator().manual_seed(1)
    wave, ref = torch.randn(400, generator=g) * 0.1, torch.randn(300, generator=g) * 0.1
    out = enhance(score_model, wave.to(dtype), ref.to(dtype), N=2)
    assert out.dtype == dtype and out.shape == (400,) and torch.isfinite(out).all()
    if dtype == torch.float64:  # same sampler in float32: same result up to float32 rounding
        ref32 = enhance(score_model, wave, ref, N=2)
        assert torch.allclose(out.float(), ref32, atol=1e-5)


def test_score_model_complex128_spectra_name_the_argument(score_model):
    from models.audio import stft

    cfg = score_model.cfg
    x = stft(torch.randn(2, 320) * 0.1, cfg.stft).to(torch.complex128)
    t = torch.full((2,), 0.5)
    with pytest.raises(
        DtypeError,
        match=r"^ScoreModel\.forward\(\): argument 'x_t' has dtype "
        r"complex128 but the model's parameters are float32 \(expected "
        r"complex64\)",
    ):
        score_model(x, x, t)
    with pytest.raises(DtypeError, match=r"^ScoreModel\.loss\(\): argument 'x0'"):
        score_model.loss(x, x)


def test_noise_encoder_names_a_too_short_reference(score_model):
    from models.sgmse import ScoreModelError

    with pytest.raises(
        ScoreModelError,
        match=r"^NoiseEncoder\.forward\(\): argument 'noise_ref' "
        r"has 30 samples; .*n_fft=62",
    ):
        score_model.noise_encoder(torch.randn(2, 30))


@pytest.mark.parametrize(
    ("override", "pattern"),
    [
        ({"sigma_min": 0.0}, r"sigma_min=0\.0 is invalid: expected 0 < sigma_min < sigma_max"),
        ({"sigma_min": 0.6}, r"sigma_min=0\.6 is invalid"),  # used to give NaN sigma(t)
        ({"sigma_max": -1.0}, r"sigma_max=-1\.0 is invalid"),
        ({"xattn_tokens": 0}, r"xattn_tokens=0 is invalid: expected >= 1"),  # ZeroDivisionError
        ({"fourier_dim": 7}, r"fourier_dim=7 is invalid: expected an even number"),
        ({"hop": 0}, r"hop=0 is invalid"),
        ({"hop": 62}, r"hop=62 is invalid: expected < n_fft=62"),
        ({"channels": "4,8"}, r"channels='4,8' is invalid: expected a tuple of ints"),
        ({"ema_decay": 1.5}, r"ema_decay=1\.5 is invalid"),
    ],
)
def test_score_model_config_checks_types_and_ranges(override, pattern):
    from models.sgmse import ScoreModelConfig, ScoreModelError

    with pytest.raises(ScoreModelError, match=r"^ScoreModelConfig\." + pattern):
        ScoreModelConfig.tiny(**override)


def test_ouve_sde_refuses_parameters_that_give_nan():
    from models.sgmse import OUVESDE, ScoreModelError

    for kw in ({"sigma_min": 0.0}, {"sigma_min": 0.6}, {"N": 0}, {"theta": -1.0}):
        with pytest.raises(ScoreModelError, match=r"^OUVESDE: "):
            OUVESDE(**kw)


def test_ema_update_with_another_model_names_the_mismatch(score_model):
    from models.sgmse import EMA, ScoreModel, ScoreModelConfig, ScoreModelError

    ema = EMA(score_model)
    other = ScoreModel(ScoreModelConfig.tiny(channels=(4, 8, 12)))
    with pytest.raises(
        ScoreModelError,
        match=r"^EMA\.update: argument 'model' is not the model "
        r"this EMA was made from \(keys only in one of them: \['unet\.down\.2",
    ):
        ema.update(other)


def test_sgmse_clis_refuse_bad_arguments_in_one_line(tmp_path):
    import soundfile as sf

    rc, err = _main("models.sgmse.train", ["--pool", "0", "--out", str(tmp_path / "m.pt")])
    assert rc == 2 and err == "error: train: --pool=0 must be >= 1\n", err
    rc, err = _main(
        "models.sgmse.train",
        [
            "--pool",
            "2",
            "--seconds",
            "0.01",
            "--steps",
            "1",
            "--out",
            str(tmp_path / "m.pt"),
            "--no-progress",
        ],
    )
    assert rc == 2 and err.startswith("error: make_mixtures: argument 'seconds'"), err
    (tmp_path / "bad.wav").write_text("not audio")
    rc, err = _main("models.sgmse.enhance", [str(tmp_path / "bad.wav"), str(tmp_path / "o.wav")])
    assert rc == 2 and "is not a readable audio file" in err and err.count("\n") == 1, err
    sf.write(tmp_path / "n.wav", np.zeros(4000), 16000)
    rc, err = _main(
        "models.sgmse.enhance", [str(tmp_path / "n.wav"), str(tmp_path / "o.wav"), "--N", "0"]
    )
    assert rc == 2 and err == "error: enhance(): argument 'N': expected a value in [1, ∞), got 0\n"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_enhance_returns_on_the_input_device_with_a_cuda_model(score_model):
    from models.sgmse import enhance_batch

    model = score_model.cuda()
    for noisy in (torch.randn(2, 400) * 0.1, torch.randn(2, 400, device="cuda") * 0.1):
        out = enhance_batch(model, noisy, noisy[:, :300], N=2)
        assert out.device == noisy.device and torch.isfinite(out).all()


# ========================================================================= diffusion buffer


@pytest.fixture
def db():
    from models.diffusion_buffer import DiffusionBuffer, DiffusionBufferConfig

    torch.manual_seed(0)
    return DiffusionBuffer(DiffusionBufferConfig.tiny())


def test_buffer_size_error_explains_short_and_transposed_clips(db):
    from models.diffusion_buffer import BufferSizeError, DiffusionBuffer, DiffusionBufferConfig

    short = torch.randn(2, 1, 60)
    with pytest.raises(
        BufferSizeError,
        match=r"gives 0 STFT frames.*60 < n_fft = 62: not one full"
        r" STFT frame\. Hint: use clips of >= 96 samples",
    ):
        db(short, short)
    one = DiffusionBuffer(DiffusionBufferConfig.tiny(buffer_size=1))
    with pytest.raises(BufferSizeError, match=r"use clips of >= 62 samples"):  # was ">= 0"
        one(short[..., :40], short[..., :40])
    wrong = torch.randn(2, 2048, 1)  # [B, L, C]
    with pytest.raises(
        BufferSizeError,
        match=r"The clip is \[2, 2048, 1\]: is it \[B, L, C\]\? "
        r"pass mix\.transpose\(1, 2\)",
    ):
        db(wrong, wrong)


@pytest.mark.parametrize("dtype", LOW)
def test_low_precision_audio_trains_the_diffusion_buffer(db, dtype):
    mix = torch.randn(2, 1, 2048) * 0.1
    loss = db(mix.to(dtype), (mix * 0.5).to(dtype))
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    loss.backward()


def test_float64_audio_names_the_argument_of_the_diffusion_buffer(db):
    mix = torch.randn(2, 1, 2048, dtype=torch.float64) * 0.1
    with pytest.raises(
        DtypeError,
        match=r"(?s)^DiffusionBuffer\.forward\(\): argument 'mix' has dtype"
        r" float64.*mix\.to\(torch\.float32\)",
    ):
        db(mix, mix)


def test_streamer_refuses_real_frames_and_empty_batches(db):
    from models.diffusion_buffer import DiffusionBufferError

    st = db.stream(2)
    with pytest.raises(
        DiffusionBufferError,
        match=r"^Streamer\.push: argument 'y_frame' is "
        r"\(2, 32\) torch\.float32, expected complex \(2, 32\)",
    ):
        st.push(torch.randn(2, 32))  # used to be taken as a real spectrum
    with pytest.raises(DiffusionBufferError, match=r"stream: argument 'batch' = 0; expected"):
        db.stream(0)


@pytest.mark.parametrize(
    ("override", "pattern"),
    [
        ({"emb_dim": 15}, r"emb_dim=15 is invalid: expected an even number"),
        ({"k": 0.0}, r"k=0\.0 is invalid: expected > 0"),  # math domain error
        ({"theta": 0.0}, r"theta=0\.0 is invalid"),  # a NaN loss
        ({"hop": 0}, r"hop=0 is invalid"),  # ZeroDivisionError
        ({"base_channels": 0}, r"base_channels=0 is invalid"),
        ({"channel_mults": (1, 0)}, r"channel_mults=\(1, 0\) is invalid"),
        ({"buffer_size": "4"}, r"buffer_size='4' is invalid: expected an int \(got str\)"),
        ({"sample_rate": 0}, r"sample_rate=0 is invalid"),
    ],
)
def test_diffusion_buffer_config_checks_types_and_ranges(override, pattern):
    from models.diffusion_buffer import DiffusionBufferConfig, DiffusionBufferError

    with pytest.raises(DiffusionBufferError, match=r"^DiffusionBufferConfig\." + pattern):
        DiffusionBufferConfig.tiny(**override)


def test_diffusion_buffer_checkpoint_with_a_bad_config_names_the_file(db, tmp_path):
    from models.diffusion_buffer import CheckpointError, load_checkpoint, save_checkpoint

    ckpt = torch.load(save_checkpoint(db, tmp_path / "db.pt"), weights_only=True)
    ckpt["config"]["t_eps"] = 0.0  # the time contract's ContractError was not wrapped
    torch.save(ckpt, tmp_path / "teps.pt")
    with pytest.raises(CheckpointError, match=r"'.*teps\.pt' has a bad config: .*'t_eps' = 0\.0"):
        load_checkpoint(tmp_path / "teps.pt")
    ckpt["config"]["t_eps"], ckpt["config"]["emb_dim"] = 0.03, "16"  # was a raw TypeError
    torch.save(ckpt, tmp_path / "typed.pt")
    with pytest.raises(CheckpointError, match=r"'.*typed\.pt' has a bad config: .*emb_dim='16'"):
        load_checkpoint(tmp_path / "typed.pt")


@pytest.mark.parametrize(
    ("module", "argv", "start"),
    [
        (
            "models.diffusion_buffer.train",
            ["--buffer-size", "0"],
            "error: DiffusionBufferConfig: buffer_size=0 must be >= 1",
        ),
        (
            "models.diffusion_buffer.train",
            ["--buffer-size", "64", "--seconds", "0.04"],
            "error: DiffusionBuffer: argument 'mix' gives 21 STFT frames but buffer_size=64",
        ),
        (
            "models.audiosr.train",
            ["--seconds", "0.005"],
            "error: make_mixtures: argument 'seconds' is 0.005",
        ),
    ],
)
def test_short_training_clis_refuse_bad_arguments_in_one_line(module, argv, start, tmp_path):
    rc, err = _main(module, ["--tiny", "--steps", "1", "--logdir", str(tmp_path), *argv])
    assert rc == 2 and err.startswith(start) and err.count("\n") == 1, err


def test_run_training_refuses_zero_clips():
    from models._training import TrainingError, run_training
    from models.diffusion_buffer import DiffusionBufferConfig
    from models.diffusion_buffer.train import SPEC

    with pytest.raises(TrainingError, match=r"argument 'n_clips' = 0 is invalid"):
        run_training(SPEC, DiffusionBufferConfig.tiny(), steps=1, n_clips=0, progress=False)


# =================================================================================== AudioSR


@pytest.fixture
def asr():
    from models.audiosr import AudioSR, AudioSRConfig

    torch.manual_seed(0)
    return AudioSR(AudioSRConfig.tiny(use_global_encoder=True)).eval()


def test_sample_steps_zero_is_refused_not_replaced_by_the_default(asr):
    from models.audiosr import AudioSRError

    lo = asr.mels(torch.rand(1, 1024) - 0.5)[1]
    with pytest.raises(AudioSRError, match=r"AudioSR\.sample: steps=0 outside \[1, n_timesteps"):
        asr.sample(lo, steps=0)


def test_sample_refuses_a_global_context_nothing_reads():
    from models.audiosr import AudioSR, AudioSRConfig, AudioSRError

    model = AudioSR(AudioSRConfig.tiny()).eval()
    lo = model.mels(torch.rand(1, 1024) - 0.5)[1]
    with pytest.raises(
        AudioSRError,
        match=r"argument 'global_ctx' was given but this model has no"
        r" global encoder",
    ):
        model.sample(lo, steps=1, global_ctx=torch.randn(1, 16))


def test_unet_sizes_that_are_not_a_multiple_name_the_axis(asr):
    from models.audiosr import AudioSRError

    x, t = torch.randn(2, 4, 8, 7), torch.tensor([1, 2])
    with pytest.raises(
        AudioSRError,
        match=r"(?s)^UNet\.forward\(\): argument 'x', axis 3: W=7 is not a"
        r" multiple of 2\*\*\(levels-1\) = 2.*hint: pad x and cond",
    ):
        asr.unet(x, t, x)


def test_too_short_waveform_names_the_mel_front_end(asr):
    from models.audiosr import AudioSRError

    with pytest.raises(
        AudioSRError,
        match=r"^LogMel\.forward\(\): argument 'wave' has 100 "
        r"samples; the centered STFT \(n_fft=256\).*more than 128 samples",
    ):
        asr(torch.rand(2, 100) - 0.5)


@pytest.mark.parametrize("dtype", LOW)
def test_low_precision_waveforms_train_audiosr(asr, dtype):
    from models.audiosr import lowpass

    wave = torch.rand(2, 1024) - 0.5
    loss = asr.train()(wave.to(dtype))
    assert torch.isfinite(loss)
    lo = lowpass(wave.to(dtype), 4000.0, 16000)
    assert lo.dtype == dtype and torch.allclose(lo.float(), lowpass(wave, 4000.0, 16000), atol=0.02)


def test_sample_with_a_half_mel_names_the_argument(asr):
    lo = asr.mels(torch.rand(1, 1024) - 0.5)[1]
    with pytest.raises(
        DtypeError,
        match=r"^AudioSR\.sample\(\): argument 'lo_mel' has dtype "
        r"float16",
    ):
        asr.sample(lo.half(), steps=1)


@pytest.mark.parametrize(
    ("override", "pattern"),
    [
        ({"groups": 5}, r"groups=5 is invalid: expected a divisor of every level's width"),
        ({"num_heads": 3, "context_dim": 33}, r"num_heads=3 is invalid: expected a divisor of"),
        ({"latent_factor": 0}, r"latent_factor=0 is invalid"),  # ZeroDivisionError
        ({"cond_drop_prob": 2.0}, r"cond_drop_prob=2\.0 is invalid"),  # silently accepted
        ({"ddim_steps": 0}, r"ddim_steps=0 is invalid: expected in \[1, n_timesteps=100\]"),
        ({"log_floor": 0.0}, r"log_floor=0\.0 is invalid"),  # math domain error
        ({"norm_std": 0.0}, r"norm_std=0\.0 is invalid"),  # an all-Inf mel
        ({"base_channels": 15}, r"base_channels=15 is invalid: expected an even number"),
        ({"encoder_layers": 0}, r"encoder_layers=0 is invalid"),
        ({"n_mels": "16"}, r"n_mels='16' is invalid: expected an int"),
    ],
)
def test_audiosr_config_checks_types_and_ranges(override, pattern):
    from models.audiosr import AudioSRConfig, AudioSRError

    with pytest.raises(AudioSRError, match=r"^AudioSRConfig\." + pattern):
        AudioSRConfig.tiny(**override)


def test_audiosr_checkpoint_with_a_bad_config_names_the_file(asr, tmp_path):
    from models.audiosr import CheckpointError, load_checkpoint, save_checkpoint

    ckpt = torch.load(save_checkpoint(asr, tmp_path / "a.pt"), weights_only=True)
    ckpt["config"]["groups"] = "x"
    torch.save(ckpt, tmp_path / "typed.pt")
    with pytest.raises(
        CheckpointError,
        match=r"'.*typed\.pt' has a bad config: AudioSRConfig"
        r"\.groups='x' is invalid",
    ):
        load_checkpoint(tmp_path / "typed.pt")


# ===================================================================================== audio


@pytest.mark.parametrize("dtype", LOW)
def test_stft_of_low_precision_audio_is_computed_in_float32(dtype):
    from models.audio import stft

    wave = (torch.randn(2, 1000) * 0.1).to(dtype)
    spec = stft(wave)
    assert spec.dtype == torch.complex64
    assert torch.equal(spec, stft(wave.float()))


@pytest.mark.parametrize(
    ("override", "pattern"),
    [
        ({"n_fft": 0}, r"n_fft=0 is invalid"),
        ({"hop": 0}, r"hop=0 is invalid"),
        ({"n_fft": 64, "hop": 128}, r"hop=128 is invalid: expected < n_fft=64"),
        ({"alpha": 0.0}, r"alpha=0\.0 is invalid"),  # istft divided by zero
        ({"beta": 0.0}, r"beta=0\.0 is invalid"),  # istft gave NaN
        ({"n_fft": "510"}, r"n_fft='510' is invalid: expected an int"),
    ],
)
def test_stft_config_checks_types_and_ranges(override, pattern):
    from models.audio import AudioError, STFTConfig

    with pytest.raises(AudioError, match=r"^STFTConfig\." + pattern):
        STFTConfig(**override)


def test_istft_of_one_frame_asks_for_the_length():
    from models.audio import AudioError, istft, stft

    spec = stft(torch.randn(1, 1000))[..., :1]
    with pytest.raises(
        AudioError,
        match=r"^istft: argument 'spec' has 1 frame\(s\), so the "
        r"default output length .* = 0 samples is empty; pass length=",
    ):
        istft(spec)
    assert istft(spec, length=100).shape == (1, 100)


def test_si_sdr_of_half_signals_is_finite():
    from models.audio import si_sdr

    x = torch.randn(2, 1000)
    half = si_sdr(x.half(), x.half())  # was +inf: float16 energies overflow
    assert torch.isfinite(half).all() and half.dtype == torch.float32
    noisy = x + 0.1 * torch.randn_like(x)
    assert torch.allclose(si_sdr(noisy.half(), x.half()), si_sdr(noisy, x), atol=0.1)


def test_metrics_refuse_signals_of_different_lengths():
    from models.audio import AudioError, estoi_score, pesq_score

    est, ref = np.random.default_rng(0).standard_normal((2, 16000)) * 0.1
    for fn in (pesq_score, estoi_score):  # pesq used to score them silently
        with pytest.raises(
            AudioError,
            match=rf"^{fn.__name__}: arguments 'est' and 'ref' have "
            r"16000 and 15000 samples",
        ):
            fn(est, ref[:15000], 16000)
    with pytest.raises(AudioError, match=r"estoi_score: argument 'sr' is 0"):
        estoi_score(est, ref, 0)


def test_unreadable_audio_files_raise_audio_errors(tmp_path):
    from models.audio import AudioError, WavFolderDataset, read_wav

    (tmp_path / "clean").mkdir()
    (tmp_path / "noisy").mkdir()
    for sub in ("clean", "noisy"):
        (tmp_path / sub / "a.wav").write_text("not audio")
    with pytest.raises(AudioError, match=r"read_wav: '.*a\.wav' is not a readable audio file"):
        read_wav(tmp_path / "clean" / "a.wav")
    with pytest.raises(AudioError, match=r"WavFolderDataset: .* is not a readable audio file"):
        WavFolderDataset(tmp_path)


def test_synthesis_refuses_arguments_it_cannot_honour():
    from models.audio import AudioError, make_mixtures, synth_speech

    with pytest.raises(AudioError, match=r"argument 'snr_db' is \(nan, 1\.0\)"):
        make_mixtures("train", 1, 0, seconds=0.1, snr_db=(math.nan, 1.0))
    with pytest.raises(AudioError, match=r"argument 'sample_rate' is 0"):
        make_mixtures("train", 1, 0, seconds=0.1, sample_rate=0)
    rng = np.random.default_rng(0)
    with pytest.raises(AudioError, match=r"argument 'speaker' is 100; expected a speaker in"):
        synth_speech(rng, 1000, 100)
    with pytest.raises(AudioError, match=r"argument 'n' is 0"):
        synth_speech(rng, 0, 1)
