"""The state of one ablation run and the batch helpers every pass uses (streamed batches,
labels, seeds)."""

from __future__ import annotations

import ctypes
import itertools
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor

from diagnostics._ablation._runner import Runner, seed_of
from diagnostics._ablation._types import AblationError, AblationTarget

__all__ = ["Run", "flat_labels", "iter_batches", "r6", "trim_heap"]


def _malloc_trim() -> Callable[[], object]:
    """glibc's ``malloc_trim(0)``, or a no-op elsewhere."""
    try:
        fn = ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):
        return lambda: None
    return lambda: fn(0)


# Streaming keeps only per-example numbers, but glibc raises its mmap threshold after the first
# large free, so later multi-MB outputs come from the heap, and the small arrays kept per item
# pin its top: RSS then grows with the examples although nothing is kept (measured in
# benchmarks/bench_cond_ablation.py). Returning the free heap after each item keeps it flat.
trim_heap = _malloc_trim()


def r6(x: float) -> float:
    """Round for the report (6 significant digits)."""
    return float(f"{x:.6g}")


def iter_batches(batches: Any, what: str) -> Iterable[Any]:
    """``batches`` if it can be read more than once and is not empty; else a clear error.

    A list, a tuple or a ``torch.utils.data.DataLoader`` (without ``shuffle=True``) qualify; a
    generator or any other one-shot iterator does not (the engine reads the batches once per
    site, after a statistics pass).
    """
    if isinstance(batches, (str, bytes, Mapping)) or not isinstance(batches, Iterable):
        raise AblationError(
            f"{what} is {type(batches).__name__}; give a list of batches or a DataLoader"
        )
    if isinstance(batches, Iterator):
        raise AblationError(
            f"{what} is a one-shot iterator ({type(batches).__name__}): the ablation reads the "
            "batches several times (a statistics pass, then one pass per site), and a generator "
            "is empty after the first; give a list or a DataLoader"
        )
    sampler = getattr(batches, "sampler", None)
    if type(sampler).__name__ == "RandomSampler":
        raise AblationError(
            f"{what} is a DataLoader with shuffle=True: every pass would see other batches, "
            "so intact and ablated runs would not be paired; use shuffle=False"
        )
    if next(iter(batches), _EMPTY) is _EMPTY:
        n = len(batches) if hasattr(batches, "__len__") else 0
        raise AblationError(
            f"{what} is empty: give at least one batch of inputs (got a "
            f"{type(batches).__name__} with {n} batches)"
        )
    return batches


_EMPTY = object()


@dataclass
class Run:
    """The state shared by every pass of one :func:`run_ablation` call."""

    runner: Runner
    target: AblationTarget
    seed: int
    n_boot: int
    min_effect: float
    times: list[Any]
    batch_variants: bool
    progress: bool
    sharding: tuple[int, int]  # (rank, world size)
    intact_metrics: dict[int, dict[str, np.ndarray]] = field(default_factory=dict)

    def items(self, batches: Iterable[Any] | None = None, times: bool = True) -> Iterator[tuple]:
        """``(k, bi, ti, batch)`` over the batches (streamed) and the time indices."""
        k = 0
        for bi, raw in enumerate(self.target.batches if batches is None else batches):
            raw = self.runner.to_device(raw)
            for ti in range(len(self.times) if times else 1):
                yield k, bi, ti, raw
                k += 1

    def paired_items(self) -> Iterator[tuple[int, int, int, Any, tuple[int, Any] | None]]:
        """``(k, bi, ti, batch, neighbour)`` like :meth:`items`, with a neighbouring batch
        ``(index, batch)`` for each: the previous one, the next one for the first batch, and
        ``None`` when there is only one. The shuffle of a batch of one example takes its
        condition from it (streamed: at most three batches are held)."""
        it = enumerate(self.target.batches)
        window = list(itertools.islice(it, 2))
        prev: tuple[int, Any] | None = None
        k = 0
        while window:
            bi, raw = window[0]
            neighbour = prev if prev is not None else (window[1] if len(window) > 1 else None)
            moved = self.runner.to_device(raw)
            for ti in range(len(self.times)):
                yield k, bi, ti, moved, neighbour
                k += 1
            prev = window.pop(0)
            window.extend(itertools.islice(it, 1))

    def n_items(self) -> int | None:
        b = self.target.batches
        return len(b) * len(self.times) if hasattr(b, "__len__") else None

    def model_input(self, raw: Any, bi: int, ti: int) -> Any:
        """Batch ``bi`` as the model sees it at time index ``ti`` (``x_t`` noise from the seed)."""
        if self.target.at_time is None:
            return raw
        gen = torch.Generator().manual_seed(seed_of(self.seed, 1, bi, ti))
        return self.runner.to_device(self.target.at_time(raw, float(self.times[ti]), gen))

    def bar(self, iterable: Iterable[Any], desc: str, total: int | None = None) -> Iterable[Any]:
        """A tqdm progress bar over ``iterable`` when progress is on."""
        if not self.progress:
            return iterable
        from tqdm.auto import tqdm

        return tqdm(iterable, desc=desc, leave=False, total=total)


def flat_labels(given: Any, sizes: list[int]) -> list[str] | None:
    """One string label per example from per-batch sequences or a flat list."""
    if given is None:
        return None
    labels = list(given)
    n = sum(sizes)
    if len(labels) == len(sizes) and all(
        isinstance(x, (list, tuple)) or (isinstance(x, Tensor) and x.dim() == 1) for x in labels
    ):
        flat = [str(v.item() if isinstance(v, Tensor) else v) for seq in labels for v in seq]
    else:
        flat = [str(v.item() if isinstance(v, Tensor) else v) for v in labels]
    if len(flat) != n:
        raise AblationError(
            f"AblationTarget.labels has {len(flat)} labels for {n} examples "
            "(give one label per batch item)"
        )
    return flat
