"""Chunked long-audio inference: global context once per file, crossfaded chunks."""

import pytest
import torch

from models.audiosr import AudioSR, AudioSRConfig, AudioSRError, super_resolve_long


def test_global_context_computed_once_per_file():
    torch.manual_seed(0)
    model = AudioSR(AudioSRConfig.tiny(use_global_encoder=True))
    calls = []
    model.global_encoder.register_forward_hook(lambda *a: calls.append(1))
    _, lo = model.mels(torch.rand(1, 128 * 60) - 0.5)  # 61 frames -> 4 chunks of 24 (8 overlap)
    out = super_resolve_long(model, lo, chunk_frames=24, overlap_frames=8, steps=2)
    assert len(calls) == 1
    assert out.shape == lo.shape and torch.isfinite(out).all()


def test_bad_overlap_refused():
    model = AudioSR(AudioSRConfig.tiny())
    lo = torch.zeros(1, 16, 40)
    with pytest.raises(AudioSRError, match="overlap_frames=24 must lie in"):
        super_resolve_long(model, lo, chunk_frames=24, overlap_frames=24)
