"""Complex STFT front end of SGMSE+ with amplitude compression, and its exact inverse.

SGMSE+ (sp-uhh/sgmse, ``sgmse/data_module.py``) works on the complex STFT (n_fft 510 -> 256
bins, hop 128, periodic Hann, ``center=True``) with the amplitude compressed as
``beta * |X| ** alpha * exp(i * angle(X))`` (alpha 0.5, beta 0.15). ``istft`` undoes the
compression and the STFT, so ``istft(stft(x), length=len(x))`` returns ``x`` up to float error.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Annotated

import torch
from jaxtyping import Complex, Float
from torch import Tensor

from models._fields import check_types, require_positive
from models._fields import require as _require

from ._compat import Finite, Range, contract
from ._errors import AudioError

__all__ = ["STFTConfig", "istft", "stft"]


@dataclass(frozen=True)
class STFTConfig:
    """STFT and compression settings (defaults are those of SGMSE+)."""

    n_fft: int = 510  # -> n_fft // 2 + 1 = 256 frequency bins
    hop: int = 128  # hop length in samples (8 ms at 16 kHz)
    center: bool = True  # reflect-pad n_fft // 2 samples on both sides
    alpha: float = 0.5  # amplitude compression exponent: |X| ** alpha
    beta: float = 0.15  # amplitude compression factor
    sample_rate: int = 16000  # Hz, the rate the models are trained at

    def __post_init__(self) -> None:
        check_types(self, AudioError)
        require = functools.partial(_require, self, AudioError)
        require("n_fft", self.n_fft >= 2, ">= 2 (at least 2 frequency bins)")
        require(
            "hop",
            self.hop < self.n_fft,
            f"< n_fft={self.n_fft} (the windows must overlap for istft to invert the STFT)",
        )
        require_positive(self, AudioError, "hop", "sample_rate")
        require("alpha", 0 < self.alpha < math.inf, "> 0 and finite (istft raises to 1 / alpha)")
        require("beta", 0 < self.beta < math.inf, "> 0 and finite (istft divides by beta)")

    @property
    def n_freqs(self) -> int:
        """Number of frequency bins F."""
        return self.n_fft // 2 + 1

    def n_frames(self, length: int) -> int:
        """Number of frames T for a clip of ``length`` samples."""
        return length // self.hop + 1 if self.center else (length - self.n_fft) // self.hop + 1


_LOW_PRECISION = (torch.float16, torch.bfloat16)


def _window(cfg: STFTConfig, like: Tensor) -> Tensor:
    return torch.hann_window(cfg.n_fft, periodic=True, dtype=like.real.dtype, device=like.device)


@contract(sizes={"L": (510, 1200)})
def stft(
    wave: Annotated[Float[Tensor, "B L"], Finite()],
    cfg: STFTConfig = STFTConfig(),  # a frozen dataclass
) -> Complex[Tensor, "B F T"]:
    """Compressed complex STFT of a batch of waveforms.

    Args:
        wave: waveforms ``[B, L]`` with ``L >= cfg.n_fft`` (one full STFT frame); float16 and
            bfloat16 audio is transformed in float32.
        cfg: STFT and compression settings.

    Returns:
        ``[B, F, T]`` complex with ``F = n_fft // 2 + 1`` and amplitude
        ``beta * |X| ** alpha``, phase of ``X`` (complex128 for float64 audio, else complex64).

    Example:
        >>> spec = stft(torch.randn(2, 16000))
        >>> spec.shape
        torch.Size([2, 256, 126])
    """
    if wave.shape[-1] < cfg.n_fft:
        raise AudioError(
            f"stft: argument 'wave' has {wave.shape[-1]} samples, shorter than one STFT frame "
            f"(n_fft={cfg.n_fft}); pad or use a clip of at least {cfg.n_fft} samples"
        )
    if not torch.isfinite(wave).all():
        raise AudioError("stft: argument 'wave' has NaN/Inf samples; clean the audio first")
    if wave.dtype in _LOW_PRECISION:
        # the FFT kernels (CPU; CUDA for sizes that are not powers of two) and polar() have no
        # float16/bfloat16 version: such audio is transformed in float32 (complex64 out)
        wave = wave.float()
    spec = torch.stft(
        wave,
        n_fft=cfg.n_fft,
        hop_length=cfg.hop,
        window=_window(cfg, wave),
        center=cfg.center,
        return_complex=True,
    )  # (B, F, T)
    mag = spec.abs()
    return torch.polar(cfg.beta * mag.pow(cfg.alpha), spec.angle())


@contract(sizes={"F": (256, 256), "T": (2, 12)})
def istft(
    spec: Annotated[Complex[Tensor, "B F T"], Finite()],
    cfg: STFTConfig = STFTConfig(),  # a frozen dataclass
    length: Annotated[int, Range(1, None)] | None = None,
) -> Float[Tensor, "B L"]:
    """Inverse of :func:`stft`: decompress the amplitude, then the inverse STFT.

    Args:
        spec: compressed complex STFT ``[B, F, T]`` with ``F = n_fft // 2 + 1``.
        cfg: the settings ``spec`` was made with.
        length: number of output samples (give the input length for an exact round trip);
            default ``(T - 1) * hop``.

    Returns:
        waveforms ``[B, L]``.

    Example:
        >>> x = torch.randn(1, 16000)
        >>> torch.allclose(istft(stft(x), length=16000), x, atol=1e-5)
        True
    """
    if spec.shape[-2] != cfg.n_freqs:
        raise AudioError(
            f"istft: argument 'spec' has {spec.shape[-2]} frequency bins, expected "
            f"{cfg.n_freqs} (n_fft={cfg.n_fft}); is it [B, F, T]?"
        )
    mag = (spec.abs() / cfg.beta).pow(1.0 / cfg.alpha)
    raw = torch.polar(mag, spec.angle())  # (B, F, T)
    try:
        return torch.istft(
            raw,
            n_fft=cfg.n_fft,
            hop_length=cfg.hop,
            window=_window(cfg, raw),
            center=cfg.center,
            length=length,
        )
    except RuntimeError as err:
        n_out = (spec.shape[-1] - 1) * cfg.hop if length is None else length
        if n_out >= 1:
            raise
        raise AudioError(
            f"istft: argument 'spec' has {spec.shape[-1]} frame(s), so the default output length "
            f"(T - 1) * hop = {n_out} samples is empty; pass length= (the original number of "
            "samples)"
        ) from err
