"""Sampler-level numbers: quality deltas of the ablations and the paired guidance-scale sweep.

Both run the target's ``sample(model, batch, scale, seed) -> {metric: Tensor[B]}`` on the first
``guidance_batches`` of ``sample_batches`` (default ``batches``), with the torch RNG and the
sampler seed derived from the run's seed and the batch index only, so every run of a batch sees
the same examples and the same sampler noise: the deltas are paired per example.

* quality deltas: the sampler at scale 1 with the condition ablated at the site (the hook stays
  installed for the whole sampling loop) minus the intact run;
* the sweep: each scale's metrics (mean, CI) and their paired delta against the first scale
  (usually 0, unconditional), plus the unprocessed input's metrics as a baseline row.

A metric value that is not finite (the metric failed, e.g. PESQ on a silent clip) is counted in
``failures`` and left out of ``n``; it is never dropped silently.
"""

from __future__ import annotations

import itertools
from typing import TYPE_CHECKING, Any

import numpy as np
from torch import Tensor

from diagnostics._ablation._runner import forked_rng, seed_of
from diagnostics._ablation._types import MetricDelta
from diagnostics._stats import bootstrap_ci

if TYPE_CHECKING:
    from diagnostics._ablation._run import Run
    from diagnostics._ablation._site import SitePass

__all__ = ["QUALITY_ABLATIONS", "QUALITY_SCALE", "quality_deltas", "run_guidance"]

QUALITY_ABLATIONS = ("null", "shuffle")  # the ablations that get quality-level deltas
QUALITY_SCALE = 1.0  # the guidance scale of the quality deltas (one network call per step)
_TI = 10_000  # the replacement key of the sampler runs (distinct from every time index)


def _r(x: float | None) -> float | None:
    return None if x is None else float(f"{x:.6g}")


def _arrays(metrics: Any) -> dict[str, np.ndarray]:
    return {
        name: np.asarray(v.detach().cpu() if isinstance(v, Tensor) else v, dtype=np.float64).ravel()
        for name, v in metrics.items()
    }


def _sample_batches(run: Run) -> list[Any]:
    t = run.target
    batches = t.sample_batches if t.sample_batches is not None else t.batches
    return list(itertools.islice(iter(batches), max(1, int(t.guidance_batches))))


def _sample(run: Run, batch: Any, bi: int, scale: float) -> dict[str, np.ndarray]:
    """The sampler on ``batch`` with this batch's RNG and sampler seed."""
    runner, target = run.runner, run.target
    assert target.sample is not None, "_sample: the target has no sample()"
    with forked_rng(runner.fork_devices, seed_of(run.seed, 8, bi)):
        metrics = target.sample(runner.model, batch, scale, seed_of(run.seed, 9, bi) % 2**31)
    return _arrays(metrics)


def _mean_ci(values: np.ndarray, run: Run, key: int) -> dict[str, Any]:
    ok = values[np.isfinite(values)]
    if ok.size == 0:
        return {"mean": None, "ci95": [None, None], "n": 0, "failures": int(values.size)}
    m, lo, hi = bootstrap_ci(ok, n_boot=run.n_boot, seed=seed_of(run.seed, 10, key))
    return {"mean": _r(m), "ci95": [_r(lo), _r(hi)], "n": int(ok.size),
            "failures": int(values.size - ok.size)}  # fmt: skip


def paired_delta(a: np.ndarray, b: np.ndarray, n_boot: int, seed: int) -> MetricDelta:
    """``a - b`` per example where both are finite, with its bootstrap CI."""
    ok = np.isfinite(a) & np.isfinite(b)
    if not ok.any():
        return MetricDelta(delta=None, ci95=[None, None], n=0, failures=int(ok.size))
    m, lo, hi = bootstrap_ci(a[ok] - b[ok], n_boot=n_boot, seed=seed)
    return MetricDelta(
        delta=_r(m), ci95=[_r(lo), _r(hi)], n=int(ok.sum()), failures=int((~ok).sum())
    )


def _concat(parts: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    names = list(dict.fromkeys(k for p in parts for k in p))
    return {k: np.concatenate([p[k] for p in parts if k in p]) for k in names}


def quality_deltas(run: Run, site_pass: SitePass) -> dict[str, dict[str, MetricDelta]]:
    """``{ablation: {metric: MetricDelta}}`` for the quality ablations run at the site.

    The shuffle leaves out a sampler batch of one example (a derangement of one element is the
    identity: its delta would be 0 by construction) and says so in the site's notes."""
    names = [a for a in QUALITY_ABLATIONS if a in site_pass.todo]
    if not names:
        return {}
    batches = _sample_batches(run)
    intact: list[dict[str, np.ndarray]] = []
    for bi, batch in enumerate(batches):
        batch = run.runner.to_device(batch)
        if bi not in run.intact_metrics:
            run.intact_metrics[bi] = _sample(run, batch, bi, QUALITY_SCALE)
        intact.append(run.intact_metrics[bi])
    out: dict[str, dict[str, MetricDelta]] = {}
    for a in names:
        got = _ablated_samples(run, site_pass, a, batches)
        if got is None:  # the deltas would be 0 by construction: say so instead
            site_pass.notes.append(
                f"quality deltas skipped: the sampler never reached {site_pass.site.text!r}"
            )
            return {}
        if not got:
            continue
        ablated = _concat(list(got.values()))
        paired = _concat([intact[bi] for bi in got])
        out[a] = {
            m: paired_delta(
                ablated[m], paired[m], run.n_boot, seed_of(run.seed, 12, site_pass.si, k)
            )
            for k, m in enumerate(_concat(intact))
            if m in ablated and m in paired
        }
    return out


def _ablated_samples(
    run: Run, site_pass: SitePass, name: str, batches: list[Any]
) -> dict[int, dict[str, np.ndarray]] | None:
    """The sampler's metrics per batch with ``name`` applied at the site (None: the sampler
    never reached it). A batch where the shuffle cannot swap (one example) is left out."""
    parts: dict[int, dict[str, np.ndarray]] = {}
    reached, alone = False, []
    for bi, batch in enumerate(run.bar(batches, f"{site_pass.site.text}: quality {name}")):
        batch = run.runner.to_device(batch)
        calls = itertools.count()
        single = [False]

        def swap(c: Tensor, bi: int = bi, calls: Any = calls, single: list = single) -> Any:
            k = next(calls) % site_pass.n_calls  # the call's index within one network forward
            if name == "shuffle" and c.shape[0] < 2:
                single[0] = True
                return c
            return site_pass.replacement(name, c, bi, _TI, k)

        with run.runner.replaced(site_pass.site, swap, lenient=True) as fired:
            metrics = _sample(run, batch, bi, QUALITY_SCALE)
        reached = reached or fired[0] > 0
        if single[0]:
            alone.append(bi)
        else:
            parts[bi] = metrics
    if not reached:
        return None
    if alone:
        site_pass.notes.append(
            f"quality deltas of {name} leave out sampler batch{'es' * (len(alone) > 1)} "
            f"{', '.join(map(str, alone))}: one example, nothing to shuffle it with"
        )
    return parts


def run_guidance(run: Run) -> dict[str, Any]:
    """The guidance sweep: per scale mean/CI/n/failures and the paired delta vs the first
    scale, plus the unprocessed input's metrics (when the target gives ``unprocessed``)."""
    target = run.target
    scales = [float(s) for s in target.guidance_scales]
    batches = _sample_batches(run)
    per_scale: list[dict[str, np.ndarray]] = []
    jobs = [(k, s, bi, b) for k, s in enumerate(scales) for bi, b in enumerate(batches)]
    parts: dict[int, list[dict[str, np.ndarray]]] = {k: [] for k in range(len(scales))}
    for k, scale, bi, batch in run.bar(jobs, "guidance sweep"):
        batch = run.runner.to_device(batch)
        if scale == QUALITY_SCALE and bi in run.intact_metrics:
            parts[k].append(run.intact_metrics[bi])  # the same run (same seed): reuse it
        else:
            parts[k].append(_sample(run, batch, bi, scale))
    per_scale = [_concat(parts[k]) for k in range(len(scales))]
    out: dict[str, Any] = {
        "scales": [_r(s) for s in scales],
        "reference_scale": _r(scales[0]),
        "metrics": {},
        "unprocessed": None,
    }
    for name in per_scale[0]:
        rows = [_mean_ci(per_scale[k][name], run, k) for k in range(len(scales))]
        deltas = [
            paired_delta(
                per_scale[k][name], per_scale[0][name], run.n_boot, seed_of(run.seed, 13, k)
            )
            for k in range(len(scales))
        ]
        out["metrics"][name] = {
            "mean": [r["mean"] for r in rows],
            "ci95": [r["ci95"] for r in rows],
            "n": [r["n"] for r in rows],
            "failures": [r["failures"] for r in rows],
            "delta": [d.delta for d in deltas],
            "delta_ci95": [d.ci95 for d in deltas],
            "delta_n": [d.n for d in deltas],
        }
    if target.unprocessed is not None:
        base = _concat([_arrays(target.unprocessed(run.runner.to_device(b))) for b in batches])
        out["unprocessed"] = {m: _mean_ci(v, run, 100 + j) for j, (m, v) in enumerate(base.items())}
    return out
