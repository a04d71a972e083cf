"""Configuration and errors of the diffusion-buffer model."""

from __future__ import annotations

import dataclasses
import functools
import math
from dataclasses import dataclass
from typing import Any

import contracts
from contracts import TorchdxError
from models._fields import check_types, require_positive
from models._fields import require as _require

__all__ = [
    "AmpOverflowError",
    "BufferSizeError",
    "CheckpointError",
    "DiffusionBufferConfig",
    "DiffusionBufferError",
    "check_times",
]


class DiffusionBufferError(TorchdxError, ValueError):
    """Bad configuration or input of the diffusion buffer."""

    __module__ = "models.diffusion_buffer"


class BufferSizeError(DiffusionBufferError):
    """The buffer does not fit the clip (``buffer_size`` > STFT frames)."""

    __module__ = "models.diffusion_buffer"


class CheckpointError(DiffusionBufferError):
    """A checkpoint that is missing, not a diffusion-buffer checkpoint, or built for another config."""

    __module__ = "models.diffusion_buffer"


class AmpOverflowError(DiffusionBufferError):
    """Mixed precision produced a non-finite activation (float16 overflow)."""

    __module__ = "models.diffusion_buffer"


def check_times(t_eps: float, t_max: float, where: str = "DiffusionBufferConfig") -> None:
    """The time contract ``0 < t_eps < t_max < 1``; skipped when contracts are ``off``.

    The issue states ``t_max <= 1``; ``t_max = 1`` is refused too because σ(1) = 0 for BBED (the
    bridge pins x to y), so the score target ``-z/σ`` of the newest buffer frame is infinite.

    Raises:
        contracts.ContractError: naming the argument, its value and the limit.

    Example:
        >>> check_times(0.03, 0.999)
    """
    if contracts.get_mode() == "off":
        return
    problems = []
    if not t_eps > 0:
        problems.append(("t_eps", "> 0", t_eps, "σ(0) = 0 makes the score target -z/σ infinite"))
    elif not t_eps < t_max:
        problems.append(("t_eps", f"< t_max = {t_max}", t_eps, "the buffer times must increase"))
    if not t_max < 1:
        problems.append(
            ("t_max", "< 1", t_max, "σ(1) = 0 for BBED (the bridge reaches y); use 0.999")
        )
    if problems:
        arg, expected, actual, hint = problems[0]
        raise contracts.ContractError(
            f"{where}: argument {arg!r} = {actual!r} violates the time contract "
            f"0 < t_eps < t_max < 1 (expected {arg} {expected}); {hint}",
            function=where,
            argument=arg,
            expected=f"{arg} {expected}",
            actual=repr(actual),
        )


@dataclass
class DiffusionBufferConfig:
    """Settings of :class:`models.diffusion_buffer.DiffusionBuffer` (public defaults, small net).

    Example:
        >>> cfg = DiffusionBufferConfig(buffer_size=8)
        >>> DiffusionBufferConfig(t_eps=0.0)  # doctest: +SKIP
        ContractError: ... 't_eps' = 0.0 violates the time contract ...
    """

    # STFT (SGMSE+ front end from models.audio; the seed's config uses n_fft 510)
    n_fft: int = 510  # -> 256 bins
    hop: int = 128  # 8 ms at 16 kHz
    sample_rate: int = 16000
    # BBED
    k: float = 2.6
    theta: float = 0.52
    t_eps: float = 0.03  # time of the oldest buffer frame
    t_max: float = 0.999  # time of the newest (noisiest) buffer frame
    # buffer
    buffer_size: int = 16  # B: frames with t > 0 (latency in frames)
    # block-causal U-Net
    base_channels: int = 16
    channel_mults: tuple[int, ...] = (1, 2, 2)  # downsampling along frequency only
    time_kernel: int = 3  # causal kernel length along time
    emb_dim: int = 64  # per-frame time embedding
    fourier_scale: float = 16.0  # Gaussian-Fourier projection of log(t)
    # training
    use_amp: bool = False  # autocast the backbone (bf16 on CPU, fp16 on CUDA by default)
    amp_dtype: str = "auto"  # "auto" | "float16" | "bfloat16"
    check_finite: bool = True  # raise AmpOverflowError on a non-finite backbone output

    def __post_init__(self) -> None:
        check_types(self, DiffusionBufferError)
        check_times(self.t_eps, self.t_max)
        self.channel_mults = tuple(self.channel_mults)
        require = functools.partial(_require, self, DiffusionBufferError)
        require_positive(self, DiffusionBufferError, "hop", "sample_rate", "base_channels")
        require("n_fft", self.n_fft >= 2, ">= 2 (at least 2 frequency bins)")
        require(
            "hop",
            self.hop < self.n_fft,
            f"< n_fft={self.n_fft} (the windows must overlap for istft to invert the STFT)",
        )
        require("k", 0 < self.k < math.inf, "> 0 and finite (the diffusion grows as k^t)")
        require(
            "theta",
            0 < self.theta < math.inf,
            "> 0 and finite (theta = 0 gives sigma(t) = 0: an infinite score target)",
        )
        require("channel_mults", all(m >= 1 for m in self.channel_mults), "ints >= 1")
        require(
            "emb_dim",
            self.emb_dim >= 2 and self.emb_dim % 2 == 0,
            "an even number >= 2 (sin and cos halves of the time embedding)",
        )
        require("fourier_scale", 0 < self.fourier_scale < math.inf, "> 0 and finite")
        if self.buffer_size < 1:
            raise DiffusionBufferError(
                f"DiffusionBufferConfig: buffer_size={self.buffer_size} must be >= 1"
            )
        if self.amp_dtype not in ("auto", "float16", "bfloat16"):
            raise DiffusionBufferError(
                f"DiffusionBufferConfig: amp_dtype={self.amp_dtype!r}; valid: 'auto', "
                "'float16', 'bfloat16'"
            )
        if self.time_kernel < 1:
            raise DiffusionBufferError(
                f"DiffusionBufferConfig: time_kernel={self.time_kernel} must be >= 1"
            )

    @property
    def n_freqs(self) -> int:
        """Frequency bins F = n_fft // 2 + 1."""
        return self.n_fft // 2 + 1

    @property
    def receptive_frames(self) -> int:
        """Frames of past context one output frame depends on (incl. itself)."""
        n_convs = 2 * (2 * len(self.channel_mults) + 1) + 2
        return n_convs * (self.time_kernel - 1) + 1

    @classmethod
    def tiny(cls, **overrides: Any) -> DiffusionBufferConfig:
        """A very small model for tests and generated property tests."""
        base: dict[str, Any] = dict(
            n_fft=62, hop=32, buffer_size=4, base_channels=8, channel_mults=(1, 2), emb_dim=16
        )
        base.update(overrides)
        return cls(**base)

    def to_dict(self) -> dict[str, Any]:
        """Plain data (lists for tuples), as stored in checkpoints."""
        d = dataclasses.asdict(self)
        d["channel_mults"] = list(self.channel_mults)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DiffusionBufferConfig:
        """Inverse of :meth:`to_dict`; unknown keys raise :class:`CheckpointError`."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise CheckpointError(f"DiffusionBufferConfig.from_dict: unknown keys {unknown}")
        return cls(**d)
