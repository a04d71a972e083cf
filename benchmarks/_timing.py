"""The one timing loop of the overhead benchmarks: interleaved, shuffled repeats, medians.

Baseline and tools run in the same process, one after another inside each repeat, in a new
order every repeat (so no variant always runs first or last). Both clocks are kept: process CPU
time is the steadier figure on a shared machine (other processes do not inflate it); on CUDA only
the wall time means anything.

Example:
    >>> t = time_variants({"bare": step, "tool": tool_step}, repeats=15, device="cpu")
    >>> ratio = t["tool"][1] / t["bare"][1]  # CPU seconds
"""

from __future__ import annotations

import random
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch

__all__ = ["sync", "time_variants"]


def sync(device: str) -> None:
    """Wait for the device (CUDA) so a clock read after it covers the queued work."""
    if device == "cuda":
        torch.cuda.synchronize()


def time_variants(
    variants: dict[str, Callable[[], Any]], repeats: int, device: str = "cpu"
) -> dict[str, tuple[float, float]]:
    """Median (wall seconds, process CPU seconds) per variant, after one warm-up call each."""
    wall: dict[str, list[float]] = {k: [] for k in variants}
    cpu: dict[str, list[float]] = {k: [] for k in variants}
    for fn in variants.values():  # warm-up
        fn()
    order = list(variants.items())
    shuffle = random.Random(0).shuffle
    for _ in range(repeats):
        shuffle(order)
        for k, fn in order:
            sync(device)
            t0, c0 = time.perf_counter(), time.process_time()
            fn()
            sync(device)
            wall[k].append(time.perf_counter() - t0)
            cpu[k].append(time.process_time() - c0)
    return {k: (statistics.median(wall[k]), statistics.median(cpu[k])) for k in variants}
