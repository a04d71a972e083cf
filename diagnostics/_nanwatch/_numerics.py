"""Small pure helpers of NanWatch: RNG state, the loss of a step, the producer rule, fused
gradient reductions.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import warnings
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor
from torch.utils._pytree import tree_flatten

from ._types import NanWatchError

__all__ = [
    "RngState",
    "dense",
    "find_loss",
    "grads_l2",
    "grads_norm_all",
    "is_producer",
    "kind_of",
    "pick",
    "quiet_hooks",
    "rank",
    "tensors_of",
]


_LEAF_TYPES = (int, float, bool, str, bytes, type(None), torch.dtype, torch.device)
_MAX_DEPTH = 4  # containers pytree does not know, nested this deep at most


def tensors_of(obj: Any) -> list[Tensor]:
    """Every tensor in a module's inputs or outputs: :func:`tensors_in` (tuples, lists, dicts,
    pytree nodes), and also inside containers pytree does not know, which it keeps as a single
    opaque leaf: dataclasses and ``Mapping``/``list``/``tuple`` subclasses (a model's output
    object, a batch object). Plain containers take the same path as ``tensors_in``."""
    if isinstance(obj, Tensor):
        return [obj]
    out: list[Tensor] = []
    _walk(obj, out, 0)
    return out


def _walk(obj: Any, out: list[Tensor], depth: int) -> None:
    kind = type(obj)
    if kind is tuple or kind is list:
        items: Any = obj
    elif kind is dict:
        items = obj.values()
    else:
        leaves, _ = tree_flatten(obj)
        if not (len(leaves) == 1 and leaves[0] is obj):  # a pytree node: its leaves
            items = leaves
        elif depth >= _MAX_DEPTH:
            return
        elif dataclasses.is_dataclass(obj) and not isinstance(obj, type):
            items = [getattr(obj, f.name, None) for f in dataclasses.fields(obj)]
        elif isinstance(obj, Mapping):
            items = list(obj.values())
        elif isinstance(obj, (list, tuple)):
            items = obj
        else:
            return
        depth += 1
    for x in items:
        if isinstance(x, Tensor):
            out.append(x)
        elif not isinstance(x, _LEAF_TYPES):
            _walk(x, out, depth)


def rank() -> int | None:
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank()
    return None


class RngState:
    """CPU (+ initialized CUDA devices) generator states."""

    def __init__(self) -> None:
        self.cpu = torch.get_rng_state()
        self.cuda = (
            torch.cuda.get_rng_state_all()
            if torch.cuda.is_available() and torch.cuda.is_initialized()
            else None
        )

    def restore(self) -> None:
        torch.set_rng_state(self.cpu)
        if self.cuda is not None:
            torch.cuda.set_rng_state_all(self.cuda)


def find_loss(result: Any) -> Tensor:
    if isinstance(result, Tensor):
        loss = result
    elif isinstance(result, Mapping) and isinstance(result.get("loss"), Tensor):
        loss = result["loss"]
    elif isinstance(result, (tuple, list)) and result and isinstance(result[0], Tensor):
        loss = result[0]
    else:
        raise NanWatchError(
            "NanWatch.run(step_fn): step_fn returned "
            f"{type(result).__name__}, not a loss; expected a scalar tensor, a tuple/list whose "
            "first item is the loss, or a dict with key 'loss'. hint: `return loss` at the end "
            "of the step (after loss.backward())"
        )
    if loss.numel() != 1:
        raise NanWatchError(
            f"NanWatch.run(step_fn): the loss must be a scalar, got shape {tuple(loss.shape)}; "
            "hint: reduce it (loss.mean()) before backward"
        )
    return loss


def kind_of(nan: bool, inf: bool) -> str:
    return "nan+inf" if nan and inf else ("nan" if nan else "inf")


def is_producer(in_m: float, out_m: float) -> bool:
    """NaN out of NaN-free inputs, or non-finite out of finite inputs."""
    return (math.isnan(out_m) and not math.isnan(in_m)) or (
        not math.isfinite(out_m) and math.isfinite(in_m)
    )


def dense(g: Tensor) -> Tensor:
    return g.coalesce().values() if g.is_sparse else g


def grads_l2(grads: list[Tensor]) -> Tensor:
    """float32 L2 norm per gradient (same order) as one vector on the first gradient's device;
    one ``_foreach_norm`` per (device, dtype) group. NaN/Inf in a gradient makes its entry
    non-finite (so can overflow of huge finite values: confirm element-wise)."""
    groups: dict[tuple[torch.device, torch.dtype], list[int]] = {}
    gs = [dense(g) for g in grads]
    for i, g in enumerate(gs):
        groups.setdefault((g.device, g.dtype), []).append(i)
    dev = gs[0].device
    out = torch.empty(len(gs), dtype=torch.float32, device=dev)
    for idx in groups.values():
        out[torch.tensor(idx, device=dev)] = _foreach_l2([gs[i] for i in idx]).to(dev)
    return out


_FLOAT32_ACC = (torch.float16, torch.bfloat16, torch.float32)


def _foreach_l2(gs: list[Tensor]) -> Tensor:
    """float32 L2 norms of same-device, same-dtype tensors as one vector: half types are
    accumulated in float32; float64 and complex ones in their own precision (``_foreach_norm``
    cannot narrow a double or make a complex norm float32 on the way) and then cast, where a
    finite norm past float32's range becomes Inf (confirmed element-wise by the caller)."""
    if gs[0].dtype in _FLOAT32_ACC:
        return torch.stack(torch._foreach_norm(gs, 2, dtype=torch.float32))
    return torch.stack(torch._foreach_norm(gs, 2)).float()


@contextlib.contextmanager
def quiet_hooks():
    """Silence torch's warning that full backward hooks fire w.r.t. outputs (expected here)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Full backward hook is firing")
        yield


def pick(found: dict[str, Any], loss_value: float) -> tuple[str, list[Any]]:
    """(phase, producer candidates): forward producers first; a non-finite loss without one was
    made outside every module (the loss code); otherwise the backward producers."""
    if found["fwd"]:
        return "forward", found["fwd"]
    if not math.isfinite(loss_value):
        return "forward", []
    return "backward", found["bwd"]


def grads_norm_all(grads: list[Tensor], device: torch.device) -> Tensor:
    """L2 norm over every gradient as one float32 scalar on ``device``: the healthy-path check.

    One ``_foreach_norm`` per (device, dtype) group (accumulated in float32) plus a stack; NaN or
    Inf anywhere makes it non-finite. It can also overflow on huge *finite* gradients (> ~1e19),
    so a non-finite value is confirmed element-wise before it counts (failure path only).
    ``ord=inf`` would not overflow but is far slower on CPU (docs/results/nanwatch.json,
    ``grad_check_us``).
    """
    groups: dict[tuple[torch.device, torch.dtype], list[Tensor]] = {}
    for g in grads:
        if g.is_sparse:
            g = g.coalesce().values()
        groups.setdefault((g.device, g.dtype), []).append(g)
    outs = []
    for gs in groups.values():
        outs.append(_foreach_l2(gs).norm().to(device))
    if not outs:
        return torch.zeros((), device=device)
    return outs[0] if len(outs) == 1 else torch.stack(outs).norm()
