"""An example target for ``python -m diagnostics.cond_ablation``: a small conditioned denoiser.

    python -m diagnostics.cond_ablation --target diagnostics.ablation_example:healthy_target

It is also what the ablation tests and the benchmark run on.

``CondDenoiser`` mimics the noise-conditioned SGMSE+ layout at toy scale: a condition encoder
whose output is the condition embedding ``[B, E]``, a learned ``null_embedding`` used when the
condition is absent or dropped (CFG), FiLM injection into an MLP over ``(x_t, t)``. The data:
four "noise types" (labels), each with its own clean prototype; the condition is a noisy
one-hot of the type, so the condition tells the denoiser which prototype to restore.

Factories (``--target diagnostics.ablation_example:NAME``): ``healthy_target`` (trained with
CFG p = 0.2), ``severed_target`` (embedding multiplied by 0), ``cfg0_target`` (trained with
p = 0: the null embedding never trained), ``small_target`` (two static batches, fast).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from diagnostics._ablation._types import AblationTarget

N_TYPES = 4


@dataclass
class StandInConfig:
    d: int = 16  # data dim
    c: int = 8  # condition (reference) dim
    e: int = 16  # embedding dim
    h: int = 64  # hidden width
    sever: bool = False  # multiply the embedding by 0 (conditioning path severed)


def sigma(t: Tensor) -> Tensor:
    """Noise std at diffusion time t in [0, 1]."""
    return 0.02 + 1.5 * t


class CondDenoiser(nn.Module):
    """x_t [B, D], t [B], cond [B, C] (or None), drop_cond bool [B] -> x0 estimate [B, D]."""

    def __init__(self, cfg: StandInConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.cond_encoder = nn.Sequential(
            nn.Linear(cfg.c, cfg.e), nn.Tanh(), nn.Linear(cfg.e, cfg.e)
        )
        self.null_embedding = nn.Parameter(torch.randn(cfg.e))
        self.film = nn.Linear(cfg.e, 2 * cfg.h)
        self.inp = nn.Linear(cfg.d + 1, cfg.h)
        self.out = nn.Sequential(
            nn.SiLU(), nn.Linear(cfg.h, cfg.h), nn.SiLU(), nn.Linear(cfg.h, cfg.d)
        )

    def forward(
        self, x_t: Tensor, t: Tensor, cond: Tensor | None = None, drop_cond: Tensor | None = None
    ) -> Tensor:
        b = x_t.shape[0]
        if cond is None:
            emb = self.null_embedding.expand(b, -1)  # (B, E)
        else:
            emb = self.cond_encoder(cond)  # (B, E)
            if drop_cond is not None:
                emb = torch.where(drop_cond[:, None], self.null_embedding.expand(b, -1), emb)
        if self.cfg.sever:
            emb = emb * 0.0
        h = self.inp(torch.cat([x_t, t[:, None]], dim=1))  # (B, H)
        scale, shift = self.film(emb).chunk(2, dim=-1)  # (B, H) each
        return self.out(h * (1 + scale) + shift)


def make_data(n: int, seed: int, cfg: StandInConfig) -> tuple[Tensor, Tensor, Tensor]:
    """(x0 [n, D], cond [n, C], labels [n]) from a fixed set of prototypes."""
    g = torch.Generator().manual_seed(1234)
    protos = torch.randn(N_TYPES, cfg.d, generator=g)  # (K, D), fixed across calls
    keys = torch.randn(N_TYPES, cfg.c, generator=g)  # (K, C)
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, N_TYPES, (n,), generator=g)
    x0 = protos[labels] + 0.1 * torch.randn(n, cfg.d, generator=g)
    cond = keys[labels] + 0.1 * torch.randn(n, cfg.c, generator=g)
    return x0, cond, labels


def fresh(cfg: StandInConfig, seed: int = 0) -> CondDenoiser:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return CondDenoiser(cfg)


def train(
    cfg: StandInConfig,
    p_drop: float,
    steps: int = 300,
    seed: int = 0,
    monitor=None,
    model: CondDenoiser | None = None,
):
    """Train with CFG dropout probability ``p_drop`` (``monitor.step()`` after each step);
    returns the model in eval mode."""
    model = fresh(cfg, seed) if model is None else model
    model.train()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        opt = torch.optim.Adam(model.parameters(), lr=3e-3)
        x0_all, cond_all, _ = make_data(2048, seed + 1, cfg)
        for _ in range(steps):
            idx = torch.randint(0, 2048, (64,))
            x0, cond = x0_all[idx], cond_all[idx]
            t = torch.rand(64)
            x_t = x0 + sigma(t)[:, None] * torch.randn_like(x0)
            drop = torch.rand(64) < p_drop
            loss = ((model(x_t, t, cond, drop_cond=drop) - x0) ** 2).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            if monitor is not None:
                monitor.step()
    return model.eval()


def at_time(batch: dict, t: float, gen: torch.Generator) -> dict:
    x0 = batch["x0"]
    tt = torch.full((x0.shape[0],), t)
    z = torch.randn(x0.shape, generator=gen)
    return {"x_t": x0 + sigma(tt)[:, None] * z, "t": tt, "cond": batch["cond"]}


def make_target(
    model: CondDenoiser, n_batches: int = 4, b: int = 16, seed: int = 7, times: bool = True
) -> AblationTarget:
    x0, cond, labels = make_data(n_batches * b, seed, model.cfg)
    batches = [
        {"x0": x0[i * b : (i + 1) * b], "cond": cond[i * b : (i + 1) * b]} for i in range(n_batches)
    ]
    labs = [[f"type{int(v)}" for v in labels[i * b : (i + 1) * b]] for i in range(n_batches)]
    ts = [0.05 + 0.9 * k / 7 for k in range(8)]
    return AblationTarget(
        model=model,
        batches=batches,
        sites=["cond_encoder", "arg:cond"],
        labels=labs,
        null={"cond_encoder": model.null_embedding, "arg:cond": lambda c: None},
        times=ts if times else None,
        at_time=at_time if times else None,
        embedding_site="cond_encoder",
        name="stand-in CondDenoiser",
    )


def make_static_target(model: CondDenoiser, n_batches: int = 3, b: int = 16) -> AblationTarget:
    """No diffusion times: the batches are model inputs already (t fixed at 0.8)."""
    tgt = make_target(model, n_batches, b, times=False)
    g = torch.Generator().manual_seed(3)
    tgt.batches = [at_time(bt, 0.8, g) for bt in tgt.batches]
    return tgt


_CACHE: dict[tuple, CondDenoiser] = {}


def trained(p_drop: float = 0.2, sever: bool = False, steps: int = 300) -> CondDenoiser:
    key = (p_drop, sever, steps)
    if key not in _CACHE:
        n = torch.get_num_threads()
        torch.set_num_threads(1)  # tiny model: one thread is fastest on a shared machine
        try:
            _CACHE[key] = train(StandInConfig(sever=sever), p_drop, steps)
        finally:
            torch.set_num_threads(n)
    return _CACHE[key]


# ---- factories for --target
def healthy_target() -> AblationTarget:
    return make_target(trained(0.2))


def severed_target() -> AblationTarget:
    return make_target(trained(0.2, sever=True))


def cfg0_target() -> AblationTarget:
    return make_target(trained(0.0))


def small_target() -> AblationTarget:
    """Two batches, no diffusion times: fast, for CLI error tests."""
    return make_static_target(trained(0.2), n_batches=2, b=8)


def sample_fn(model: CondDenoiser, batch: dict, scale: float, seed: int) -> dict:
    """A toy 'sampler': CFG-guided one-step denoise at t=0.8, scored by negative MSE."""
    g = torch.Generator().manual_seed(seed)
    x0 = batch["x0"]
    tt = torch.full((x0.shape[0],), 0.8)
    x_t = x0 + sigma(tt)[:, None] * torch.randn(x0.shape, generator=g)
    cond = model(x_t, tt, batch["cond"])
    uncond = model(x_t, tt, None)
    est = uncond + scale * (cond - uncond)
    return {"neg_mse": -((est - x0) ** 2).mean(dim=1)}
