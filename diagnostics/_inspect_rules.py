"""Rules that read a finished run's scalar curves and say what went wrong, and from which step.

Pure functions over ``{tag: [(step, value), ...]}`` (no TensorBoard, no torch), so each rule is
tested on hand-made curves as well as on runs the monitor wrote. Tags follow the layout of
:class:`~diagnostics.TrainingMonitor` (see its module doc); other writers' runs work as far as
their tags follow it (``train/loss``, ``val/loss``, ``grad_norm/<group>``, ...).

Every finding is ``{"kind", "tag", "step", "value", "detail"}``: ``step`` is where the trouble
*begins* (the first non-finite value, the first point of a spike, the last good point before a
divergence, ...), ``value`` the value there (None when it is not finite), ``detail`` one
sentence with the evidence and the usual cause.
"""

from __future__ import annotations

import itertools
import math
import statistics
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

__all__ = ["Finding", "RuleConfig", "inspect_scalars"]

Series = list[tuple[int, float]]


@dataclass
class Finding:
    """One thing found in a run (see the module doc)."""

    kind: str
    tag: str
    step: int
    value: float | None
    detail: str
    run: str = ""

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        if d["value"] is not None and not math.isfinite(d["value"]):
            d["value"] = None  # JSON has no NaN/Inf; the detail says which it was
        return d


@dataclass
class RuleConfig:
    """Thresholds of the rules (defaults suit most runs; all in one place).

    Attributes:
        spike_z: robust z-score (against the rolling median and MAD of the previous
            ``window`` points) above which a loss point is a spike.
        spike_rel: a spike must also exceed the rolling median by this factor.
        window: rolling window (points) of the spike rule.
        diverge_factor: the smoothed loss ending this many times above its minimum diverges.
        plateau_rel: relative improvement below which the loss has plateaued ...
        plateau_share: ... over at least this share of the run's points.
        gap_rel: validation loss this far (relative) above its minimum while training loss
            keeps falling is a growing train/validation gap.
        dead_points: consecutive exact-zero gradient norms that make a group dead.
        vanish_share: a group whose gradient norm is below this share of the total ...
        vanish_points: ... for this many consecutive points is vanishing.
        explode_factor: a gradient norm this many times its early median is exploding.
        ratio_range: usual range of the update ratio lr*|grad|/|param| (~1e-3 is healthy).
        ratio_points: consecutive points outside the range that make a finding.
        ratio_skip: steps at the start not judged (a zero-initialized parameter is rewritten
            entirely by its first updates); later, a high ratio while the group's parameter
            norm more than doubles is the same transient and is not reported either.
        ratio_min_params: groups smaller than this (``param_count/<group>``) are not judged:
            the usual range is a rule of thumb for weight matrices, and a vector of a few
            gains or biases (a zero-initialized null embedding) moves by a lot relative to
            its small norm under Adam.
        drop_rel: a CFG drop rate outside ``p * (1 -/+ drop_rel)`` over a segment is off ...
        drop_z: ... and, when the number of draws is known, more than this many binomial
            standard errors from ``p``. The draws are ``cfg/drop_n`` when logged, else read off
            the logged rates (per-step rates of k of n draws lie on a lattice of 1/n).
        lr_flips: learning-rate direction changes that make an oscillation.
    """

    spike_z: float = 6.0
    spike_rel: float = 1.5
    window: int = 20
    diverge_factor: float = 2.0
    plateau_rel: float = 0.01
    plateau_share: float = 0.5
    gap_rel: float = 0.1
    dead_points: int = 3
    vanish_share: float = 1e-6
    vanish_points: int = 5
    explode_factor: float = 100.0
    ratio_range: tuple[float, float] = (1e-6, 1e-1)
    ratio_points: int = 5
    ratio_skip: int = 10
    ratio_min_params: int = 1000
    drop_rel: float = 0.5
    drop_z: float = 4.0
    lr_flips: int = 4
    max_per_tag: int = 5
    min_points: int = field(default=10)


def _is_train_loss(tag: str) -> bool:
    return tag == "train/loss" or (tag.startswith("train/") and tag.endswith("loss"))


def _median(xs: list[float]) -> float:
    return statistics.median(xs) if xs else math.nan


def _smooth(vals: list[float], k: int = 9) -> list[float]:
    """Centered rolling median (window ``k``, clipped at the ends)."""
    h = k // 2
    return [_median(vals[max(0, i - h) : i + h + 1]) for i in range(len(vals))]


def _finite(s: Series) -> Series:
    return [(st, v) for st, v in s if math.isfinite(v)]


def _nonfinite(tag: str, s: Series, cfg: RuleConfig) -> list[Finding]:
    out = []
    bad = next(((st, v) for st, v in s if not math.isfinite(v)), None)
    if bad is not None:
        n = sum(1 for _, v in s if not math.isfinite(v))
        out.append(Finding("nonfinite", tag, bad[0], bad[1],
                           f"first non-finite value ({bad[1]}) of {tag}; {n} of {len(s)} points "
                           "are non-finite"))  # fmt: skip
    if tag.startswith("nonfinite/"):
        # a count that is itself not finite is reported by the rule above
        first = next(((st, v) for st, v in s if math.isfinite(v) and v > 0), None)
        if first is not None:
            out.append(Finding("nonfinite", tag, first[0], first[1],
                               f"{first[1]:.0f} non-finite values in {tag[len('nonfinite/'):]} "
                               "(from the histogram counts)"))  # fmt: skip
    if tag == "nanwatch/status":
        first = next(((st, v) for st, v in s if v == 2.0), None)
        if first is not None:
            out.append(Finding("nonfinite", tag, first[0], first[1],
                               "NanWatch reported a non-finite step"))  # fmt: skip
    if tag == "monitor/exception":
        out.append(Finding("exception", tag, s[0][0], s[0][1],
                           "the training loop raised here (text: monitor/exception)"))  # fmt: skip
    return out


def _spikes(tag: str, s: Series, cfg: RuleConfig) -> list[Finding]:
    s = _finite(s)
    out: list[Finding] = []
    in_spike = False
    total = 0
    for i in range(5, len(s)):
        prev = [v for _, v in s[max(0, i - cfg.window) : i]]
        med = _median(prev)
        mad = _median([abs(v - med) for v in prev]) or 1e-12 * max(abs(med), 1e-12)
        st, v = s[i]
        z = 0.6745 * (v - med) / mad
        spike = z > cfg.spike_z and v > cfg.spike_rel * med if med > 0 else z > cfg.spike_z
        if spike and not in_spike:
            total += 1
            if len(out) < cfg.max_per_tag:
                out.append(Finding("loss_spike", tag, st, v,
                                   f"{tag} jumps to {v:.4g}, robust z = {z:.1f} against the rolling "
                                   f"median {med:.4g} of the previous {len(prev)} points (a bad "
                                   "batch, or a learning rate at its edge)"))  # fmt: skip
        in_spike = spike
    if total > len(out):
        out[-1].detail += f"; {total} spikes in all, first {len(out)} listed"
    return out


def _two_lines(ys: list[float], lo: int) -> int:
    """Index k in [lo, n-3] that best splits ``ys`` into two independent straight lines
    (least squares, prefix sums): where a curve turns (a step up, or a fall turning into a
    rise)."""
    n = len(ys)
    acc = [(0.0, 0.0, 0.0, 0.0, 0.0, 0.0)]  # prefix sums of 1, x, y, xx, xy, yy (x: index)
    for x, y in enumerate(ys):
        c, sx, sy, sxx, sxy, syy = acc[-1]
        acc.append((c + 1, sx + x, sy + y, sxx + x * x, sxy + x * y, syy + y * y))

    def sse(a: int, b: int) -> float:
        c, sx, sy, sxx, sxy, syy = (u - v for u, v in zip(acc[b], acc[a], strict=True))
        if c < 2:
            return 0.0
        vxx, vxy, vyy = sxx - sx * sx / c, sxy - sx * sy / c, syy - sy * sy / c
        return max(0.0, vyy - (vxy * vxy / vxx if vxx > 0 else 0.0))

    ks = range(max(2, lo), n - 2)
    return min(ks, key=lambda k: sse(0, k) + sse(k, n)) if ks else lo


def _divergence(tag: str, s: Series, cfg: RuleConfig) -> list[Finding]:
    s = _finite(s)
    if len(s) < cfg.min_points:
        return []
    sm = _smooth([v for _, v in s])
    i_min = min(range(len(sm)), key=sm.__getitem__)
    lo, end = sm[i_min], sm[-1]
    if lo <= 0 or end < cfg.diverge_factor * lo or i_min >= len(s) - 3:
        return []
    # where it begins: the turn of the log-loss into its rise (two-line fit), not before the
    # smoothed minimum's neighbourhood
    logs = [math.log(max(v, 1e-30)) for _, v in s]
    k = _two_lines(logs, max(0, i_min - 4))
    return [Finding("divergence", tag, s[k][0], s[k][1],
                    f"{tag} (smoothed) rises from its minimum {lo:.4g} at step {s[i_min][0]} to "
                    f"{end:.4g} at the end ({end / lo:.1f}x), turning upward at step {s[k][0]}: "
                    "the run diverges; learning rate too high, no warm-up or clipping?")]  # fmt: skip


def _plateau(tag: str, s: Series, cfg: RuleConfig) -> list[Finding]:
    s = _finite(s)
    if len(s) < max(cfg.min_points, 20):
        return []
    sm = _smooth([v for _, v in s])
    n = len(sm)
    # earliest k such that nothing after k improves on sm[k] by more than plateau_rel
    best_after = [math.inf] * (n + 1)
    for j in range(n - 1, -1, -1):
        best_after[j] = min(sm[j], best_after[j + 1])
    k = next(
        (j for j in range(n) if best_after[j + 1] >= sm[j] * (1 - cfg.plateau_rel) - 1e-12),
        n,
    )
    if n - k < cfg.plateau_share * n or sm[k] <= 0:
        return []
    first = sm[0]
    return [Finding("plateau", tag, s[k][0], s[k][1],
                    f"{tag} stops improving at step {s[k][0]} (smoothed {sm[k]:.4g}, started at "
                    f"{first:.4g}): no gain over {cfg.plateau_rel:.0%} in the last {n - k} of {n} "
                    "points; learning rate too low or too high, dead units, or the data "
                    "exhausted")]  # fmt: skip


def _gap(scalars: dict[str, Series], cfg: RuleConfig) -> list[Finding]:
    out = []
    for vtag in [t for t in scalars if t.startswith("val/") and t.endswith("loss")]:
        ttag = "train/" + vtag[4:]
        if ttag not in scalars:
            continue
        val, tr = _finite(scalars[vtag]), _finite(scalars[ttag])
        if len(val) < 3 or len(tr) < 3:
            continue

        def train_at(step: int, tr: Series = tr) -> float:
            near = [v for st, v in tr if st <= step][-5:]
            return _median(near) if near else math.nan

        i_min = min(range(len(val)), key=lambda i: val[i][1])
        vmin = val[i_min][1]
        later = [(st, v) for st, v in val[i_min + 1 :] if v > vmin * (1 + cfg.gap_rel)]
        if not later or vmin <= 0:
            continue
        st_end, v_end = val[-1]
        t_min, t_end = train_at(val[i_min][0]), train_at(st_end)
        if not t_end <= t_min:
            continue  # training loss rose too: divergence, not overfitting
        begin = val[i_min + 1][0]
        out.append(Finding("train_val_gap", vtag, begin, val[i_min + 1][1],
                           f"{vtag} rises from its minimum {vmin:.4g} (step {val[i_min][0]}) to "
                           f"{v_end:.4g} while {ttag} falls from {t_min:.4g} to {t_end:.4g}: the "
                           "gap grows (overfitting); more data, regularization or early "
                           "stopping"))  # fmt: skip
    return out


def _runs(mask: list[bool], need: int) -> list[tuple[int, int]]:
    """(start, end) index ranges of True runs at least ``need`` long."""
    out, start = [], None
    for i, m in enumerate([*mask, False]):
        if m and start is None:
            start = i
        elif not m and start is not None:
            if i - start >= need:
                out.append((start, i))
            start = None
    return out


def _grads(scalars: dict[str, Series], cfg: RuleConfig) -> list[Finding]:
    out: list[Finding] = []
    total = dict(_finite(scalars.get("grad_norm/total", [])))
    for tag in sorted(t for t in scalars if t.startswith("grad_norm/") and t != "grad_norm/total"):
        s = _finite(scalars[tag])
        if not s:
            continue
        group = tag[len("grad_norm/") :]
        dead = _runs([v == 0.0 for _, v in s], cfg.dead_points)
        if dead:
            a, b = dead[0]
            out.append(Finding("grad_dead", tag, s[a][0], 0.0,
                               f"group {group!r} gets exactly zero gradient on {b - a} consecutive "
                               f"logged steps from step {s[a][0]}"
                               f"{' to the end' if b == len(s) else f' to {s[b - 1][0]}'}: the "
                               "branch is cut off (detach, no_grad, a zero gate, unused "
                               "output)"))  # fmt: skip
            continue
        if total:
            share = [v / total[st] if total.get(st) else math.nan for st, v in s]
            van = _runs([0 < x < cfg.vanish_share for x in share], cfg.vanish_points)
            if van:
                a, _ = van[0]
                out.append(Finding("grad_vanishing", tag, s[a][0], s[a][1],
                                   f"group {group!r} carries {share[a]:.2e} of the total gradient "
                                   f"norm from step {s[a][0]} (< {cfg.vanish_share:g}): its "
                                   "gradient vanishes (depth, saturation, a tiny gate)"))  # fmt: skip
                continue
        early = _median([v for _, v in s[:10]])
        if early > 0:
            boom = next(((st, v) for st, v in s[10:] if v > cfg.explode_factor * early), None)
            if boom is not None:
                out.append(Finding("grad_exploding", tag, boom[0], boom[1],
                                   f"group {group!r} gradient norm {boom[1]:.4g} is "
                                   f"{boom[1] / early:.0f}x its early median {early:.4g}: it "
                                   "explodes; clip gradients, lower the learning "
                                   "rate"))  # fmt: skip
    return out


def _update_ratios(scalars: dict[str, Series], cfg: RuleConfig) -> list[Finding]:
    out = []
    lo, hi = cfg.ratio_range
    for tag in sorted(t for t in scalars if t.startswith("update_ratio/")):
        s = _finite(scalars[tag])
        group = tag[len("update_ratio/") :]
        gn = dict(scalars.get(f"grad_norm/{group}", []))
        pn = dict(scalars.get(f"param_norm/{group}", []))
        size = scalars.get(f"param_count/{group}")
        if size and size[0][1] < cfg.ratio_min_params:
            continue  # the heuristic is about weight matrices, not a few biases or gains

        def growing(a: int, b: int, s: Series = s, pn: dict = pn) -> bool:
            """The group's weights grow out of a (near-)zero init over points a..b-1."""
            first, last = pn.get(s[a][0]), pn.get(s[b - 1][0])
            return first is not None and last is not None and last > 2 * first

        for kind, test in (("update_ratio_high", lambda v: v > hi),
                           ("update_ratio_low", lambda v: 0 < v < lo)):  # fmt: skip
            mask = [test(v) and gn.get(st, 1.0) != 0 for st, v in s]
            start = s[0][0] if s else 0
            mask = [m and st >= start + cfg.ratio_skip for m, (st, _) in zip(mask, s, strict=True)]
            bad = _runs(mask, cfg.ratio_points)
            if kind == "update_ratio_high":
                bad = [(a, b) for a, b in bad if not growing(a, b)]
            if bad:
                a, b = bad[0]
                word = "above" if kind.endswith("high") else "below"
                out.append(Finding(kind, tag, s[a][0], s[a][1],
                                   f"update ratio lr*|grad|/|param| of group {group!r} is {word} "
                                   f"the usual range [{lo:g}, {hi:g}] (healthy ~1e-3) on {b - a} "
                                   f"consecutive logged steps from step {s[a][0]}: "
                                   + ("the weights are rewritten each step (lr too high)"
                                      if word == "above" else
                                      "this group barely learns (lr too low, or frozen)")))  # fmt: skip
    return out


def _change_point(vals: list[float]) -> int:
    """Index k (>= 1) that best splits ``vals`` into two constant segments (least squares)."""
    n = len(vals)
    pre = [0.0]
    pre2 = [0.0]
    for v in vals:
        pre.append(pre[-1] + v)
        pre2.append(pre2[-1] + v * v)

    def sse(a: int, b: int) -> float:
        m = b - a
        return pre2[b] - pre2[a] - (pre[b] - pre[a]) ** 2 / m if m else 0.0

    return min(range(1, n), key=lambda k: sse(0, k) + sse(k, n)) if n > 1 else 0


def _off(rate: float, p: float, n: float | None, cfg: RuleConfig) -> bool:
    """Is an observed drop ``rate`` (over ``n`` draws, when known) off the configured ``p``?"""
    if p * (1 - cfg.drop_rel) <= rate <= p * (1 + cfg.drop_rel) or (p == 0 and rate == 0):
        return False
    if n is None or p <= 0 or p >= 1:
        return True
    return abs(rate - p) > cfg.drop_z * math.sqrt(p * (1 - p) / n)  # beyond sampling noise


def _lattice_draws(rates: list[float], most: int = 1024) -> int | None:
    """The number of draws per logged step, read off the rates themselves: a per-step rate is
    k/n, so every logged value is a multiple of 1/n (up to float32 rounding). The smallest such
    n (which can only underestimate the draws, so widen the noise allowance) when at least
    three distinct values pin it down; None otherwise (a smoothed or averaged rate)."""
    distinct = sorted({round(v, 7) for v in rates if math.isfinite(v)})
    if len(distinct) < 3 or distinct[0] < 0 or distinct[-1] > 1:
        return None
    positive = [v for v in distinct if v > 0]
    for n in range(1, most + 1):
        tol = 1e-6 * n  # float32 keeps ~7 digits of k/n
        if all(abs(v * n - round(v * n)) <= tol for v in positive):
            return n
    return None


def _pooled(vals: list[float], ns: list[Any] | None, a: int, b: int) -> tuple[float, float | None]:
    """Mean rate over points ``a:b`` (weighted by draws when known) and the number of draws."""
    if ns is None:
        return sum(vals[a:b]) / (b - a), None
    n = float(sum(ns[a:b]))
    return sum(v * w for v, w in zip(vals[a:b], ns[a:b], strict=True)) / n, n


def _cfg_drop(scalars: dict[str, Series], cfg: RuleConfig) -> list[Finding]:
    out = []
    counts = dict(scalars.get("cfg/drop_n", []))
    for rate_tag, p_tag in (("cfg/drop_rate", "cfg/p"), ("cfg/drop_fraction", "cfg/p_uncond")):
        if rate_tag not in scalars or p_tag not in scalars:
            continue
        s = _finite(scalars[rate_tag])
        ps = _finite(scalars[p_tag])
        if len(s) < 6 or not ps:
            continue
        p = ps[-1][1]
        vals = [v for _, v in s]
        ns = [counts.get(st) for st, _ in s]
        weights = ns if all(n is not None and n > 0 for n in ns) else None
        if weights is None:  # no counts logged: a rate of k of n draws sits on a lattice of 1/n
            n_step = _lattice_draws(vals)
            weights = [n_step] * len(vals) if n_step else None
        rate_all, n_all = _pooled(vals, weights, 0, len(vals))
        if _off(rate_all, p, n_all, cfg):
            draws = f" in {n_all:.0f} draws" if n_all else ""
            out.append(Finding("cfg_drop_rate", rate_tag, s[0][0], s[0][1],
                               f"observed CFG drop rate {rate_all:.3f}{draws} over the whole run "
                               f"is off the configured p={p:g}"))  # fmt: skip
            continue
        k = _change_point(vals)
        zeros = next((j for j in range(len(vals), 0, -1) if vals[j - 1] != 0), 0)
        if p > 0 and len(vals) - zeros >= 5:  # it stopped: from the first of the trailing zeros
            k = zeros
        if len(vals) - k < 5:
            continue
        r_after, n_after = _pooled(vals, weights, k, len(vals))
        if _off(r_after, p, n_after, cfg):
            r_before, _ = _pooled(vals, weights, 0, k)
            what = "stops" if r_after == 0 else "drifts off"
            out.append(Finding("cfg_drop_rate", rate_tag, s[k][0], s[k][1],
                               f"CFG dropout {what} at step {s[k][0]}: drop rate {r_before:.3f} "
                               f"before, {r_after:.3f} over the last {len(vals) - k} logged steps, "
                               f"configured p={p:g} (a code path that skips the dropout, or a "
                               "flag reset)"))  # fmt: skip
    return out


def _lr(scalars: dict[str, Series], cfg: RuleConfig) -> list[Finding]:
    s = _finite(scalars.get("train/lr", []))
    if len(s) < 3:
        return []
    d = [b[1] - a[1] for a, b in itertools.pairwise(s)]
    signs = [
        (i, 1 if x > 0 else -1) for i, x in enumerate(d) if abs(x) > 1e-12 * max(1.0, abs(s[i][1]))
    ]
    flips = [signs[j][0] for j in range(1, len(signs)) if signs[j][1] != signs[j - 1][1]]
    if len(flips) < cfg.lr_flips:
        return []
    first = signs[[i for i, _ in signs].index(flips[0]) - 1][0] + 1  # the move before the flip
    return [Finding("lr_oscillation", "train/lr", s[first][0], s[first][1],
                    f"the learning rate changes direction {len(flips)} times (first move at "
                    f"step {s[first][0]}): a scheduler stepped per batch and per epoch, a cyclic "
                    "schedule with a too-short period, or two schedulers fighting")]  # fmt: skip


Rule = Callable[[dict[str, Series], RuleConfig], list[Finding]]


def inspect_scalars(
    scalars: dict[str, Series], cfg: RuleConfig | None = None, run: str = ""
) -> list[Finding]:
    """All findings of one run's scalar curves, ordered by step.

    Example:
        >>> inspect_scalars({"train/loss": [(i, 1.0) for i in range(5)] + [(5, float("nan"))]})[0].kind
        'nonfinite'
    """
    cfg = cfg or RuleConfig()
    scalars = {t: sorted(s) for t, s in scalars.items() if s}
    found: list[Finding] = []
    for tag, s in scalars.items():
        found += _nonfinite(tag, s, cfg)
        if _is_train_loss(tag):
            found += _spikes(tag, s, cfg) + _divergence(tag, s, cfg) + _plateau(tag, s, cfg)
    for rule in (_gap, _grads, _update_ratios, _cfg_drop, _lr):
        found += rule(scalars, cfg)
    for f in found:
        f.run = run
    return sorted(found, key=lambda f: (f.step, f.kind, f.tag))
