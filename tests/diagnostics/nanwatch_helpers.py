"""Helpers shared by the NanWatch test files: the report of a failing step, a plain step,
the no-hooks-left check and source-line markers."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.modules.module as torch_module
from torch import nn

from diagnostics import NonFiniteError


def line_of(path: str, marker: str) -> int:
    """Line number (1-based) of the line of ``path`` that ends with ``# <marker>``."""
    with open(path) as f:
        hits = [i + 1 for i, line in enumerate(f) if line.rstrip().endswith(f"# <{marker}>")]
    assert len(hits) == 1, f"marker {marker!r} found {len(hits)} times"
    return hits[0]


def report_of(watch: Any, step: Callable, *args: Any, **kwargs: Any) -> Any:
    """The report of ``watch.run(step, ...)``, which must raise NonFiniteError."""
    try:
        watch.run(step, *args, **kwargs)
    except NonFiniteError as e:
        return e.report
    raise AssertionError("expected a NonFiniteError")


def loss_step(model: nn.Module, scale: float = 1.0) -> Callable:
    """A step function: the mean square of ``model(x)`` (times ``scale``), backward, the loss."""

    def step(x):
        loss = model(x).pow(2).mean() * scale
        loss.backward()
        return loss

    return step


def assert_no_hooks(model: nn.Module) -> None:
    """No module, parameter or global hook left, and anomaly mode off."""
    for m in model.modules():
        assert not m._forward_hooks and not m._forward_pre_hooks
        assert not m._forward_hooks_always_called
        assert not m._backward_hooks and not m._backward_pre_hooks
    assert all(not p._backward_hooks for p in model.parameters())
    assert not torch_module._global_forward_hooks
    assert not torch_module._global_forward_pre_hooks
    assert not torch_module._global_backward_hooks
    assert not torch.is_anomaly_enabled()
