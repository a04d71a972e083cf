"""The Ornstein-Uhlenbeck SDE with variance exploding diffusion (OUVE) of SGMSE+.

    dx = theta (y - x) dt + g(t) dw,   g(t) = sigma_min (sigma_max / sigma_min)^t sqrt(2 log(sigma_max / sigma_min))

The mean moves from the clean spectrum x0 at t = 0 towards the noisy one y:
``mean = e^{-theta t} x0 + (1 - e^{-theta t}) y``; the variance solves
``dv/dt = -2 theta v + g(t)^2`` with ``v(0) = 0``.
"""

from __future__ import annotations

import math
from typing import Annotated

import torch
from jaxtyping import Complex, Float
from torch import Tensor

from models._fields import is_int
from models.audio._compat import Range, contract, example

from ._errors import ScoreModelError

__all__ = ["OUVESDE"]


@example(lambda: OUVESDE())
class OUVESDE:
    """OUVE SDE (sgmse/sdes.py): theta 1.5, sigma_min 0.05, sigma_max 0.5, N 30.

    Example:
        >>> sde = OUVESDE()
        >>> mean, std = sde.marginal_prob(x0, y, torch.full((2,), 0.5))
    """

    T: float = 1.0  # the SDE runs from t = 0 (clean) to T (prior)

    def __init__(
        self, theta: float = 1.5, sigma_min: float = 0.05, sigma_max: float = 0.5, N: int = 30
    ) -> None:
        if not 0 < sigma_min < sigma_max < math.inf:
            raise ScoreModelError(
                f"OUVESDE: sigma_min={sigma_min}, sigma_max={sigma_max}; expected "
                "0 < sigma_min < sigma_max (g(t) needs log(sigma_max / sigma_min) > 0)"
            )
        if not 0 <= theta < math.inf:
            raise ScoreModelError(f"OUVESDE: theta={theta}; expected theta >= 0 and finite")
        if not is_int(N) or N < 1:
            raise ScoreModelError(f"OUVESDE: N={N!r}; expected an int >= 1 (reverse steps)")
        self.theta, self.sigma_min, self.sigma_max, self.N = theta, sigma_min, sigma_max, N
        self.logsig = math.log(sigma_max / sigma_min)

    def __repr__(self) -> str:
        return (
            f"OUVESDE(theta={self.theta}, sigma_min={self.sigma_min}, "
            f"sigma_max={self.sigma_max}, N={self.N})"
        )

    @contract
    def std(self, t: Annotated[Float[Tensor, " B"], Range(0, 1)]) -> Float[Tensor, " B"]:
        """Marginal standard deviation sigma(t) (closed form)."""
        th, lg = self.theta, self.logsig
        var = (
            self.sigma_min**2
            * torch.exp(-2 * th * t)
            * torch.expm1(2 * (th + lg) * t)
            * lg
            / (th + lg)
        )
        return var.sqrt()

    @contract
    def diffusion(self, t: Annotated[Float[Tensor, " B"], Range(0, 1)]) -> Float[Tensor, " B"]:
        """g(t)."""
        return self.sigma_min * (self.sigma_max / self.sigma_min) ** t * math.sqrt(2 * self.logsig)

    @contract
    def marginal_prob(
        self,
        x0: Complex[Tensor, "B F T"],
        y: Complex[Tensor, "B F T"],
        t: Annotated[Float[Tensor, " B"], Range(0, 1)],
    ) -> tuple[Complex[Tensor, "B F T"], Float[Tensor, " B"]]:
        """Mean and std of x_t given x0 and y."""
        decay = torch.exp(-self.theta * t)[:, None, None]  # (B, 1, 1)
        return decay * x0 + (1 - decay) * y, self.std(t)

    @contract
    def sde(
        self,
        x: Complex[Tensor, "B F T"],
        y: Complex[Tensor, "B F T"],
        t: Annotated[Float[Tensor, " B"], Range(0, 1)],
    ) -> tuple[Complex[Tensor, "B F T"], Float[Tensor, " B"]]:
        """Drift theta (y - x) and diffusion g(t)."""
        return self.theta * (y - x), self.diffusion(t)

    @contract(generate=False)
    def prior_sampling(
        self, y: Complex[Tensor, "B F T"], generator: torch.Generator | None = None
    ) -> Complex[Tensor, "B F T"]:
        """A sample of x_1 ~ N(y, sigma(1)^2) (complex normal, unit variance per bin)."""
        z = torch.randn(y.shape, dtype=y.dtype, device=y.device, generator=generator)
        std = self.std(torch.ones(y.shape[0], device=y.device, dtype=y.real.dtype))
        return y + std[:, None, None] * z
