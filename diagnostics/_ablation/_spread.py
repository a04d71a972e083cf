"""Do a site's conditions differ, and what can the shuffle swap?

* :class:`Spread`: do the examples differ over the **whole run** (every batch), not within one
  batch: batches of one example hold conditions that differ from each other's;
* :func:`swaps_within`: does a batch's own shuffle (a derangement of its examples) give any
  example a different condition? A batch of one cannot (a derangement of one element is the
  identity), nor can a batch whose examples share one condition;
* :func:`pairing`: a batch of one example takes its shuffled condition from a neighbouring
  batch; whether that pairing swaps anything, or why it cannot be made.

A module site's *inputs* count as its condition too: an encoder whose output is the same for
every example although its inputs differ has collapsed, and a shuffle of its (identical)
output is then a real test that finds nothing.
"""

from __future__ import annotations

from collections.abc import Hashable

import numpy as np
import torch
from torch import Tensor

from diagnostics._ablation._runner import Captured
from diagnostics._stats import VARY_TOL, flat_real, varies

__all__ = ["LEFT_OUT", "Spread", "differs", "pairing", "swapped_rows", "swaps_within"]

# why a batch is left out of the shuffle statistics -> the words of the note and the reason
LEFT_OUT = {
    "same": "within the batch every example has the same condition, so shuffling swaps nothing",
    "alone": "a batch of one example, and no other batch to take a condition from",
    "shape": "a batch of one example whose neighbouring batch's site value has another shape",
    "same_pair": "a batch of one example with the same condition as its neighbouring batch",
}


def differs(a: Tensor, b: Tensor) -> bool:
    """Do ``a`` ``(B, ...)`` and ``b`` ``(B', ...)`` hold two different examples between them?
    Other trailing shapes or dtypes count as different."""
    if a.shape[1:] != b.shape[1:] or a.dtype != b.dtype:
        return True
    return varies(torch.cat([a, b.to(a.device)]))


class Spread:
    """Whether the examples differ anywhere in the run: the first example seen under each key
    is the reference every later batch (and the batch itself) is compared with.

    Example:
        >>> s = Spread()
        >>> s.add("c", torch.ones(1, 2)); s.add("c", torch.ones(1, 2)); s.varies
        False
        >>> s.add("c", torch.zeros(1, 2)); s.varies
        True
    """

    def __init__(self) -> None:
        self._ref: dict[Hashable, Tensor] = {}
        self.varies = False

    def add(self, key: Hashable, rows: Tensor) -> None:
        """Compare the examples ``rows`` ``(B, ...)`` with the reference under ``key``."""
        if rows.dim() == 0 or rows.shape[0] == 0:
            return
        ref = self._ref.get(key)
        if ref is None:
            ref = self._ref[key] = rows[:1].detach().clone()
        if not self.varies:
            self.varies = differs(ref, rows.detach())


def swaps_within(cap: Captured) -> bool:
    """Does shuffling the batch's own examples give any example a different condition (the
    site's value, or a module site's inputs, differ between the examples)?"""
    if any(varies(v) for v in cap.values):
        return True
    return any(varies(t) for call in cap.inputs or [] for t in call)


def swapped_rows(cap: Captured, perm: Tensor) -> np.ndarray:
    """``(B,)`` bool: does the permutation ``perm`` give example ``j`` a condition other than
    its own (the site's value, or a module site's inputs, differ between rows ``j`` and
    ``perm[j]``)? Examples that share a condition (a class id, a repeated reference) are not
    swapped by a permutation that pairs them."""
    b = perm.numel()
    out = np.zeros(b, dtype=bool)
    tensors = [*cap.values, *(t for call in cap.inputs or [] for t in call)]
    for t in tensors:
        if t.dim() == 0 or t.shape[0] != b:
            continue
        x = flat_real(t)  # (B, D)
        scale = float(x.norm(dim=1).max().clamp_min(1e-12))
        d = (x - x[perm.to(x.device)]).norm(dim=1) > VARY_TOL * scale
        out |= d.cpu().numpy()
    return out


def pairing(own: Captured, other: Captured) -> str | None:
    """Can a batch of one example (``own``) take its shuffled condition from ``other``'s first
    example? ``None`` when it can and it swaps something; else the :data:`LEFT_OUT` key."""
    if [v.shape[1:] for v in own.values] != [v.shape[1:] for v in other.values]:
        return "shape"
    if any(differs(a, b[:1]) for a, b in zip(own.values, other.values, strict=True)):
        return None
    for mine, theirs in zip(own.inputs or [], other.inputs or [], strict=False):
        if len(mine) != len(theirs) or any(
            differs(a, b[:1]) for a, b in zip(mine, theirs, strict=True)
        ):
            return None
    return "same_pair"
