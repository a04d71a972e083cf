"""Test-only targets for the ablation and CLI tests: factories that fail in known ways and a
model with a tuple-returning site. The example target itself is product code
(:mod:`diagnostics.ablation_example`), re-exported here for the test helpers that use it."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from diagnostics import AblationTarget
from diagnostics.ablation_example import *  # noqa: F403 (the example target's names)
from diagnostics.ablation_example import CondDenoiser, StandInConfig


def raising_factory() -> AblationTarget:
    raise RuntimeError("checkpoint not found: /nowhere.pt")


def wrong_type_factory():
    return {"model": CondDenoiser(StandInConfig())}


def empty_target() -> AblationTarget:
    return AblationTarget(model=CondDenoiser(StandInConfig()), batches=[])


class _TupleOut(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.enc = nn.Linear(8, 16)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        e = self.enc(x)
        return e, e.norm(dim=1)


class TupleSiteModel(nn.Module):
    """A model whose ``pair`` submodule returns a tuple (embedding, norm)."""

    def __init__(self) -> None:
        super().__init__()
        self.pair = _TupleOut()
        self.head = nn.Linear(16, 4)

    def forward(self, cond: Tensor) -> Tensor:
        e, n = self.pair(cond)
        return self.head(e) * n[:, None] / math.sqrt(16)


def tuple_target() -> AblationTarget:
    torch.manual_seed(0)
    m = TupleSiteModel().eval()
    return AblationTarget(
        model=m, batches=[{"cond": torch.randn(6, 8)} for _ in range(2)], sites=["pair"]
    )
