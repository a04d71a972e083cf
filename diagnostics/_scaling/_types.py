"""Public types of the scaling tool: the target, the settings, the error, and input parsers."""

from __future__ import annotations

import itertools
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from contracts import TorchdxError

__all__ = [
    "ScalingConfig",
    "ScalingError",
    "ScalingTarget",
    "check_sizes",
    "parse_bytes",
    "parse_sizes",
]


class ScalingError(TorchdxError, ValueError):
    """Bad input to the scaling tool (sizes, axis, budget, target); the message names it."""

    __module__ = "diagnostics"


@dataclass
class ScalingTarget:
    """What ``python -m diagnostics.scaling --target MODULE:FACTORY`` measures.

    Attributes:
        model: the module whose cost is measured (its submodules get per-module figures).
        axes: ``{name: make_batch}``; ``make_batch(size, generator) -> batch`` builds an input
            whose size along that axis is ``size`` (drawing randomness only from ``generator``).
            A dict batch is called as ``model(**batch)``, a tuple/list as ``model(*batch)``,
            anything else as ``model(batch)``.
        forward: optional ``forward(model, batch) -> output`` replacing that call.
        sizes: optional default sizes per axis (used when ``--sizes`` is not given).
        name: a label for reports (default: the model's class name).

    Example:
        >>> import torch
        >>> target = ScalingTarget(
        ...     model=torch.nn.Conv1d(16, 16, 3),
        ...     axes={"T": lambda n, g: (torch.randn(1, 16, n, generator=g),)},
        ...     sizes={"T": [256, 512, 1024, 2048]},
        ... )
        >>> target.name
        'Conv1d'
    """

    model: nn.Module
    axes: dict[str, Callable[[int, Any], Any]]
    forward: Callable[[nn.Module, Any], Any] | None = None
    sizes: dict[str, Sequence[int]] = field(default_factory=dict)
    name: str = ""

    def __post_init__(self) -> None:
        if not isinstance(self.model, nn.Module):
            raise ScalingError(
                f"ScalingTarget: model must be a torch.nn.Module, got {type(self.model).__name__}"
            )
        if not isinstance(self.axes, dict) or not self.axes:
            raise ScalingError(
                "ScalingTarget: axes must be a non-empty dict {name: make_batch(size, generator)}"
            )
        for k, v in self.axes.items():
            if not callable(v):
                raise ScalingError(
                    f"ScalingTarget: axes[{k!r}] must be callable make_batch(size, generator), "
                    f"got {type(v).__name__}"
                )
        unknown = sorted(set(self.sizes) - set(self.axes))
        if unknown:
            raise ScalingError(
                f"ScalingTarget: sizes given for unknown axis {unknown[0]!r}; axes are "
                f"{', '.join(self.axes)}"
            )
        if not self.name:
            self.name = type(self.model).__name__

    def call(self, batch: Any) -> Any:
        """Run the model on ``batch`` the way the report describes."""
        if self.forward is not None:
            return self.forward(self.model, batch)
        if isinstance(batch, dict):
            return self.model(**batch)
        if isinstance(batch, (tuple, list)):
            return self.model(*batch)
        return self.model(batch)


@dataclass
class ScalingConfig:
    """Settings of one measurement (CLI flags map one to one).

    Attributes:
        repeats: timed calls per size (median and bootstrap over these).
        warmup: untimed calls per size first.
        backward: time forward + backward of a scalar (the output, or the sum of its float
            tensors) instead of a no-grad forward.
        device: ``"cpu"`` or ``"cuda"`` (``"cuda:N"``).
        memory_budget: bytes for the largest-size extrapolation (None: the device's memory).
        memory_repeats: profiled calls per size for memory (deterministic on CPU: 1 is enough).
        seed: seed of the generator handed to ``make_batch``.
        n_boot: bootstrap resamples of the exponent fits.
        min_share: a module must hold at least this share of the peak (or the time) at the
            largest size to be named responsible for super-linear growth.
        progress: show a tqdm progress bar.
    """

    repeats: int = 5
    warmup: int = 1
    backward: bool = False
    device: str = "cpu"
    memory_budget: int | None = None
    memory_repeats: int = 1
    seed: int = 0
    n_boot: int = 1000
    min_share: float = 0.10
    progress: bool = True

    def __post_init__(self) -> None:
        if self.repeats < 3:
            raise ScalingError(
                f"ScalingConfig.repeats={self.repeats}: need >= 3 repeats for a median and a "
                "bootstrap CI"
            )
        if self.warmup < 0 or self.memory_repeats < 1:
            raise ScalingError("ScalingConfig: warmup must be >= 0 and memory_repeats >= 1")
        if self.memory_budget is not None and self.memory_budget <= 0:
            raise ScalingError(
                f"ScalingConfig.memory_budget={self.memory_budget}: must be > 0 bytes"
            )


_UNITS = {
    "": 1,
    "b": 1,
    "k": 1000,
    "kb": 1000,
    "m": 1000**2,
    "mb": 1000**2,
    "g": 1000**3,
    "gb": 1000**3,
    "t": 1000**4,
    "tb": 1000**4,
    "kib": 1024,
    "mib": 1024**2,
    "gib": 1024**3,
    "tib": 1024**4,
}


def parse_bytes(text: str) -> int:
    """Parse a memory size: ``"24GiB"``, ``"512MiB"``, ``"1.5GB"``, ``"4096"`` (bytes).

    Example:
        >>> parse_bytes("512MiB")
        536870912
    """
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?)\s*([A-Za-z]*)\s*", str(text))
    unit = m.group(2).lower() if m else ""
    if m is None or unit not in _UNITS:
        raise ScalingError(
            f"--memory-budget {text!r}: expected a number with an optional unit "
            "(B, KB, MB, GB, TB, KiB, MiB, GiB, TiB), e.g. 24GiB or 512MiB"
        )
    value = float(m.group(1)) * _UNITS[unit]
    if not math.isfinite(value):
        raise ScalingError(f"--memory-budget {text!r}: too large (not a finite number of bytes)")
    if value < 1:
        raise ScalingError(f"--memory-budget {text!r}: must be at least 1 byte")
    return int(value)


def parse_sizes(text: str) -> list[int]:
    """Parse ``"100,200,400"`` into sizes and check them (see :func:`check_sizes`)."""
    parts = [p.strip() for p in str(text).split(",") if p.strip()]
    try:
        sizes = [int(p) for p in parts]
    except ValueError:
        bad = next(p for p in parts if not re.fullmatch(r"[+-]?\d+", p))
        raise ScalingError(
            f"--sizes {text!r}: {bad!r} is not an integer; give increasing integers, "
            "e.g. 100,200,400,800"
        ) from None
    return check_sizes(sizes, "--sizes")


def check_sizes(sizes: Sequence[int], what: str = "sizes") -> list[int]:
    """At least 3 positive, strictly increasing sizes (a log-log fit needs them)."""
    sizes = [int(s) for s in sizes]
    if len(sizes) < 3:
        raise ScalingError(
            f"{what}: got {len(sizes)} size(s) {sizes}; need at least 3 to fit an exponent"
        )
    if sizes[0] < 1:
        raise ScalingError(f"{what}: sizes must be >= 1, got {sizes[0]}")
    for a, b in itertools.pairwise(sizes):
        if b <= a:
            raise ScalingError(
                f"{what}: sizes must be strictly increasing, got {b} after {a} in {sizes}"
            )
    return sizes
