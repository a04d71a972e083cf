"""Checkpoints across the use_global_encoder toggle, and incompatible ones."""

import pytest
import torch

from models.audiosr import (
    AudioSR,
    AudioSRConfig,
    CheckpointError,
    load_checkpoint,
    load_state_into,
    save_checkpoint,
)


def test_old_checkpoint_loads_into_toggled_model_with_report(tmp_path):
    torch.manual_seed(0)
    old = AudioSR(AudioSRConfig.tiny())
    for p in old.unet.out.parameters():
        torch.nn.init.normal_(p, std=0.1)
    path = tmp_path / "old.pt"
    save_checkpoint(old, path)
    new, report = load_checkpoint(path, AudioSRConfig.tiny(use_global_encoder=True))
    assert report.missing and all("global" in k for k in report.missing)
    text = str(report)
    assert "global_encoder" in text and "left at their initialization" in text
    n_new = sum(p.numel() for n, p in new.named_parameters() if "global" in n)
    assert report.fresh_parameters == n_new
    # zero-initialized global path: the loaded model computes what the old one did
    _, lo = old.mels(torch.rand(1, 2048) - 0.5)
    g = torch.Generator
    torch.testing.assert_close(
        new.sample(lo, steps=2, generator=g().manual_seed(0)),
        old.sample(lo, steps=2, generator=g().manual_seed(0)),
    )


def test_same_config_round_trip(tmp_path):
    m = AudioSR(AudioSRConfig.tiny(use_global_encoder=True))
    save_checkpoint(m, tmp_path / "m.pt")
    _, report = load_checkpoint(tmp_path / "m.pt")
    assert report.missing == [] and "nothing missing" in str(report)


def test_incompatible_checkpoints_refused(tmp_path):
    wide = AudioSR(AudioSRConfig.tiny(base_channels=24, groups=4))
    with pytest.raises(CheckpointError, match=r"shape mismatches \(e\.g\. \['unet\."):
        load_state_into(AudioSR(AudioSRConfig.tiny()), wide.state_dict())
    ge = AudioSR(AudioSRConfig.tiny(use_global_encoder=True))
    with pytest.raises(CheckpointError, match="unexpected keys"):  # encoder -> no encoder
        load_state_into(AudioSR(AudioSRConfig.tiny()), ge.state_dict())
    torch.save({"weights": 1}, tmp_path / "x.pt")
    with pytest.raises(CheckpointError, match="is not a torchdx AudioSR checkpoint"):
        load_checkpoint(tmp_path / "x.pt")
    with pytest.raises(CheckpointError, match=r"missing\.pt' does not exist"):
        load_checkpoint(tmp_path / "missing.pt")
