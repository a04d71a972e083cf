"""A short real training of the AudioSR-style model lowers the held-out loss clearly."""

import contracts
from models.audiosr import AudioSRConfig
from models.audiosr.train import main, train


def test_short_training_lowers_loss():
    with contracts.mode("shapes"):
        res = train(AudioSRConfig.tiny(use_global_encoder=True), steps=25, batch=8, n_clips=16,
                    seconds=0.25, progress=False)  # fmt: skip
    assert res.eval_after < 0.75 * res.eval_before, (res.eval_before, res.eval_after)


def test_cli_bad_args(capsys):
    assert main(["--batch", "0"]) == 2
    assert "--batch=0" in capsys.readouterr().err
