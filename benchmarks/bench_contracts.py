"""Per-call overhead of @contract, as ratios against a plain call in the same process.

Compares, on two [8, 16] float tensors plus the return:
  plain call | contracts off | contracts shapes | contracts full (with Range + Mask) |
  jaxtyping.jaxtyped + beartype (the hand-written alternative)

Run: python benchmarks/bench_contracts.py
"""

from __future__ import annotations

import statistics
import timeit
from typing import Annotated

import torch
from beartype import beartype
from jaxtyping import Bool, Float, jaxtyped
from torch import Tensor

import contracts
from contracts import Mask, Range, contract


def plain(a, b):
    return a


@contract
def checked(a: Float[Tensor, "B T"], b: Float[Tensor, "B T"]) -> Float[Tensor, "B T"]:
    return a


@contract
def checked_values(
    a: Annotated[Float[Tensor, "B T"], Range(-10, 10)],
    b: Annotated[Bool[Tensor, "B T"], Mask()],
) -> Annotated[Float[Tensor, "B T"], Range(-10, 10)]:
    return a


@jaxtyped(typechecker=beartype)
def jt(a: Float[Tensor, "B T"], b: Float[Tensor, "B T"]) -> Float[Tensor, "B T"]:
    return a


def per_call_us(fn, *args, n=20000, repeat=7) -> float:
    times = timeit.repeat(lambda: fn(*args), number=n, repeat=repeat)
    return statistics.median(times) / n * 1e6


def main() -> None:
    torch.set_num_threads(1)
    a, b = torch.randn(8, 16), torch.randn(8, 16)
    m = torch.ones(8, 16, dtype=torch.bool)
    rows = []
    base = per_call_us(plain, a, b)
    rows.append(("plain call", base))
    with contracts.mode("off"):
        rows.append(("contract, mode off", per_call_us(checked, a, b)))
    with contracts.mode("shapes"):
        rows.append(("contract, mode shapes", per_call_us(checked, a, b)))
    with contracts.mode("full"):
        rows.append(("contract, mode full (no value constraints)", per_call_us(checked, a, b)))
        rows.append(
            ("contract, mode full (Range + Mask + Range)", per_call_us(checked_values, a, m))
        )
    rows.append(("jaxtyping + beartype", per_call_us(jt, a, b)))
    jt_us = rows[-1][1]
    print(f"{'case':48s} {'µs/call':>9s} {'overhead µs':>12s} {'vs jaxtyping':>13s}")
    for name, us in rows:
        print(f"{name:48s} {us:9.2f} {us - base:12.2f} {us / jt_us:12.2f}x")


if __name__ == "__main__":
    main()
