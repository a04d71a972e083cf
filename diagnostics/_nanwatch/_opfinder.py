"""The op finder: a ``TorchDispatchMode`` that names the first aten op producing NaN/Inf."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from .._hooks import max_abs, tensors_in
from .._summary import summarize
from ._numerics import is_producer, kind_of
from ._source import from_node, from_stack

__all__ = ["OpFinder"]


class OpFinder(TorchDispatchMode):
    """Runs every aten op and stops at the first one that *produces* NaN/Inf (one sync per op)."""

    def __init__(self, backward_only: bool = False) -> None:
        super().__init__()
        self.backward_only = backward_only
        self.found: dict[str, Any] | None = None
        self.constant_ops: list[str] = []
        self.n_ops = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[override]
        kwargs = kwargs or {}
        node = torch._C._current_autograd_node()
        check = self.found is None and not (self.backward_only and node is None)
        if check:
            flat_in, _ = tree_flatten((args, kwargs))
            tin = [a for a in flat_in if isinstance(a, Tensor)]
            in_m = max_abs(tin) if tin else None  # before the op: in-place ops overwrite inputs
        out = func(*args, **kwargs)
        if not check:
            return out
        self.n_ops += 1
        touts = [t for t in tensors_in(out) if t.is_floating_point() or t.is_complex()]
        if not touts:
            return out
        out_m = float(max_abs(touts))
        if math.isfinite(out_m):
            return out
        in_v = 0.0 if in_m is None else float(in_m)
        if not is_producer(in_v, out_m):
            return out
        name = str(func).replace("::", ".")
        if any(isinstance(a, float) and not math.isfinite(a) for a in flat_in):
            self.constant_ops.append(name)  # masked_fill(m, -inf), full(-inf): a mask, not a fault
            return out
        nan = any(bool(torch.isnan(t).any()) for t in touts)
        self.found = {
            "op": name + (f" in {node.name()}" if node is not None else ""),
            "phase": "backward" if node is not None else "forward",
            "kind": kind_of(nan, not nan or any(bool(torch.isinf(t).any()) for t in touts)),
            "inputs": [summarize(t) for t in tin][:6],
            "outputs": [summarize(t) for t in touts][:4],
            # forward: the user line running now; backward: the forward line that made the node
            "source": from_stack() if node is None else from_node(node),
        }
        return out
