"""From a measured sweep to the report: exponents per total and module, the findings.

Findings name what a user acts on: the class of each total fit (or why it is inconclusive), the
module responsible for super-linear growth (``responsible``), the size below which work linear
in the size dominates (``linear-below``, from a polynomial decomposition of the total),
where the responsible module reaches half (``crossover``), super-linear modules that do not
dominate yet (``hidden-superlinear``), the deepest module holding half the peak (``dominant``),
the largest size within the budget (``budget``) and a size that raised (``failed``); a
``make_batch`` whose input does not grow with the size (``input-constant``) and a model left
in training mode for a forward-only run (``train-mode``).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from ._fit import (
    DECOMPOSE_MAX_RMSE,
    HIDDEN_MIN_SHARE_MEMORY,
    HIDDEN_MIN_SHARE_TIME,
    SUPER_MIN,
    classify,
    decompose,
    fit_exponent,
    max_size_within_budget,
)
from ._measure import Sweep

__all__ = ["analyze", "findings"]


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
        sizes,
        total["peak_bytes"],
        sweep.model_bytes,
        budget,
        m_fit,
        budget_source,
        terms=total["terms"].get("memory"),
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
        "training": sweep.training,
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
    inputs = report["total"].get("input_bytes") or []
    if len(inputs) > 1 and len(set(inputs)) == 1:
        out.insert(
            0,
            {
                "kind": "input-constant",
                "metric": "",
                "module": "",
                "message": f"the input holds {_fmt_bytes(inputs[0])} at every {axis} "
                f"({sizes[0]}..{last}): make_batch ignores its size argument, so these figures "
                f"do not measure growth along {axis}",
            },
        )
    if report.get("training") and not report.get("backward"):
        out.append(
            {
                "kind": "train-mode",
                "metric": "",
                "module": "",
                "message": "the model was measured in training mode: its "
                f"{', '.join(report['training'])} layers act as in training; call model.eval() "
                "in the factory to measure inference",
            }
        )
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
