"""Log-log exponent fits with bootstrap CIs, the classes, a polynomial decomposition and the
budget extrapolation (the report and its findings: ``_analyze``).

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

__all__ = [
    "LINEAR_MAX",
    "SUPER_MIN",
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
    terms: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Largest size whose model + peak bytes fit ``budget``, extrapolated with the memory fit.

    ``terms`` (a :func:`decompose` of the peaks that fits within ``DECOMPOSE_MAX_RMSE``) is
    used too, and the smaller size wins: a ``size**k`` term that has not taken over yet at the
    sizes measured makes the upper-half exponent too small, and a power law extrapolated with
    it far past the sizes measured would promise sizes that do not fit.

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
    if terms and terms.get("rel_rmse", 1.0) <= DECOMPOSE_MAX_RMSE:
        poly = _solve_terms(terms["terms"], budget - model_bytes, hi=s)
        if poly is not None and poly < s:
            text = " + ".join(
                f"{v:.4g}" + ("" if n == "0" else " * size" + ("" if n == "1" else f"^{n}"))
                for n, v in terms["terms"].items()
            )
            out.update(
                size=int(poly),
                method=(
                    f"extrapolated: model {model_bytes:,} B + {text} B (polynomial fit over all "
                    f"sizes, relative RMSE {100 * terms['rel_rmse']:.0f} %; the size^{k:.3f} "
                    f"power law of the upper sizes would say {int(s):,}, but its growing term "
                    "has not taken over yet)"
                ),
            )
    return out


def _solve_terms(terms: dict[str, float], room: float, hi: float) -> float | None:
    """Largest size ``s <= hi`` with ``sum(c * s**k) <= room`` (non-negative terms: monotone)."""

    def cost(x: float) -> float:
        return sum(c * x ** int(n) for n, c in terms.items())

    if cost(1.0) > room:
        return None
    lo = 1.0
    if cost(hi) <= room:
        return hi
    for _ in range(200):  # bisection in log space
        mid = math.sqrt(lo * hi)
        if cost(mid) <= room:
            lo = mid
        else:
            hi = mid
        if hi / lo < 1 + 1e-9:
            break
    return lo
