"""The guidance-scale sweep: the target's sampler at each scale, scored per example."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor

from diagnostics._ablation._runner import seed_of
from diagnostics._ablation._stats import bootstrap_ci

if TYPE_CHECKING:
    from diagnostics._ablation._engine import _Run

__all__ = ["run_guidance"]


def _r(x: float) -> float:
    return float(f"{x:.6g}")


def run_guidance(run: _Run) -> dict[str, Any]:
    """Mean and bootstrap CI of each metric at each guidance scale."""
    target, runner, seed = run.target, run.runner, run.seed
    assert target.sample is not None, "run_guidance: the target has no sample()"
    scales = [float(s) for s in target.guidance_scales]
    nb = max(1, min(target.guidance_batches, len(target.batches)))
    values: dict[str, list[list[float]]] = {}
    jobs = [(k, scale, bi) for k, scale in enumerate(scales) for bi in range(nb)]
    for k, scale, bi in run.bar(jobs, "guidance sweep"):
        batch = runner.to_device(target.batches[bi])
        with torch.random.fork_rng(devices=runner.fork_devices):
            torch.manual_seed(seed_of(seed, 8, bi))
            metrics = target.sample(runner.model, batch, scale, seed_of(seed, 9, bi) % 2**31)
        for name, v in metrics.items():
            arr = np.asarray(
                v.detach().cpu() if isinstance(v, Tensor) else v, dtype=np.float64
            ).ravel()
            values.setdefault(name, [[] for _ in scales])[k].extend(arr.tolist())
    out: dict[str, Any] = {"scales": [_r(s) for s in scales], "metrics": {}}
    for name, per_scale in values.items():
        means, cis = [], []
        for k, vals in enumerate(per_scale):
            finite = np.asarray([x for x in vals if np.isfinite(x)])
            if finite.size == 0:
                means.append(None)
                cis.append([None, None])
                continue
            m, lo, hi = bootstrap_ci(finite, n_boot=run.n_boot, seed=seed_of(seed, 10, k))
            means.append(_r(m))
            cis.append([_r(lo), _r(hi)])
        out["metrics"][name] = {"mean": means, "ci95": cis, "n": len(per_scale[0])}
    return out
