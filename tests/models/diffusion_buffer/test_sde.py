"""BBED σ(t): closed form vs scipy quadrature, differentiability, device-agnostic torch ops."""

import math

import numpy as np
import pytest
import scipy.integrate as scipy_integrate
import scipy.special as scipy_special
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from models.diffusion_buffer import BBED, DiffusionBufferConfig, ein


def _ref_variance(t: float, k: float = 2.6, theta: float = 0.52) -> float:
    integral = scipy_integrate.quad(lambda s: k ** (2 * s) / (1 - s) ** 2, 0, t, limit=200)[0]
    return (1 - t) ** 2 * theta * integral


@settings(max_examples=25, deadline=None)
@given(st.floats(1e-4, 0.9999))
def test_variance_matches_numerical_integration(t):
    sde = BBED(DiffusionBufferConfig())
    got = sde.variance(torch.tensor([t], dtype=torch.float64)).item()
    assert got == pytest.approx(_ref_variance(t), rel=1e-9, abs=1e-15)


@pytest.mark.parametrize("t", [0.03, 0.2, 0.5, 0.9, 0.999])
def test_variance_float32_close(t):
    got = BBED(DiffusionBufferConfig()).variance(torch.tensor([t])).item()
    assert got == pytest.approx(_ref_variance(t), rel=1e-4)


def test_ein_matches_scipy_exp1():
    x = np.linspace(1e-3, 2 * math.log(2.6), 20)
    ref = scipy_special.exp1(x) + np.euler_gamma + np.log(x)
    np.testing.assert_allclose(ein(torch.tensor(x)).numpy(), ref, rtol=1e-12)


def test_sigma_endpoints_and_differentiable():
    sde = BBED(DiffusionBufferConfig())
    assert sde.sigma(torch.tensor([0.0, 1.0])).tolist() == [0.0, 0.0]  # bridge pins both ends
    t = torch.tensor([0.1, 0.4, 0.8], dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(sde.variance, (t,))
    # dΣ/dt at 0 equals g(0)² = θ
    t0 = torch.tensor([1e-6], dtype=torch.float64, requires_grad=True)
    (d,) = torch.autograd.grad(sde.variance(t0).sum(), t0)
    assert d.item() == pytest.approx(0.52, rel=1e-4)


def test_bridge_step_with_true_x0_keeps_marginal_mean():
    sde = BBED(DiffusionBufferConfig())
    x0, y = torch.randn(1000, dtype=torch.float64), torch.randn(1000, dtype=torch.float64)
    t, tn = torch.tensor(0.9, dtype=torch.float64), torch.tensor(0.5, dtype=torch.float64)
    z = torch.randn(1000, dtype=torch.float64)
    x = sde.mean(x0, y, t) + sde.sigma(t) * z
    nxt = sde.bridge_step(x, y, x0, t, tn)
    torch.testing.assert_close(nxt, sde.mean(x0, y, tn) + sde.sigma(tn) * z)
