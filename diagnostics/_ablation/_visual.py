"""Visual writers of an ablation report: the PNG figures and the TensorBoard logs."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from diagnostics._ablation._types import AblationReport, Effect
from diagnostics._ablation._writers import render_markdown

__all__ = ["write_figures", "write_tensorboard"]


# ----------------------------------------------------------------------------- figures


def _mpl() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _plot_effects(report: AblationReport, path: Path) -> bool:
    sites = [s for s in report.sites if s.ablations]
    if not sites:
        return False
    plt = _mpl()
    curves = report.times is not None
    fig, axes = plt.subplots(1, len(sites), figsize=(4.8 * len(sites), 3.8), squeeze=False)
    for ax, s in zip(axes[0], sites, strict=True):
        for k, (name, r) in enumerate([*s.ablations.items(), ("floor", s.floor)]):
            color = "gray" if name == "floor" else plt.cm.tab10(k % 10)
            if curves and r.curve is not None:
                c = r.curve
                ax.plot(c.t, c.effect, marker="o", ms=3, color=color, label=name)
                ax.fill_between(
                    c.t, [v[0] for v in c.ci95], [v[1] for v in c.ci95], color=color, alpha=0.2
                )
            else:
                err = [[r.effect - r.ci95[0]], [r.ci95[1] - r.effect]]
                ax.bar(k, r.effect, color=color, label=name)
                ax.errorbar(k, r.effect, yerr=err, color="black", capsize=3)
        ax.axhline(report.min_effect, color="gray", ls="--", lw=0.8, label="min_effect")
        ax.set_yscale("symlog", linthresh=1e-4)
        ax.set_title(f"{s.site}: {s.verdict}", fontsize=9)
        ax.set_xlabel("diffusion time t" if curves else "ablation")
        ax.set_ylabel("relative change ||f(c)-f(a)||/||f(c)||")
        if not curves:
            ax.set_xticks(range(len(s.ablations) + 1), [*s.ablations, "floor"], fontsize=8)
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
        un = (sweep.get("unprocessed") or {}).get(name)
        if un and un["mean"] is not None:
            ax.axhline(un["mean"], color="gray", ls=":", lw=0.8, label="unprocessed")
            ax.legend(fontsize=7)
        ax.set_title(f"{name} vs guidance scale (n={max(m['n'])})", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def write_figures(report: AblationReport, out: Path) -> list[str]:
    """The PNG figures under ``out``; returns their file names (also kept in the report)."""
    figs: list[str] = []
    name = "effect_vs_t.png" if report.times else "effects.png"
    if _plot_effects(report, out / name):
        figs.append(name)
    if report.embedding is not None and report.embedding.plot_umap(out / "umap.png"):
        figs.append("umap.png")
    if report.guidance_sweep and _plot_guidance(report.guidance_sweep, out / "guidance_sweep.png"):
        figs.append("guidance_sweep.png")
    return figs


# ----------------------------------------------------------------------------- TensorBoard


def _tb_tag(text: str) -> str:
    return re.sub(r"[^\w.\-/]", "_", text)


def _tb_step(t: float) -> int:
    """A diffusion time as a TensorBoard step: round(1000 t)."""
    return round(1000 * float(t))


def _tb_effect(w: Any, base: str, e: Effect, times: list[float] | None) -> list[str]:
    """``base/effect``, ``base/ci_lo``, ``base/ci_hi`` over the diffusion steps (or at 0)."""
    tags = [f"{base}/effect", f"{base}/ci_lo", f"{base}/ci_hi"]
    if e.curve is not None:
        for t, v, ci in zip(e.curve.t, e.curve.effect, e.curve.ci95, strict=True):
            step = _tb_step(t)
            for tag, x in zip(tags, (v, ci[0], ci[1]), strict=True):
                w.add_scalar(tag, x, step)
    else:
        for tag, x in zip(tags, (e.effect, e.ci95[0], e.ci95[1]), strict=True):
            w.add_scalar(tag, x, 0)
    return tags


def _verdict_text(report: AblationReport) -> str:
    """One paragraph per site: verdict, reason, floor, channel and content."""

    def test(t: Any) -> str:
        if t is None:
            return "not run"
        return f"{t.ablation} {t.effect:.3g} [{t.ci95[0]:.3g}, {t.ci95[1]:.3g}]"

    parts = [
        f"**{s.site}: {s.verdict}** — {s.reason}  \nfloor {s.floor.effect:.2g}; channel "
        f"{test(s.channel)}; content {test(s.content)}; min_effect {report.min_effect:g}"
        for s in report.sites
    ]
    return "\n\n".join(parts) or "no sites"


def write_tensorboard(
    report: AblationReport, tb_dir: Path, figures_dir: Path | None = None
) -> None:
    """TensorBoard logs of the report.

    * scalars ``ablation/SITE/ABLATION/{effect,ci_lo,ci_hi}`` (and ``.../floor/...``) with
      step = round(1000 t) for diffusion targets (0 otherwise), in a Custom Scalars layout of
      margin charts (effect with its CI band), one chart per site and ablation;
    * the guidance sweep: ``guidance/METRIC/{mean,ci_lo,ci_hi}`` and the paired delta, with
      step = round(100 * scale);
    * the verdicts and the whole report as text; the PNG figures in ``figures_dir`` as images;
    * the condition embeddings in the projector, with the labels as metadata.
    """
    from diagnostics._tensorboard import TensorBoardLogger

    diffusion = report.times is not None
    axis = "step = round(1000·t), t = diffusion time" if diffusion else "one value (step 0)"
    layout: dict[str, dict[str, list[Any]]] = {}
    with TensorBoardLogger(str(tb_dir)) as tb:  # torchdx's one writer; native features on it
        w = tb.writer
        for s in report.sites:
            charts: dict[str, list[Any]] = {}
            for a, e in [*s.ablations.items(), ("floor", s.floor)]:
                tags = _tb_effect(w, f"ablation/{_tb_tag(s.site)}/{a}", e, report.times)
                charts[f"{s.site} {a}: effect with 95% CI ({axis})"] = ["Margin", tags]
            layout[f"cond_ablation {s.site} ({s.verdict})"] = charts
        sw = report.guidance_sweep
        if sw:
            charts = {}
            for name, m in sw["metrics"].items():
                base = f"guidance/{_tb_tag(name)}"
                for sc, v, ci, d, dci in zip(sw["scales"], m["mean"], m["ci95"], m["delta"],
                                             m["delta_ci95"], strict=True):  # fmt: skip
                    step = round(100 * sc)
                    if v is not None:
                        for tag, x in (("mean", v), ("ci_lo", ci[0]), ("ci_hi", ci[1])):
                            w.add_scalar(f"{base}/{tag}", x, step)
                    if d is not None:
                        for tag, x in (("delta", d), ("delta_lo", dci[0]), ("delta_hi", dci[1])):
                            w.add_scalar(f"{base}/{tag}", x, step)
                charts[f"{name} vs guidance scale (step = round(100·scale))"] = [
                    "Margin", [f"{base}/mean", f"{base}/ci_lo", f"{base}/ci_hi"]]  # fmt: skip
                charts[f"Δ{name} vs scale {sw['reference_scale']:g}, paired (step = round(100·scale))"] = [
                    "Margin", [f"{base}/delta", f"{base}/delta_lo", f"{base}/delta_hi"]]  # fmt: skip
            layout["cond_ablation guidance sweep"] = charts
        w.add_custom_scalars(layout)
        w.add_text("cond_ablation/verdicts", _verdict_text(report))
        w.add_text("cond_ablation/report", render_markdown(report))
        if figures_dir is not None:
            import matplotlib.image as mpimg

            for f in report.figures:
                img = mpimg.imread(figures_dir / f)  # (H, W, C) floats in [0, 1]
                w.add_image(f"cond_ablation/{Path(f).stem}", img[..., :3], 0, dataformats="HWC")
        if report.embedding is not None and report.embedding.embeddings is not None:
            report.embedding.add_to_tensorboard(w, tag="condition_embedding")
