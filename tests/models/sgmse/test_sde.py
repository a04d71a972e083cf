import torch

from models.sgmse import OUVESDE


def test_std_solves_variance_ode():
    sde = OUVESDE()
    n = 20000
    t = torch.linspace(0, 1, n + 1, dtype=torch.float64)
    g2 = sde.diffusion(t) ** 2
    v, dt = 0.0, 1.0 / n
    for i in range(0, n, 1):  # explicit Euler of dv/dt = -2 theta v + g^2
        v += (-2 * sde.theta * v + g2[i].item()) * dt
    assert abs(v**0.5 - sde.std(torch.ones(1, dtype=torch.float64)).item()) < 1e-3


def test_marginal_mean_moves_from_x0_to_y():
    sde = OUVESDE()
    x0 = torch.ones(1, 4, 3, dtype=torch.complex64)
    y = torch.zeros(1, 4, 3, dtype=torch.complex64)
    mean0, std0 = sde.marginal_prob(x0, y, torch.zeros(1))
    mean1, _ = sde.marginal_prob(x0, y, torch.ones(1))
    torch.testing.assert_close(mean0, x0)
    assert std0.item() == 0.0
    assert abs(mean1.real.mean().item() - torch.exp(torch.tensor(-1.5)).item()) < 1e-6
    prior = sde.prior_sampling(y.expand(64, 4, 3).contiguous(), torch.Generator().manual_seed(0))
    assert abs(prior.abs().pow(2).mean().sqrt().item() - sde.std(torch.ones(1)).item()) < 0.05
