"""Count the host syncs a piece of CUDA work issues.

torch's sync debug mode warns at every operation that makes the host wait for the device
(``.item()``, ``.cpu()``, a boolean of a CUDA tensor, ...); counting those warnings over one call
says what a tool costs in host syncs, the figure that matters on a GPU more than its FLOPs.

Example:
    >>> import torch, diagnostics
    >>> x = torch.ones(4, device="cuda")  # doctest: +SKIP
    >>> diagnostics.count_host_syncs(lambda: x.sum().item())  # doctest: +SKIP
    1
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import torch

__all__ = ["count_host_syncs"]


def count_host_syncs(fn: Callable[[], Any]) -> int:
    """Run ``fn()`` once and return how many host syncs it issued (CUDA only).

    Raises:
        RuntimeError: no CUDA device (there is nothing to synchronize with).
    """
    if not torch.cuda.is_available():
        raise RuntimeError("count_host_syncs(): needs a CUDA device; on CPU there are no syncs")
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("warn")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            fn()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    return sum("synchroniz" in str(w.message) for w in caught)
