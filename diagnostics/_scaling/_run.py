"""``run_scaling``: measure and analyse one axis of a target in one call (the CLI's core)."""

from __future__ import annotations

from typing import Any

from ._analyze import analyze
from ._measure import measure
from ._types import ScalingConfig, ScalingError, ScalingTarget, check_sizes

__all__ = ["run_scaling"]


def run_scaling(
    target: ScalingTarget,
    axis: str,
    sizes: list[int] | None = None,
    *,
    config: ScalingConfig | None = None,
) -> dict[str, Any]:
    """Time and peak memory of ``target`` along ``axis``; returns the report dict.

    ``sizes`` defaults to ``target.sizes[axis]``; ``config.memory_budget`` (bytes) drives the
    largest-size extrapolation. The report layout: ``{"axis", "sizes", "total": {"seconds",
    "peak_bytes", "exponent": {"time", "memory"}}, "modules", "max_size_within_budget",
    "findings", ...}`` (see ``docs/SCALING.md``).

    Example:
        >>> report = run_scaling(target, "T", [256, 512, 1024, 2048])
        >>> report["total"]["exponent"]["memory"]["exponent"]  # doctest: +SKIP
        1.97
    """
    cfg = config or ScalingConfig(progress=False)
    if sizes is None:
        if axis not in target.sizes:
            raise ScalingError(
                f"run_scaling: no sizes for axis {axis!r}; pass sizes= or set ScalingTarget.sizes"
            )
        sizes = list(target.sizes[axis])
    sizes = check_sizes(sizes, "run_scaling(sizes=...)")
    sweep = measure(target, axis, sizes, cfg)
    source = "ScalingConfig.memory_budget" if cfg.memory_budget is not None else ""
    return analyze(
        sweep,
        budget=cfg.memory_budget,
        budget_source=source,
        n_boot=cfg.n_boot,
        seed=cfg.seed,
        min_share=cfg.min_share,
    )
