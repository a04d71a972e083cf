"""A site's outcome: the per-example matrices of its pass turned into a :class:`SiteResult`
(the verdict, the per-label verdicts, the effects, the interaction and the additive flag).

An ablation may have been measured on only some examples (``ok``): the shuffle leaves out a
batch whose shuffle swaps nothing, and the interaction a batch of one example (no second input
to see the swap on) or an example whose partner's input is, as the model sees it, the same as
its own. Each statistic uses the examples where it was measured, paired with their floor.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np

from diagnostics._ablation._run import flat_labels, r6
from diagnostics._ablation._runner import seed_of
from diagnostics._ablation._spread import LEFT_OUT
from diagnostics._ablation._types import (
    ABLATIONS,
    Curve,
    Effect,
    Interaction,
    LabelResult,
    SiteResult,
)
from diagnostics._ablation._verdict import (
    FLOOR_MARGIN,
    MIN_EXAMPLES,
    ROUNDOFF,
    Decision,
    ablation_test,
    decide,
    floor_margin,
)
from diagnostics._stats import bootstrap_ci

if TYPE_CHECKING:
    from diagnostics._ablation._site import SitePass

__all__ = ["INTERACTION", "summarise"]

INTERACTION = "interaction"  # per-example numbers of the interaction (not a forward)
_IDENTITY = "identity"
_RANDOM_FLOOR = 1e-3  # a floor above this (CI low) is randomness, not round-off: say so

Mats = dict[str, dict[str, np.ndarray]]  # measure -> kind -> (N, T)


def _bseed(sp: SitePass, name: str) -> int:
    """The bootstrap seed of one measure at this site."""
    if name == INTERACTION:
        key = len(ABLATIONS) + 1
    elif name == "inputs":
        key = len(ABLATIONS) + 2
    else:
        key = len(ABLATIONS) if name in (_IDENTITY, "floor") else ABLATIONS.index(name)
    return seed_of(sp.run_.seed, 7, sp.si, key)


def _present(m: dict[str, np.ndarray]) -> np.ndarray:
    """``(N,)`` bool: the examples where a measure was taken at every time (and, for the
    shuffle, whose condition it swapped at one time or more)."""
    ok = m["ok"].all(axis=1)
    return ok & m["swap"].any(axis=1) if "swap" in m else ok


def _weights(m: dict[str, np.ndarray]) -> np.ndarray:
    """``(N, T)``: the times an example's value averages: where the shuffle swapped its
    condition (a swap that gives an example its own condition is no test), else every time."""
    return m["swap"] if "swap" in m else np.ones_like(m["ok"])


def _over_times(x: np.ndarray, w: np.ndarray) -> np.ndarray:
    """``(N,)``: the ``w``-weighted mean over times of ``x`` ``(N, T)`` (NaN without weight)."""
    total = w.sum(axis=1)
    mean = (np.nan_to_num(x) * w).sum(axis=1) / np.maximum(total, 1e-300)
    return np.where(total > 0, mean, np.nan)


def _missing(sp: SitePass, present: dict[str, np.ndarray], has_floor: np.ndarray) -> dict[str, str]:
    """Why an ablation asked for was measured on no example, in words."""
    if not has_floor.any():
        why = "the identity (floor) run's output is NaN/Inf on every example"
        return {a: why for a in sp.todo}
    out = {  # an ablation run on every example yet measured on none: its outputs
        a: f"{a} makes the output NaN/Inf on every example"
        for a in sp.todo
        if a != "shuffle" and not present[a].any()
    }
    if "shuffle" not in present or present["shuffle"].any():
        return out
    why = [LEFT_OUT[k] for k in LEFT_OUT if k in sp.left_out]
    if not why:  # every batch was shuffled: the outputs were not numbers
        out["shuffle"] = (
            "the shuffle tested nothing: on every example it swapped, the shuffled output is "
            "NaN/Inf"
        )
        return out
    if list(sp.left_out) == ["same"]:
        out["shuffle"] = (
            "the shuffle tested nothing: within every batch the conditions are the same for "
            "every example (they differ only between batches), so shuffling them swaps nothing"
        )
        return out
    out["shuffle"] = "the shuffle tested nothing: " + "; ".join(why)
    return out


def summarise(sp: SitePass, mats: Mats, batched: bool) -> SiteResult:
    """The :class:`SiteResult` of a site pass from its per-example matrices."""
    run, site = sp.run_, sp.site
    # an example without a floor (the identity's output NaN/Inf) has no effect either
    has_floor = _present(mats[_IDENTITY])
    present = {a: _present(mats[a]) & has_floor for a in sp.todo}
    rel = {a: _over_times(mats[a]["rel"], _weights(mats[a])) for a in sp.todo}  # (N,)
    floor_t = np.where(has_floor[:, None], np.nan_to_num(mats[_IDENTITY]["rel"]), 0.0)
    floor = floor_t.mean(axis=1)
    # the shuffle's floor: over the same times as its effect (paired per example)
    floors = {a: np.nan_to_num(_over_times(floor_t, _weights(mats[a])))
              for a in sp.todo if "swap" in mats[a]}  # fmt: skip
    conditions_vary = sp.values.varies or sp.inputs.varies
    collapsed = site.kind == "module" and sp.inputs.varies and not sp.values.varies
    missing = _missing(sp, present, has_floor)

    def verdict(idx: np.ndarray) -> Decision:
        return decide(
            floor[idx],
            {a: e[idx] for a, e in rel.items()},
            min_effect=run.min_effect,
            n_boot=run.n_boot,
            seed_for=lambda name: _bseed(sp, name),
            conditions_vary=conditions_vary,
            collapsed=collapsed,
            present={a: p[idx] for a, p in present.items()},
            missing=missing,
            floors={a: f[idx] for a, f in floors.items()},
        )

    d = verdict(np.arange(floor.size))
    keep = has_floor if has_floor.any() else np.ones(floor.size, dtype=bool)
    floor_effect = _effect(sp, _IDENTITY, {k: np.nan_to_num(v) for k, v in
                                           mats[_IDENTITY].items()}, keep)  # fmt: skip
    if floor_effect.ci95[0] > _RANDOM_FLOOR:
        sp.notes.append(
            f"the floor is {floor_effect.effect:.2g}: the output changes between runs with the "
            "same inputs, so the forward is random (dropout or CFG dropout left on: "
            "model.train()?); effects inside the floor cannot be seen"
        )
    inter = None
    if INTERACTION in mats:
        m = mats[INTERACTION]
        inter = _interaction(sp, m, np.nan_to_num(_over_times(floor_t, _weights(m))),
                             present["shuffle"], d)  # fmt: skip
    reason = d.reason
    if inter is not None and inter.additive:
        reason += (
            f"; additive: the change the condition causes does not depend on the input "
            f"(interaction {100 * inter.effect:.3g}% [{100 * inter.ci95[0]:.3g}, "
            f"{100 * inter.ci95[1]:.3g}], within the floor): the condition acts only as "
            "an additive bias on the output, it does not modulate the features"
        )
    return SiteResult(
        site=site.text,
        kind=site.kind,
        verdict=d.verdict,
        reason=reason,
        floor=floor_effect,
        channel=d.channel,
        content=d.content,
        ablations={a: _effect(sp, a, mats[a], present[a]) for a in sp.todo if present[a].any()},
        by_label=_by_label(sp, verdict),
        batched=batched,
        notes=sp.notes,
        interaction=inter,
        additive=bool(inter is not None and inter.additive),
    )


def _by_label(sp: SitePass, verdict: Callable[[np.ndarray], Decision]) -> dict[str, LabelResult]:
    """The same rule on the examples of each label."""
    out: dict[str, LabelResult] = {}
    labels = flat_labels(sp.run_.target.labels, sp.sizes)
    for label in sorted(set(labels or [])):
        idx = np.asarray([i for i, v in enumerate(labels or []) if v == label])
        dl = verdict(idx)
        out[label] = LabelResult(
            n=int(idx.size),
            verdict=dl.verdict,
            reason=dl.reason,
            floor=[dl.floor[0], *dl.floor[1]],
            channel=dl.channel,
            content=dl.content,
        )
    return out


def _measurable(
    sp: SitePass, m: dict[str, np.ndarray], floor: np.ndarray, shuffled: np.ndarray
) -> np.ndarray | None:
    """``(N,)`` bool: the examples whose interaction can be measured (the swap was seen on two
    inputs that differ as the model sees them), or None with a note saying why none can;
    ``shuffled``: the examples the shuffle ran on."""
    ran = _present(m)
    sep = np.where(ran, np.nan_to_num(_over_times(m["sep"], _weights(m))), 0.0)
    ok = ran & (sep > floor_margin(floor))
    why = None
    if shuffled.sum() < MIN_EXAMPLES:
        why = f"the shuffle was measured on only {int(shuffled.sum())} examples"
    elif ran.sum() < MIN_EXAMPLES:
        why = (
            f"the shuffle's swap was seen on two inputs for only {int(ran.sum())} examples "
            "(a batch of one example has no second input)"
        )
    elif ok.sum() < MIN_EXAMPLES or not ablation_test(
        "inputs", sep[ok], floor[ok], floor_margin(floor[ok]), sp.run_.n_boot,
        _bseed(sp, "inputs"),
    ).above_floor:  # fmt: skip
        why = (
            "the inputs other than the condition do not differ between the examples the "
            "shuffle pairs (with the same condition their outputs agree within the floor), so "
            "the same swap cannot be seen on two different inputs"
        )
    if why is not None:
        sp.notes.append(f"interaction not measured (additive not tested): {why}")
        return None
    left = {
        "whose shuffle partner has the same input as the model sees it": ran & ~ok,
        "of batches of one example (shuffled with another batch's condition: no second "
        "input)": shuffled & ~ran,
    }
    for what, mask in left.items():
        k = int(mask.sum())
        if k:
            sp.notes.append(f"interaction leaves out {k} example{'s' * (k != 1)} {what}")
    return ok


def _interaction(
    sp: SitePass, m: dict[str, np.ndarray], floor: np.ndarray, shuffled: np.ndarray, d: Decision
) -> Interaction | None:
    """The interaction summary and the additive flag (see :class:`Interaction`); None when it
    cannot be measured (a note says why)."""
    ok = _measurable(sp, m, floor, shuffled)
    if ok is None:
        return None
    n_boot, bseed = sp.run_.n_boot, _bseed(sp, INTERACTION)
    w = _weights(m)
    ie = _over_times(m["rel"], w)[ok]  # (N',)
    f = floor[ok]
    eff, lo, hi = bootstrap_ci(ie, n_boot=n_boot, seed=bseed)
    share, slo, shi = bootstrap_ci(_over_times(m["cos"], w)[ok], n_boot=n_boot, seed=bseed + 1)
    f2 = np.sqrt(2.0) * f  # four outputs against the floor's two
    margin = max(ROUNDOFF, FLOOR_MARGIN * float(f2.mean()))
    xm, xlo, xhi = bootstrap_ci(ie - f2, n_boot=n_boot, seed=bseed + 2)
    above = bool(xlo > margin)
    # the content test is the shuffle's own test, the one the verdict read
    used = d.verdict in ("used", "weak") and d.content is not None and d.content.above_floor
    return Interaction(
        effect=r6(eff),
        ci95=[r6(lo), r6(hi)],
        relative=r6(share),
        relative_ci95=[r6(slo), r6(shi)],
        excess=r6(xm),
        excess_ci95=[r6(xlo), r6(xhi)],
        above_floor=above,
        additive=bool(used and not above),
        n=int(ie.size),
    )


def _effect(sp: SitePass, name: str, m: dict[str, np.ndarray], keep: np.ndarray) -> Effect:
    """One measure's :class:`Effect` over the examples ``keep`` where it was taken."""
    run = sp.run_
    bseed = _bseed(sp, name)
    rel, cosm, absm = m["rel"][keep], m["cos"][keep], m["abs"][keep]  # (N', T)
    w = _weights(m)[keep] > 0  # (N', T): the times each example's value averages
    eff, lo, hi = bootstrap_ci(_over_times(rel, w), n_boot=run.n_boot, seed=bseed)
    cos, clo, chi = bootstrap_ci(_over_times(cosm, w), n_boot=run.n_boot, seed=bseed + 1)
    curve = None
    if run.target.times is not None:
        n_t = len(run.times)
        at = [w[:, ti] if w[:, ti].any() else np.ones(len(w), dtype=bool) for ti in range(n_t)]
        pts = [
            bootstrap_ci(rel[at[ti], ti], n_boot=run.n_boot, seed=bseed + 10 + ti)
            for ti in range(n_t)
        ]
        curve = Curve(
            t=[r6(float(t)) for t in run.times],
            effect=[r6(x) for x, _, _ in pts],
            ci95=[[r6(a), r6(b)] for _, a, b in pts],
            cosine=[r6(float(cosm[at[ti], ti].mean())) for ti in range(n_t)],
            abs_change=[r6(float(absm[at[ti], ti].mean())) for ti in range(n_t)],
        )
    return Effect(
        effect=r6(eff),
        ci95=[r6(lo), r6(hi)],
        cosine=r6(cos),
        cosine_ci95=[r6(clo), r6(chi)],
        abs_change=r6(float(_over_times(absm, w).mean())),
        n=int(rel.shape[0]),
        curve=curve,
    )
