"""A short real training on synthetic noisy speech lowers the held-out loss clearly."""

import pytest

import contracts
from models.diffusion_buffer import DiffusionBufferConfig
from models.diffusion_buffer.train import main, train


def test_short_training_lowers_loss():
    with contracts.mode("shapes"):
        res = train(DiffusionBufferConfig.tiny(), steps=25, batch=4, n_clips=8, seconds=0.25,
                    progress=False)  # fmt: skip
    assert res.eval_after < 0.5 * res.eval_before, (res.eval_before, res.eval_after)


def test_cli_bad_args(capsys):
    assert main(["--steps", "0"]) == 2
    assert "--steps=0" in capsys.readouterr().err


@pytest.mark.slow
def test_cli_runs(tmp_path):
    assert main(["--tiny", "--steps", "2", "--batch", "2", "--seconds", "0.25",
                 "--logdir", str(tmp_path / "tb")]) == 0  # fmt: skip
    assert any((tmp_path / "tb").iterdir())
