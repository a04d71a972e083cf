"""Writers for a conditioning-ablation report: report.json, report.md, PNG figures, TensorBoard.

Files under ``out``:

* ``report.json``: the schema of ``docs/COND_ABLATION.md`` (no timings, so the same seed gives
  the same file);
* ``report.md``: the verdict table, effects with CIs, cond-vs-uncond, the guidance sweep and the
  embedding numbers, with the figures linked;
* ``effect_vs_t.png`` (one panel per site, one line per ablation, CI bands) or ``effects.png``
  (no diffusion times: bars with CI whiskers); ``umap.png``; ``guidance_sweep.png``;
* TensorBoard event files (``tensorboard_dir``, default ``out/tensorboard``): the effect curves as
  scalars, the sweep, the verdict table as text, and the embeddings in the projector.

Example:
    >>> paths = write_report(report, "runs/cond_ablation/demo")
    >>> sorted(paths)  # doctest: +SKIP
    ['effect_vs_t.png', 'report.json', 'report.md', 'umap.png']
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from diagnostics._ablation import AblationReport

__all__ = ["render_markdown", "write_report"]


def _mpl() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _plot_effects(data: dict[str, Any], path: Path) -> bool:
    sites = [s for s in data["sites"] if s["ablations"]]
    if not sites:
        return False
    plt = _mpl()
    curves = data.get("times") is not None
    fig, axes = plt.subplots(1, len(sites), figsize=(4.8 * len(sites), 3.8), squeeze=False)
    for ax, s in zip(axes[0], sites, strict=True):
        for k, (name, r) in enumerate(s["ablations"].items()):
            color = plt.cm.tab10(k % 10)
            if curves:
                c = r["curve"]
                lo = [v[0] for v in c["ci95"]]
                hi = [v[1] for v in c["ci95"]]
                ax.plot(c["t"], c["effect"], marker="o", ms=3, color=color, label=name)
                ax.fill_between(c["t"], lo, hi, color=color, alpha=0.2)
            else:
                err = [[r["effect"] - r["ci95"][0]], [r["ci95"][1] - r["effect"]]]
                ax.bar(k, r["effect"], color=color, label=name)
                ax.errorbar(k, r["effect"], yerr=err, color="black", capsize=3)
        th = data["thresholds"]
        ax.axhline(th["used_min"], color="gray", ls="--", lw=0.8)
        ax.axhline(th["ignored_max"], color="gray", ls=":", lw=0.8)
        ax.set_title(f"{s['site']}: {s['verdict']}", fontsize=9)
        ax.set_xlabel("diffusion time t" if curves else "ablation")
        ax.set_ylabel("relative change ||f(c)-f(a)||/||f(c)||")
        if not curves:
            ax.set_xticks(range(len(s["ablations"])), list(s["ablations"]), fontsize=8)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def _plot_guidance(sweep: dict[str, Any], path: Path) -> bool:
    metrics = sweep["metrics"]
    if not metrics:
        return False
    plt = _mpl()
    fig, axes = plt.subplots(1, len(metrics), figsize=(4.2 * len(metrics), 3.4), squeeze=False)
    for ax, (name, m) in zip(axes[0], metrics.items(), strict=True):
        xs = [x for x, v in zip(sweep["scales"], m["mean"], strict=True) if v is not None]
        ys = [v for v in m["mean"] if v is not None]
        lo = [c[0] for c in m["ci95"] if c[0] is not None]
        hi = [c[1] for c in m["ci95"] if c[1] is not None]
        ax.plot(xs, ys, marker="o")
        ax.fill_between(xs, lo, hi, alpha=0.2)
        ax.set_xlabel("guidance scale")
        ax.set_ylabel(name)
        ax.set_title(f"{name} vs guidance scale (n={m['n']})", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def _fmt_ci(r: dict[str, Any]) -> str:
    return f"{r['effect']:.3f} [{r['ci95'][0]:.3f}, {r['ci95'][1]:.3f}]"


def render_markdown(data: dict[str, Any]) -> str:
    """The report as Markdown (deterministic: no timings)."""
    th = data["thresholds"]
    lines = [
        f"# Conditioning ablation: {data['target']}",
        "",
        f"seed {data['seed']}, {data['n_examples']} examples"
        + (f", {len(data['times'])} diffusion times" if data.get("times") else "")
        + f". Effect = mean over examples of `||f(c) - f(a)|| / ||f(c)||` with a bootstrap "
        f"95% CI ({th['n_boot']} resamples). Verdict: {th['rule']} "
        f"(used_min = {th['used_min']}, ignored_max = {th['ignored_max']}).",
        "",
    ]
    names = list(dict.fromkeys(a for s in data["sites"] for a in s["ablations"]))
    if data["sites"]:
        lines += [
            "## Verdicts",
            "",
            "| site | verdict | " + " | ".join(names) + " |",
            "| --- | --- | " + " | ".join("---" for _ in names) + " |",
        ]
        for s in data["sites"]:
            cells = [_fmt_ci(s["ablations"][a]) if a in s["ablations"] else "-" for a in names]
            lines.append(f"| `{s['site']}` | **{s['verdict']}** | " + " | ".join(cells) + " |")
        lines += ["", "Cosine similarity f(c)·f(a) (mean):", ""]
        for s in data["sites"]:
            cos = ", ".join(f"{a} {r['cosine']:.3f}" for a, r in s["ablations"].items())
            note = "" if not s["notes"] else " — " + "; ".join(s["notes"])
            lines.append(f"- `{s['site']}`: {cos}{note}")
        lines.append("")
    for e in data.get("errors", []):
        lines += [f"**Error** at `{e['site']}`: {e['message']}", ""]
    cvu = data.get("cond_vs_uncond")
    if cvu:
        lines += [
            "## Conditional vs unconditional output",
            "",
            f"Null ablation at `{cvu['site']}`: relative difference {cvu['rel_diff']:.3f} "
            f"[{cvu['ci95'][0]:.3f}, {cvu['ci95'][1]:.3f}], mean |difference| "
            f"{cvu['abs_diff']:.4g}.",
            "",
        ]
        if "curve" in cvu:
            c = cvu["curve"]
            lines += ["| t | rel. diff | 95% CI | abs. diff |", "| --- | --- | --- | --- |"]
            for t, e, ci, a in zip(c["t"], c["rel_diff"], c["ci95"], c["abs_diff"], strict=True):
                lines.append(f"| {t:.3f} | {e:.3f} | [{ci[0]:.3f}, {ci[1]:.3f}] | {a:.4g} |")
            lines.append("")
    sw = data.get("guidance_sweep")
    if sw:
        lines += [
            "## Guidance-scale sweep",
            "",
            "| scale | " + " | ".join(sw["metrics"]) + " |",
            "| --- | " + " | ".join("---" for _ in sw["metrics"]) + " |",
        ]
        for k, sc in enumerate(sw["scales"]):
            cells = []
            for m in sw["metrics"].values():
                v, ci = m["mean"][k], m["ci95"][k]
                cells.append("n/a" if v is None else f"{v:.3f} [{ci[0]:.3f}, {ci[1]:.3f}]")
            lines.append(f"| {sc:g} | " + " | ".join(cells) + " |")
        lines.append("")
    emb = data.get("embeddings")
    if emb:
        pdv = emb["per_dim_variance"]
        lines += [
            "## Condition embeddings",
            "",
            f"`{emb['site']}`: {emb['n']} × {emb['dim']}; effective rank "
            f"{emb['effective_rank']:.2f}; mean pairwise cosine "
            f"{emb['mean_pairwise_cosine']:.3f}; norm range [{emb['norm_range'][0]:.3g}, "
            f"{emb['norm_range'][1]:.3g}]; spread {emb['spread']:.3g}; per-dim variance "
            f"min {min(pdv):.3g} / max {max(pdv):.3g}, {emb['dead_dims']} dead dims; "
            f"silhouette by label {emb['silhouette'] if emb['silhouette'] is not None else 'n/a'}.",
            "",
            f"Collapsed: **{'yes' if emb['collapsed'] else 'no'}**"
            + (f" ({emb['collapse_reason']})" if emb["collapse_reason"] else "")
            + ".",
            "",
        ]
        lines += [f"- {n}" for n in emb["notes"]]
    figs = data.get("figures") or []
    if figs:
        lines += ["", "## Figures", ""] + [f"![{f}]({f})" for f in figs]
    return "\n".join(lines).rstrip() + "\n"


def _tb_tag(text: str) -> str:
    return re.sub(r"[^\w.\-/]", "_", text)


def _tensorboard(report: AblationReport, tb_dir: Path) -> None:
    from torch.utils.tensorboard import SummaryWriter

    data = report.data
    with SummaryWriter(log_dir=str(tb_dir)) as w:
        for s in data["sites"]:
            for a, r in s["ablations"].items():
                tag = f"ablation/{_tb_tag(s['site'])}/{a}"
                if "curve" in r:  # step = time index (t in the report)
                    for k, e in enumerate(r["curve"]["effect"]):
                        w.add_scalar(tag, e, k)
                else:
                    w.add_scalar(tag, r["effect"], 0)
        sw = data.get("guidance_sweep")
        if sw:
            for name, m in sw["metrics"].items():
                for k, v in enumerate(m["mean"]):
                    if v is not None:
                        w.add_scalar(f"guidance/{_tb_tag(name)}", v, k)
        w.add_text("cond_ablation/report", render_markdown(data))
        if report.embedding is not None and report.embedding.embeddings is not None:
            report.embedding.add_to_tensorboard(w, tag="condition_embedding")


def write_report(
    report: AblationReport,
    out: str | Path,
    *,
    tensorboard: str | Path | None = None,
    figures: bool = True,
) -> dict[str, Path]:
    """Write report.json, report.md, the PNG figures and the TensorBoard logs.

    Args:
        report: from :func:`~diagnostics.run_ablation` (complete or partial).
        out: output folder (created).
        tensorboard: TensorBoard log folder (default ``out/tensorboard``); ``False`` for none.
        figures: write the PNG figures.

    Returns:
        ``{file name: path}`` of what was written.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    data = report.data
    written: dict[str, Path] = {}
    figs: list[str] = []
    if figures:
        name = "effect_vs_t.png" if data.get("times") else "effects.png"
        if _plot_effects(data, out / name):
            figs.append(name)
        if report.embedding is not None and report.embedding.plot_umap(out / "umap.png"):
            figs.append("umap.png")
        if data.get("guidance_sweep") and _plot_guidance(
            data["guidance_sweep"], out / "guidance_sweep.png"
        ):
            figs.append("guidance_sweep.png")
    data["figures"] = figs
    for f in figs:
        written[f] = out / f
    (out / "report.json").write_text(json.dumps(data, indent=2) + "\n")
    written["report.json"] = out / "report.json"
    (out / "report.md").write_text(render_markdown(data))
    written["report.md"] = out / "report.md"
    if tensorboard is not False:
        tb = Path(tensorboard) if tensorboard is not None else out / "tensorboard"
        _tensorboard(report, tb)
        written["tensorboard"] = tb
    return written
