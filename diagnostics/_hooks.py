"""Scoped hook helpers: every hook torchdx registers lives in a :class:`HookSet` that removes
all of them on ``close()`` / ``__exit__`` — including when the code inside raises (the lesson
of TransformerLens issues #156, #1323, #1636).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor
from torch.utils._pytree import tree_flatten

__all__ = ["HookSet", "max_abs", "tensors_in"]


class HookSet:
    """A bag of removable hook handles; a context manager that removes them all on exit.

    Example:
        >>> with HookSet() as hooks:
        ...     hooks.add(model.register_forward_hook(fn), "fwd")
        ...     model(x)
        >>> # all hooks are gone here, even if model(x) raised
    """

    def __init__(self) -> None:
        self._handles: list[Any] = []
        self._kinds: dict[str, int] = {}

    def add(self, handle: Any, kind: str = "hook") -> Any:
        """Keep ``handle`` (anything with ``.remove()``) for removal; returns it."""
        self._handles.append(handle)
        self._kinds[kind] = self._kinds.get(kind, 0) + 1
        return handle

    def close(self) -> None:
        """Remove every hook (idempotent); removal errors do not stop the others."""
        handles, self._handles = self._handles, []
        self._kinds = {}
        for h in reversed(handles):
            try:
                h.remove()
            except Exception:  # a hook already removed by its owner
                pass

    def __len__(self) -> int:
        return len(self._handles)

    def __enter__(self) -> HookSet:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        kinds = ", ".join(f"{n} {k}" for k, n in self._kinds.items()) or "empty"
        return f"HookSet({kinds})"


def tensors_in(obj: Any) -> Iterator[Tensor]:
    """Every tensor inside a nested structure of tuples/lists/dicts (pytree leaves)."""
    leaves, _ = tree_flatten(obj)
    for leaf in leaves:
        if isinstance(leaf, Tensor):
            yield leaf


def max_abs(tensors: list[Tensor], device: torch.device | None = None) -> Tensor:
    """Max |x| over all floating/complex tensors, as a float32 scalar on ``device`` (no sync).

    NaN anywhere makes the result NaN, an Inf (and no NaN) makes it Inf, so one number answers
    "any NaN?", "all finite?" and "how close to the fp16 limit?". Empty/integer tensors count 0.
    """
    vals = []
    for t in tensors:
        if (t.is_floating_point() or t.is_complex()) and t.numel() > 0:
            v = torch.linalg.vector_norm(t.detach(), ord=float("inf")).float()
            vals.append(v if device is None else v.to(device, non_blocking=True))
    if not vals:
        dev = device if device is not None else torch.device("cpu")
        return torch.zeros((), dtype=torch.float32, device=dev)
    if device is None:
        device = vals[0].device
        vals = [v.to(device, non_blocking=True) for v in vals]
    return torch.stack(vals).amax() if len(vals) > 1 else vals[0]
