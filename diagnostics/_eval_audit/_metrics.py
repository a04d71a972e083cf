"""Metric functions under audit and the reference implementations they are checked against.

The built-in metrics are torchdx's own (``models.audio``): SI-SDR in torch, PESQ and ESTOI
through wrappers. Their references: SI-SDR by the textbook formula in float64 numpy, PESQ by
``pesq.pesq`` (wide band at 16 kHz, narrow band at 8 kHz) and ESTOI by ``pystoi.stoi`` with
``extended=True``, called directly.

Example:
    >>> fns = builtin_metrics(16000, ["si_sdr"])
    >>> fns["si_sdr"](estimate, clean)  # array [B]
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ._target import EvalAuditError

__all__ = [
    "BUILTIN_METRICS",
    "MEANINGFUL",
    "TOLERANCE",
    "UNITS",
    "as_values",
    "builtin_metrics",
    "reference_metric",
]

BUILTIN_METRICS: tuple[str, ...] = ("si_sdr", "pesq", "estoi")
# a change at least this large is worth a finding (below it: "no meaningful change")
MEANINGFUL: dict[str, float] = {"si_sdr": 0.2, "pesq": 0.05, "estoi": 0.01}
# |metric - reference implementation| above this on any example = disagreement
TOLERANCE: dict[str, float] = {"si_sdr": 0.01, "pesq": 0.01, "estoi": 1e-3}
UNITS: dict[str, str] = {"si_sdr": " dB", "pesq": "", "estoi": ""}


def as_values(x: Any, n: int, name: str) -> np.ndarray:
    """A metric's result as float64 ``[n]``; NaN marks an example the metric could not score."""
    if isinstance(x, Tensor):
        x = x.detach().cpu().double().numpy()
    arr = np.asarray(x, dtype=np.float64).reshape(-1)
    if arr.shape != (n,):
        raise EvalAuditError(
            f"metric {name!r} returned {arr.shape[0]} values for a batch of {n}; expected one "
            "value per example"
        )
    return arr


def _scored(fn: Callable[..., float]) -> Callable[..., float]:
    """``fn`` with pystoi's placeholder for a clip it cannot score (it warns "Not enough STFT
    frames" and returns 1e-5: fewer than 30 frames of 25.6 ms left after removing silence) as
    NaN, i.e. not scored, rather than a real score of almost 0."""

    def call(*args: Any) -> float:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            value = fn(*args)
        if any("Not enough STFT frames" in str(w.message) for w in caught):
            return float("nan")
        return value

    return call


def _per_example(fn: Callable[[np.ndarray, np.ndarray], float]) -> Callable[[Tensor, Tensor], Any]:
    def batched(est: Tensor, ref: Tensor) -> np.ndarray:
        out = []
        for e, r in zip(est, ref, strict=True):
            try:
                out.append(float(fn(e, r)))
            except Exception:  # PESQ refuses silent or too-short clips: not scored
                out.append(float("nan"))
        return np.asarray(out)

    return batched


def builtin_metrics(sample_rate: int, names: Sequence[str]) -> dict[str, Callable[..., Any]]:
    """torchdx's metric functions (the code under audit) for ``names`` at ``sample_rate``."""
    from models.audio import estoi_score, pesq_score, si_sdr

    fns: dict[str, Callable[..., Any]] = {
        "si_sdr": lambda est, ref: si_sdr(est.float(), ref.float()),
        "pesq": _per_example(lambda e, r: pesq_score(e, r, sample_rate)),
        "estoi": _per_example(_scored(lambda e, r: estoi_score(e, r, sample_rate))),
    }
    unknown = [n for n in names if n not in fns]
    if unknown:
        raise EvalAuditError(
            f"unknown metric(s) {', '.join(unknown)}; built-in: {', '.join(BUILTIN_METRICS)}"
        )
    return {n: fns[n] for n in names}


def _np(x: Tensor) -> np.ndarray:
    return x.detach().cpu().double().numpy()


def _si_sdr_ref(est: np.ndarray, ref: np.ndarray) -> float:
    """SI-SDR by the formula of Le Roux et al. (2019), float64, no epsilon tricks."""
    est, ref = est - est.mean(), ref - ref.mean()
    with np.errstate(divide="ignore", invalid="ignore"):  # a silent reference: NaN, unscored
        target = (est @ ref) / (ref @ ref) * ref
        noise = est - target
        return float(10 * np.log10((target @ target) / (noise @ noise)))


def reference_metric(name: str, sample_rate: int) -> Callable[[Tensor, Tensor], np.ndarray] | None:
    """The reference implementation of a built-in metric name, or None for other names."""
    if name == "si_sdr":
        return _per_example(lambda e, r: _si_sdr_ref(_np(e), _np(r)))
    if name == "pesq":
        from pesq import pesq

        mode = "wb" if sample_rate == 16000 else "nb"
        return _per_example(lambda e, r: pesq(sample_rate, _np(r), _np(e), mode))
    if name == "estoi":
        from pystoi import stoi

        return _per_example(_scored(lambda e, r: stoi(_np(r), _np(e), sample_rate, extended=True)))
    return None


def to_float(x: Tensor) -> Tensor:
    """Real waveforms as float32 on the CPU (what the metrics get)."""
    return x.detach().to("cpu", torch.float32)
