"""Chunked long-audio inference with the global context computed once per file."""

from __future__ import annotations

from typing import Annotated

import torch
from jaxtyping import Float
from torch import Tensor

from contracts import Finite, contract

from ._config import AudioSRError
from ._model import AudioSR

__all__ = ["super_resolve_long"]


@torch.no_grad()
@contract(generate=False)
def super_resolve_long(
    model: AudioSR,
    lo_mel: Annotated[Float[Tensor, "B M T"], Finite()],
    chunk_frames: int = 1500,
    overlap_frames: int = 200,
    steps: int | None = None,
    guidance: float | None = None,
    seed: int = 0,
) -> Float[Tensor, "B M T"]:
    """Super-resolve a long low-resolution mel chunk by chunk (AudioSR: 15 s chunks, 2 s overlap).

    The global context (when the model has an encoder) is computed ONCE from the whole file and
    passed to every chunk; overlapping chunks are cross-faded with a Hann ramp. (AudioSR also
    rescales each chunk's peak; in the mel domain that step has no counterpart here.)

    Example:
        >>> hi = super_resolve_long(model, lo_mel, chunk_frames=64, overlap_frames=16, steps=4)
    """
    t = lo_mel.shape[-1]
    if not 0 <= overlap_frames < chunk_frames:
        raise AudioSRError(
            f"super_resolve_long: overlap_frames={overlap_frames} must lie in "
            f"[0, chunk_frames={chunk_frames})"
        )
    g = model.global_context(lo_mel)  # once per file
    gen = torch.Generator(device=lo_mel.device).manual_seed(seed)
    if t <= chunk_frames:
        return model.sample(lo_mel, steps, guidance, g, gen)
    hop = chunk_frames - overlap_frames
    starts = list(range(0, t - overlap_frames, hop))
    out = torch.zeros_like(lo_mel)
    weight = torch.zeros(t, device=lo_mel.device)
    ramp = torch.hann_window(2 * overlap_frames + 2, periodic=False, device=lo_mel.device)
    ramp = ramp[1 : overlap_frames + 1]  # rising half, strictly positive
    for i, s in enumerate(starts):
        e = min(s + chunk_frames, t)
        chunk = model.sample(lo_mel[..., s:e], steps, guidance, g, gen)  # (B, M, e-s)
        w = torch.ones(e - s, device=lo_mel.device)
        if i > 0 and overlap_frames:
            w[:overlap_frames] = ramp
        if e < t and overlap_frames:
            w[-overlap_frames:] = ramp.flip(0)
        out[..., s:e] += chunk * w
        weight[s:e] += w
    return out / weight
