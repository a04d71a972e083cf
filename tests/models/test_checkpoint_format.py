"""The shared checkpoint format: metadata on every model, old files still load, errors named."""

from __future__ import annotations

import pytest
import torch

from contracts import TorchdxError
from models import audiosr, diffusion_buffer, paraformer
from models._checkpoint import read_checkpoint, write_checkpoint
from models.sgmse import load_pretrained


def _same(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


def test_diffusion_buffer_checkpoint_has_metadata_and_round_trips(tmp_path):
    model = diffusion_buffer.DiffusionBuffer(diffusion_buffer.DiffusionBufferConfig.tiny())
    path = diffusion_buffer.save_checkpoint(model, tmp_path / "db.pt", step=7, metrics={"x": 1.0})
    raw = torch.load(path, weights_only=True)
    assert raw["format"] == "torchdx.diffusion_buffer/1"
    assert raw["step"] == 7 and raw["metrics"] == {"x": 1.0}
    assert raw["torch_version"] == str(torch.__version__)
    back = diffusion_buffer.load_checkpoint(path)
    assert _same(model, back) and back.cfg == model.cfg and back.checkpoint["step"] == 7


def test_legacy_files_of_each_model_still_load(tmp_path):
    db = diffusion_buffer.DiffusionBuffer(diffusion_buffer.DiffusionBufferConfig.tiny())
    # what the old diffusion-buffer CLI wrote with a bare torch.save
    torch.save({"config": db.cfg.to_dict(), "state_dict": db.state_dict()}, tmp_path / "old.pt")
    assert _same(db, diffusion_buffer.load_checkpoint(tmp_path / "old.pt"))
    pf = paraformer.Paraformer(paraformer.ParaformerConfig.tiny())
    old = {"model": pf.state_dict(), "config": pf.cfg.to_dict(), "step": 3, "metrics": {}}
    torch.save(old, tmp_path / "pf.pt")
    assert _same(pf, paraformer.load_checkpoint(tmp_path / "pf.pt")[0])
    sr = audiosr.AudioSR(audiosr.AudioSRConfig.tiny())
    torch.save({"config": sr.cfg.to_dict(), "state_dict": sr.state_dict()}, tmp_path / "sr.pt")
    assert _same(sr, audiosr.load_checkpoint(tmp_path / "sr.pt")[0])


def test_shipped_sgmse_checkpoints_keep_loading():
    model = load_pretrained("cond")
    assert model.checkpoint["step"] == 2300 and model.weights_used == "ema"


def test_wrong_kind_and_missing_files_are_named(tmp_path):
    pf = paraformer.Paraformer(paraformer.ParaformerConfig.tiny())
    path = paraformer.save_checkpoint(pf, tmp_path / "pf.pt")
    with pytest.raises(
        diffusion_buffer.CheckpointError,
        match=r"pf\.pt' is not a torchdx diffusion-buffer checkpoint \(format "
        r"'torchdx\.paraformer/1', expected 'torchdx\.diffusion_buffer/1'\)",
    ):
        diffusion_buffer.load_checkpoint(path)
    with pytest.raises(paraformer.CheckpointError, match=r"nope\.pt' does not exist"):
        paraformer.load_checkpoint(tmp_path / "nope.pt")
    assert issubclass(paraformer.CheckpointError, TorchdxError)


def test_extra_metadata_may_not_shadow_the_format(tmp_path):
    with pytest.raises(AssertionError, match="reserved keys"):
        write_checkpoint(tmp_path / "x.pt", kind="k", config={}, weights={}, step=1, format="x")
    write_checkpoint(tmp_path / "y.pt", kind="k", config={"a": 1}, weights={}, command="c")
    ckpt = read_checkpoint(tmp_path / "y.pt", kind="k", error=TorchdxError)
    assert ckpt["command"] == "c" and ckpt["config"] == {"a": 1}
