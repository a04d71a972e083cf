"""Stand-in targets for the evaluation-audit tests (also loaded by ``--target FILE:FACTORY``).

``analytic_target``: a point-mass diffusion whose converged answer has a closed form. The
"score model" is the exact score ``-gain (x - clean) / sigma(t)^2`` of a VE SDE with
``sigma(t) = S_MIN (S_MAX / S_MIN)^t``; the sampler runs the reverse SDE from ``t = 1`` to 0 with
N Euler-Maruyama steps. With ``gain = 1`` the converged answer is known: the sample at t = 0 is
``clean + S_MIN z`` (:func:`converged_si_sdr`). Few steps leave more noise: under-converged.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from diagnostics import EvalTarget

S_MIN, S_MAX = 1e-3, 1.0


class AnalyticScore(nn.Module):
    """Exact score of a point mass at ``clean`` under a VE SDE, times ``gain``."""

    def __init__(self, gain: float = 1.0) -> None:
        super().__init__()
        self.gain = nn.Parameter(torch.tensor(float(gain)))

    def forward(self, x: Tensor, t: float, clean: Tensor) -> Tensor:
        sigma = S_MIN * (S_MAX / S_MIN) ** t
        return -self.gain * (x - clean) / sigma**2


def sde_sample(
    model: nn.Module, batch: dict[str, Tensor], generator: torch.Generator, steps: int = 30
) -> Tensor:
    """Reverse VE SDE ``dx = -g^2 score dt + g dw`` (``g^2 = 2 sigma^2 ln(S_MAX/S_MIN)``),
    N Euler-Maruyama steps from t = 1 to 0; all noise drawn from ``generator``."""
    clean = batch["clean"].double()
    x = clean + S_MAX * torch.randn(clean.shape, generator=generator, dtype=torch.float64)
    log_r = math.log(S_MAX / S_MIN)
    h = 1.0 / steps
    for k in range(steps):
        t = 1.0 - k * h
        g2 = 2 * (S_MIN * (S_MAX / S_MIN) ** t) ** 2 * log_r
        noise = torch.randn(clean.shape, generator=generator, dtype=torch.float64)
        x = x + h * g2 * model(x, t, clean) + math.sqrt(h * g2) * noise
    return x.float()


def converged_si_sdr(clean: Tensor) -> Tensor:
    """SI-SDR the exact reverse process reaches on average: the sample at t = 0 is
    ``clean + S_MIN z``, so SI-SDR ~ 10 log10(||clean - mean||^2 / (L S_MIN^2))."""
    c = clean.double() - clean.double().mean(-1, keepdim=True)
    return 10 * torch.log10(c.pow(2).sum(-1) / (clean.shape[-1] * S_MIN**2))


def speech_batches(n: int = 4, seconds: float = 0.5) -> list[dict[str, Tensor]]:
    from models.audio import make_mixtures

    mixes = make_mixtures("heldout", n, seed=0, seconds=seconds)
    return [
        {
            "noisy": torch.stack([m.noisy for m in mixes]),  # (B, L)
            "clean": torch.stack([m.clean for m in mixes]),  # (B, L)
        }
    ]


def analytic_target(gain_raw: float = 1.0, gain_ema: float | None = 1.0, **kw) -> EvalTarget:
    """EvalTarget over the analytic model; ``weights`` hold raw and EMA gains."""
    model = AnalyticScore(gain_ema if gain_ema is not None else gain_raw)
    weights = {
        "raw": {"gain": torch.tensor(float(gain_raw))},
        "ema": None if gain_ema is None else {"gain": torch.tensor(float(gain_ema))},
    }
    opts = dict(
        model=model,
        batches=speech_batches(),
        sample=sde_sample,
        weights=weights,
        evaluated="ema",
        reference={"steps": 8, "weights": "ema"},
        metrics=None,
        name="analytic point-mass diffusion",
    )
    opts.update(kw)
    return EvalTarget(**opts)


def analytic_si_sdr_target() -> EvalTarget:
    """For the CLI tests: SI-SDR only (fast)."""
    from diagnostics._eval_audit._metrics import builtin_metrics

    return analytic_target(metrics=builtin_metrics(16000, ["si_sdr"]))


def no_sampler_target() -> EvalTarget:
    return analytic_target(sample=None)


def ablation_target():  # an AblationTarget: has no protocol sampler
    from diagnostics import AblationTarget

    return AblationTarget(model=nn.Identity(), batches=[(torch.zeros(1, 2),)])


def test_the_analytic_sampler_converges_to_the_closed_form():
    # the stand-in itself must be right for the audit tests to mean anything
    from models.audio import si_sdr

    b = speech_batches()[0]
    expect = converged_si_sdr(b["clean"])
    far = si_sdr(sde_sample(AnalyticScore(), b, torch.Generator().manual_seed(3), 1000), b["clean"])
    few = si_sdr(sde_sample(AnalyticScore(), b, torch.Generator().manual_seed(3), 4), b["clean"])
    assert (far.double() - expect).abs().max() < 1.0, (far, expect)
    assert (few.double() < expect - 10).all(), f"4 steps should be far below it: {few} vs {expect}"
