"""Log-mel front end (torch.stft + a triangular mel filterbank; no torchaudio)."""

from __future__ import annotations

import math
from typing import Annotated

import torch
from jaxtyping import Float
from torch import Tensor, nn

import contracts
from contracts import Finite, contract

from ._config import AudioSRConfig, AudioSRError

__all__ = ["LogMel", "lowpass", "mel_filterbank"]


def _hz_to_mel(f: Tensor) -> Tensor:
    return 2595.0 * torch.log10(1.0 + f / 700.0)


def _mel_to_hz(m: Tensor) -> Tensor:
    return 700.0 * (10.0 ** (m / 2595.0) - 1.0)


def mel_filterbank(
    n_freqs: int, n_mels: int, sample_rate: int, f_min: float = 0.0, f_max: float | None = None
) -> Tensor:
    """Triangular HTK-mel filterbank ``[n_mels, n_freqs]`` (rows sum to the filter area).

    Example:
        >>> fb = mel_filterbank(257, 64, 16000)
        >>> fb.shape
        torch.Size([64, 257])
    """
    f_max = sample_rate / 2 if f_max is None else f_max
    if n_mels < 1 or n_freqs < 2:
        raise AudioSRError(f"mel_filterbank: n_mels={n_mels} must be >=1 and n_freqs={n_freqs} >=2")
    freqs = torch.linspace(0.0, sample_rate / 2, n_freqs, dtype=torch.float64)  # (F,)
    lo_mel, hi_mel = (2595.0 * math.log10(1.0 + f / 700.0) for f in (f_min, f_max))
    m = torch.linspace(lo_mel, hi_mel, n_mels + 2, dtype=torch.float64)  # (M+2,)
    hz = _mel_to_hz(m)  # (M+2,) band edges
    lo, ce, hi = hz[:-2, None], hz[1:-1, None], hz[2:, None]  # (M, 1) each
    up = (freqs[None] - lo) / (ce - lo)
    down = (hi - freqs[None]) / (hi - ce)
    return torch.clamp(torch.minimum(up, down), min=0.0).float()  # (M, F)


@contract(
    sizes={"L": (64, 512)},
    strategies={
        "cutoff_hz": lambda st: st.floats(100.0, 7900.0),
        "sample_rate": lambda st: st.just(16000),
    },
)
def lowpass(
    wave: Annotated[Float[Tensor, "B L"], Finite()], cutoff_hz: float, sample_rate: int
) -> Float[Tensor, "B L"]:
    """Ideal (brick-wall) low-pass by zeroing rFFT bins above ``cutoff_hz``.

    Example:
        >>> lo = lowpass(torch.randn(1, 16000), 4000.0, 16000)
    """
    if not 0 < cutoff_hz < sample_rate / 2:
        raise AudioSRError(
            f"lowpass: cutoff_hz={cutoff_hz} must lie in (0, {sample_rate / 2}) (Nyquist)"
        )
    n = wave.shape[-1]
    try:
        spec = torch.fft.rfft(wave, dim=-1)  # (B, n//2+1)
    except RuntimeError:
        # float16/bfloat16 audio: the FFT kernels need float32; filtered in float32 and cast
        # back, after the fact so that float32 audio pays nothing for the check
        if wave.dtype not in (torch.float16, torch.bfloat16):
            raise
        return lowpass(wave.float(), cutoff_hz, sample_rate).to(wave.dtype)
    freqs = torch.fft.rfftfreq(n, d=1.0 / sample_rate).to(wave.device)
    spec = spec * (freqs <= cutoff_hz).to(spec.dtype)
    return torch.fft.irfft(spec, n=n, dim=-1)


@contracts.example(lambda: LogMel(AudioSRConfig.tiny()))
class LogMel(nn.Module):
    """Normalized log-mel spectrogram ``(log(mel + floor) - mean) / std``.

    Example:
        >>> mel = LogMel(AudioSRConfig())(torch.randn(2, 16000))
        >>> mel.shape
        torch.Size([2, 64, 101])
    """

    def __init__(self, cfg: AudioSRConfig) -> None:
        super().__init__()
        self.cfg = cfg
        fb = mel_filterbank(cfg.n_fft // 2 + 1, cfg.n_mels, cfg.sample_rate)
        self.register_buffer("fb", fb, persistent=False)  # (M, F)
        self.register_buffer("window", torch.hann_window(cfg.n_fft), persistent=False)

    @property
    def silence(self) -> float:
        """The normalized value of an all-zero input (the floor)."""
        return (math.log(self.cfg.log_floor) - self.cfg.norm_mean) / self.cfg.norm_std

    @contract(dims={"M": "self.cfg.n_mels"}, sizes={"L": (256, 1024)})
    def forward(self, wave: Annotated[Float[Tensor, "B L"], Finite()]) -> Float[Tensor, "B M T"]:
        """Waveforms ``[B, L]`` -> normalized log-mel ``[B, M, T]``, ``T = L // hop + 1``."""
        try:
            spec = torch.stft(
                wave.float(), self.cfg.n_fft, self.cfg.hop, window=self.window,
                center=True, return_complex=True,
            )  # fmt: skip  # (B, F, T)
        except RuntimeError as err:  # free unless it fails: no check on the hot path
            half = self.cfg.n_fft // 2
            if wave.shape[-1] > half:
                raise
            raise AudioSRError(
                f"LogMel.forward(): argument 'wave' has {wave.shape[-1]} samples; the centered "
                f"STFT (n_fft={self.cfg.n_fft}) reflect-pads {half} samples on each side and "
                f"needs more than {half} samples ({1000 * (half + 1) / self.cfg.sample_rate:.1f} "
                f"ms at {self.cfg.sample_rate} Hz); pad the clip or use a longer one"
            ) from err
        mel = torch.einsum("mf,bft->bmt", self.fb, spec.abs().square())  # (B, M, T) power
        return (torch.log(mel + self.cfg.log_floor) - self.cfg.norm_mean) / self.cfg.norm_std
