"""The protocol runner: reference + variants on the same examples and sampler noise.

Each protocol is sampled batch by batch with a ``torch.Generator`` seeded by ``(seed, batch)``
only, so every protocol sees the same sampler noise; the metrics of every example give paired
deltas against the reference (bootstrap CI over examples). The model's weights are swapped per
protocol (``target.weights``) and restored at the end, also when a sampler raises.

Example:
    >>> report = run_audit(target, make_variants(target.reference, steps=[10, 50]))
    >>> report.variants[0]["delta"]["si_sdr"]
    {'delta': 0.41, 'ci95': [0.22, 0.63], 'n': 12}
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import numpy as np
import torch
from torch import Tensor

from diagnostics._stats import bootstrap_ci

from ._metrics import (
    BUILTIN_METRICS,
    TOLERANCE,
    as_values,
    builtin_metrics,
    reference_metric,
    to_float,
)
from ._target import PROTOCOL_KEYS, EvalAuditError, EvalTarget, check_protocol

__all__ = ["AuditReport", "make_variants", "protocol_label", "run_audit"]

CEILING_MIN: dict[str, float] = {"si_sdr": 50.0, "pesq": 4.4, "estoi": 0.99}
# prefix of the note added to an exception raised by the target's own code (sampler, metric):
# the CLI turns such an exception into one line naming where it was raised
USER_CODE_NOTE = "eval_audit: "
# layers whose behaviour depends on the training flag (what a train-mode evaluation changes)
_MODE_LAYERS = (
    torch.nn.modules.dropout._DropoutNd,
    torch.nn.modules.batchnorm._BatchNorm,
    torch.nn.modules.instancenorm._InstanceNorm,
)


def _noted(e: BaseException, where: str) -> BaseException:
    """``e`` with a note saying which of the target's functions raised it, and where."""
    e.add_note(USER_CODE_NOTE + where)
    return e


def _score(fn: Any, est: Tensor, ref: Tensor, n: int, name: str, where: str) -> np.ndarray:
    """One metric on a batch as float64 ``[n]``; an exception of the metric is noted."""
    try:
        out = fn(est, ref)
    except Exception as e:
        _noted(e, f"metric {name!r} raised on {where}")
        raise
    return as_values(out, n, name)


_NAMES = {"steps": "N", "corrector_steps": "corrector", "snr": "snr", "guidance": "w"}


def protocol_label(p: Mapping[str, Any]) -> str:
    """``"N=30 corrector=1 snr=0.5 w=1 ema"``."""
    parts = [f"{_NAMES[k]}={p[k]:g}" for k in _NAMES if k in p]
    if "weights" in p:
        parts.append(str(p["weights"]))
    return " ".join(parts)


def make_variants(reference: Mapping[str, Any], **grids: Sequence[Any] | None) -> list[dict]:
    """One-factor-at-a-time variants of ``reference``: each value of each grid that differs from
    the reference's value, all other settings as in the reference.

    Example:
        >>> make_variants({"steps": 30, "snr": 0.5}, steps=[10, 30, 50])
        [{'steps': 10, 'snr': 0.5}, {'steps': 50, 'snr': 0.5}]
    """
    out: list[dict] = []
    for key, values in grids.items():
        if key not in PROTOCOL_KEYS:
            raise EvalAuditError(f"make_variants: unknown setting {key!r}; valid: {PROTOCOL_KEYS}")
        for v in values or ():
            p = {**reference, key: v}
            check_protocol(p, f"--{key.replace('_', '-')} {v!r}")
            if p != dict(reference) and p not in out:
                out.append(p)
    return out


def _stat(values: np.ndarray, seed: int) -> dict[str, Any]:
    v = values[np.isfinite(values)]
    if v.size == 0:
        return {"mean": None, "ci95": None, "n": 0}
    mean, lo, hi = bootstrap_ci(v, seed=seed)
    return {"mean": mean, "ci95": [lo, hi], "n": int(v.size)}


def _delta(values: np.ndarray, ref: np.ndarray, seed: int) -> dict[str, Any]:
    ok = np.isfinite(values) & np.isfinite(ref)
    if not ok.any():
        return {"delta": None, "ci95": None, "n": 0}
    mean, lo, hi = bootstrap_ci(values[ok] - ref[ok], seed=seed)
    return {"delta": mean, "ci95": [lo, hi], "n": int(ok.sum())}


def _state_equal(a: Mapping[str, Tensor], b: Mapping[str, Tensor]) -> tuple[bool, float]:
    """(same keys and bit-identical values, max |a - b| over the shared floating tensors)."""
    same = set(a) == set(b)
    worst = 0.0
    for k in set(a) & set(b):
        x, y = a[k].detach().cpu(), b[k].detach().cpu()
        if x.shape != y.shape:
            return False, float("inf")
        if not torch.equal(x, y):
            same = False
            if x.is_floating_point():
                worst = max(worst, float((x.double() - y.double()).abs().max()))
    return same, worst


def _rel_distance(a: Mapping[str, Tensor], b: Mapping[str, Tensor]) -> float:
    num = den = 0.0
    for k in set(a) & set(b):
        if a[k].is_floating_point() and a[k].shape == b[k].shape:
            num += float((a[k].double() - b[k].double()).pow(2).sum())
            den += float(b[k].double().pow(2).sum())
    return (num / den) ** 0.5 if den > 0 else 0.0


def check_weights(target: EvalTarget, original: Mapping[str, Tensor]) -> dict[str, Any]:
    """Which weights the model holds as given, and whether EMA and raw are distinct."""
    w = target.weights
    out: dict[str, Any] = {"available": sorted(k for k, v in w.items() if v is not None)}
    out["evaluated_claimed"] = target.evaluated
    ema, raw = w.get("ema"), w.get("raw")
    # EMA asked for (or offered) but absent: the checkpoint has none
    asked = "ema" in w or target.evaluated == "ema"
    out["ema_in_checkpoint"] = ema is not None if asked else None
    if ema is not None and raw is not None:
        identical, max_diff = _state_equal(ema, raw)
        out["ema_identical_to_raw"] = identical
        out["ema_raw_max_abs_diff"] = max_diff
        out["ema_raw_rel_distance"] = _rel_distance(ema, raw)
    holds = []
    for name, sd in w.items():
        if sd is not None and _state_equal(original, sd)[0]:
            holds.append(name)
    out["model_holds"] = holds
    return out


def _count(counter: list[int], module: torch.nn.Module, args: tuple[Any, ...]) -> None:
    counter[0] += 1
    first = next((a for a in args if isinstance(a, Tensor)), None)
    counter[1] += int(first.shape[0]) if first is not None and first.ndim > 0 else 1
    counter[2] += int(module.training)  # forward calls made in training mode


class _Swap:
    """Loads named weights into the model; restores the original state on exit."""

    def __init__(self, target: EvalTarget) -> None:
        self.model = target.model
        self.weights = {k: v for k, v in target.weights.items() if v is not None}
        self.original = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        self.current: str | None = None

    def use(self, name: str | None) -> None:
        key = name if name in self.weights else None
        if key == self.current:
            return
        self.model.load_state_dict(self.weights[key] if key else self.original, strict=True)
        self.current = key

    def __enter__(self) -> _Swap:
        return self

    def __exit__(self, *exc: object) -> None:
        self.model.load_state_dict(self.original, strict=True)


@dataclass
class AuditReport:
    """Everything the audit measured (``to_json()`` is ``report.json``)."""

    target: str
    n_examples: int
    seed: int
    metrics: list[str]
    reference: dict[str, Any]
    variants: list[dict[str, Any]]
    checks: dict[str, Any]
    weights: dict[str, Any]
    findings: list[dict[str, Any]] = field(default_factory=list)
    per_example: dict[str, Any] = field(default_factory=dict)
    interrupted: bool = False  # Ctrl-C after the reference: the protocols left are skipped

    def to_json(self) -> dict[str, Any]:
        return {
            "interrupted": self.interrupted,
            "target": self.target,
            "n_examples": self.n_examples,
            "seed": self.seed,
            "metrics": self.metrics,
            "reference": self.reference,
            "variants": self.variants,
            "findings": self.findings,
            "checks": self.checks,
            "weights": self.weights,
        }


def _resolve_metrics(target: EvalTarget, names: Sequence[str] | None) -> dict[str, Any]:
    if target.metrics is not None:
        fns = dict(target.metrics)
        if names:
            bad = [n for n in names if n not in fns]
            if bad:
                raise EvalAuditError(
                    f"unknown metric(s) {', '.join(bad)}; the target has {', '.join(fns)}"
                )
            fns = {n: fns[n] for n in names}
        return fns
    if names is None:
        names = list(BUILTIN_METRICS)
    return builtin_metrics(target.sample_rate, names)


def _sampler_kwargs(target: EvalTarget, protocol: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in protocol.items() if k != "weights"}


def run_audit(
    target: EvalTarget,
    variants: Sequence[Mapping[str, Any]],
    *,
    metrics: Sequence[str] | None = None,
    seed: int = 0,
    agreement_n: int = 4,
    progress: bool = False,
    variant_errors: str = "raise",
    partial_on_interrupt: bool = False,
) -> AuditReport:
    """Evaluate ``target.reference`` and each variant; return an :class:`AuditReport` with
    metrics, paired deltas, seconds per example, evaluation checks and findings.

    Args:
        target: the :class:`EvalTarget`.
        variants: protocols (dicts over :data:`PROTOCOL_KEYS`), e.g. from :func:`make_variants`.
        metrics: metric names (default: all of the target's, or the built-ins).
        seed: seeds the sampler generators (batch ``i`` uses ``seed * 100003 + i``) and the
            bootstrap.
        agreement_n: examples on which each metric is compared with its reference
            implementation.
        progress: show a tqdm bar.
        variant_errors: ``"raise"`` (default) lets an exception of the sampler under a variant
            propagate; ``"skip"`` reports that variant as skipped with the error and goes on
            (the reference protocol's errors always propagate). An exception of the target's
            sampler or metric carries a note (``USER_CODE_NOTE``) naming the protocol and batch.
        partial_on_interrupt: on Ctrl-C after the reference protocol, report the protocols
            done so far (the rest skipped, ``report.interrupted`` True) instead of raising.

    The sampler runs with the global RNG seeded per batch (the same for every protocol) inside
    ``torch.random.fork_rng``: a sampler that draws from the global RNG still sees the same noise
    under every protocol (and is reported), and the caller's RNG state is left as it was.

    Raises:
        EvalAuditError: a target without a sampler, an unknown metric, a bad protocol, a sampler
            that does not accept a varied setting, an estimate of the wrong shape.

    Example:
        >>> report = run_audit(target, [{**target.reference, "steps": 50}])
    """
    from ._findings import make_findings

    if variant_errors not in ("raise", "skip"):
        raise EvalAuditError(f"run_audit: variant_errors={variant_errors!r}; use 'raise' or 'skip'")
    target.validate()
    fns = _resolve_metrics(target, metrics)
    ref_p = dict(target.reference)
    if not target.weights:
        ref_p.pop("weights", None)
    protocols: list[dict[str, Any]] = [ref_p]
    for v in variants:
        p = dict(v)
        if not target.weights:
            p.pop("weights", None)
        extra = sorted(set(p) - set(ref_p))
        if extra:
            raise EvalAuditError(
                f"protocol {p}: setting(s) {extra} are not in the target's reference protocol "
                f"{ref_p} (the sampler of {target.name!r} does not take them)"
            )
        check_protocol(p, f"protocol {protocol_label(p)}")
        if p not in protocols:
            protocols.append(p)
    for key in {k for p in protocols for k in p if k != "weights"}:
        if not target.accepts(key):
            raise EvalAuditError(
                f"the sampler of {target.name!r} does not accept keyword {key!r}; give it "
                f"sample(model, batch, generator, {key}=..., **kwargs)"
            )

    model = target.model
    n_total = target.n_examples
    available = {k for k, v in target.weights.items() if v is not None}
    results: list[dict[str, Any]] = []
    ref_estimates: list[Tensor] = []
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(protocols) * len(target.batches), desc="eval_audit", unit="batch")
    cuda = torch.cuda.is_available() and torch.cuda.is_initialized()
    devices = list(range(torch.cuda.device_count())) if cuda else []
    usage = {"train_calls": 0, "calls": 0, "global_rng": 0, "sample_calls": 0}
    interrupted = False
    with _Swap(target) as swap:
        weights = check_weights(target, swap.original)
        for pi, p in enumerate(protocols):
            wname = p.get("weights")
            if interrupted or (wname is not None and wname not in available and pi > 0):
                why = (
                    "interrupted (Ctrl-C)"
                    if interrupted
                    else f"the target has no {wname!r} weights"
                )
                results.append({"protocol": p, "skipped": why})
                if bar is not None:
                    bar.update(len(target.batches))
                continue
            swap.use(wname)
            values: dict[str, list[np.ndarray]] = {m: [] for m in fns}
            calls = [0, 0, 0]  # forward calls, network evaluations (calls x rows), in train mode
            seconds = 0.0
            nonfinite = 0
            failed: str | None = None
            bi = 0
            try:  # Ctrl-C while sampling or scoring this protocol
                for bi, batch in enumerate(target.batches):
                    gen = torch.Generator().manual_seed(seed * 100003 + bi)
                    where = f"batch {bi} under {'the reference protocol ' if pi == 0 else ''}"
                    where += protocol_label(p)
                    # counts the model's forward calls and rows: a cost measure that contention
                    # on a shared machine cannot blur (a CFG step with w != 1 runs 2B rows in
                    # one call)
                    hook = model.register_forward_pre_hook(partial(_count, calls))
                    try:
                        # the global RNG too gets the same seed under every protocol (a sampler
                        # that draws from it stays paired); the caller's state comes back after
                        with torch.random.fork_rng(devices=devices):
                            torch.random.default_generator.manual_seed(seed * 100003 + bi + 50021)
                            before = torch.get_rng_state()
                            t0 = time.perf_counter()
                            est = target.sample(model, batch, gen, **_sampler_kwargs(target, p))
                            seconds += time.perf_counter() - t0
                            usage["global_rng"] += int(
                                not torch.equal(before, torch.get_rng_state())
                            )
                            usage["sample_calls"] += 1
                    except Exception as e:
                        if pi == 0 or variant_errors == "raise":
                            _noted(e, f"the sampler of {target.name!r} raised on {where}")
                            raise
                        failed = f"the sampler raised {type(e).__name__}: {_first_line(e)}"
                        break
                    finally:
                        hook.remove()
                    clean = batch["clean"]
                    if not isinstance(est, Tensor) or est.shape != clean.shape:
                        got = tuple(est.shape) if isinstance(est, Tensor) else type(est).__name__
                        raise EvalAuditError(
                            f"the sampler of {target.name!r} returned {got} for batch {bi} under "
                            f"{protocol_label(p)}; expected an estimate {tuple(clean.shape)} like "
                            "batch['clean']"
                        )
                    est = to_float(est)
                    nonfinite += int((~torch.isfinite(est)).any(-1).sum())
                    if pi == 0:
                        ref_estimates.append(est)
                    for m, fn in fns.items():
                        values[m].append(_score(fn, est, to_float(clean), est.shape[0], m, where))
                    if bar is not None:
                        bar.update(1)
            except KeyboardInterrupt:
                if not partial_on_interrupt or pi == 0:
                    raise
                interrupted = True
                failed = "interrupted (Ctrl-C)"
            if failed is not None:
                results.append({"protocol": p, "skipped": failed})
                if bar is not None:
                    bar.update(len(target.batches) - bi)  # the batches not done
                continue
            usage["calls"] += calls[0]
            usage["train_calls"] += calls[2]
            results.append(
                {
                    "protocol": p,
                    "values": {m: np.concatenate(v) for m, v in values.items()},
                    "seconds_per_example": seconds / n_total,
                    "model_calls": calls[0],
                    "network_evals": calls[1],
                    "nonfinite": nonfinite,
                    "weights_loaded": swap.current or "as given",
                }
            )
    if bar is not None:
        bar.close()

    checks = _checks(target, fns, ref_estimates, agreement_n)
    layers = sorted({type(m).__name__ for m in model.modules() if isinstance(m, _MODE_LAYERS)})
    checks["sampling"] = {
        "model_calls": usage["calls"],
        "train_mode_calls": usage["train_calls"],
        "mode_dependent_layers": layers,
        "sampler_calls": usage["sample_calls"],
        "global_rng_calls": usage["global_rng"],
    }
    ref = results[0]
    ref_json = {
        "protocol": ref["protocol"],
        "label": protocol_label(ref["protocol"]),
        "metrics": {m: _stat(v, seed) for m, v in ref["values"].items()},
        "seconds_per_example": ref["seconds_per_example"],
        "model_calls": ref["model_calls"],
        "network_evals": ref["network_evals"],
        "nonfinite": ref["nonfinite"],
        "weights_loaded": ref["weights_loaded"],
    }
    variants_json = []
    for r in results[1:]:
        item: dict[str, Any] = {"protocol": r["protocol"], "label": protocol_label(r["protocol"])}
        if "skipped" in r:
            item.update(skipped=r["skipped"], metrics={}, delta={}, seconds_per_example=None)
        else:
            item["metrics"] = {m: _stat(v, seed) for m, v in r["values"].items()}
            item["delta"] = {m: _delta(v, ref["values"][m], seed) for m, v in r["values"].items()}
            item["seconds_per_example"] = r["seconds_per_example"]
            item["model_calls"] = r["model_calls"]
            item["network_evals"] = r["network_evals"]
            item["nonfinite"] = r["nonfinite"]
            item["weights_loaded"] = r["weights_loaded"]
        variants_json.append(item)
    floor_vals = checks.pop("_floor_values")
    checks["floor"]["delta_reference"] = {
        m: _delta(ref["values"][m], floor_vals[m], seed) for m in fns
    }
    report = AuditReport(
        target=target.name,
        n_examples=n_total,
        seed=seed,
        metrics=list(fns),
        reference=ref_json,
        variants=variants_json,
        checks=checks,
        weights=weights,
        per_example={
            protocol_label(r["protocol"]): {m: v.tolist() for m, v in r["values"].items()}
            for r in results
            if "values" in r
        },
        interrupted=interrupted,
    )
    report.findings = make_findings(report)
    return report


def _first_line(e: BaseException) -> str:
    return str(e).splitlines()[0] if str(e) else ""


def _checks(
    target: EvalTarget, fns: Mapping[str, Any], ref_estimates: list[Tensor], agreement_n: int
) -> dict[str, Any]:
    """Floor (unprocessed input), ceiling (clean vs clean) and reference-implementation agreement."""
    noisy = torch.cat([to_float(b["noisy"]) for b in target.batches])  # (N, L)
    clean = torch.cat([to_float(b["clean"]) for b in target.batches])  # (N, L)
    seed = 0
    n = noisy.shape[0]
    floor_vals = {
        m: _score(fn, noisy, clean, n, m, "the unprocessed inputs") for m, fn in fns.items()
    }
    ceil_vals = {m: _score(fn, clean, clean, n, m, "clean vs clean") for m, fn in fns.items()}
    ceiling: dict[str, Any] = {}
    for m, v in ceil_vals.items():
        st = _stat(v, seed)
        lo = CEILING_MIN.get(m)
        finite = v[np.isfinite(v)]
        st["expected_min"] = lo
        st["min"] = float(finite.min()) if finite.size else None
        st["unscored"] = int(v.size - finite.size)
        # judged on the pairs the metric could score; none scored: not judged (the clips are
        # too short or silent for it), which is not evidence that the metric is wrong
        st["ok"] = None if lo is None or not finite.size else bool(finite.min() >= lo)
        ceiling[m] = st
    k = min(agreement_n, noisy.shape[0])
    est = torch.cat(ref_estimates)[:k]  # (k, L)
    pairs_est = torch.cat([est, noisy[:k]])  # (2k, L): model estimates and unprocessed inputs
    pairs_ref = torch.cat([clean[:k], clean[:k]])  # (2k, L)
    agreement: dict[str, Any] = {}
    for m, fn in fns.items():
        try:
            ref_fn = reference_metric(m, target.sample_rate)
        except ImportError as e:
            agreement[m] = {"agree": None, "reason": f"reference not installed ({e.name})"}
            continue
        if ref_fn is None:
            agreement[m] = {"agree": None, "reason": "no reference implementation for this name"}
            continue
        if k == 0:
            agreement[m] = {"agree": None, "reason": "--agreement-n 0"}
            continue
        ours = _score(fn, pairs_est, pairs_ref, 2 * k, m, "the agreement pairs")
        theirs = as_values(ref_fn(pairs_est, pairs_ref), 2 * k, m)
        both = np.isfinite(ours) & np.isfinite(theirs)
        if not (np.isfinite(ours) | np.isfinite(theirs)).any():
            agreement[m] = {
                "agree": None,
                "reason": f"neither implementation could score any of the {2 * k} pairs",
            }
            continue
        mismatch_nan = int((np.isfinite(ours) != np.isfinite(theirs)).sum())
        diff = np.abs(ours[both] - theirs[both])
        max_diff = float(diff.max()) if diff.size else 0.0
        tol = TOLERANCE.get(m, 1e-3)
        agreement[m] = {
            "agree": bool(max_diff <= tol and mismatch_nan == 0 and both.any()),
            "max_abs_diff": max_diff,
            "tolerance": tol,
            "n": int(both.sum()),
            "nan_mismatch": mismatch_nan,
            "pairs": [[float(a), float(b)] for a, b in zip(ours, theirs, strict=True)],
            "reference": {"si_sdr": "float64 formula", "pesq": "pesq.pesq", "estoi": "pystoi"}[m],
        }
    # a constant (silent) clean reference: no metric can score against it
    silent = (clean - clean.mean(-1, keepdim=True)).abs().amax(-1) == 0  # (N,)
    return {
        "silent_references": int(silent.sum()),
        "floor": {"metrics": {m: _stat(v, seed) for m, v in floor_vals.items()}},
        "ceiling": ceiling,
        "agreement": agreement,
        "_floor_values": floor_vals,
    }
