"""The verdict of a site: does the model use the *content* of its condition?

Two tests per site, each against a **measured floor**:

* the **floor**: the identity replacement (the site's own value sent through the same hook path,
  the same tiling and the same inputs and ``x_t`` noise, with its own draw of the model's RNG):
  round-off plus the model's own randomness (dropout left on);
* **channel**: does replacing the condition with something else at all (``zero``, ``random``,
  ``null``, ``mean``) change the output? These replacements are off the data distribution (the
  data mean of unit-norm conditions is not unit-norm, zeros are not a condition): an effect
  they cause may come from the replacement being unlike any condition, not from the content;
* **content**: does giving each example another example's *real* condition (``shuffle``, the
  mismatched-reference test) change it? This is the in-distribution test, the only one that
  answers "is the content used".

A test is *above the floor* when the paired per-example excess ``effect_i - floor_i`` has a
95% CI whose low end exceeds ``max(ROUNDOFF, FLOOR_MARGIN * floor)``. The ablation of a test
with the largest such low end decides it (and is named in the report). An ablation measured
on only some examples (the engine leaves out a batch whose shuffle swaps nothing) is tested on
those examples, paired with their floor; on fewer than ``MIN_EXAMPLES`` it is not tested.

============  ===================================================================================
verdict       rule (checked top to bottom)
============  ===================================================================================
inconclusive  fewer than ``MIN_EXAMPLES`` examples; or the conditions given over the whole run
              are the same for every example (shuffling tests nothing)
used          content above the floor and its CI low >= ``min_effect``
weak          content above the floor, CI high < ``min_effect``
inconclusive  no content test (no shuffle run, or the shuffle swapped no conditions) while the
              channel is above the floor: used cannot be told from constant
constant      content not above the floor, channel above it: the condition acts as a fixed bias
              (a module site whose value is the same for every example although the examples
              differ is a collapsed encoder, and says so)
inconclusive  content not above the floor and no channel ablation run: ignored cannot be told
              from constant
ignored       nothing above the floor
inconclusive  otherwise: a CI that straddles ``min_effect``, or an excess over the floor whose
              CI reaches ``min_effect`` without leaving the floor (too wide to decide)
============  ===================================================================================

Example:
    >>> d = decide(np.zeros(8), {"shuffle": np.full(8, 0.3)}, min_effect=0.05)
    >>> d.verdict
    'used'
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np

from diagnostics._ablation._types import Test
from diagnostics._stats import N_BOOT, bootstrap_ci

__all__ = [
    "CHANNEL",
    "CONTENT",
    "FLOOR_MARGIN",
    "MIN_EFFECT",
    "MIN_EXAMPLES",
    "ROUNDOFF",
    "RULE",
    "VERDICTS",
    "Decision",
    "ablation_test",
    "decide",
    "floor_margin",
    "masked_test",
]

MIN_EFFECT = 0.05  # default min_effect: a content effect of >= 5% of the output norm is "used"
MIN_EXAMPLES = 6  # fewer examples: no verdict (a bootstrap CI over 5 numbers means little)
ROUNDOFF = 1e-6  # an excess over the floor below this is float round-off
FLOOR_MARGIN = 0.1  # ... or below this fraction of the floor itself
CHANNEL = ("zero", "random", "null", "mean")  # off-distribution replacements
CONTENT = ("shuffle",)  # in-distribution: real conditions of other examples
VERDICTS = ("used", "weak", "constant", "ignored", "inconclusive")

RULE = (
    "floor = the identity replacement (round-off and the model's own randomness); a test is "
    "above the floor when the CI of its paired excess over the floor is above round-off. "
    "content = shuffle (each example gets another example's real condition: in-distribution); "
    "channel = zero/random/null/mean (off-distribution replacements). "
    "inconclusive: too few examples or conditions identical over the run; used: content above "
    "the floor with CI low >= min_effect; weak: content above the floor, CI high < min_effect; "
    "inconclusive: no content test while the channel is above the floor; constant: channel "
    "above the floor, content not; inconclusive: content within the floor and no channel "
    "ablation run; ignored: nothing above the floor; inconclusive: CIs too wide to decide. "
    "additive (a flag beside used/weak): the change a shuffled condition causes does not depend "
    "on the input (interaction within sqrt(2) x the floor; measured only where the inputs the "
    "shuffle pairs differ)"
)

_WHAT = {
    "shuffle": "giving each example another example's condition",
    "mean": "replacing the condition with the data mean",
    "zero": "zeroing the condition",
    "random": "a random condition (data mean and std)",
    "null": "the model's null (unconditional) input",
}


@dataclass
class Decision:
    """A verdict with its one-sentence reason and the numbers behind it."""

    verdict: str
    reason: str
    floor: tuple[float, list[float]]
    channel: Test | None
    content: Test | None


def _pct(x: float) -> str:
    return f"{100 * x:.3g}%"


def _ci(ci: list[float]) -> str:
    return f"[{100 * ci[0]:.3g}, {100 * ci[1]:.3g}]"


def _r(x: float) -> float:
    return float(f"{x:.6g}")


def _best(
    names: tuple[str, ...],
    effects: Mapping[str, np.ndarray],
    floor: np.ndarray,
    present: Mapping[str, np.ndarray],
    n_boot: int,
    seed_for: Callable[[str], int],
    floors: Mapping[str, np.ndarray] | None = None,
) -> Test | None:
    """The test over ``names``: the ablation with the largest CI low of the excess (an ablation
    measured on fewer than ``MIN_EXAMPLES`` examples is not tested); ``floors``: an
    ablation's own per-example floor (over the same times as its effect), default ``floor``."""
    best: Test | None = None
    for name in names:
        if name not in effects:
            continue
        f = floor if floors is None or name not in floors else floors[name]
        t = masked_test(name, effects[name], f, present.get(name), n_boot, seed_for(name))
        if t is not None and (best is None or t.excess_ci95[0] > best.excess_ci95[0]):
            best = t
    return best


def floor_margin(floor: np.ndarray) -> float:
    """How far above the floor's mean an excess's CI low must lie: a share of the floor, and
    never below round-off."""
    return max(ROUNDOFF, FLOOR_MARGIN * float(np.mean(np.asarray(floor, dtype=np.float64))))


def ablation_test(
    name: str, effect: np.ndarray, floor: np.ndarray, margin: float, n_boot: int, seed: int
) -> Test:
    """One ablation's effect and its excess over the floor, each with a bootstrap CI (the same
    seed: the same resamples), and whether the excess's CI low clears ``margin``."""
    e = np.asarray(effect, dtype=np.float64)
    mean, lo, hi = bootstrap_ci(e, n_boot=n_boot, seed=seed)
    xm, xlo, xhi = bootstrap_ci(e - floor, n_boot=n_boot, seed=seed)
    return Test(
        effect=_r(mean),
        ci95=[_r(lo), _r(hi)],
        ablation=name,
        excess=_r(xm),
        excess_ci95=[_r(xlo), _r(xhi)],
        above_floor=bool(xlo > margin),
    )


def masked_test(
    name: str,
    effect: np.ndarray,
    floor: np.ndarray,
    present: np.ndarray | None,
    n_boot: int,
    seed: int,
) -> Test | None:
    """:func:`ablation_test` on the examples where the ablation was measured (``present``; all
    when ``None``), paired with their own floor; ``None`` on fewer than ``MIN_EXAMPLES``."""
    f = np.asarray(floor, dtype=np.float64)
    e = np.asarray(effect, dtype=np.float64)
    if present is not None:
        keep = np.asarray(present, dtype=bool)
        f, e = f[keep], e[keep]
    if f.size < MIN_EXAMPLES:
        return None
    return ablation_test(name, e, f, floor_margin(f), n_boot, seed)


def decide(
    floor: np.ndarray,
    effects: Mapping[str, np.ndarray],
    *,
    min_effect: float = MIN_EFFECT,
    n_boot: int = N_BOOT,
    seed_for: Callable[[str], int] = lambda name: 0,
    conditions_vary: bool = True,
    collapsed: bool = False,
    present: Mapping[str, np.ndarray] | None = None,
    missing: Mapping[str, str] | None = None,
    floors: Mapping[str, np.ndarray] | None = None,
) -> Decision:
    """The verdict from per-example effects (see the module doc for the rule).

    Args:
        floor: ``(N,)`` per-example relative change of the identity replacement.
        effects: ablation name -> ``(N,)`` per-example relative change.
        min_effect: the content effect (CI low) at or above which the site is ``used``.
        n_boot: bootstrap resamples.
        seed_for: bootstrap seed per ablation name (``"floor"`` for the floor).
        conditions_vary: False when the conditions given over the whole run are the same for
            every example (then shuffling tests nothing: ``inconclusive``).
        collapsed: the site's value is the same for every example although the examples
            differ (named in the reason of a ``constant``, ``ignored`` or ``inconclusive``
            site).
        present: ablation name -> ``(N,)`` bool: the examples where it was measured (default:
            all); an ablation measured on fewer than ``MIN_EXAMPLES`` is not tested.
        missing: ablation name -> why it was not measured (the reason quotes it).
        floors: ablation name -> ``(N,)`` its own per-example floor, where its effect averages
            other times than the floor's (the shuffle over the times it swapped); default
            ``floor``.
    """
    f = np.asarray(floor, dtype=np.float64)
    n = int(f.size)
    present = present or {}
    missing = dict(missing or {})
    fm, flo, fhi = bootstrap_ci(f, n_boot=n_boot, seed=seed_for("floor"))
    floor_s = (_r(fm), [_r(flo), _r(fhi)])
    channel = _best(CHANNEL, effects, f, present, n_boot, seed_for, floors)
    content = _best(CONTENT, effects, f, present, n_boot, seed_for, floors)
    for name in effects:
        k = int(np.count_nonzero(present[name])) if name in present else n
        if k < MIN_EXAMPLES and name not in missing:
            missing[name] = (
                f"{name} was measured on only {k} example{'s' * (k != 1)} (at least "
                f"{MIN_EXAMPLES} are needed)"
            )
    fl = f"the floor is {fm:.2g}"

    def out(verdict: str, reason: str) -> Decision:
        return Decision(verdict, reason, floor_s, channel, content)

    def says(t: Test) -> str:
        return f"{_WHAT[t.ablation]} changes the output by {_pct(t.effect)} {_ci(t.ci95)}"

    if n < MIN_EXAMPLES:
        return out(
            "inconclusive",
            f"only {n} example{'s' * (n != 1)}: at least {MIN_EXAMPLES} are needed for a "
            "confidence interval",
        )
    if not conditions_vary:
        return out(
            "inconclusive",
            "the conditions given in the batches are the same for every example, so shuffling "
            "them tests nothing; give examples with different conditions",
        )
    if content is not None and content.above_floor:
        return _used_or_weak(content, says(content), fm, min_effect, out)
    why_const = (
        "; the site's value is the same for every example although the examples differ "
        "(a collapsed encoder)"
        if collapsed
        else ""
    )
    if content is None and channel is not None and channel.above_floor:
        why = _no_content(missing)
        return out(
            "inconclusive", f"{says(channel)}, but {why}, so used cannot be told from constant"
        )
    if channel is not None and channel.above_floor and content is not None:
        if content.excess_ci95[1] >= min_effect:
            return out(
                "inconclusive",
                f"{says(content)}: not distinguishable from the floor ({fm:.2g}), but its excess "
                f"over the floor {_ci(content.excess_ci95)} reaches min_effect {min_effect:g}: "
                "too wide to decide",
            )
        return out(
            "constant",
            f"{says(channel)} while {_WHAT[content.ablation]} does not "
            f"({_pct(content.effect)}): the condition acts as a fixed bias{why_const}; {fl}",
        )
    # too wide: not above the floor, yet the excess over it may reach min_effect
    wide = [t for t in (content, channel) if t is not None and t.excess_ci95[1] >= min_effect]
    if wide:
        t = wide[0]
        return out(
            "inconclusive",
            f"{says(t)}: not distinguishable from the floor ({fm:.2g}), but its excess over the "
            f"floor {_ci(t.excess_ci95)} reaches min_effect {min_effect:g}: too wide to decide",
        )
    if content is not None and channel is None:
        return out(
            "inconclusive",
            f"{says(content)}, within the floor ({fm:.2g}), but {_no_channel(missing)}, so "
            f"ignored cannot be told from constant{why_const}",
        )
    tests = [t for t in (content, channel) if t is not None]
    if not tests:
        gone = "; ".join(dict.fromkeys(missing.values()))
        return out("inconclusive", f"no ablation was tested at this site{': ' * bool(gone)}{gone}")
    top = max(tests, key=lambda t: t.effect)
    return out(
        "ignored",
        f"no ablation changes the output beyond the floor ({fm:.2g}); the largest, "
        f"{top.ablation}, changes it by {top.effect:.2g}{why_const}",
    )


def _used_or_weak(
    content: Test,
    says: str,
    fm: float,
    min_effect: float,
    out: Callable[[str, str], Decision],
) -> Decision:
    """The verdict of a content test above the floor: used, weak, or a CI that straddles."""
    if content.ci95[0] >= min_effect:
        return out("used", f"{says}; the floor is {fm:.2g}")
    if content.ci95[1] < min_effect:
        return out(
            "weak", f"{says}: above the floor ({fm:.2g}) but below min_effect {min_effect:g}"
        )
    return out(
        "inconclusive",
        f"{says}: the CI straddles min_effect {min_effect:g}; more examples would decide",
    )


def _no_content(missing: Mapping[str, str]) -> str:
    """Why there is no content test, in words."""
    if any(name in missing for name in CONTENT):
        return "; ".join(missing[name] for name in CONTENT if name in missing)
    return f"no content ablation ({', '.join(CONTENT)}) was run"


def _no_channel(missing: Mapping[str, str]) -> str:
    """Why there is no channel test, in words."""
    said = [missing[name] for name in CHANNEL if name in missing]
    ran = f"no channel ablation ({', '.join(CHANNEL)}) was run"
    return ran if not said else f"{ran} ({'; '.join(said)})"
