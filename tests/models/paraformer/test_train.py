"""Short training, the CLI and checkpoints."""

from __future__ import annotations

import subprocess
import sys

import torch

from models.paraformer import ParaformerConfig, fit, load_checkpoint, predict
from models.paraformer.train import main


def test_short_training_lowers_the_loss(tmp_path):
    cfg = ParaformerConfig.tiny(
        d_model=16, d_ff=32, n_heads=2, lr=1e-2, warmup_steps=5, batch_size=16, alphabet="abcd"
    )
    res = fit(
        cfg,
        steps=40,
        train_samples=160,
        val_samples=32,
        eval_every=40,
        progress=False,
        log_dir=tmp_path / "tb",
        checkpoint=tmp_path / "pf.pt",
    )
    losses = res["train_loss"]
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    assert last < 0.6 * first, (first, last)
    assert list((tmp_path / "tb").glob("events.out.tfevents.*"))
    model, tok = load_checkpoint(tmp_path / "pf.pt")
    for a, b in zip(model.parameters(), res["model"].parameters(), strict=True):
        assert torch.equal(a, b)
    assert isinstance(predict(model, tok, torch.zeros(10, cfg.n_feats), check="ignore"), str)


def test_cli_help_and_bad_arguments(capsys):
    r = subprocess.run(
        [sys.executable, "-m", "models.paraformer.train", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 0 and "TensorBoard" in r.stdout and "--steps" in r.stdout
    assert main(["--d-model", "30", "--steps", "1"]) == 2
    assert "n_heads" in capsys.readouterr().err
