"""Predictor-corrector sampling (reverse diffusion + annealed Langevin) with CFG."""

from __future__ import annotations

import math
from typing import Annotated

import torch
from jaxtyping import Float
from torch import Tensor

from models._fields import is_int
from models.audio import istft, stft
from models.audio._compat import Finite, Range, contract

from ._errors import ScoreModelError
from ._model import ScoreModel, clamp_t

__all__ = ["enhance", "enhance_batch", "guided_score"]


def guided_score(
    model: ScoreModel,
    x: Tensor,
    y: Tensor,
    t: Tensor,
    noise_ref: Tensor | None,
    guidance_scale: float,
) -> Tensor:
    """``uncond + w (cond - uncond)``; one network call when ``w == 1`` or no reference."""
    if noise_ref is None:
        return model(x, y, t)
    if guidance_scale == 1.0:
        return model(x, y, t, noise_ref)
    B = x.shape[0]
    drop = torch.cat([torch.zeros(B, dtype=torch.bool), torch.ones(B, dtype=torch.bool)])
    both = model(
        torch.cat([x, x]), torch.cat([y, y]), torch.cat([t, t]), torch.cat([noise_ref, noise_ref]),
        drop.to(x.device),
    )  # fmt: skip  # (2B, F, T)
    cond, uncond = both[:B], both[B:]
    return uncond + guidance_scale * (cond - uncond)


@torch.no_grad()
def enhance_batch(
    model: ScoreModel,
    noisy: Tensor,
    noise_ref: Tensor | None = None,
    N: int = 30,
    snr: float = 0.5,
    corrector_steps: int = 1,
    guidance_scale: float = 1.0,
    seed: int = 0,
) -> Tensor:
    """Batched :func:`enhance`: ``noisy [B, L]``, ``noise_ref [B, L_ref]`` -> ``[B, L]``."""
    cfg = model.cfg
    for name, value, lo in (("N", N, 1), ("corrector_steps", corrector_steps, 0)):
        if not is_int(value) or value < lo:
            raise ScoreModelError(
                f"enhance_batch: argument {name!r} = {value!r}; expected an int >= {lo}"
            )
    if not 0 <= snr < math.inf:
        raise ScoreModelError(f"enhance_batch: argument 'snr' = {snr!r}; expected >= 0, finite")
    if not math.isfinite(guidance_scale):
        raise ScoreModelError(
            f"enhance_batch: argument 'guidance_scale' = {guidance_scale!r}; expected finite"
        )
    if not isinstance(noisy, Tensor) or not noisy.is_floating_point() or noisy.ndim != 2:
        what = (
            f"shape {tuple(noisy.shape)} {noisy.dtype}"
            if isinstance(noisy, Tensor)
            else (type(noisy).__name__)
        )
        raise ScoreModelError(
            f"enhance_batch: argument 'noisy' is {what}; expected float waveforms [B, L]"
        )
    if noise_ref is not None and (
        not isinstance(noise_ref, Tensor)
        or not noise_ref.is_floating_point()
        or noise_ref.ndim != 2
        or noise_ref.shape[0] != noisy.shape[0]
    ):
        what = (
            f"shape {tuple(noise_ref.shape)} {noise_ref.dtype}"
            if isinstance(noise_ref, Tensor)
            else type(noise_ref).__name__
        )
        raise ScoreModelError(
            f"enhance_batch: argument 'noise_ref' is {what}; expected float clips "
            f"[B={noisy.shape[0]}, L_ref], one reference per noisy clip (a shared reference "
            "must be repeated: noise_ref.expand(B, -1))"
        )
    if noisy.shape[-1] < cfg.n_fft:
        raise ScoreModelError(
            f"enhance: argument 'noisy_wave' has {noisy.shape[-1]} samples, shorter than one STFT "
            f"frame (n_fft={cfg.n_fft})"
        )
    if noise_ref is not None and noise_ref.shape[-1] < cfg.n_fft:
        raise ScoreModelError(
            f"enhance: argument 'noise_ref' has {noise_ref.shape[-1]} samples, shorter than one "
            f"STFT frame (n_fft={cfg.n_fft})"
        )
    for name, w in (("noisy_wave", noisy), ("noise_ref", noise_ref)):
        if w is not None and not torch.isfinite(w).all():
            raise ScoreModelError(f"enhance: argument {name!r} has NaN/Inf samples")
    p = next(model.parameters())
    device, dtype = p.device, p.dtype
    in_device, in_dtype = noisy.device, noisy.dtype
    # audio of any float dtype: the sampler runs in the model's dtype, the result comes back in
    # the input's dtype and device
    noisy = noisy.to(device, dtype)
    noise_ref = noise_ref.to(device, dtype) if noise_ref is not None else None
    L = noisy.shape[-1]
    scale = noisy.abs().amax(-1, keepdim=True).clamp_min(1e-8)  # (B, 1) as in SGMSE+
    y = stft(noisy / scale, cfg.stft)  # (B, F, T)
    ref = noise_ref / scale if noise_ref is not None else None
    gen = torch.Generator(device=device).manual_seed(seed)
    sde = model.sde

    def randn(like: Tensor) -> Tensor:
        return torch.randn(like.shape, dtype=like.dtype, device=device, generator=gen)

    B = y.shape[0]
    x = sde.prior_sampling(y, generator=gen)
    times = clamp_t(torch.linspace(sde.T, cfg.t_eps, N, device=device), cfg.t_eps)
    dt = 1.0 / N
    x_mean = x
    for t_val in times:
        t = t_val.expand(B)
        for _ in range(corrector_steps):  # annealed Langevin dynamics
            score = guided_score(model, x, y, t, ref, guidance_scale)
            step = 2 * (snr * sde.std(t)) ** 2  # (B,)
            x_mean = x + step[:, None, None] * score
            x = x_mean + (2 * step).sqrt()[:, None, None] * randn(x)
        # reverse-diffusion predictor
        score = guided_score(model, x, y, t, ref, guidance_scale)
        drift, g = sde.sde(x, y, t)
        G2 = (g**2 * dt)[:, None, None]
        x_mean = x - drift * dt + G2 * score
        x = x_mean + G2.sqrt() * randn(x)
    out = istft(x_mean, cfg.stft, length=L)  # (B, L)
    return (out * scale).to(in_device, in_dtype)


@contract(generate=False)
def enhance(
    model: ScoreModel,
    noisy_wave: Annotated[Float[Tensor, " L"], Finite()],
    noise_ref: Annotated[Float[Tensor, " L_ref"], Finite()] | None = None,
    N: Annotated[int, Range(1, None)] = 30,
    snr: Annotated[float, Range(0, None)] = 0.5,
    corrector_steps: Annotated[int, Range(0, None)] = 1,
    guidance_scale: float = 1.0,
    seed: int = 0,
) -> Float[Tensor, " L"]:
    """Enhance one noisy clip with the predictor-corrector sampler of SGMSE+.

    The clip is normalised by its peak (as SGMSE+ does), the noise reference by the same factor;
    times run linearly from 1 to t_eps in ``N`` steps, each a corrector (annealed Langevin, step
    ``2 (snr sigma(t))^2``) then a reverse-diffusion predictor; the last mean is returned. With a
    reference, the score is ``uncond + w (cond - uncond)`` with ``w = guidance_scale``; without
    one, the unconditional (null-embedding) score is used.

    Args:
        model: a :class:`ScoreModel` (eval mode).
        noisy_wave: ``[L]`` at the model's sample rate, ``L >= n_fft``.
        noise_ref: ``[L_ref]`` noise-only reference clip, or None.
        N: reverse steps (network calls: ``N * (1 + corrector_steps)``, doubled for CFG w != 1).
        snr: corrector signal-to-noise ratio.
        corrector_steps: Langevin steps per time step.
        guidance_scale: CFG scale w (1 = plain conditional, 0 = unconditional).
        seed: seed of the sampler's noise.

    Returns:
        the enhanced clip ``[L]``.

    Example:
        >>> model = load_pretrained("cond")
        >>> clean_est = enhance(model, mix.noisy, mix.noise_ref, N=30)
    """
    ref = noise_ref[None] if noise_ref is not None else None
    return enhance_batch(
        model, noisy_wave[None], ref, N, snr, corrector_steps, guidance_scale, seed
    )[0]
