"""Each reference training script logs, through TrainingMonitor, what its seed asks for."""

from __future__ import annotations

import pytest

import contracts
from diagnostics import TrainingMonitor
from models.audiosr import AudioSRConfig
from models.audiosr.train import train as train_audiosr
from models.diffusion_buffer import DiffusionBufferConfig
from models.diffusion_buffer.train import train as train_db
from models.paraformer import ParaformerConfig, fit


def _scalars(logdir) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(logdir), size_guidance={"scalars": 0})
    acc.Reload()
    return {t: [(e.step, e.value) for e in acc.Scalars(t)] for t in acc.Tags()["scalars"]}


def _monitor(logdir):
    return lambda model, opt: TrainingMonitor(model, logdir, optimizer=opt, hist_every=0)


def test_diffusion_buffer_logs_sigma_and_score_ranges(tmp_path):
    cfg = DiffusionBufferConfig.tiny()
    with contracts.mode("shapes"):
        train_db(cfg, steps=3, batch=2, n_clips=4, seconds=0.25, progress=False,
                 monitor=_monitor(tmp_path))  # fmt: skip
    s = _scalars(tmp_path)
    assert [st for st, _ in s["sde/sigma_max"]] == [0, 1, 2]
    lo, hi = s["sde/sigma_min"][0][1], s["sde/sigma_max"][0][1]
    assert 0 < lo < hi  # σ(t_eps) < σ(t_max) for the buffer's time ladder
    assert 0 <= s["score/abs_min"][0][1] <= s["score/abs_max"][0][1]
    assert "grad_norm/backbone" in s and [st for st, _ in s["val/loss"]] == [0, 3]


def test_audiosr_logs_the_global_encoder_gradient_share(tmp_path):
    with contracts.mode("shapes"):
        train_audiosr(AudioSRConfig.tiny(use_global_encoder=True), steps=2, batch=2, n_clips=4,
                      seconds=0.25, progress=False, monitor=_monitor(tmp_path))  # fmt: skip
    share = [v for _, v in _scalars(tmp_path)["cond/encoder_grad_share"]]
    assert len(share) == 2 and all(0 <= v < 1 for v in share)
    # the global attention's output projection starts at zero (checkpoint compatibility), so
    # on the first step no gradient reaches the encoder at all: exactly what seeds 001/002 ask
    # a user to be able to see
    assert share[0] == 0.0


def test_paraformer_logs_alpha_sums_against_target_lengths(tmp_path):
    cfg = ParaformerConfig.tiny(d_model=16, d_ff=32, n_heads=2, alphabet="abcd", batch_size=8)
    fit(cfg, steps=4, train_samples=16, val_samples=8, eval_every=2, progress=False,
        monitor=_monitor(tmp_path))  # fmt: skip
    s = _scalars(tmp_path)
    assert [st for st, _ in s["cif/alpha_sum_mean"]] == [1, 2, 3, 4]
    assert all(v > 0 for _, v in s["cif/target_len_mean"])
    assert [st for st, _ in s["val/token_accuracy"]] == [2, 4]


@pytest.mark.slow
def test_sgmse_logs_drop_rate_and_cond_uncond_loss(tmp_path):
    from models.sgmse import _train

    args = _train.build_parser().parse_args(
        ["--steps", "4", "--pool", "4", "--batch-size", "4", "--crop-frames", "5",
         "--channels", "4,8", "--emb-dim", "8", "--threads", "1", "--no-progress",
         "--out", str(tmp_path / "t.pt"), "--tensorboard", str(tmp_path / "tb"),
         "--seconds", "0.1", "--log-every", "2", "--p-uncond", "0.5"]
    )  # fmt: skip
    args.argv = []
    _train.train(args)
    s = _scalars(tmp_path / "tb")
    assert [st for st, _ in s["cfg/drop_fraction"]] == [0, 2]
    assert {v for _, v in s["cfg/p_uncond"]} == {0.5}
    assert "cfg/loss_cond" in s and "cfg/loss_uncond" in s and "grad_norm/noise_encoder" in s
