"""Writers for an evaluation audit: report.json, report.md, pareto.png, TensorBoard, doc block.

Files under ``out``: ``report.json`` (the schema of docs/EVAL_AUDIT.md), ``report.md`` (findings,
the protocol table with paired deltas, the evaluation checks), ``pareto.png`` (each metric vs
seconds per example, CI bars, the front joined) and TensorBoard event files. ``write_doc_block``
replaces the text between ``<!-- eval_audit:begin -->`` and ``<!-- eval_audit:end -->`` in a
Markdown file (appending the block when the markers are absent).

Example:
    >>> write_report(report, "runs/eval_audit/demo")
    >>> write_doc_block(report, "docs/SGMSE.md", command="python -m diagnostics.eval_audit")
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from ._findings import _name, pareto_front
from ._metrics import UNITS
from ._runner import AuditReport

__all__ = ["BEGIN", "END", "render_markdown", "write_doc_block", "write_report"]

BEGIN = "<!-- eval_audit:begin -->"
END = "<!-- eval_audit:end -->"


def _f(m: str, x: float | None, sign: bool = False) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "n/a"
    digits = 2 if m == "si_sdr" else 3
    return f"{x:{'+' if sign else ''}.{digits}f}"


def _mean_ci(m: str, s: dict[str, Any]) -> str:
    if not s or s.get("mean") is None:
        return "n/a"
    lo, hi = s["ci95"]
    return f"{_f(m, s['mean'])} [{_f(m, lo)}, {_f(m, hi)}]"


def _delta(m: str, d: dict[str, Any] | None) -> str:
    if not d or d.get("delta") is None:
        return "n/a"
    lo, hi = d["ci95"]
    return f"{_f(m, d['delta'], True)} [{_f(m, lo, True)}, {_f(m, hi, True)}]"


def protocol_table(report: AuditReport) -> list[str]:
    ms = report.metrics
    head = (
        "| protocol | "
        + " | ".join(f"{_name(m)}{UNITS.get(m, '')} | Δ {_name(m)}" for m in ms)
        + " | s / example |"
    )
    lines = [head, "|" + " --- |" * (2 + 2 * len(ms))]
    ref = report.reference
    lines.append(
        f"| **{ref['label']}** (reference) | "
        + " | ".join(f"{_mean_ci(m, ref['metrics'][m])} | —" for m in ms)
        + f" | {ref['seconds_per_example']:.2f} |"
    )
    for v in report.variants:
        if v.get("skipped"):
            lines.append(f"| {v['label']} | " + " | ".join("— | —" for _ in ms)
                         + f" | not run: {v['skipped']} |")  # fmt: skip
            continue
        lines.append(
            f"| {v['label']} | "
            + " | ".join(f"{_mean_ci(m, v['metrics'][m])} | {_delta(m, v['delta'][m])}" for m in ms)
            + f" | {v['seconds_per_example']:.2f} |"
        )
    return lines


def checks_table(report: AuditReport) -> list[str]:
    c = report.checks
    lines = ["| metric | unprocessed input (floor) | reference − input | clean vs clean "
             "(ceiling) | agrees with reference implementation |",
             "| --- | --- | --- | --- | --- |"]  # fmt: skip
    for m in report.metrics:
        ce = c["ceiling"][m]
        ceil = _mean_ci(m, ce)
        if ce.get("ok") is not None:
            ceil += f" (min {_f(m, ce['min'])}, {'ok' if ce['ok'] else 'FAILED'} ≥ {ce['expected_min']:g})"
        a = c["agreement"][m]
        if a.get("agree") is None:
            agr = f"not checked ({a['reason']})"
        else:
            agr = (f"{'yes' if a['agree'] else 'NO'}: max |Δ| {a['max_abs_diff']:.2g} vs "
                   f"{a['reference']} (n={a['n']}, tol {a['tolerance']:g})")  # fmt: skip
        lines.append(
            f"| {_name(m)} | {_mean_ci(m, c['floor']['metrics'][m])} | "
            f"{_delta(m, c['floor']['delta_reference'][m])} | {ceil} | {agr} |"
        )
    return lines


def findings_list(report: AuditReport) -> list[str]:
    mark = {"problem": "**problem**", "ok": "ok", "info": "info"}
    return [f"- {mark.get(f['severity'], f['severity'])}: {f['text']}" for f in report.findings]


def render_markdown(report: AuditReport, figures: dict[str, str] | None = None) -> str:
    """``report.md``."""
    w = report.weights
    lines = [
        "# Evaluation-protocol audit",
        "",
        f"Target: {report.target}; {report.n_examples} examples, seed {report.seed}; every "
        "protocol on the same examples with the same sampler noise; Δ = paired difference to "
        "the reference, mean [bootstrap 95% CI] over examples.",
        "",
        "## Findings",
        *findings_list(report),
        "",
        "## Protocols",
        *protocol_table(report),
        "",
        "## Evaluation checks",
        *checks_table(report),
        "",
        "## Weights",
        f"- available: {', '.join(w.get('available', [])) or 'none'}; EMA in checkpoint: "
        f"{w.get('ema_in_checkpoint')}; the model as given holds: "
        f"{', '.join(w.get('model_holds', [])) or 'none of them'}",
    ]
    if "ema_raw_rel_distance" in w:
        lines.append(
            f"- EMA vs raw: identical {w['ema_identical_to_raw']}, max |Δ| "
            f"{w['ema_raw_max_abs_diff']:.3g}, relative distance {w['ema_raw_rel_distance']:.3g}"
        )
    if figures:
        lines += ["", "## Figures", *[f"![{k}]({v})" for k, v in figures.items()]]
    return "\n".join(lines) + "\n"


def _short(p: dict[str, Any], ref: dict[str, Any]) -> str:
    """What a protocol changes relative to the reference (``"N=50"``, ``"raw"``)."""
    if p is ref:
        return "reference"
    names = {"steps": "N", "corrector_steps": "corrector", "snr": "snr", "guidance": "w"}
    parts = [
        str(v) if k == "weights" else f"{names.get(k, k)}={v:g}"
        for k, v in p["protocol"].items()
        if ref["protocol"].get(k) != v
    ]
    return " ".join(parts) or p["label"]


def _points(report: AuditReport, m: str) -> list[tuple[str, float, float, list[float]]]:
    """(short label, seconds per example, mean, bar) per protocol; the bar is the paired 95% CI
    of the delta to the reference, placed at the reference mean (none for the reference)."""
    out = []
    ref = report.reference
    for p in [ref, *report.variants]:
        s = p.get("metrics", {}).get(m)
        if p.get("skipped") or not s or s.get("mean") is None:
            continue
        d = p.get("delta", {}).get(m)
        if d and d.get("delta") is not None and ref["metrics"][m].get("mean") is not None:
            base = ref["metrics"][m]["mean"]
            bar = [base + d["ci95"][0], base + d["ci95"][1]]
        else:
            bar = [s["mean"], s["mean"]]
        out.append((_short(p, ref), p["seconds_per_example"], s["mean"], bar))
    return out


def write_pareto(report: AuditReport, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ms = report.metrics
    fig, axes = plt.subplots(1, len(ms), figsize=(4.5 * len(ms), 3.8), squeeze=False)
    for ax, m in zip(axes[0], ms, strict=True):
        pts = _points(report, m)
        front = set(pareto_front([(lab, c, v) for lab, c, v, _ in pts]))
        for lab, c, v, bar in pts:
            color = "C3" if lab == "reference" else ("C0" if lab in front else "0.5")
            ax.errorbar(c, v, yerr=[[max(0.0, v - bar[0])], [max(0.0, bar[1] - v)]],
                        fmt="o" if lab in front else "x", color=color, capsize=3)  # fmt: skip
            ax.annotate(lab, (c, v), fontsize=8, xytext=(4, 3), textcoords="offset points")
        fr = sorted((c, v) for lab, c, v, _ in pts if lab in front)
        if len(fr) > 1:
            ax.plot(*zip(*fr, strict=True), "-", color="C0", alpha=0.5)
        ax.set_xlabel("seconds per example")
        ax.set_ylabel(f"{_name(m)}{UNITS.get(m, '')}")
        ax.set_title(f"{_name(m)} vs cost", fontsize=10)
        ax.grid(alpha=0.3)
    fig.suptitle(
        f"reference: {report.reference['label']} (red); bars: paired 95% CI of the change; "
        "blue: Pareto front",
        fontsize=8,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_tensorboard(report: AuditReport, log_dir: Path) -> None:
    from torch.utils.tensorboard import SummaryWriter

    tb = SummaryWriter(log_dir=str(log_dir))
    try:
        protos = [report.reference, *[v for v in report.variants if not v.get("skipped")]]
        for i, p in enumerate(protos):
            for m in report.metrics:
                s = p["metrics"][m]
                if s.get("mean") is not None:
                    tb.add_scalar(f"eval_audit/{m}/mean", s["mean"], i)
                d = p.get("delta", {}).get(m)
                if d and d.get("delta") is not None:
                    tb.add_scalar(f"eval_audit/{m}/delta", d["delta"], i)
            tb.add_scalar("eval_audit/seconds_per_example", p["seconds_per_example"], i)
        # the steps grid as a curve over N
        rp = report.reference["protocol"]
        for p in sorted(
            (p for p in protos if "steps" in p["protocol"]
             and all(p["protocol"][k] == rp[k] for k in rp if k != "steps")),
            key=lambda p: p["protocol"]["steps"],
        ):  # fmt: skip
            for m in report.metrics:
                if p["metrics"][m].get("mean") is not None:
                    tb.add_scalar(f"eval_audit/{m}/vs_steps", p["metrics"][m]["mean"],
                                  int(p["protocol"]["steps"]))  # fmt: skip
        tb.add_text("eval_audit/findings", "\n".join(findings_list(report)), 0)
        tb.add_text("eval_audit/protocols", "\n".join(protocol_table(report)), 0)
    finally:
        tb.flush()
        tb.close()


def write_report(
    report: AuditReport, out: str | Path, *, tensorboard: str | Path | None = None
) -> dict[str, Path]:
    """Write report.json, report.md, pareto.png and TensorBoard logs under ``out``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"report.json": out / "report.json"}
    paths["report.json"].write_text(json.dumps(report.to_json(), indent=2) + "\n")
    figs = {}
    try:
        paths["pareto.png"] = write_pareto(report, out / "pareto.png")
        figs["metric vs cost"] = "pareto.png"
    except ImportError:  # matplotlib missing: the report stays complete without the figure
        pass
    paths["report.md"] = out / "report.md"
    paths["report.md"].write_text(render_markdown(report, figs))
    tb_dir = Path(tensorboard) if tensorboard else out / "tensorboard"
    try:
        write_tensorboard(report, tb_dir)
        paths["tensorboard"] = tb_dir
    except ImportError:
        pass
    return paths


def _table_cells(lines: list[str]) -> tuple[list[str], list[list[str]]]:
    """Markdown table lines -> (header cells, row cells)."""

    def cells(line: str) -> list[str]:
        return [c.strip() for c in line.strip().strip("|").split("|")]

    return cells(lines[0]), [cells(ln) for ln in lines[2:]]


def doc_figures(report: AuditReport, command: str) -> dict[str, Any]:
    """The generated block's text pieces (written to the results file the markers point at)."""
    ph, prows = _table_cells(protocol_table(report))
    ch, crows = _table_cells(checks_table(report))
    return {
        "command": command,
        "target": report.target,
        "findings": [line[2:] for line in findings_list(report)],
        "protocols": {"header": ph, "rows": prows},
        "checks": {"header": ch, "rows": crows},
        "report": report.to_json(),
    }


def render_block(figures: dict[str, Any], results_name: str) -> str:
    """The block between the markers; every measured figure sits inside a ``<!-- fig -->``
    marker pointing into ``docs/results/<results_name>.json`` (``benchmarks.render_figures``)."""

    def fig(key: str, text: str) -> str:
        return f"<!-- fig {results_name}:doc.{key} -->{text}<!-- /fig -->"

    def table(name: str) -> list[str]:
        t = figures[name]
        out = ["| " + " | ".join(t["header"]) + " |", "|" + " --- |" * len(t["header"])]
        for i, row in enumerate(t["rows"]):
            out.append(
                "| " + " | ".join(fig(f"{name}.rows.{i}.{j}", c) for j, c in enumerate(row)) + " |"
            )
        return out

    return "\n".join(
        [
            BEGIN,
            "<!-- generated by python -m diagnostics.eval_audit --doc; do not edit by hand -->",
            "### Evaluation-protocol audit (generated)",
            "",
            f"`{figures['command']}` on {fig('target', figures['target'])}; every protocol on "
            "the same examples and sampler noise; Δ = paired difference to the reference, mean "
            "[bootstrap 95% CI]; figures from "
            f"`docs/results/{results_name}.json`.",
            "",
            *[f"- {fig(f'findings.{i}', t)}" for i, t in enumerate(figures["findings"])],
            "",
            *table("protocols"),
            "",
            *table("checks"),
            END,
        ]
    )


def write_doc_block(
    report: AuditReport, path: str | Path, *, command: str, results_name: str = "eval_audit_doc"
) -> Path:
    """Replace (or append) the generated block in the Markdown file ``path``; its figures go to
    ``<path's folder>/results/<results_name>.json`` (the project's results-file format)."""
    path = Path(path)
    figures = {"doc": doc_figures(report, command)}
    directory = path.parent / "results"
    try:
        from benchmarks._results import write_results

        write_results(results_name, figures, command=command, directory=directory)
    except ImportError:  # installed without the repository's benchmarks package
        directory.mkdir(parents=True, exist_ok=True)
        payload = {"name": results_name, "figures": figures, "command": command}
        (directory / f"{results_name}.json").write_text(json.dumps(payload, indent=2) + "\n")
    text = path.read_text() if path.exists() else ""
    block = render_block(figures["doc"], results_name)
    if BEGIN in text and END in text and text.index(BEGIN) < text.index(END):
        a, b = text.index(BEGIN), text.index(END) + len(END)
        text = text[:a] + block + text[b:]
    else:
        text = text.rstrip("\n") + ("\n\n" if text else "") + block + "\n"
    path.write_text(text)
    return path
