"""The verdict of a site: does the model use the *content* of its condition?

Two tests per site, each against a **measured floor**:

* the **floor**: the identity replacement (the site's own value sent through the same hook path,
  the same tiling and the same inputs and ``x_t`` noise, with its own draw of the model's RNG):
  round-off plus the model's own randomness (dropout left on);
* **channel**: does replacing the condition with something else at all (``zero``, ``random``,
  ``null``) change the output?
* **content**: does giving each example another example's condition (``shuffle``, the
  mismatched-reference test) or the data mean (``mean``) change it? This is the in-distribution
  test, the one that answers "is the content used".

A test is *above the floor* when the paired per-example excess ``effect_i - floor_i`` has a
95% CI whose low end exceeds ``max(ROUNDOFF, FLOOR_MARGIN * floor)``. The ablation of a test
with the largest such low end decides it (and is named in the report).

============  ===================================================================================
verdict       rule (checked top to bottom)
============  ===================================================================================
inconclusive  fewer than ``MIN_EXAMPLES`` examples; or the conditions given in the batches are the
              same for every example (shuffling tests nothing)
used          content above the floor and its CI low >= ``min_effect``
weak          content above the floor, CI high < ``min_effect``
constant      content not above the floor, channel above it: the condition acts as a fixed bias
              (a module site whose value is the same for every example although the examples
              differ is a collapsed encoder, and says so)
ignored       nothing above the floor
inconclusive  otherwise: a CI that straddles ``min_effect``, or an excess over the floor whose
              CI reaches ``min_effect`` without leaving the floor (too wide to decide), or no
              content ablation was run
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
    "decide",
]

MIN_EFFECT = 0.05  # default min_effect: a content effect of >= 5% of the output norm is "used"
MIN_EXAMPLES = 6  # fewer examples: no verdict (a bootstrap CI over 5 numbers means little)
ROUNDOFF = 1e-6  # an excess over the floor below this is float round-off
FLOOR_MARGIN = 0.1  # ... or below this fraction of the floor itself
CHANNEL = ("zero", "random", "null")
CONTENT = ("shuffle", "mean")
VERDICTS = ("used", "weak", "constant", "ignored", "inconclusive")

RULE = (
    "floor = the identity replacement (round-off and the model's own randomness); a test is "
    "above the floor when the CI of its paired excess over the floor is above round-off. "
    "inconclusive: too few examples or identical conditions; used: content (shuffle/mean) above "
    "the floor with CI low >= min_effect; weak: content above the floor, CI high < min_effect; "
    "constant: channel (zero/random/null) above the floor, content not; ignored: nothing above "
    "the floor; inconclusive: CIs too wide to decide. additive (a flag beside used/weak): the "
    "change a shuffled condition causes does not depend on the input (interaction within "
    "sqrt(2) x the floor)"
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
    margin: float,
    n_boot: int,
    seed_for: Callable[[str], int],
) -> Test | None:
    """The test over ``names``: the ablation with the largest CI low of the excess."""
    best: Test | None = None
    for name in names:
        if name not in effects:
            continue
        t = ablation_test(name, effects[name], floor, margin, n_boot, seed_for(name))
        if best is None or t.excess_ci95[0] > best.excess_ci95[0]:
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


def decide(
    floor: np.ndarray,
    effects: Mapping[str, np.ndarray],
    *,
    min_effect: float = MIN_EFFECT,
    n_boot: int = N_BOOT,
    seed_for: Callable[[str], int] = lambda name: 0,
    conditions_vary: bool = True,
    collapsed: bool = False,
) -> Decision:
    """The verdict from per-example effects (see the module doc for the rule).

    Args:
        floor: ``(N,)`` per-example relative change of the identity replacement.
        effects: ablation name -> ``(N,)`` per-example relative change.
        min_effect: the content effect (CI low) at or above which the site is ``used``.
        n_boot: bootstrap resamples.
        seed_for: bootstrap seed per ablation name (``"floor"`` for the floor).
        conditions_vary: False when the conditions given in the batches are the same for
            every example (then shuffling tests nothing: ``inconclusive``).
        collapsed: the site's value is the same for every example although the examples
            differ (named in the reason of a ``constant`` or ``ignored`` site).
    """
    f = np.asarray(floor, dtype=np.float64)
    n = int(f.size)
    fm, flo, fhi = bootstrap_ci(f, n_boot=n_boot, seed=seed_for("floor"))
    floor_s = (_r(fm), [_r(flo), _r(fhi)])
    margin = floor_margin(f)
    channel = _best(CHANNEL, effects, f, margin, n_boot, seed_for)
    content = _best(CONTENT, effects, f, margin, n_boot, seed_for)
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
        if content.ci95[0] >= min_effect:
            return out("used", f"{says(content)}; {fl}")
        if content.ci95[1] < min_effect:
            return out(
                "weak",
                f"{says(content)}: above the floor ({fm:.2g}) but below min_effect {min_effect:g}",
            )
        return out(
            "inconclusive",
            f"{says(content)}: the CI straddles min_effect {min_effect:g}; more examples "
            "would decide",
        )
    # too wide: not above the floor, yet the excess over it may reach min_effect
    wide = [t for t in (content, channel) if t is not None and t.excess_ci95[1] >= min_effect]
    if content is None and channel is not None and channel.above_floor:
        return out(
            "inconclusive",
            f"{says(channel)}, but no content ablation (shuffle, mean) was run, so used cannot "
            "be told from constant",
        )
    why_const = (
        "; the site's value is the same for every example although the examples differ "
        "(a collapsed encoder)"
        if collapsed
        else ""
    )
    if channel is not None and channel.above_floor:
        if content is not None and content.excess_ci95[1] >= min_effect:
            return out(
                "inconclusive",
                f"{says(content)}: not distinguishable from the floor ({fm:.2g}), but its excess "
                f"over the floor {_ci(content.excess_ci95)} reaches min_effect {min_effect:g}: "
                "too wide to decide",
            )
        c = (
            ""
            if content is None
            else f" while {_WHAT[content.ablation]} does not ({_pct(content.effect)})"
        )
        return out(
            "constant", f"{says(channel)}{c}: the condition acts as a fixed bias{why_const}; {fl}"
        )
    if wide:
        t = wide[0]
        return out(
            "inconclusive",
            f"{says(t)}: not distinguishable from the floor ({fm:.2g}), but its excess over the "
            f"floor {_ci(t.excess_ci95)} reaches min_effect {min_effect:g}: too wide to decide",
        )
    tests = [t for t in (content, channel) if t is not None]
    if not tests:
        return out("inconclusive", "no ablation was run at this site")
    top = max(tests, key=lambda t: t.effect)
    return out(
        "ignored",
        f"no ablation changes the output beyond the floor ({fm:.2g}); the largest, "
        f"{top.ablation}, changes it by {top.effect:.2g}{why_const}",
    )
