"""Log-log exponent fits with bootstrap CIs, the verdicts, findings and the budget extrapolation.

An exponent ``k`` is the slope of ``log(cost)`` against ``log(size)`` over the upper half of the
sizes (at least 3), fitted to the per-size medians; its 95 % CI is the percentile interval of
the slopes refitted on medians of repeats resampled with replacement at each size. Memory
accounting is deterministic on CPU (the same allocations each call), so its CI is as wide as
the repeat-to-repeat variation: zero. ``local`` gives the slope between consecutive sizes, which
shows curvature (a quadratic term taking over) that one exponent hides.

A time fit is *inconclusive* when the sizes are too small for timing noise: the CI is wider than
0.5 and straddles the linear band (a wide CI entirely above 1.1 still says "super-linear"), the
growth across the fitted sizes is within 3x the repeat-to-repeat noise, or time grows by less
than x1.25 while the size at least doubles (fixed per-call overhead dominates).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from ._measure import Sweep

__all__ = [
    "LINEAR_MAX",
    "SUPER_MIN",
    "analyze",
    "classify",
    "decompose",
    "fit_exponent",
    "max_size_within_budget",
    "upper_indices",
]

SUPER_MIN = 1.2  # exponent at or above this (with CI low > 1.1) is super-linear
SUPER_CI_LOW = 1.1
LINEAR_MAX = SUPER_MIN
SUB_MAX = 0.8  # below this (CI high < 0.9) is sub-linear
SUB_CI_HIGH = 0.9
CI_WIDTH_MAX = 0.5
NOISE_FACTOR = 3.0
MIN_GROWTH = 1.25
HIDDEN_MIN_SHARE_TIME = 0.05  # a super-linear module below these shares is not reported
HIDDEN_MIN_SHARE_MEMORY = 0.01
DECOMPOSE_MAX_RMSE = 0.10  # a polynomial decomposition worse than this is not reported


def upper_indices(n: int) -> list[int]:
    """Indices of the upper half of ``n`` sizes (at least 3, or all when fewer)."""
    k = min(n, max(3, math.ceil(n / 2)))
    return list(range(n - k, n))


def _slopes(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Least-squares slope of y on x along the last axis (x: [k], y: [..., k])."""
    xc = x - x.mean()
    return ((y - y.mean(axis=-1, keepdims=True)) * xc).sum(axis=-1) / (xc**2).sum()


def fit_exponent(
    sizes: list[int],
    samples: list[list[float]],
    *,
    kind: str,
    n_boot: int = 1000,
    seed: int = 0,
) -> dict[str, Any]:
    """Fit ``cost ~ size**k`` over the upper sizes; ``samples[i]`` are the repeats at size i.

    Returns ``{"exponent", "ci95", "status": "ok"|"inconclusive", "reason", "local",
    "sizes_fitted", "n_repeats"}``; ``kind`` is ``"time"`` (noise rules apply) or ``"memory"``.

    Example:
        >>> fit_exponent([1, 2, 4], [[1, 1, 1], [4, 4, 4], [16, 16, 16]], kind="memory")["exponent"]
        2.0
    """
    idx = upper_indices(len(sizes))
    xs = np.log(np.asarray([sizes[i] for i in idx], dtype=float))
    r = min(len(samples[i]) for i in idx)
    arr = np.asarray([list(samples[i])[:r] for i in idx], dtype=float)  # (k, R)
    med = np.median(arr, axis=1)
    all_med = [float(np.median(s)) if len(s) else 0.0 for s in samples]
    local = [
        (
            round(math.log(all_med[i + 1] / all_med[i]) / math.log(sizes[i + 1] / sizes[i]), 3)
            if all_med[i] > 0 and all_med[i + 1] > 0
            else None
        )
        for i in range(len(sizes) - 1)
    ]
    out: dict[str, Any] = {
        "exponent": None,
        "ci95": None,
        "status": "inconclusive",
        "reason": "",
        "local": local,
        "sizes_fitted": [sizes[i] for i in idx],
        "n_repeats": r,
    }
    if (med <= 0).any():
        zero = [sizes[i] for i, m in zip(idx, med) if m <= 0]
        out["reason"] = (
            f"no {'allocation' if kind == 'memory' else 'time'} measured at size(s) {zero}"
        )
        return out
    k = float(_slopes(xs, np.log(med)))
    if r > 1:
        rng = np.random.default_rng(seed)
        pick = rng.integers(0, r, size=(n_boot, len(idx), r))
        boot_med = np.median(arr[np.arange(len(idx))[None, :, None], pick], axis=2)  # (B, k)
        boots = _slopes(xs, np.log(np.maximum(boot_med, 1e-300)))
        lo, hi = (float(v) for v in np.percentile(boots, [2.5, 97.5]))
    else:
        lo = hi = k
    out.update(exponent=round(k, 3), ci95=[round(lo, 3), round(hi, 3)])
    if kind == "time":
        growth = float(med[-1] / med[0])
        size_ratio = sizes[idx[-1]] / sizes[idx[0]]
        mad = np.median(np.abs(arr - med[:, None]), axis=1) * 1.4826
        noise = float((mad / med).max())
        if hi - lo > CI_WIDTH_MAX:
            if lo > SUPER_CI_LOW or hi < SUB_CI_HIGH:  # imprecise, but the class is clear
                out["reason"] = (
                    f"imprecise: the 95% CI spans more than {CI_WIDTH_MAX}, but lies entirely "
                    f"{'above' if lo > SUPER_CI_LOW else 'below'} "
                    f"{SUPER_CI_LOW if lo > SUPER_CI_LOW else SUB_CI_HIGH}"
                )
            else:
                out["reason"] = (
                    f"timing noise too large: the 95% CI [{lo:.2f}, {hi:.2f}] spans more than "
                    f"{CI_WIDTH_MAX}; use larger sizes or more --repeats"
                )
                return out
        if math.log(growth) < NOISE_FACTOR * noise:
            out["reason"] = (
                f"sizes too small for timing noise: time grows x{growth:.2f} over sizes "
                f"x{size_ratio:g}, within {NOISE_FACTOR:g}x the repeat-to-repeat noise "
                f"(+-{100 * noise:.0f}%); use larger sizes"
            )
            return out
        if size_ratio >= 2 and growth < MIN_GROWTH:
            out["reason"] = (
                f"sizes too small: time grows only x{growth:.2f} while the size grows "
                f"x{size_ratio:g}, so fixed per-call overhead dominates (or the cost does not "
                "depend on this axis); use larger sizes"
            )
            return out
    out["status"] = "ok"
    return out


def classify(fit: dict[str, Any]) -> str:
    """``"super-linear"``, ``"linear"``, ``"sub-linear"`` or ``"inconclusive"``."""
    if fit.get("status") != "ok" or fit.get("exponent") is None:
        return "inconclusive"
    k, (lo, hi) = fit["exponent"], fit["ci95"]
    if k >= SUPER_MIN and lo > SUPER_CI_LOW:
        return "super-linear"
    if k < SUB_MAX and hi < SUB_CI_HIGH:
        return "sub-linear"
    return "linear"


def decompose(sizes: list[int], values: list[float], k: int) -> dict[str, Any] | None:
    """Fit ``value ~ c0 + c1*size + ck*size**k`` (non-negative, relative least squares over all
    sizes) and return the terms and the size where the ``size**k`` term overtakes the linear one.

    Example:
        >>> d = decompose([1, 2, 4, 8, 16], [10 * s + s**2 for s in [1, 2, 4, 8, 16]], 2)
        >>> round(d["crossover"], 6)
        10.0
    """
    x = np.asarray(sizes, dtype=float)
    y = np.asarray(values, dtype=float)
    if k < 2 or (y <= 0).any():
        return None
    cols = {"0": np.ones_like(x), "1": x, str(k): x**k}
    best: tuple[float, dict[str, float]] | None = None
    names = list(cols)
    for mask in range(1, 2 ** len(names)):  # every subset; keep the best with coefficients >= 0
        use = [n for i, n in enumerate(names) if mask >> i & 1]
        a = np.stack([cols[n] / y for n in use], axis=1)  # relative residuals
        coef, *_ = np.linalg.lstsq(a, np.ones_like(y), rcond=None)
        if (coef < 0).any():
            continue
        err = float(np.sqrt(np.mean((a @ coef - 1.0) ** 2)))
        if best is None or err < best[0] - 1e-12:
            best = (err, {n: float(c) for n, c in zip(use, coef)})
    if best is None:
        return None
    err, terms = best
    c1, ck = terms.get("1", 0.0), terms.get(str(k), 0.0)
    cross = (c1 / ck) ** (1.0 / (k - 1)) if c1 > 0 and ck > 0 else None
    return {
        "k": k,
        "terms": {n: float(f"{c:.6g}") for n, c in terms.items()},
        "crossover": cross,
        "rel_rmse": round(err, 4),
    }


def _scale(sizes: list[int], values: list[float], k: float) -> float:
    """``C`` in ``value = C * size**k`` fitted (in logs) over the upper sizes."""
    idx = upper_indices(len(sizes))
    return float(np.exp(np.mean([math.log(values[i]) - k * math.log(sizes[i]) for i in idx])))


def max_size_within_budget(
    sizes: list[int],
    peaks: list[float],
    model_bytes: int,
    budget: int | None,
    fit: dict[str, Any],
    budget_source: str = "",
) -> dict[str, Any]:
    """Largest size whose model + peak bytes fit ``budget``, extrapolated with the memory fit.

    Example:
        >>> fit = {"status": "ok", "exponent": 2.0}
        >>> max_size_within_budget([1, 2, 4], [1.0, 4.0, 16.0], 0, 64, fit)["size"]
        8
    """
    out: dict[str, Any] = {
        "size": None,
        "budget_bytes": budget,
        "budget_source": budget_source,
        "method": "",
    }
    if budget is None:
        out["method"] = "no budget given"
        return out
    totals = [model_bytes + p for p in peaks]
    if totals[0] > budget:
        out["method"] = f"even the smallest size ({sizes[0]}) needs {totals[0]:,} bytes > budget"
        return out
    k = fit.get("exponent")
    if fit.get("status") != "ok" or k is None:
        out["method"] = "memory fit inconclusive; no extrapolation"
        return out
    fitting = [s for s, t in zip(sizes, totals) if t <= budget]
    if totals[-1] > budget:
        out.update(size=fitting[-1], method="largest measured size within the budget")
        return out
    if k < 0.05:
        out["method"] = (
            f"memory does not grow with size (exponent {k:.2f}): no limit from this budget"
        )
        return out
    c = _scale(sizes, peaks, k)
    s = ((budget - model_bytes) / c) ** (1.0 / k)
    out.update(
        size=int(s),
        method=(
            f"extrapolated: model {model_bytes:,} B + {c:.4g} * size^{k:.3f} B "
            f"(fit over sizes {fit.get('sizes_fitted')})"
        ),
    )
    return out


def _med(v: list[float]) -> float:
    return float(np.median(v)) if len(v) else 0.0


def _fmt_bytes(n: float) -> str:
    for unit, f in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if abs(n) >= f:
            return f"{n / f:.2f} {unit}"
    return f"{n:.0f} B"


def analyze(
    sweep: Sweep,
    *,
    budget: int | None = None,
    budget_source: str = "",
    n_boot: int = 1000,
    seed: int = 0,
    min_share: float = 0.10,
) -> dict[str, Any]:
    """Turn a :class:`Sweep` into the report dict (layout in ``docs/SCALING.md``)."""
    sizes = sweep.sizes
    res = sweep.results
    sec = [r.seconds for r in res]
    mem = [[float(v) for v in r.peak_bytes] for r in res]
    t_fit = fit_exponent(sizes, sec, kind="time", n_boot=n_boot, seed=seed)
    m_fit = fit_exponent(sizes, mem, kind="memory", n_boot=n_boot, seed=seed)
    total = {
        "seconds": [round(_med(s), 6) for s in sec],
        "seconds_repeats": [[round(v, 6) for v in s] for s in sec],
        "peak_bytes": [int(_med(m)) for m in mem],
        "input_bytes": [r.input_bytes for r in res],
        "model_bytes": sweep.model_bytes,
        "exponent": {"time": t_fit, "memory": m_fit},
        "class": {"time": classify(t_fit), "memory": classify(m_fit)},
    }
    total["terms"] = {}
    for metric, key in (("time", "seconds"), ("memory", "peak_bytes")):
        fit = total["exponent"][metric]
        if fit["status"] == "ok" and fit["exponent"] >= SUPER_MIN:
            total["terms"][metric] = decompose(sizes, total[key], max(2, round(fit["exponent"])))
    last_t, last_m = total["seconds"][-1], total["peak_bytes"][-1]
    modules = []
    for pat in sorted(
        {p for r in res for p in r.module_seconds} | {p for r in res for p in r.module_peak_bytes}
    ):
        ms = [r.module_seconds.get(pat, []) for r in res]
        mm = [[float(v) for v in r.module_peak_bytes.get(pat, [])] for r in res]
        if any(len(v) == 0 for v in ms) or any(len(v) == 0 for v in mm):
            continue  # a module that does not run at every size (skipped by a branch)
        mt_fit = fit_exponent(sizes, ms, kind="time", n_boot=n_boot, seed=seed)
        mm_fit = fit_exponent(sizes, mm, kind="memory", n_boot=n_boot, seed=seed)
        seconds = [round(_med(v), 6) for v in ms]
        peak = [int(_med(v)) for v in mm]
        modules.append(
            {
                "module": pat,
                "instances": sweep.instances.get(pat, 1),
                "calls": res[-1].module_calls.get(pat, 0),
                "seconds": seconds,
                "peak_bytes": peak,
                "retained_bytes": [int(_med(r.module_retained_bytes.get(pat, [0]))) for r in res],
                "exponent": {"time": mt_fit, "memory": mm_fit},
                "class": {"time": classify(mt_fit), "memory": classify(mm_fit)},
                "share": {
                    "time": round(seconds[-1] / last_t, 4) if last_t > 0 else None,
                    "memory": round(peak[-1] / last_m, 4) if last_m > 0 else None,
                },
            }
        )
    budget_info = max_size_within_budget(
        sizes, total["peak_bytes"], sweep.model_bytes, budget, m_fit, budget_source
    )
    report: dict[str, Any] = {
        "target": sweep.target,
        "axis": sweep.axis,
        "sizes": sizes,
        "device": sweep.device,
        "backward": sweep.backward,
        "memory_method": sweep.memory_method,
        "threads": sweep.threads,
        "total": total,
        "modules": modules,
        "max_size_within_budget": budget_info["size"],
        "budget": budget_info,
        "failed": sweep.failed,
        "seconds_measuring": round(sweep.seconds_total, 2),
    }
    report["findings"] = findings(report, min_share=min_share)
    return report


def _depth(pat: str) -> int:
    return pat.count(".") + 1


def _responsible(modules: list[dict[str, Any]], metric: str, min_share: float) -> dict | None:
    cands = [
        m
        for m in modules
        if m["class"][metric] == "super-linear" and (m["share"][metric] or 0) >= min_share
    ]
    if not cands:
        return None
    top = max(m["exponent"][metric]["exponent"] for m in cands)
    near = [m for m in cands if m["exponent"][metric]["exponent"] >= top - 0.15]
    return max(near, key=lambda m: (_depth(m["module"]), m["share"][metric]))


def _module_shares(report: dict[str, Any], mod: dict[str, Any], metric: str) -> list[float]:
    tot = report["total"]["peak_bytes" if metric == "memory" else "seconds"]
    own = mod["peak_bytes" if metric == "memory" else "seconds"]
    return [o / t if t > 0 else 0.0 for o, t in zip(own, tot)]


def _share_crossing(
    report: dict[str, Any], mod: dict[str, Any], metric: str
) -> dict[str, Any] | None:
    """Where the super-linear module starts to hold half of the peak (or the time): below it,
    the rest of the model (typically work linear in the size) dominates."""
    sizes, axis = report["sizes"], report["axis"]
    shares = _module_shares(report, mod, metric)
    what = "peak" if metric == "memory" else "time"
    if shares[0] >= 0.5:
        where = f"from the smallest size measured ({axis} = {sizes[0]}) on"
        size = None
    else:
        i = next((j for j in range(1, len(sizes)) if shares[j] >= 0.5), None)
        if i is None:
            return None
        a, b = shares[i - 1], shares[i]
        # interpolate the crossing in log(size)
        f = (0.5 - a) / (b - a) if b != a else 1.0
        size = round(math.exp(math.log(sizes[i - 1]) + f * math.log(sizes[i] / sizes[i - 1])))
        where = (
            f"from {axis} ~ {size:,} on (interpolated between {sizes[i - 1]} and {sizes[i]}); "
            f"below it the rest of the model dominates ({100 * shares[0]:.0f} % at "
            f"{axis} = {sizes[0]})"
        )
    return {
        "kind": "crossover",
        "metric": metric,
        "module": mod["module"],
        "size": size,
        "shares": [round(v, 4) for v in shares],
        "message": f"`{mod['module']}` (with its submodules) holds half of the {what} {where}",
    }


def _fit_text(fit: dict[str, Any]) -> str:
    lo, hi = fit["ci95"]
    return f"{fit['exponent']:.2f} [{lo:.2f}, {hi:.2f}]"


def findings(report: dict[str, Any], *, min_share: float = 0.10) -> list[dict[str, Any]]:
    """Plain-language findings: verdicts, the responsible module, hidden super-linear modules,
    the dominant module, the budget, failures."""
    axis, sizes = report["axis"], report["sizes"]
    last = sizes[-1]
    out: list[dict[str, Any]] = []
    mods = report["modules"]
    for metric, noun in (("time", "time"), ("memory", "peak memory")):
        fit = report["total"]["exponent"][metric]
        cls = report["total"]["class"][metric]
        span = f"{axis} = {fit['sizes_fitted'][0]}..{fit['sizes_fitted'][-1]}"
        if cls == "inconclusive":
            out.append(
                {
                    "kind": "inconclusive",
                    "metric": metric,
                    "module": "",
                    "message": f"total {noun}: inconclusive ({fit['reason']})",
                }
            )
            continue
        out.append(
            {
                "kind": cls,
                "metric": metric,
                "module": "",
                "exponent": fit["exponent"],
                "ci95": fit["ci95"],
                "message": f"total {noun} grows as {axis}^{_fit_text(fit)}: {cls} over {span}",
            }
        )
        resp = _responsible(mods, metric, min_share)
        if cls == "super-linear" and resp is not None:
            mf = resp["exponent"][metric]
            out.append(
                {
                    "kind": "responsible",
                    "metric": metric,
                    "module": resp["module"],
                    "exponent": mf["exponent"],
                    "ci95": mf["ci95"],
                    "share": resp["share"][metric],
                    "message": f"`{resp['module']}`: {metric} exponent {_fit_text(mf)}, "
                    f"{100 * resp['share'][metric]:.0f} % of "
                    f"{'peak' if metric == 'memory' else 'time'} at {axis} = {last}",
                }
            )
        terms = report["total"].get("terms", {}).get(metric)
        if (
            cls == "super-linear"
            and terms
            and terms["crossover"] is not None
            and terms["rel_rmse"] <= DECOMPOSE_MAX_RMSE
        ):
            k, c = terms["k"], terms["crossover"]
            if c >= sizes[-1]:
                where = f"linear work dominates at every size measured (the {axis}^{k} term "
                where += f"would overtake it at {axis} ~ {c:,.0f}, extrapolated)"
            elif c <= sizes[0]:
                where = f"the {axis}^{k} term dominates at every size measured"
            else:
                where = f"work linear in {axis} dominates below {axis} ~ {c:,.0f}"
            out.append(
                {
                    "kind": "linear-below",
                    "metric": metric,
                    "module": "",
                    "size": round(c, 1),
                    "terms": terms["terms"],
                    "message": f"total {noun} ~ "
                    + " + ".join(
                        f"{v:.3g}"
                        + ("" if n == "0" else f"*{axis}" + ("" if n == "1" else f"^{n}"))
                        for n, v in terms["terms"].items()
                    )
                    + f" (fit over all sizes, relative RMSE {100 * terms['rel_rmse']:.0f} %): "
                    + where,
                }
            )
        if resp is not None:
            cross = _share_crossing(report, resp, metric)
            if cross is not None:
                out.append(cross)
        # super-linear modules that do not (yet) dominate
        k_total = fit["exponent"]
        for m in mods:
            mf = m["exponent"][metric]
            share = m["share"][metric] or 0.0
            if m["class"][metric] != "super-linear" or m is resp:
                continue
            if share < (HIDDEN_MIN_SHARE_TIME if metric == "time" else HIDDEN_MIN_SHARE_MEMORY):
                continue  # too small to matter (and per-module times of tiny modules are noisy)
            if resp is not None and m["module"].startswith(resp["module"] + "."):
                continue
            if share >= 0.5 or (cls == "super-linear" and share >= min_share):
                continue
            k = mf["exponent"]
            cross = None
            if k > k_total + 0.05:
                cross = int(last * (0.5 / share) ** (1.0 / (k - k_total)))
            msg = (
                f"`{m['module']}` grows as {axis}^{_fit_text(mf)} but holds only "
                f"{100 * share:.0f} % of the {'peak' if metric == 'memory' else 'time'} at "
                f"{axis} = {last}: "
                + (
                    f"work linear in {axis} dominates at these sizes"
                    if cls in ("linear", "sub-linear")
                    else "other work dominates at these sizes"
                )
            )
            if cross is not None:
                msg += (
                    f"; at these rates it would reach half from {axis} ~ {cross:,} (extrapolated)"
                )
            out.append(
                {
                    "kind": "hidden-superlinear",
                    "metric": metric,
                    "module": m["module"],
                    "exponent": k,
                    "ci95": mf["ci95"],
                    "share": share,
                    "crossover": cross,
                    "message": msg,
                }
            )
    dom = [m for m in mods if (m["share"]["memory"] or 0) >= 0.5]
    if dom:
        d = max(dom, key=lambda m: (_depth(m["module"]), m["share"]["memory"]))
        out.append(
            {
                "kind": "dominant",
                "metric": "memory",
                "module": d["module"],
                "share": d["share"]["memory"],
                "message": f"deepest module holding >= 50 % of the peak at {axis} = {last}: "
                f"`{d['module']}` ({100 * d['share']['memory']:.0f} %, "
                f"{_fmt_bytes(d['peak_bytes'][-1])} of {_fmt_bytes(report['total']['peak_bytes'][-1])})",
            }
        )
    b = report["budget"]
    if b["budget_bytes"] is not None:
        size_text = "n/a" if b["size"] is None else f"{b['size']:,}"
        msg = f"largest {axis} within {_fmt_bytes(b['budget_bytes'])}: {size_text} ({b['method']})"
        out.append({"kind": "budget", "metric": "memory", "module": "", "message": msg})
    if report.get("failed"):
        f = report["failed"]
        out.append(
            {
                "kind": "failed",
                "metric": "",
                "module": "",
                "message": f"size {f['size']} raised {f['error']}; fitted the sizes before it",
            }
        )
    return out
