"""Run the zoo: every fault and its healthy twin through every tool; summaries per tool/category."""

from __future__ import annotations

import fnmatch
import statistics
import time
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import torch

from ._cases import CATEGORIES, FAULTS, Fault
from ._tools import TOOLS, applicable, run_tool

__all__ = ["load_faults", "run_zoo", "select", "summarize"]


def load_faults() -> list[Fault]:
    """Import every fault module (registration happens at import) and return the registry."""
    from . import faults  # noqa: F401  (registers)

    return sorted(FAULTS, key=lambda f: CATEGORIES.index(f.category))  # stable within one


def select(faults: Sequence[Fault], only: str | None = None, quick: bool = False) -> list[Fault]:
    """Faults whose id matches the glob (or substring) ``only``; the quick subset if asked."""
    out = [f for f in faults if not quick or f.quick]
    if only:
        pats = [p.strip() for p in only.split(",") if p.strip()]
        out = [
            f for f in out
            if any(fnmatch.fnmatch(f.id, p) or p in f.id or p == f.category for p in pats)
        ]  # fmt: skip
    return out


_KIND: dict[str, type] = {}  # fault id -> case type, learned from its first build


def _run_one(fault: Fault, faulty: bool, tool: str) -> dict[str, Any]:
    kind = _KIND.get(fault.id)
    if kind is not None and tool != "torchdx" and not applicable(tool, kind, fault):
        return run_tool(tool, None, fault, kind=kind)  # "—" without building the case
    torch.manual_seed(fault.seed)
    try:
        case = fault.build(faulty)
        _KIND[fault.id] = type(case)
        return run_tool(tool, case, fault)
    except Exception as exc:  # the zoo's own bug or a tool crash: recorded, never hidden
        return {
            "detected": False,
            "localized": False,
            "message": f"ERROR {type(exc).__name__}: {str(exc).splitlines()[0][:240] if str(exc) else ''}",
            "seconds": 0.0,
            "error": True,
        }


def run_zoo(
    faults: Sequence[Fault],
    *,
    tools: Sequence[str] = TOOLS,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Run every fault and healthy twin through ``tools``; ``progress(fault_id)`` after each.

    Returns the JSON-ready results: ``{"faults": [...], "healthy": [...], "summary": {...},
    "by_category": {...}, "tools": [...], "seconds": float}``.

    Example:
        >>> res = run_zoo(select(load_faults(), only="shapes.*", quick=True))  # doctest: +SKIP
    """
    _warm_up()
    t_start = time.perf_counter()
    out_faults, out_healthy = [], []
    prev_threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for f in faults:
                ft = {t: _run_one(f, True, t) for t in tools}
                hr = {t: _run_one(f, False, t) for t in tools}
                out_faults.append({
                    "id": f.id, "category": f.category, "family": f.family, "title": f.title,
                    "expected": _jsonable(f.expected), "tools": ft,
                })  # fmt: skip
                out_healthy.append({
                    "id": f.id,
                    "tools": {
                        t: {"false_alarm": r["detected"], "message": r["message"],
                            **({"error": True} if r.get("error") else {})}
                        for t, r in hr.items()
                    },
                })  # fmt: skip
                if progress is not None:
                    progress(f.id)  # done
    finally:
        torch.set_num_threads(prev_threads)
    res = {"faults": out_faults, "healthy": out_healthy, "tools": list(tools)}
    res["summary"] = summarize(out_faults, out_healthy, tools)
    res["by_category"] = {
        c: summarize(
            [f for f in out_faults if f["category"] == c],
            [h for h, f in zip(out_healthy, out_faults) if f["category"] == c],
            tools,
        )
        for c in CATEGORIES
        if any(f["category"] == c for f in out_faults)
    }
    res["seconds"] = round(time.perf_counter() - t_start, 2)
    return res


def _warm_up() -> None:
    """Import what the tools import lazily, so no tool's seconds include an import."""
    import beartype  # noqa: F401
    import jaxtyping  # noqa: F401

    import diagnostics

    for name in ("NanWatch", "GradFlow", "run_ablation", "CFGDropoutMonitor"):
        getattr(diagnostics, name)
    # one failing NanWatch step: its first replay pays one-time dispatch set-up (~2 s)
    lin = torch.nn.Linear(2, 1)

    def step() -> torch.Tensor:
        loss = (lin(torch.ones(1, 2)) / 0.0).sum()
        loss.backward()
        return loss

    try:
        diagnostics.NanWatch(lin).run(step)
    except diagnostics.NonFiniteError:
        pass


def _rate(k: int, n: int) -> float | None:
    return round(k / n, 4) if n else None


def summarize(faults: list[dict], healthy: list[dict], tools: Sequence[str]) -> dict[str, Any]:
    """Per tool: detection / localization over all faults and over the applicable ones,
    false-alarm rate over the applicable healthy twins, median seconds to a diagnosis."""
    out = {}
    for t in tools:
        rs = [f["tools"][t] for f in faults]
        app = [r for r in rs if r["detected"] is not None]
        det = [r for r in app if r["detected"]]
        loc = [r for r in app if r["localized"]]
        hs = [h["tools"][t]["false_alarm"] for h in healthy]
        happ = [x for x in hs if x is not None]
        secs = [r["seconds"] for r in det if "seconds" in r]
        out[t] = {
            "faults": len(rs),
            "applicable": len(app),
            "detected": len(det),
            "localized": len(loc),
            "detection": _rate(len(det), len(rs)),
            "localization": _rate(len(loc), len(rs)),
            "detection_applicable": _rate(len(det), len(app)),
            "localization_applicable": _rate(len(loc), len(app)),
            "healthy": len(happ),
            "false_alarm_count": sum(bool(x) for x in happ),
            "false_alarms": _rate(sum(bool(x) for x in happ), len(happ)),
            "median_seconds": round(statistics.median(secs), 4) if secs else None,
            "errors": sum(1 for r in rs if r.get("error")),
        }
    return out


def _jsonable(x: Any) -> Any:
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if x is None or isinstance(x, (bool, int, float, str)):
        return x
    return repr(x)
