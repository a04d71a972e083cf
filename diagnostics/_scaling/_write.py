"""Writers: report.json, report.md, a log-log PNG and TensorBoard scalars for scaling reports.

matplotlib and TensorBoard are imported only here, when a report is written.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

__all__ = ["fmt_bytes", "write_report", "write_reports"]

TOP_MODULES = 12  # rows in the markdown module table
PLOT_MODULES = 4  # module curves in the PNG


def fmt_bytes(n: float | None) -> str:
    """``1536 -> '1.50 KiB'``."""
    if n is None:
        return "n/a"
    for unit, f in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if abs(n) >= f:
            return f"{n / f:.2f} {unit}"
    return f"{n:.0f} B"


def _exp(fit: dict[str, Any]) -> str:
    if fit.get("exponent") is None:
        return "n/a"
    lo, hi = fit["ci95"]
    text = f"{fit['exponent']:.2f} [{lo:.2f}, {hi:.2f}]"
    return text if fit["status"] == "ok" else f"({text}) inconclusive"


def _pct(v: float | None) -> str:
    return "n/a" if v is None else f"{100 * v:.0f} %"


def top_modules(report: dict[str, Any], n: int = TOP_MODULES) -> list[dict[str, Any]]:
    """Modules by memory share at the largest size, then time share."""
    return sorted(
        report["modules"],
        key=lambda m: (-(m["share"]["memory"] or 0), -(m["share"]["time"] or 0), m["module"]),
    )[:n]


def to_markdown(report: dict[str, Any]) -> str:
    """The report as Markdown (what ``report.md`` holds)."""
    axis, tot = report["axis"], report["total"]
    lines = [
        f"# Scaling of `{report['target']}` over `{axis}`",
        "",
        f"Device {report['device']}, {report['threads']} thread(s), "
        f"{'forward + backward' if report['backward'] else 'forward (no grad)'}. "
        f"Time: median of {tot['exponent']['time']['n_repeats']} repeats after warm-up, no hooks "
        f"on the timed call. Memory: {report['memory_method']}; peak = input + the largest "
        f"allocation total during the call (model {fmt_bytes(tot['model_bytes'])} not "
        "included). Exponents: log-log slope over the upper half of the sizes, 95 % bootstrap CI "
        "over repeats (memory accounting is deterministic, so its CI is zero-width).",
        "",
        "## Findings",
        "",
        *[f"- {f['message']}" for f in report["findings"]],
        "",
        "## Total",
        "",
        f"| {axis} | time (ms) | peak | input |",
        "| ---: | ---: | ---: | ---: |",
    ]
    for i, s in enumerate(report["sizes"]):
        lines.append(
            f"| {s} | {1e3 * tot['seconds'][i]:.3f} | {fmt_bytes(tot['peak_bytes'][i])} | "
            f"{fmt_bytes(tot['input_bytes'][i])} |"
        )
    te, me = tot["exponent"]["time"], tot["exponent"]["memory"]
    lines += [
        "",
        f"Exponent (sizes {te['sizes_fitted']}): time {_exp(te)}"
        + (f" ({tot['class']['time']})" if te["status"] == "ok" else "")
        + f", memory {_exp(me)}"
        + (f" ({tot['class']['memory']})." if me["status"] == "ok" else "."),
        f"Local exponents between consecutive sizes: time {te['local']}, memory {me['local']}.",
    ]
    if te["status"] != "ok":
        lines.append(f"Time fit inconclusive: {te['reason']}.")
    b = report["budget"]
    if b["budget_bytes"] is not None:
        lines.append(
            f"Largest {axis} within {fmt_bytes(b['budget_bytes'])} ({b['budget_source']}): "
            f"{report['max_size_within_budget']} ({b['method']})."
        )
    last = report["sizes"][-1]
    lines += [
        "",
        f"## Modules (forward; top {TOP_MODULES} by share of the peak at {axis} = {last})",
        "",
        "| module | n | time exponent | memory exponent | time share | peak share | peak |",
        "| --- | ---: | --- | --- | ---: | ---: | ---: |",
    ]
    for m in top_modules(report):
        lines.append(
            f"| `{m['module']}` | {m['instances']} | {_exp(m['exponent']['time'])} | "
            f"{_exp(m['exponent']['memory'])} | {_pct(m['share']['time'])} | "
            f"{_pct(m['share']['memory'])} | {fmt_bytes(m['peak_bytes'][-1])} |"
        )
    lines += [
        "",
        "Module time is inclusive (children counted) and measured in a separate hooked pass; "
        "module peak = the largest allocation total inside the module's calls minus the total "
        "at entry. Modules a fused kernel skips (e.g. inside `nn.TransformerEncoderLayer`'s "
        "fast path) get no row.",
    ]
    if report.get("failed"):
        f = report["failed"]
        lines += ["", f"**Size {f['size']} raised** `{f['error']}`; the fit uses the sizes before."]
    return "\n".join(lines) + "\n"


def _plot(report: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    import numpy as np

    sizes = np.asarray(report["sizes"], dtype=float)
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    mods = top_modules(report, PLOT_MODULES)
    for ax, key, metric, label in (
        (axes[0], "seconds", "time", "time (s)"),
        (axes[1], "peak_bytes", "memory", "peak memory (bytes)"),
    ):
        y = np.asarray(report["total"][key], dtype=float)
        ax.loglog(sizes, np.maximum(y, 1e-12), "o-", color="k", label="total")
        fit = report["total"]["exponent"][metric]
        if fit.get("exponent") is not None:
            fs = np.asarray(fit["sizes_fitted"], dtype=float)
            idx = [report["sizes"].index(int(s)) for s in fs]
            c = np.exp(np.mean(np.log(np.maximum(y[idx], 1e-12)) - fit["exponent"] * np.log(fs)))
            ax.loglog(fs, c * fs ** fit["exponent"], "--", color="tab:red",
                      label=f"fit: {report['axis']}^{fit['exponent']:.2f}")  # fmt: skip
        for m in mods:
            v = np.asarray(m[key], dtype=float)
            if (v > 0).all():
                ax.loglog(sizes, v, ".-", alpha=0.7, label=m["module"])
        ax.set_xlabel(report["axis"])
        ax.set_ylabel(label)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(f"{report['target']}: cost vs {report['axis']} ({report['device']})")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _tensorboard(report: dict[str, Any], logdir: Path) -> None:
    from torch.utils.tensorboard import SummaryWriter

    w = SummaryWriter(log_dir=str(logdir))
    try:
        base = f"scaling/{report['target']}/{report['axis']}"
        for i, s in enumerate(report["sizes"]):
            w.add_scalar(f"{base}/seconds", report["total"]["seconds"][i], s)
            w.add_scalar(f"{base}/peak_bytes", report["total"]["peak_bytes"][i], s)
            for m in top_modules(report, 8):
                w.add_scalar(f"{base}/module_peak_bytes/{m['module']}", m["peak_bytes"][i], s)
                w.add_scalar(f"{base}/module_seconds/{m['module']}", m["seconds"][i], s)
        w.add_text(f"{base}/findings", "\n".join(f"- {f['message']}" for f in report["findings"]))
    finally:
        w.close()


def write_report(
    report: dict[str, Any], out: Path | str, *, png: bool = True, tensorboard: bool = True
) -> Path:
    """Write ``report.json``, ``report.md``, ``scaling.png`` and ``tensorboard/`` under ``out``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / "report.md").write_text(to_markdown(report))
    if png:
        _plot(report, out / "scaling.png")
    if tensorboard:
        _tensorboard(report, out / "tensorboard")
    return out / "report.json"


def write_reports(
    reports: list[dict[str, Any]], out: Path | str, *, png: bool = True, tensorboard: bool = True
) -> Path:
    """One report: written at ``out``. Several: each under ``out/<target>-<axis>/`` and
    ``out/report.json`` = ``{"reports": [...], "findings": [...]}`` (findings prefixed with
    the run) plus ``out/report.md`` linking them."""
    out = Path(out)
    if len(reports) == 1:
        return write_report(reports[0], out, png=png, tensorboard=tensorboard)
    out.mkdir(parents=True, exist_ok=True)
    md = ["# Scaling runs", ""]
    findings = []
    for r in reports:
        sub = f"{r['target']}-{r['axis']}"
        write_report(r, out / sub, png=png, tensorboard=tensorboard)
        md += [f"## `{r['target']}` over `{r['axis']}` ([report]({sub}/report.md))", ""]
        md += [f"- {f['message']}" for f in r["findings"]] + [""]
        findings += [{**f, "run": sub} for f in r["findings"]]
    (out / "report.json").write_text(
        json.dumps({"reports": reports, "findings": findings}, indent=2) + "\n"
    )
    (out / "report.md").write_text("\n".join(md))
    return out / "report.json"
