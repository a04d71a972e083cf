"""The noise-conditioned score model: U-Net + time embedding + noise encoder + CFG null embedding."""

from __future__ import annotations

from typing import Annotated

import torch
import torch.nn.functional as F
from jaxtyping import Bool, Complex, Float
from torch import Tensor, nn

from models.audio._compat import Finite, Range, contract, example

from ._config import ScoreModelConfig
from ._errors import ScoreModelError
from ._net import GaussianFourierProjection, NoiseEncoder, UNet
from ._sde import OUVESDE

__all__ = ["EMA", "ScoreModel", "clamp_t"]


def clamp_t(t: Tensor, t_eps: float) -> Tensor:
    """Clamp diffusion times into ``[t_eps, 1]``, rounding up where float32 rounds ``t_eps`` down."""
    lo = t_eps * (1 + 1e-6)  # float32(0.03) < 0.03: keep a margin above the bound
    return t.clamp(lo, 1.0)


@example(lambda: ScoreModel(ScoreModelConfig.tiny()))
class ScoreModel(nn.Module):
    """NCSN++-lite score model of SGMSE+ with a noise-reference condition and CFG.

    ``forward(x_t, y, t, noise_ref, drop_cond)`` returns the score of ``p(x_t | y, noise)``:
    ``-net(x_t, y, t, c) / sigma(t)`` (the network predicts the unit noise). The condition ``c`` is
    ``noise_encoder(noise_ref)`` ``[B, E]``, replaced by the learned ``null_embedding`` where
    ``drop_cond`` is True, or everywhere when ``noise_ref`` is None (unconditional).

    Attributes:
        cfg: the :class:`ScoreModelConfig`.
        sde: the :class:`OUVESDE`.
        noise_encoder: reference clip ``[B, L]`` -> condition embedding ``[B, E]``.
        null_embedding: learned ``[E]`` used for the unconditional score.
        weights_used: ``"raw"`` or ``"ema"`` (set by the checkpoint loader; ``"raw"`` when new).

    Example:
        >>> model = ScoreModel(ScoreModelConfig())
        >>> score = model(x_t, y, torch.full((B,), 0.5), noise_ref)   # (B, 256, T) complex
    """

    def __init__(self, cfg: ScoreModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.sde = OUVESDE(cfg.theta, cfg.sigma_min, cfg.sigma_max)
        self.fourier = GaussianFourierProjection(cfg.fourier_dim, cfg.fourier_scale)
        self.time_mlp = nn.Sequential(
            nn.Linear(cfg.fourier_dim, cfg.temb_dim),
            nn.SiLU(),
            nn.Linear(cfg.temb_dim, cfg.temb_dim),
        )
        self.noise_encoder = NoiseEncoder(cfg)
        self.null_embedding = nn.Parameter(torch.zeros(cfg.emb_dim))
        self.cond_to_temb = nn.Linear(cfg.emb_dim, cfg.temb_dim) if cfg.cond_mode == "add" else None
        self.unet = UNet(cfg)
        self.weights_used = "raw"

    def condition(self, noise_ref: Tensor | None, drop_cond: Tensor | None, batch: int) -> Tensor:
        """The condition embedding ``[B, E]`` (noise encoder output or the null embedding)."""
        null = self.null_embedding[None, :].expand(batch, -1)  # (B, E)
        if noise_ref is None:
            return null
        emb = self.noise_encoder(noise_ref)  # (B, E)
        if drop_cond is None:
            return emb
        return torch.where(drop_cond[:, None], null, emb)

    @contract(
        dims={"F": "self.cfg.n_freqs"},
        sizes={"T": (1, 8), "L": (62, 160)},
    )
    def forward(
        self,
        x_t: Annotated[Complex[Tensor, "B F T"], Finite()],
        y: Annotated[Complex[Tensor, "B F T"], Finite()],
        t: Annotated[Float[Tensor, " B"], Range("self.cfg.t_eps", 1)],
        noise_ref: Annotated[Float[Tensor, "B L"], Finite()] | None = None,
        drop_cond: Bool[Tensor, " B"] | None = None,
    ) -> Complex[Tensor, "B F T"]:
        """Score ``[B, F, T]`` of x_t at times t (see the class docstring)."""
        if not torch.compiler.is_compiling() and (  # compiled: the contract's device assert
            (t < self.cfg.t_eps * (1 - 1e-6)).any() or (t > 1).any()
        ):
            raise ScoreModelError(
                f"ScoreModel.forward: argument 't' has values in [{t.min().item():.4g}, "
                f"{t.max().item():.4g}]; expected t in [t_eps={self.cfg.t_eps}, 1]"
            )
        B = x_t.shape[0]
        cemb = self.condition(noise_ref, drop_cond, B)  # (B, E)
        temb = self.time_mlp(self.fourier(t))  # (B, temb_dim)
        if self.cond_to_temb is not None:
            temb = temb + self.cond_to_temb(cemb)
        x = torch.stack([x_t.real, x_t.imag, y.real, y.imag], dim=1)  # (B, 4, F, T)
        out = self.unet(x, temb, cemb)  # (B, 2, F, T)
        noise = torch.complex(out[:, 0], out[:, 1])  # (B, F, T)
        return -noise / self.sde.std(t)[:, None, None]

    @contract(dims={"F": "self.cfg.n_freqs"}, sizes={"T": (1, 8), "L": (62, 160)})
    def loss(
        self,
        x0: Annotated[Complex[Tensor, "B F T"], Finite()],
        y: Annotated[Complex[Tensor, "B F T"], Finite()],
        noise_ref: Annotated[Float[Tensor, "B L"], Finite()] | None = None,
    ) -> Float[Tensor, ""]:
        """Denoising score matching on spectra, ``t ~ U[t_eps, 1]``, CFG dropout ``p_uncond``.

        ``x_t = mean(x0, y, t) + sigma(t) z``; the loss is ``mean |sigma(t) score + z|^2``
        (target score ``-z / sigma``). With ``noise_ref=None`` every example is unconditional.

        Args:
            x0: clean compressed spectra ``[B, F, T]`` (``models.audio.stft``).
            y: noisy compressed spectra ``[B, F, T]``.
            noise_ref: noise reference clips ``[B, L]`` or None.

        Example:
            >>> loss = model.loss(stft(clean), stft(noisy), noise_ref)
        """
        B = x0.shape[0]
        t = clamp_t(
            self.cfg.t_eps + (1 - self.cfg.t_eps) * torch.rand(B, device=x0.device),
            self.cfg.t_eps,
        )
        mean, std = self.sde.marginal_prob(x0, y, t)
        z = torch.randn_like(x0)  # complex normal, E|z|^2 = 1
        x_t = mean + std[:, None, None] * z
        drop = torch.rand(B, device=x0.device) < self.cfg.p_uncond
        self.last_drop_fraction = float(drop.float().mean()) if noise_ref is not None else 1.0
        score = self(x_t, y, t, noise_ref, drop)
        err = score * std[:, None, None] + z
        with torch.no_grad():  # observed by training monitors (cond vs uncond loss); no sync
            self.last_example_loss = torch.view_as_real(err.detach()).square().mean((1, 2, 3)) * 2
            self.last_drop = drop if noise_ref is not None else torch.ones_like(drop)
        return F.mse_loss(torch.view_as_real(err), torch.zeros_like(torch.view_as_real(err))) * 2


class EMA:
    """Exponential moving average of a model's parameters (buffers copied).

    The decay warms up as ``min(decay, (1 + n) / (10 + n))`` so short runs are not dominated by
    the initial weights.

    Example:
        >>> ema = EMA(model, 0.999); ...; ema.update(model); model.load_state_dict(ema.state_dict())
    """

    def __init__(self, model: nn.Module, decay: float = 0.999) -> None:
        self.decay = decay
        self.num_updates = 0
        self.shadow = {k: v.detach().clone() for k, v in model.state_dict().items()}

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        self.num_updates += 1
        d = min(self.decay, (1 + self.num_updates) / (10 + self.num_updates))
        params = dict(model.named_parameters())
        try:  # free unless it fails
            for k, v in model.state_dict().items():
                if k in params and v.dtype.is_floating_point:
                    self.shadow[k].mul_(d).add_(v.detach(), alpha=1 - d)
                else:
                    self.shadow[k].copy_(v)
        except (KeyError, RuntimeError) as err:
            own, other = set(self.shadow), set(model.state_dict())
            diff = sorted(own ^ other)[:5]
            shapes = [
                f"{k}: EMA {tuple(self.shadow[k].shape)} vs model {tuple(v.shape)}"
                for k, v in model.state_dict().items()
                if k in self.shadow and self.shadow[k].shape != v.shape
            ][:3]
            if not diff and not shapes:
                raise
            raise ScoreModelError(
                "EMA.update: argument 'model' is not the model this EMA was made from "
                f"(keys only in one of them: {diff}; shape mismatches: {shapes}); make the EMA "
                "with EMA(model) from the model you train"
            ) from err

    def state_dict(self) -> dict[str, Tensor]:
        return {k: v.clone() for k, v in self.shadow.items()}
