"""Planted models with known cost exponents for the scaling tests (and ``--target`` factories).

* ``linear``: two Conv1d layers over ``[1, C, T]``: memory and time linear in T.
* ``quadratic``: the convs plus an explicit ``T x T`` attention (``attn``): memory ~ T^2.
* ``cubic``: the convs, the attention and a module (``cube``) that allocates ``T x T x T``.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from diagnostics import ScalingTarget

C = 8


class Convs(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv1d(C, C, 5, padding=2)
        self.c2 = nn.Conv1d(C, C, 5, padding=2)

    def forward(self, x: Tensor) -> Tensor:
        return self.c2(torch.relu(self.c1(x)))


class Attention(nn.Module):
    """Explicit T x T scores: quadratic memory."""

    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(C, C)

    def forward(self, x: Tensor) -> Tensor:
        h = self.proj(x.transpose(1, 2))  # (B, T, C)
        att = (h @ h.transpose(1, 2) / C**0.5).softmax(dim=-1)  # (B, T, T)
        return (att @ h).transpose(1, 2)  # (B, C, T)


class Cube(nn.Module):
    """Allocates a T x T x T tensor: cubic memory."""

    def forward(self, x: Tensor) -> Tensor:
        t = x.shape[-1]
        cube = x.new_ones(t, t, t) * x.mean()  # (T, T, T)
        return x + cube.mean()


class Planted(nn.Module):
    def __init__(self, kind: str) -> None:
        super().__init__()
        self.conv = Convs()
        self.attn = Attention() if kind in ("quadratic", "cubic") else None
        self.cube = Cube() if kind == "cubic" else None

    def forward(self, x: Tensor) -> Tensor:
        x = self.conv(x)
        if self.attn is not None:
            x = x + self.attn(x)
        if self.cube is not None:
            x = self.cube(x)
        return x


SIZES = {
    "linear": [4096, 8192, 16384, 32768],
    "quadratic": [128, 256, 512, 1024],
    "cubic": [16, 32, 64, 128],
}


def make(kind: str) -> ScalingTarget:
    torch.manual_seed(0)
    return ScalingTarget(
        model=Planted(kind).eval(),
        axes={"T": lambda n, g: (torch.randn(1, C, n, generator=g),)},
        sizes={"T": SIZES[kind]},
        name=kind,
    )


def linear() -> ScalingTarget:
    return make("linear")


def quadratic() -> ScalingTarget:
    return make("quadratic")


def cubic() -> ScalingTarget:
    return make("cubic")


def not_a_target() -> int:
    return 3
