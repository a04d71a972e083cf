"""Writers of an ablation report: one renderer per output format.

* :func:`report_json`: the ``report.json`` layout (schema in ``docs/COND_ABLATION.md``; no
  timings, so the same seed gives the same file);
* :func:`render_markdown`: ``report.md``;
* :func:`render_table`: the verdict table printed by the CLI;
* :func:`~diagnostics._ablation._visual.write_tensorboard`: TensorBoard event files;
* :func:`~diagnostics._ablation._visual.write_figures`: the PNG figures;
* :func:`write_report`: all of them under one folder.

Every renderer reads the :class:`~diagnostics.AblationReport` (the types), never the engine.

Example:
    >>> paths = write_report(report, "runs/cond_ablation/demo")
    >>> sorted(paths)  # doctest: +SKIP
    ['effect_vs_t.png', 'report.json', 'report.md', 'umap.png']
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

from diagnostics._ablation._types import ABLATIONS, AblationReport, Effect, SiteResult, Test
from diagnostics._ablation._verdict import MIN_EXAMPLES, RULE

__all__ = ["SCHEMA", "render_markdown", "render_table", "report_json", "site_json", "write_report"]

SCHEMA = 2  # 2: verdict/reason/floor/channel/content/by_label, metrics, paired sweep


# ----------------------------------------------------------------------------- JSON


def _effect_json(e: Effect) -> dict[str, Any]:
    d: dict[str, Any] = {
        "effect": e.effect,
        "ci95": list(e.ci95),
        "cosine": e.cosine,
        "cosine_ci95": list(e.cosine_ci95),
        "abs_change": e.abs_change,
        "n": e.n,
    }
    if e.curve is not None:
        d["curve"] = asdict(e.curve)
    if e.metrics:
        d["metrics"] = {m: asdict(v) for m, v in e.metrics.items()}
    return d


def _test_json(t: Test | None) -> dict[str, Any] | None:
    return None if t is None else asdict(t)


def site_json(s: SiteResult) -> dict[str, Any]:
    return {
        "site": s.site,
        "kind": s.kind,
        "verdict": s.verdict,
        "reason": s.reason,
        "floor": _effect_json(s.floor),
        "channel": _test_json(s.channel),
        "content": _test_json(s.content),
        "by_label": {
            k: {
                "n": v.n,
                "verdict": v.verdict,
                "reason": v.reason,
                "floor": {"effect": v.floor[0], "ci95": v.floor[1:]},
                "channel": _test_json(v.channel),
                "content": _test_json(v.content),
            }
            for k, v in s.by_label.items()
        },
        "batched": s.batched,
        "ablations": {a: _effect_json(e) for a, e in s.ablations.items()},
        "notes": list(s.notes),
        "interaction": None if s.interaction is None else asdict(s.interaction),
        "additive": s.additive,
    }


def _cond_vs_uncond(report: AblationReport) -> dict[str, Any] | None:
    """The null ablation of the first site that has one."""
    for s in report.sites:
        r = s.ablations.get("null")
        if r is None:
            continue
        cvu: dict[str, Any] = {
            "site": s.site,
            "rel_diff": r.effect,
            "ci95": list(r.ci95),
            "abs_diff": r.abs_change,
        }
        if r.curve is not None:
            cvu["curve"] = {
                "t": r.curve.t,
                "rel_diff": r.curve.effect,
                "ci95": r.curve.ci95,
                "abs_diff": r.curve.abs_change,
            }
        return cvu
    return None


def report_json(report: AblationReport) -> dict[str, Any]:
    """The ``report.json`` layout of ``report``."""
    emb = None
    if report.embedding is not None:
        emb = report.embedding.to_dict()
        emb["site"] = report.embedding_site
    return {
        "tool": "torchdx.cond_ablation",
        "schema": SCHEMA,
        "target": report.target,
        "seed": report.seed,
        "min_effect": report.min_effect,
        "min_examples": MIN_EXAMPLES,
        "level": 0.95,
        "n_boot": report.n_boot,
        "rule": RULE,
        "times": report.times,
        "ablations": list(report.ablations),
        "n_examples": report.n_examples,
        "sites": [site_json(s) for s in report.sites],
        "errors": list(report.errors),
        "cond_vs_uncond": _cond_vs_uncond(report),
        "guidance_sweep": report.guidance_sweep,
        "embeddings": emb,
        "figures": list(report.figures),
    }


# ----------------------------------------------------------------------------- text


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.3g}%"


def _fmt_ci(r: dict[str, Any]) -> str:
    return f"{r['effect']:.3g} [{r['ci95'][0]:.3g}, {r['ci95'][1]:.3g}]"


def _fmt_test(t: dict[str, Any] | None) -> str:
    if t is None:
        return "-"
    mark = "" if t["above_floor"] else " (floor)"
    return f"{t['ablation']} {_fmt_ci(t)}{mark}"


def _fmt_delta(d: dict[str, Any]) -> str:
    if d["delta"] is None:
        return f"n/a (0 of {d['failures']} examples scored)"
    fails = f", {d['failures']} failed" if d["failures"] else ""
    return f"{d['delta']:+.3g} [{d['ci95'][0]:+.3g}, {d['ci95'][1]:+.3g}] (n={d['n']}{fails})"


def _grid(rows: list[list[str]]) -> list[str]:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return lines


def render_table(report: AblationReport, *, details: bool = False) -> str:
    """Plain-text verdict table (site, verdict, floor, channel, content) with each site's
    reason; with ``details`` also the effects per ablation, the per-label verdicts, the quality
    deltas, the sweep and the embedding numbers (what the CLI prints)."""
    data = report_json(report)
    rows = [["site", "verdict", "floor", "channel", "content"]]
    for s in data["sites"]:
        rows.append(
            [s["site"], s["verdict"] + (" (additive)" if s["additive"] else ""),
             _fmt_ci(s["floor"]), _fmt_test(s["channel"]),
             _fmt_test(s["content"])]
        )  # fmt: skip
    for e in data["errors"]:
        rows.append([e["site"] or "-", "error", "-", "-", "-"])
    lines = _grid(rows)
    lines += [f"  {s['site']}: {s['reason']}" for s in data["sites"]]
    lines.append(f"  (min_effect {data['min_effect']:g}; effect = mean ||f(c)-f(a)||/||f(c)||)")
    if details:
        lines += _detail_lines(data)
    return "\n".join(lines)


def _detail_lines(data: dict[str, Any]) -> list[str]:
    lines: list[str] = []
    names = [a for a in ABLATIONS if any(a in s["ablations"] for s in data["sites"])]
    if names:
        rows = [["site", *names]]
        for s in data["sites"]:
            rows.append(
                [s["site"], *(_fmt_ci(s["ablations"][a]) if a in s["ablations"] else "-"
                              for a in names)]
            )  # fmt: skip
        lines += ["", "effect per ablation [95% CI]:", *_grid(rows)]
    for s in data["sites"]:
        if s["by_label"]:
            parts = ", ".join(f"{k} {v['verdict']} (n={v['n']})" for k, v in s["by_label"].items())
            lines.append(f"by label at {s['site']}: {parts}")
    for s in data["sites"]:
        for a, r in s["ablations"].items():
            for m, d in r.get("metrics", {}).items():
                lines.append(f"quality {s['site']} {a}: {m} {_fmt_delta(d)}")
    sw = data["guidance_sweep"]
    if sw:
        ref = sw["reference_scale"]
        for name, m in sw["metrics"].items():
            vals = ", ".join(
                f"w={sc:g}: {'n/a' if v is None else f'{v:.3g}'}"
                + ("" if sc == ref or d is None else f" ({d:+.3g} vs w={ref:g})")
                for sc, v, d in zip(sw["scales"], m["mean"], m["delta"], strict=True)
            )
            un = (sw.get("unprocessed") or {}).get(name)
            base = "" if not un or un["mean"] is None else f"; unprocessed {un['mean']:.3g}"
            fails = sum(m["failures"])
            lines.append(
                f"guidance sweep {name}: {vals}{base}" + (f"; {fails} failed" if fails else "")
            )
    emb = data["embeddings"]
    if emb:
        sil = "n/a" if emb["silhouette"] is None else f"{emb['silhouette']:.2f}"
        collapsed = "YES - " + emb["collapse_reason"] if emb["collapsed"] else "no"
        lines.append(
            f"embeddings ({emb['site']}, n={emb['n']}): effective rank "
            f"{emb['effective_rank']:.2f}, mean cosine {emb['mean_pairwise_cosine']:.2f}, "
            f"silhouette {sil}, collapsed: {collapsed}"
        )
    return lines


def render_markdown(report: AblationReport) -> str:
    """The report as Markdown (deterministic: no timings)."""
    data = report_json(report)
    lines = [
        f"# Conditioning ablation: {data['target']}",
        "",
        f"seed {data['seed']}, {data['n_examples']} examples"
        + (f", {len(data['times'])} diffusion times" if data.get("times") else "")
        + f". Effect = mean over examples of `||f(c) - f(a)|| / ||f(c)||` with a paired bootstrap "
        f"95% CI ({data['n_boot']} resamples); min_effect = {data['min_effect']:g}.",
        "",
        f"Rule: {data['rule']}",
        "",
    ]
    if data["sites"]:
        lines += [
            "## Verdicts",
            "",
            "| site | verdict | floor | channel | content | reason |",
            "| --- | --- | --- | --- | --- | --- |",
        ]
        for s in data["sites"]:
            lines.append(
                f"| `{s['site']}` | **{s['verdict']}**{' (additive)' * s['additive']} | "
                f"{_fmt_ci(s['floor'])} | "
                f"{_fmt_test(s['channel'])} | {_fmt_test(s['content'])} | {s['reason']} |"
            )
        names = list(dict.fromkeys(a for s in data["sites"] for a in s["ablations"]))
        lines += [
            "",
            "## Effect per ablation",
            "",
            "| site | " + " | ".join(names) + " |",
            "| --- | " + " | ".join("---" for _ in names) + " |",
        ]
        for s in data["sites"]:
            cells = [_fmt_ci(s["ablations"][a]) if a in s["ablations"] else "-" for a in names]
            lines.append(f"| `{s['site']}` | " + " | ".join(cells) + " |")
        lines += ["", "Cosine similarity f(c)·f(a) (mean):", ""]
        for s in data["sites"]:
            cos = ", ".join(f"{a} {r['cosine']:.3f}" for a, r in s["ablations"].items())
            note = "" if not s["notes"] else " — " + "; ".join(s["notes"])
            lines.append(f"- `{s['site']}`: {cos}{note}")
        lines.append("")
        lines += _interaction_lines(data)
        lines += _label_lines(data)
        lines += _quality_lines(data)
    for e in data["errors"]:
        lines += [f"**Error** at `{e['site']}`: {e['message']}", ""]
    cvu = data["cond_vs_uncond"]
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
    lines += _sweep_lines(data["guidance_sweep"])
    lines += _embedding_lines(data["embeddings"])
    if data["figures"]:
        lines += ["", "## Figures", ""] + [f"![{f}]({f})" for f in data["figures"]]
    return "\n".join(lines).rstrip() + "\n"


def _interaction_lines(data: dict[str, Any]) -> list[str]:
    sites = [s for s in data["sites"] if s.get("interaction")]
    if not sites:
        return []
    lines = [
        "## Interaction with the input",
        "",
        "The shuffle's swap seen on its own input and on another input: the difference, "
        "relative to the output (`effect`) and to the change itself (`share`). A used "
        "condition whose interaction stays within the floor (x sqrt(2)) is **additive**: it "
        "only adds a bias to the output.",
        "",
        "| site | interaction | share of the change | additive |",
        "| --- | --- | --- | --- |",
    ]
    for s in sites:
        i = s["interaction"]
        share = f"{i['relative']:.3g} [{i['relative_ci95'][0]:.3g}, {i['relative_ci95'][1]:.3g}]"
        add = "**yes**" if s["additive"] else "no"
        lines.append(f"| `{s['site']}` | {_fmt_ci(i)} | {share} | {add} |")
    return [*lines, ""]


def _label_lines(data: dict[str, Any]) -> list[str]:
    sites = [s for s in data["sites"] if s["by_label"]]
    if not sites:
        return []
    lines = ["## By label", "", "| site | label | n | verdict | content | reason |",
             "| --- | --- | --- | --- | --- | --- |"]  # fmt: skip
    for s in sites:
        for k, v in s["by_label"].items():
            lines.append(
                f"| `{s['site']}` | {k} | {v['n']} | {v['verdict']} | "
                f"{_fmt_test(v['content'])} | {v['reason']} |"
            )
    return [*lines, ""]


def _quality_lines(data: dict[str, Any]) -> list[str]:
    rows = [
        (s["site"], a, m, d)
        for s in data["sites"]
        for a, r in s["ablations"].items()
        for m, d in r.get("metrics", {}).items()
    ]
    if not rows:
        return []
    lines = [
        "## Quality-level effects",
        "",
        "The sampler with the ablated condition minus the intact one (same examples, same "
        "sampler noise), paired per example.",
        "",
        "| site | ablation | metric | delta [95% CI] |",
        "| --- | --- | --- | --- |",
    ]
    lines += [f"| `{s}` | {a} | {m} | {_fmt_delta(d)} |" for s, a, m, d in rows]
    return [*lines, ""]


def _sweep_lines(sw: dict[str, Any] | None) -> list[str]:
    if not sw:
        return []
    ref = sw["reference_scale"]
    lines = [
        "## Guidance-scale sweep",
        "",
        f"Mean [95% CI] per scale; Δ is the paired change against scale {ref:g} (same examples, "
        "same sampler noise).",
        "",
        "| scale | " + " | ".join(f"{m} | Δ {m}" for m in sw["metrics"]) + " |",
        "| --- | " + " | ".join("--- | ---" for _ in sw["metrics"]) + " |",
    ]
    for k, sc in enumerate(sw["scales"]):
        cells = []
        for m in sw["metrics"].values():
            v, ci, n, f = m["mean"][k], m["ci95"][k], m["n"][k], m["failures"][k]
            fails = f", {f} failed" if f else ""
            cells.append(
                "n/a" if v is None else f"{v:.3f} [{ci[0]:.3f}, {ci[1]:.3f}] (n={n}{fails})"
            )
            d, dci = m["delta"][k], m["delta_ci95"][k]
            cells.append(
                "-" if sc == ref or d is None else f"{d:+.3f} [{dci[0]:+.3f}, {dci[1]:+.3f}]"
            )
        lines.append(f"| {sc:g} | " + " | ".join(cells) + " |")
    un = sw.get("unprocessed")
    if un:
        cells = []
        for name in sw["metrics"]:
            u = un.get(name)
            cells += ["n/a" if not u or u["mean"] is None else
                      f"{u['mean']:.3f} [{u['ci95'][0]:.3f}, {u['ci95'][1]:.3f}] (n={u['n']})", "-"]  # fmt: skip
        lines.append("| unprocessed | " + " | ".join(cells) + " |")
    return [*lines, ""]


def _embedding_lines(emb: dict[str, Any] | None) -> list[str]:
    if not emb:
        return []
    pdv = emb["per_dim_variance"]
    sil = emb["silhouette"] if emb["silhouette"] is not None else "n/a"
    lines = [
        "## Condition embeddings",
        "",
        f"`{emb['site']}`: {emb['n']} × {emb['dim']}; effective rank "
        f"{emb['effective_rank']:.2f}; mean pairwise cosine "
        f"{emb['mean_pairwise_cosine']:.3f}; norm range [{emb['norm_range'][0]:.3g}, "
        f"{emb['norm_range'][1]:.3g}]; spread {emb['spread']:.3g}; per-dim variance "
        f"min {min(pdv):.3g} / max {max(pdv):.3g}, {emb['dead_dims']} dead dims; "
        f"silhouette by label {sil}.",
        "",
        f"Collapsed: **{'yes' if emb['collapsed'] else 'no'}**"
        + (f" ({emb['collapse_reason']})" if emb["collapse_reason"] else "")
        + ".",
        "",
    ]
    return lines + [f"- {n}" for n in emb["notes"]]


def write_report(
    report: AblationReport,
    out: str | Path,
    *,
    tensorboard: str | Path | bool | None = None,
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

    Example:
        >>> write_report(run_ablation(target), "runs/x")["report.json"]  # doctest: +SKIP
        PosixPath('runs/x/report.json')
    """
    from diagnostics._ablation._visual import write_figures, write_tensorboard

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    report.figures = write_figures(report, out) if figures else []
    written: dict[str, Path] = {f: out / f for f in report.figures}
    (out / "report.json").write_text(json.dumps(report_json(report), indent=2) + "\n")
    written["report.json"] = out / "report.json"
    (out / "report.md").write_text(render_markdown(report))
    written["report.md"] = out / "report.md"
    if tensorboard is not False:
        tb = Path(tensorboard) if isinstance(tensorboard, (str, Path)) else out / "tensorboard"
        write_tensorboard(report, tb, out if figures else None)
        written["tensorboard"] = tb
    return written
