"""Compiled models: ``torch.compile`` wrappers are watched through their original modules.

Module hooks do not fire inside compiled graphs and the op that produced a value may not exist
as such in fused code, so a failing step is replayed *without compilation*
(``torch.compiler.set_stance("force_eager")``) on the original eager modules, which share the
parameters and buffers; the healthy path is the same cheap check as for an eager model.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn

__all__ = [
    "clean_name",
    "eager_replay",
    "has_compiled",
    "is_compile_wrapper",
    "unwrap_compiled",
]

_ORIG = "_orig_mod"


def _optimized_module_type() -> type | None:
    try:
        from torch._dynamo.eval_frame import OptimizedModule
    except Exception:  # torch without dynamo
        return None
    return OptimizedModule


def unwrap_compiled(model: nn.Module) -> nn.Module:
    """The original module behind a ``torch.compile`` wrapper (``model`` itself otherwise)."""
    opt = _optimized_module_type()
    while opt is not None and isinstance(model, opt):
        model = getattr(model, _ORIG)
    return model


def is_compile_wrapper(module: nn.Module) -> bool:
    """Whether ``module`` is a ``torch.compile`` wrapper (an ``OptimizedModule``)."""
    opt = _optimized_module_type()
    return opt is not None and isinstance(module, opt)


def has_compiled(model: nn.Module) -> bool:
    """Whether ``model`` is, or contains, a ``torch.compile``-wrapped module."""
    opt = _optimized_module_type()
    return opt is not None and any(isinstance(m, opt) for m in model.modules())


def clean_name(name: str) -> str:
    """A module/parameter path without the compile wrapper's ``_orig_mod`` segments."""
    if _ORIG not in name:
        return name
    return ".".join(p for p in name.split(".") if p != _ORIG)


@contextlib.contextmanager
def eager_replay(enabled: bool = True) -> Iterator[None]:
    """Run compiled functions and modules eagerly (their original Python code) inside."""
    set_stance = getattr(torch.compiler, "set_stance", None)
    if not enabled or set_stance is None:
        yield
        return
    with set_stance("force_eager"):
        yield
