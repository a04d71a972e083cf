"""Findings in words, each with its numbers, from an audit's measurements.

A change counts when its paired 95% CI excludes 0 AND its size reaches :data:`MEANINGFUL`
(per metric; 0 for metrics without an entry). Kinds and severities:

================================  ========  =================================================
kind                              severity  when
================================  ========  =================================================
under_converged                   problem   more sampler steps improve the primary metric
converged                         ok        more steps change it by less than MEANINGFUL
fewer_steps_cost / _suffice       info      fewer steps lose / do not lose quality
corrector_hurts / _helps          problem/  removing corrector steps improves / lowers it
                                  info
setting_better / _worse / _neutral problem/ another snr / guidance beats the reference's
                                  info
ema_identical_to_raw              problem   EMA and raw weights bit-identical (never updated)
ema_not_loaded                    problem   EMA asked for, raw evaluated (none in checkpoint,
                                            or the loader kept raw)
weights_unknown                   problem   the model matches none of the named weights
ema_loaded                        ok        the evaluated weights are the EMA weights
ema_raw_gap / ema_raw_close       problem/  raw vs EMA differ by >= LARGE_GAP / less
                                  info
beats_floor / below_floor /       ok/       reference protocol vs the unprocessed input
floor_not_beaten                  problem
ceiling_ok / ceiling_failed       ok/       clean-vs-clean metrics reach their maxima
                                  problem
metrics_agree / metric_disagrees  ok/       metric functions vs reference implementations
                                  problem
nonfinite_estimates               problem   a protocol produced NaN/Inf estimates
metric_unscored                   problem/  the metric could not score some (all: problem)
                                  info      examples of the reference protocol
silent_references                 problem   clean references that are constant (silence)
train_mode                        problem/  the model ran in training mode while sampling
                                  info      (info: no dropout/normalization layer in it)
sampler_global_rng                info      the sampler draws from the global RNG
variant_skipped                   info      a variant not run (no such weights, the sampler
                                            raised under it, interrupted)
interrupted                       problem   Ctrl-C after the reference: later protocols not run
pareto                            info      the protocols on the metric-vs-cost front
================================  ========  =================================================

A paired change is judged only on at least :data:`MIN_N` examples: one example has no spread,
so its bootstrap CI has zero width and any change would look significant.
"""

from __future__ import annotations

from typing import Any

from ._metrics import MEANINGFUL, UNITS

__all__ = ["LARGE_GAP", "MIN_N", "make_findings", "pareto_front"]

MIN_N = 2  # examples a paired CI needs before a change can count

LARGE_GAP: dict[str, float] = {"si_sdr": 1.0, "pesq": 0.1, "estoi": 0.03}
_PRETTY = {"si_sdr": "SI-SDR", "pesq": "PESQ", "estoi": "ESTOI"}
_SETTING = {"steps": "N", "corrector_steps": "corrector steps", "snr": "snr", "guidance": "w"}


def _name(m: str) -> str:
    return _PRETTY.get(m, m)


def _num(m: str, x: float, sign: bool = False) -> str:
    digits = 2 if m == "si_sdr" else 3
    return f"{x:{'+' if sign else ''}.{digits}f}"


def _delta_text(m: str, d: dict[str, Any]) -> str:
    lo, hi = d["ci95"]
    return (
        f"{_num(m, d['delta'], True)}{UNITS.get(m, '')} [{_num(m, lo, True)}, {_num(m, hi, True)}]"
    )


def _verdict(m: str, d: dict[str, Any] | None) -> str:
    """'better' / 'worse' (significant and meaningful), 'same' (CI within +-MEANINGFUL or a
    significant but tiny change), 'unclear' (CI too wide), 'none' (no data)."""
    if not d or d.get("delta") is None:
        return "none"
    if d.get("n", MIN_N) < MIN_N:
        return "unclear"  # one example: a zero-width CI says nothing
    lo, hi = d["ci95"]
    thr = MEANINGFUL.get(m, 0.0)
    sig = lo > 0 or hi < 0
    if sig and abs(d["delta"]) >= thr:
        return "better" if d["delta"] > 0 else "worse"
    if sig or (lo >= -thr and hi <= thr):
        return "same"  # CI inside +-MEANINGFUL, or significant but smaller than it
    return "unclear"


def _significant(d: dict[str, Any]) -> bool:
    """The paired CI excludes 0, on at least :data:`MIN_N` examples."""
    return d.get("n", MIN_N) >= MIN_N and (d["ci95"][0] > 0 or d["ci95"][1] < 0)


def _unclear(d: dict[str, Any]) -> str:
    """Why a change cannot be called: too few examples, or a CI too wide."""
    n = d.get("n", MIN_N)
    return f"unclear ({n} example: no CI)" if n < MIN_N else "unclear (CI too wide)"


def _others(v: dict[str, Any], primary: str) -> str:
    parts = [
        f"{_name(m)} {_delta_text(m, d)}"
        for m, d in v["delta"].items()
        if m != primary and d.get("delta") is not None
    ]
    return f" ({'; '.join(parts)})" if parts else ""


def _cost(v: dict[str, Any], ref: dict[str, Any]) -> str:
    a, b = v.get("seconds_per_example"), ref.get("seconds_per_example")
    if not a or not b:
        return ""
    ca, cb = v.get("network_evals"), ref.get("network_evals")
    calls = f"{ca / cb:.2f}× the network evaluations, " if ca and cb else ""
    return f", at {calls}{a / b:.2f}× the seconds ({a:.2f} vs {b:.2f} s per example)"


def pareto_front(points: list[tuple[str, float, float]]) -> list[str]:
    """Labels of the points ``(label, cost, value)`` that no other point beats on both (lower
    cost and higher value, one of them strictly)."""
    front = []
    for lab, c, val in points:
        dominated = any((c2 <= c and v2 >= val) and (c2 < c or v2 > val) for _, c2, v2 in points)
        if not dominated:
            front.append(lab)
    return front


def make_findings(report: Any) -> list[dict[str, Any]]:
    """The findings of an :class:`AuditReport` (see the module doc for the kinds)."""
    out: list[dict[str, Any]] = []
    ref = report.reference
    rp = ref["protocol"]
    primary = report.metrics[0]
    P = _name(primary)

    def add(kind: str, severity: str, text: str, **numbers: Any) -> None:
        out.append({"kind": kind, "severity": severity, "text": text, **numbers})

    # --- weights --------------------------------------------------------------------------
    w = report.weights
    if w.get("ema_in_checkpoint") is False:
        add(
            "ema_not_loaded",
            "problem",
            "EMA not loaded: the checkpoint has no EMA weights, so an 'EMA' evaluation used the "
            "raw weights (save the EMA beside the raw weights)",
        )
    if w.get("ema_identical_to_raw"):
        add(
            "ema_identical_to_raw",
            "problem",
            "EMA never updated: the EMA and raw weights are bit-identical (max |Δ| = 0), so the "
            "'EMA' evaluation is a raw one; check that ema.update() runs after each optimizer "
            "step and that the EMA, not a copy of the model, is saved",
            max_abs_diff=w.get("ema_raw_max_abs_diff"),
        )
    if w.get("evaluated_claimed") == "ema" and w.get("ema_in_checkpoint"):
        holds = w.get("model_holds", [])
        if "ema" in holds and not w.get("ema_identical_to_raw"):
            add(
                "ema_loaded",
                "ok",
                f"the evaluated weights are the EMA weights (EMA–raw relative parameter distance "
                f"{w.get('ema_raw_rel_distance', 0):.3g})",
                rel_distance=w.get("ema_raw_rel_distance"),
            )
        elif "raw" in holds and "ema" not in holds:
            add(
                "ema_not_loaded",
                "problem",
                "EMA not loaded: EMA weights were asked for but the model as given holds the raw "
                f"weights (EMA–raw max |Δ| {w.get('ema_raw_max_abs_diff', 0):.3g}); the loader "
                "did not swap the EMA in",
                max_abs_diff=w.get("ema_raw_max_abs_diff"),
            )
        elif not holds:
            add(
                "weights_unknown",
                "problem",
                "the model as given matches none of the named weights "
                f"({', '.join(w.get('available', []))}): it was modified after loading, or a "
                "different checkpoint was loaded",
            )

    # --- protocol variants ------------------------------------------------------------------
    points = []
    if ref["metrics"][primary]["mean"] is not None:
        points.append((ref["label"], ref["seconds_per_example"], ref["metrics"][primary]["mean"]))
    if ref.get("nonfinite"):
        add(
            "nonfinite_estimates",
            "problem",
            f"{ref['label']} (the reference protocol): {ref['nonfinite']} estimate(s) contain "
            "NaN/Inf; the metrics skip them, so the reference is scored on fewer examples",
            protocol=ref["protocol"],
        )
    for v in report.variants:
        if v.get("skipped"):
            continue
        if v.get("nonfinite"):
            add(
                "nonfinite_estimates",
                "problem",
                f"{v['label']}: {v['nonfinite']} estimate(s) contain NaN/Inf",
                protocol=v["protocol"],
            )
        d = v["delta"].get(primary)
        if v["metrics"][primary]["mean"] is not None:
            points.append((v["label"], v["seconds_per_example"], v["metrics"][primary]["mean"]))
        keys = [k for k in v["protocol"] if v["protocol"][k] != rp.get(k)]
        if len(keys) != 1 or d is None or d.get("delta") is None:
            continue
        key = keys[0]
        a, b = rp.get(key), v["protocol"][key]
        verdict = _verdict(primary, d)
        change = (
            f"{_SETTING.get(key, key)} = {a:g} → {b:g} changes {P} by "
            if key != "weights"
            else f"{b} instead of {a} weights changes {P} by "
        ) + _delta_text(primary, d)
        nums = {
            "protocol": v["protocol"],
            "metric": primary,
            "delta": d["delta"],
            "ci95": d["ci95"],
        }
        tail = _others(v, primary) + _cost(v, ref)
        if key == "steps":
            if b > a:
                if verdict == "better":
                    add("under_converged", "problem", f"under-converged: {change}{tail}", **nums)
                elif verdict == "same":
                    add(
                        "converged",
                        "ok",
                        f"converged at N = {a:g}: {change} (below the "
                        f"{MEANINGFUL.get(primary, 0):g}{UNITS.get(primary, '')} that counts)"
                        f"{tail}",
                        **nums,
                    )
                elif verdict == "worse":
                    add("more_steps_worse", "problem", f"more steps hurt: {change}{tail}", **nums)
                else:
                    add("steps_unclear", "info", f"{_unclear(d)}: {change}{tail}", **nums)
            else:
                if verdict == "worse":
                    add("fewer_steps_cost", "info", f"fewer steps cost quality: {change}{tail}",
                        **nums)  # fmt: skip
                elif verdict == "better":
                    add("fewer_steps_better", "problem", f"fewer steps are better: {change}{tail}",
                        **nums)  # fmt: skip
                elif verdict == "unclear":
                    add("steps_unclear", "info", f"{_unclear(d)}: {change}{tail}", **nums)
                else:
                    add("fewer_steps_suffice", "info", f"fewer steps suffice: {change}{tail}",
                        **nums)  # fmt: skip
        elif key == "corrector_steps":
            fewer = b < a
            if verdict in ("better", "worse"):
                hurts = (verdict == "better") == fewer
                add(
                    "corrector_hurts" if hurts else "corrector_helps",
                    "problem" if hurts else "info",
                    f"corrector {'hurts' if hurts else 'helps'}: {change}{tail}",
                    **nums,
                )
            else:
                what = _unclear(d) if verdict == "unclear" else "no meaningful effect"
                add("corrector_neutral", "info", f"corrector: {what}: {change}{tail}", **nums)
        elif key == "weights":
            d_abs = abs(d["delta"])
            if _significant(d) and d_abs >= LARGE_GAP.get(primary, 0.0):
                worse = "EMA" if (a == "ema") == (d["delta"] > 0) else "raw"
                add(
                    "ema_raw_gap",
                    "problem",
                    f"large EMA–raw gap: {change}{tail}; the {worse} weights are worse"
                    + (
                        " (an EMA worse than raw: decay too slow for the training length, or "
                        "never updated from the initial weights)"
                        if worse == "EMA"
                        else ""
                    ),
                    **nums,
                )
            else:
                unclear = "not clearly different" + _unclear(d).removeprefix("unclear")
                what = {"same": "close", "unclear": unclear}.get(
                    verdict, f"different, below the {LARGE_GAP.get(primary, 0):g} gap flagged"
                )
                add("ema_raw_close", "info", f"EMA and raw weights are {what}: {change}{tail}",
                    **nums)  # fmt: skip
        else:
            if verdict == "better":
                add("setting_better", "problem", f"the reference setting is not the best: {change}"
                    f"{tail}", **nums)  # fmt: skip
            elif verdict == "worse":
                add("setting_worse", "info", f"the reference setting is better: {change}{tail}",
                    **nums)  # fmt: skip
            else:
                what = _unclear(d) if verdict == "unclear" else "no meaningful effect"
                add("setting_neutral", "info", f"{what}: {change}{tail}", **nums)
    for v in report.variants:
        if v.get("skipped"):
            add("variant_skipped", "info", f"{v['label']} not run: {v['skipped']}",
                protocol=v["protocol"])  # fmt: skip
    if len(points) > 1:
        front = pareto_front(points)
        add(
            "pareto",
            "info",
            f"{P} vs seconds per example, Pareto front: "
            + "; ".join(
                f"{lab} ({_num(primary, val)}{UNITS.get(primary, '')}, {c:.2f} s)"
                for lab, c, val in sorted(points, key=lambda p: p[1])
                if lab in front
            ),
            front=front,
        )

    # --- the evaluation itself ----------------------------------------------------------------
    fl = report.checks["floor"]
    fd = fl["delta_reference"].get(primary)
    fm = fl["metrics"][primary]["mean"]
    rm = ref["metrics"][primary]["mean"]
    if fd and fd.get("delta") is not None and fm is not None and rm is not None:
        txt = f"unprocessed input {P} {_num(primary, fm)}, reference protocol {_num(primary, rm)}"
        txt += f" ({_delta_text(primary, fd)})"
        if _significant(fd) and fd["ci95"][0] > 0:
            add("beats_floor", "ok", f"the model beats the unprocessed-input floor: {txt}",
                delta=fd["delta"], ci95=fd["ci95"])  # fmt: skip
        elif _significant(fd):
            add("below_floor", "problem", f"the model is WORSE than its unprocessed input: {txt}",
                delta=fd["delta"], ci95=fd["ci95"])  # fmt: skip
        else:
            few = fd.get("n", MIN_N) < MIN_N
            add("floor_not_beaten", "problem", f"the model does not clearly beat its unprocessed "
                f"input: {txt}" + (f"; {fd.get('n')} example cannot tell" if few else ""),
                delta=fd["delta"], ci95=fd["ci95"])  # fmt: skip
    silent = report.checks.get("silent_references", 0)
    if silent:
        add(
            "silent_references",
            "problem",
            f"{silent} of {report.n_examples} clean references are silent (constant): no metric "
            "can score an estimate against them (SI-SDR is undefined, PESQ refuses them), so "
            "their scores, the ceiling and the agreement checks are meaningless there; check "
            "how the evaluation data is loaded",
            silent=silent,
        )
    cause = (
        f"{silent} silent clean reference(s) (above), or the metric is computed wrongly"
        if silent
        else "the metric is computed wrongly"
    )
    ceil = report.checks["ceiling"]
    failed = {m: c for m, c in ceil.items() if c.get("ok") is False}
    for m, c in failed.items():
        low = "n/a" if c.get("min") is None else f"{c['min']:.3f}"
        add(
            "ceiling_failed",
            "problem",
            f"ceiling check failed: {_name(m)}(clean, clean) reaches only {low} (expected "
            f">= {c['expected_min']:g}); {cause} (sample rate, band, argument order?)",
            metric=m,
            min=c.get("min"),
        )
    checked = {m: c for m, c in ceil.items() if c.get("ok")}
    if checked and not failed:
        add(
            "ceiling_ok",
            "ok",
            "clean-vs-clean ceiling holds: "
            + ", ".join(f"{_name(m)} >= {c['min']:.3g}" for m, c in checked.items()),
        )
    agr = report.checks["agreement"]
    bad = {m: a for m, a in agr.items() if a.get("agree") is False}
    for m, a in bad.items():
        first = a["pairs"][0] if a.get("pairs") else [float("nan"), float("nan")]
        add(
            "metric_disagrees",
            "problem",
            f"{_name(m)} disagrees with its reference ({a['reference']}): max |Δ| "
            f"{a['max_abs_diff']:.3g} over {a['n']} pairs (tolerance {a['tolerance']:g}"
            + (f", {a['nan_mismatch']} NaN mismatches" if a.get("nan_mismatch") else "")
            + f"); first pair ours {first[0]:.3f} vs reference {first[1]:.3f}: "
            + (f"{silent} silent clean reference(s) (above), or check " if silent else "check ")
            + "the sample rate, band and argument order",
            metric=m,
            max_abs_diff=a["max_abs_diff"],
        )
    good = {m: a for m, a in agr.items() if a.get("agree")}
    if good and not bad:
        add(
            "metrics_agree",
            "ok",
            "evaluation code agrees with references: "
            + ", ".join(
                f"{_name(m)} max |Δ| {a['max_abs_diff']:.2g} vs {a['reference']} (n={a['n']})"
                for m, a in good.items()
            ),
        )
    for m, a in agr.items():
        if a.get("agree") is None:
            add("metric_unchecked", "info", f"{_name(m)} not checked: {a['reason']}", metric=m)
    # examples a metric could not score (NaN): too short or silent clips, non-finite estimates
    n_ex = report.n_examples
    for m in report.metrics:
        scored = ref["metrics"][m].get("n", n_ex)
        if scored < n_ex:
            c = ceil.get(m, {})
            why = (
                "nor clean vs clean: the clips may be too short or silent for it, or the metric "
                "fails on them"
                if c.get("unscored") == n_ex
                else "a clip too short or silent for it, or a non-finite estimate"
            )
            add(
                "metric_unscored",
                "problem" if scored == 0 else "info",
                f"{_name(m)} gave no score (NaN) for {n_ex - scored} of {n_ex} examples under "
                f"the reference protocol ({why}); its means and deltas use the other {scored}",
                metric=m,
                unscored=n_ex - scored,
            )
    # how the sampler ran the model
    sm = report.checks.get("sampling", {})
    if sm.get("train_mode_calls"):
        layers = sm.get("mode_dependent_layers") or []
        what = (
            f"its {', '.join(layers)} layers act as in training"
            if layers
            else "it has no dropout or normalization layer, so this matters only where its code "
            "branches on self.training (CFG dropout often does)"
        )
        add(
            "train_mode",
            "problem" if layers else "info",
            f"the model ran in training mode while sampling ({sm['train_mode_calls']} of "
            f"{sm['model_calls']} forward calls): {what}; call model.eval() before evaluating",
            train_mode_calls=sm["train_mode_calls"],
        )
    if sm.get("global_rng_calls"):
        add(
            "sampler_global_rng",
            "info",
            f"the sampler draws from the global torch RNG ({sm['global_rng_calls']} of "
            f"{sm['sampler_calls']} calls), not only from the generator it is given: the audit "
            "seeded the global RNG per batch so every protocol saw the same draws, but outside "
            "the audit this evaluation is not reproducible from the generator's seed",
        )
    if getattr(report, "interrupted", False):
        add(
            "interrupted",
            "problem",
            "the audit was interrupted (Ctrl-C): the protocols after it are not run",
        )
    order = {"problem": 0, "ok": 1, "info": 2}
    return sorted(out, key=lambda f: order.get(f["severity"], 3))
