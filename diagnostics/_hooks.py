"""Scoped hook helpers: every hook torchdx registers lives in a :class:`HookSet` that removes
all of them on ``close()`` / ``__exit__`` — including when the code inside raises (the lesson
of TransformerLens issues #156, #1323, #1636).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torch.utils._pytree import tree_flatten

__all__ = ["HookSet", "amax_abs", "max_abs", "tensors_in"]


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


_LEAF_TYPES = (int, float, bool, str, bytes, type(None), torch.dtype, torch.device)


def tensors_in(obj: Any) -> list[Tensor]:
    """Every tensor inside a nested structure of tuples/lists/dicts (pytree leaves), in order.

    Plain tuples, lists and dicts are walked directly (the common case of module arguments and
    outputs, without pytree's per-node overhead); anything else goes through ``tree_flatten``.
    """
    if isinstance(obj, Tensor):
        return [obj]
    out: list[Tensor] = []
    _collect(obj, out)
    return out


def _collect(obj: Any, out: list[Tensor]) -> None:
    kind = type(obj)
    if kind is tuple or kind is list:
        for x in obj:
            if isinstance(x, Tensor):
                out.append(x)
            elif not isinstance(x, _LEAF_TYPES):
                _collect(x, out)
    elif kind is dict:
        for x in obj.values():
            if isinstance(x, Tensor):
                out.append(x)
            elif not isinstance(x, _LEAF_TYPES):
                _collect(x, out)
    elif isinstance(obj, Tensor):
        out.append(obj)
    elif not isinstance(obj, _LEAF_TYPES):
        leaves, _ = tree_flatten(obj)
        out.extend(leaf for leaf in leaves if isinstance(leaf, Tensor))


_F32_MAX = torch.finfo(torch.float32).max


def amax_abs(t: Tensor) -> Tensor:
    """max|x| of one floating/complex tensor as a float32 scalar on its device (no sync).

    ``torch.aminmax`` reads the tensor once and propagates NaN; on CPU it is much cheaper than
    ``vector_norm(ord=inf)`` (see docs/DIAGNOSTICS.md, "Where the time went"). A float64 value beyond float32's range is clamped to its max
    (a finite value stays finite).
    """
    t = t.detach()
    if t.is_complex():
        t = t.abs()
    lo, hi = torch.aminmax(t)
    v = torch.maximum(hi, lo.neg())
    if v.dtype == torch.float64:
        v = torch.where(v.isfinite(), v.clamp(max=_F32_MAX), v)
    return v.float()


def max_abs(tensors: list[Tensor], device: torch.device | None = None) -> Tensor:
    """Max |x| over all floating/complex tensors, as a float32 scalar on ``device`` (no sync).

    NaN anywhere makes the result NaN, an Inf (and no NaN) makes it Inf, so one number answers
    "any NaN?", "all finite?" and "how close to the fp16 limit?". Empty/integer tensors count 0.
    """
    vals = []
    for t in tensors:
        if (t.is_floating_point() or t.is_complex()) and t.numel() > 0:
            v = amax_abs(t)
            vals.append(v if device is None else v.to(device, non_blocking=True))
    if not vals:
        dev = device if device is not None else torch.device("cpu")
        return torch.zeros((), dtype=torch.float32, device=dev)
    if device is None:
        device = vals[0].device
        vals = [v.to(device, non_blocking=True) for v in vals]
    return torch.stack(vals).amax() if len(vals) > 1 else vals[0]
