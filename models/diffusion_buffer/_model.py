"""The diffusion buffer: BBED score model trained and run on the last B STFT frames."""

from __future__ import annotations

import contextlib
from typing import Annotated

import torch
from jaxtyping import Complex, Float
from torch import Tensor, nn

import contracts
from contracts import Finite, contract
from models._fields import is_int
from models.audio import STFTConfig, istft, stft

from ._backbone import CausalUNet
from ._config import AmpOverflowError, BufferSizeError, DiffusionBufferConfig, DiffusionBufferError
from ._sde import BBED

__all__ = ["DiffusionBuffer", "ScoreHead", "Streamer"]


class ScoreHead(nn.Module):
    """Score from a data prediction: ``(mean(x0_hat, y, t) - x) / σ²`` on the buffer frames.

    The backbone predicts the clean frames (the public code's "one-step data prediction"); the
    score of the Gaussian marginal follows in closed form. A separate module, so a NaN watch
    names it when σ = 0 (``t_eps = 0`` with contracts off).
    """

    def __init__(self, sde: BBED) -> None:
        super().__init__()
        self.sde = sde

    def forward(self, x0_hat: Tensor, x: Tensor, y: Tensor, t: Tensor, sigma: Tensor) -> Tensor:
        return (self.sde.mean(x0_hat, y, t) - x) / sigma**2  # (B, F, Bf)


@contracts.example(lambda: DiffusionBuffer(DiffusionBufferConfig.tiny()))
class DiffusionBuffer(nn.Module):
    """Online speech enhancement with a BBED diffusion buffer (Lay et al., Diffusion-Buffer).

    The last ``B = buffer_size`` frames carry increasing diffusion times
    ``linspace(t_eps, t_max, B)`` (newest noisiest); older frames have t = 0 and no noise.
    ``forward(mix, target)`` returns the denoising-score-matching loss on the buffer frames
    only: target ``-z/σ``, weighted by σ² (as SGMSE+); the score comes from the backbone's data
    prediction through :class:`ScoreHead`. :meth:`stream` / :meth:`enhance` run it
    online: one network call and one reverse step per incoming frame, output B frames late.

    Example:
        >>> model = DiffusionBuffer(DiffusionBufferConfig.tiny())
        >>> mix = torch.randn(2, 1, 4000) * 0.1
        >>> loss = model(mix, mix * 0.5)
        >>> loss.backward()
    """

    def __init__(self, cfg: DiffusionBufferConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.stft_cfg = STFTConfig(n_fft=cfg.n_fft, hop=cfg.hop, sample_rate=cfg.sample_rate)
        self.sde = BBED(cfg)
        self.backbone = CausalUNet(cfg)
        self.score_head = ScoreHead(self.sde)
        #: frames the network sees per call: receptive field + buffer - 1 (exact streaming)
        self.window = cfg.receptive_frames + cfg.buffer_size - 1
        #: σ and |score| ranges of the last training forward (0-dim tensors, no host sync)
        self.last_stats: dict[str, Tensor] = {}

    # ---- helpers --------------------------------------------------------------------------------
    def buffer_times(self, n_frames: int, device: torch.device | None = None) -> Tensor:
        """Per-frame times ``[n_frames]``: zeros, then ``linspace(t_eps, t_max, B)`` at the end."""
        b = self.cfg.buffer_size
        if n_frames < b:
            raise BufferSizeError(f"buffer_times: n_frames={n_frames} < buffer_size={b}")
        t = torch.zeros(n_frames, device=device)
        t[n_frames - b :] = torch.linspace(self.cfg.t_eps, self.cfg.t_max, b, device=device)
        return t

    def _spectra(self, wave: Tensor, name: str) -> Tensor:
        mono = wave.mean(dim=1)  # (B, L): mono conversion of [B, C, L]
        n = mono.shape[-1]
        frames = self.stft_cfg.n_frames(n) if n >= self.cfg.n_fft else 0
        if frames < self.cfg.buffer_size:
            b, hop, n_fft = self.cfg.buffer_size, self.cfg.hop, self.cfg.n_fft
            how = (
                f"frames = {n} // {hop} + 1"
                if n >= n_fft
                else f"{n} < n_fft = {n_fft}: not one full STFT frame"
            )
            # a [B, L, C] clip makes L look like the channel axis: say so
            layout = (
                f" The clip is {list(wave.shape)}: is it [B, L, C]? pass {name}.transpose(1, 2)."
                if wave.shape[1] > n
                else ""
            )
            raise BufferSizeError(
                f"DiffusionBuffer: argument {name!r} gives {frames} STFT frames but "
                f"buffer_size={b} (frames must be >= buffer_size); the clip "
                f"has {n} samples at n_fft={n_fft}, hop={hop}, "
                f"center={self.stft_cfg.center} -> {how}. Hint: "
                f"use clips of >= {max((b - 1) * hop, n_fft)} samples or a "
                f"smaller buffer_size.{layout}"
            )
        return stft(mono, self.stft_cfg)  # (B, F, T) complex

    def _autocast(self, device: torch.device) -> contextlib.AbstractContextManager:
        if not self.cfg.use_amp:
            return contextlib.nullcontext()
        dtype = {"float16": torch.float16, "bfloat16": torch.bfloat16}.get(self.cfg.amp_dtype)
        if dtype is None:  # auto
            dtype = torch.float16 if device.type == "cuda" else torch.bfloat16
        return torch.autocast(device.type, dtype=dtype)

    def _net(self, x: Tensor, y: Tensor, t: Tensor) -> Tensor:
        with self._autocast(x.device):
            out = self.backbone(x, y, t)  # (B, F, T) complex64
        if self.cfg.use_amp and self.cfg.check_finite and not torch.isfinite(out).all():
            raise AmpOverflowError(
                f"DiffusionBuffer: the backbone output is non-finite under autocast "
                f"({self.cfg.amp_dtype}); max |input| = {y.abs().max().item():.3g}. float16 "
                "overflows above 65504: set use_amp=False, use bfloat16, or normalize the audio"
            )
        return out

    # ---- training -------------------------------------------------------------------------------
    @contract(sizes={"C": (1, 2), "L": (2048, 3072)})
    def forward(
        self,
        mix: Annotated[Float[Tensor, "B C L"], Finite()],
        target: Annotated[Float[Tensor, "B C L"], Finite()],
    ) -> Float[Tensor, ""]:
        """Score-matching loss on the buffer frames of a random window of each clip.

        Args:
            mix: noisy waveforms ``[B, C, L]`` (channels are averaged to mono).
            target: clean waveforms ``[B, C, L]``, same channel count.

        Returns:
            scalar loss ``mean(σ² |score - (-z/σ)|²)`` over the buffer frames.
        """
        y = self._spectra(mix, "mix")  # (B, F, T)
        x0 = self._spectra(target, "target")
        n, b = y.shape[-1], self.cfg.buffer_size
        end = int(torch.randint(b, n + 1, ()).item())  # the buffer's newest frame is end - 1
        start = max(0, end - self.window)
        y, x0 = y[..., start:end], x0[..., start:end]  # (B, F, W)
        t = self.buffer_times(end - start, y.device)  # (W,)
        tb = t[-b:]  # (Bf,) buffer times
        sigma = self.sde.sigma(tb)  # (Bf,)
        z = torch.randn_like(x0[..., -b:])  # complex N(0, 1)
        x = x0.clone()
        x[..., -b:] = self.sde.mean(x0[..., -b:], y[..., -b:], tb) + sigma * z
        x0_hat = self._net(x, y, t.expand(x.shape[0], -1))[..., -b:]  # (B, F, Bf)
        score = self.score_head(x0_hat, x[..., -b:], y[..., -b:], tb, sigma)
        err = score - (-z / sigma)
        with torch.no_grad():  # observed for monitors; never part of the graph
            mag = score.detach().abs()
            self.last_stats = {
                "sde/sigma_min": sigma.detach().min(), "sde/sigma_max": sigma.detach().max(),
                "score/abs_min": mag.min(), "score/abs_max": mag.max(),
            }  # fmt: skip
        return (sigma**2 * err.abs().square()).mean()

    # ---- online inference -----------------------------------------------------------------------
    def stream(self, batch: int = 1, generator: torch.Generator | None = None) -> Streamer:
        """A frame-by-frame enhancer for ``batch`` clips at once; see :class:`Streamer`."""
        return Streamer(self, batch, generator)

    @torch.no_grad()
    @contract(generate=False)
    def enhance(
        self,
        mix: Annotated[Float[Tensor, "B C L"], Finite()],
        generator: torch.Generator | None = None,
    ) -> Float[Tensor, "B L"]:
        """Enhance whole clips by streaming their frames (output aligned with the input)."""
        y = self._spectra(mix, "mix")  # (B, F, T)
        st = self.stream(y.shape[0], generator)
        outs = [o for i in range(y.shape[-1]) if (o := st.push(y[..., i])) is not None]
        outs += st.flush()
        return istft(torch.stack(outs, dim=-1), self.stft_cfg, length=mix.shape[-1])


class Streamer:
    """Online state of a :class:`DiffusionBuffer`: push one STFT frame, get one out B-1 pushes later.

    Each push shifts the window, enters the new frame as ``y + σ(t_max) z`` at the newest
    position, makes ONE network call over the window, and moves every buffer frame one reverse
    step down the time ladder (``τ_i -> τ_{i-1}`` by :meth:`BBED.bridge_step`; the oldest frame
    to t = 0, i.e. to the network's data prediction). The frame that reaches
    t = 0 is returned; it stays in the window as past context.

    Example:
        >>> st = model.stream()
        >>> outs = [st.push(frame) for frame in frames]  # None for the first B-1 pushes
    """

    def __init__(self, model: DiffusionBuffer, batch: int, generator: torch.Generator | None):
        if not is_int(batch) or batch < 1:
            raise DiffusionBufferError(
                f"DiffusionBuffer.stream: argument 'batch' = {batch!r}; expected an int >= 1 "
                "(the number of clips streamed together)"
            )
        self.model, self.gen = model, generator
        cfg = model.cfg
        dev = next(model.parameters()).device
        w, f, b = model.window, cfg.n_freqs, cfg.buffer_size
        self.x = torch.zeros(batch, f, w, dtype=torch.cfloat, device=dev)  # (B, F, W)
        self.y = torch.zeros_like(self.x)
        self.t = model.buffer_times(w, dev).expand(batch, -1)  # (B, W)
        tau = self.t[0, -b:]
        self.tau, self.tau_next = tau, torch.cat([tau.new_zeros(1), tau[:-1]])
        self.sigma = model.sde.sigma(tau)  # (Bf,)
        self.pushed = 0
        self.emitted = 0

    def _noise(self, shape: tuple[int, ...]) -> Tensor:
        re = torch.randn(shape, generator=self.gen, device=self.x.device)
        im = torch.randn(shape, generator=self.gen, device=self.x.device)
        return torch.complex(re, im) * 0.5**0.5  # complex N(0, 1)

    @torch.no_grad()
    def push(self, y_frame: Complex[Tensor, "B F"]) -> Tensor | None:
        """Enter one compressed-STFT frame ``[B, F]``; returns the frame leaving the buffer."""
        m, b = self.model, self.model.cfg.buffer_size
        if y_frame.shape != self.x.shape[:2] or not y_frame.is_complex():
            raise DiffusionBufferError(
                f"Streamer.push: argument 'y_frame' is {tuple(y_frame.shape)} {y_frame.dtype}, "
                f"expected complex {tuple(self.x.shape[:2])} (batch, n_freqs): one frame of the "
                "compressed STFT (models.audio.stft(mix)[..., i])"
            )
        self.x = torch.roll(self.x, -1, dims=-1)
        self.y = torch.roll(self.y, -1, dims=-1)
        self.y[..., -1] = y_frame
        self.x[..., -1] = y_frame + self.sigma[-1] * self._noise(tuple(y_frame.shape))
        x0_hat = m._net(self.x, self.y, self.t)[..., -b:]  # (B, F, Bf)
        w = self.x.shape[-1]
        rest = slice(w - b + 1, w)  # buffer frames except the oldest
        xb = m.sde.bridge_step(
            self.x[..., rest], self.y[..., rest], x0_hat[..., 1:], self.tau[1:], self.tau_next[1:]
        )  # (B, F, Bf-1)
        xb = torch.cat([x0_hat[..., :1], xb], dim=-1)  # the oldest frame goes to t = 0: x0_hat
        self.x[..., -b:] = xb
        self.pushed += 1
        if self.pushed < b:
            return None
        self.emitted += 1
        return xb[..., 0].clone()

    def flush(self) -> list[Tensor]:
        """Drain the frames still in the buffer (pushing silence); returns them in order."""
        outs = []
        while self.emitted < self.pushed:
            frame = self.push(torch.zeros_like(self.y[..., 0]))
            self.pushed -= 1  # the silence frame is not an input frame
            if frame is not None:
                outs.append(frame)
        return outs
