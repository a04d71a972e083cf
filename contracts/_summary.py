"""The project's one tensor formatter: one-line summaries (lovely-tensors style) for any dtype.

Used by contract errors, ``diagnostics.summarize`` and the diagnostics' reports, so a tensor is
described in the same words everywhere.

``summarize(t)`` computes every statistic on the tensor's own device and moves a handful of
numbers to the host in one transfer; the tensor itself is never copied to the host and never
printed. Integer, bool and complex tensors are handled (complex: statistics of the magnitude,
NaN/Inf counts of the real and imaginary parts separately).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ._errors import TorchdxError
from ._values import UNREDUCED, widened

__all__ = ["SummaryError", "summarize"]

_DTYPE_SHORT = {
    torch.float64: "f64",
    torch.float32: "f32",
    torch.float16: "f16",
    torch.bfloat16: "bf16",
    torch.complex128: "c128",
    torch.complex64: "c64",
    torch.complex32: "c32",
    torch.int64: "i64",
    torch.int32: "i32",
    torch.int16: "i16",
    torch.int8: "i8",
    torch.uint8: "u8",
    torch.bool: "bool",
}


class SummaryError(TorchdxError, TypeError):
    """``summarize`` was given something that is not a tensor."""

    __module__ = "contracts"


def _fmt(v: float) -> str:
    if math.isnan(v):
        return "nan"
    if math.isinf(v):
        return "inf" if v > 0 else "-inf"
    if v == 0:
        return "0"
    a = abs(v)
    if 1e-3 <= a < 1e4:
        return f"{v:.4g}" if a >= 1 else f"{v:.3g}"
    return f"{v:.4e}" if a >= 1e4 else f"{v:.3e}"


def _acc_dtype(device: torch.device) -> torch.dtype:
    # float64 accumulation where the device has it (mps does not)
    return torch.float32 if device.type == "mps" else torch.float64


def _real_stats(x: Tensor) -> Tensor:
    """(n_finite, min, max, sum, sumsq_centered, nan, +inf, -inf) as one float tensor on device.

    ``x`` is flattened real floating data. Statistics are taken over the finite values only; the
    variance is computed about a pivot (the first finite value, found on device) so large offsets
    do not cancel.
    """
    acc = _acc_dtype(x.device)
    if x.dtype in UNREDUCED:  # the float8s: torch has no isfinite/comparisons for them
        x = widened(x)
    finite = torch.isfinite(x)
    nan = torch.isnan(x).sum()
    posinf = (x == math.inf).sum()
    neginf = (x == -math.inf).sum()
    n = finite.sum()
    xa = x.to(acc)
    lo = torch.where(finite, xa, math.inf).amin()
    hi = torch.where(finite, xa, -math.inf).amax()
    s = torch.where(finite, xa, 0.0).sum()
    mean = s / n.clamp_min(1)
    d = torch.where(finite, xa - mean, 0.0)
    ss = (d * d).sum()
    return torch.stack([n.to(acc), lo, hi, s, ss, nan.to(acc), posinf.to(acc), neginf.to(acc)])


def _int_stats(x: Tensor) -> Tensor:
    acc = _acc_dtype(x.device)
    xa = x.to(acc)
    mean = xa.mean()
    return torch.stack(
        [
            torch.tensor(float(x.numel()), dtype=acc, device=x.device),
            xa.amin(),
            xa.amax(),
            xa.sum(),
            ((xa - mean) ** 2).sum(),
        ]
    )


def _shape(t: Tensor) -> str:
    return "tensor[" + ", ".join(str(s) for s in t.shape) + "]"


def _dev(t: Tensor) -> str:
    d = t.device
    return d.type if d.index is None else f"{d.type}:{d.index}"


def summarize(t: Tensor, *, name: str | None = None) -> str:
    """Return a one-line summary of ``t``: shape, dtype, device, range, mean/std, non-finite counts.

    Statistics of floating tensors are over the finite values; NaN, +Inf and -Inf are counted
    separately and flagged with ``!``. Integer tensors get range/mean/std, bool tensors the count
    of True, complex tensors the statistics of ``|x|`` plus NaN/Inf counts of the real and
    imaginary parts. All arithmetic runs on the tensor's device; one small vector is copied to the
    host. ``t`` is returned unchanged (it is only read).

    Args:
        t: any tensor (dense; other layouts are summarized by their values).
        name: optional label printed first.

    Example:
        >>> summarize(torch.tensor([1.0, 2.0, float("nan"), float("inf")]))
        'tensor[4] f32 cpu n=4 x∈[1, 2] μ=1.5 σ=0.707 NaN!1 +Inf!1'
    """
    if not isinstance(t, Tensor):
        raise SummaryError(
            f"summarize(t): expected a torch.Tensor, got {type(t).__name__} ({t!r:.60}); "
            "hint: wrap numbers with torch.as_tensor(...)"
        )
    head = f"{name}: " if name else ""
    dt = _DTYPE_SHORT.get(t.dtype, str(t.dtype).replace("torch.", ""))
    parts = [head + _shape(t), dt, _dev(t)]
    if t.requires_grad:
        parts.append("grad")
    if t.device.type == "meta":
        return " ".join([*parts, "meta"])
    x = t.detach()
    if x.layout != torch.strided:
        x = x.to_dense() if x.is_sparse else x
        parts.append(str(t.layout).replace("torch.", ""))
    numel = x.numel()
    parts.append(f"n={numel}")
    if numel == 0:
        return " ".join([*parts, "empty"])
    x = x.reshape(-1)  # (N,)

    if x.dtype == torch.bool:
        k = int(x.sum())
        return " ".join([*parts, f"true={k} ({100.0 * k / numel:.1f}%)"])

    if x.is_complex():
        mag = x.abs()
        acc = _acc_dtype(x.device)
        st = torch.cat(
            [
                _real_stats(mag),
                torch.stack(
                    [
                        torch.isnan(x.real).sum().to(acc),
                        torch.isinf(x.real).sum().to(acc),
                        torch.isnan(x.imag).sum().to(acc),
                        torch.isinf(x.imag).sum().to(acc),
                    ]
                ),
            ]
        ).tolist()  # the one host transfer
        n, lo, hi, s, ss = st[:5]
        re_nan, re_inf, im_nan, im_inf = (int(v) for v in st[8:12])
        parts += _moments(n, lo, hi, s, ss, "|x|")
        bad = []
        if re_nan or im_nan:
            bad.append(f"NaN!re{re_nan},im{im_nan}")
        if re_inf or im_inf:
            bad.append(f"Inf!re{re_inf},im{im_inf}")
        return " ".join(parts + bad)

    if not x.is_floating_point():  # integers (incl. uint8 timesteps, class ids)
        n, lo, hi, s, ss = _int_stats(x).tolist()
        lo_s, hi_s = str(int(lo)), str(int(hi))
        mean = s / n
        std = math.sqrt(ss / (n - 1)) if n > 1 else math.nan
        if numel == 1:
            return " ".join([*parts, lo_s])
        return " ".join([*parts, f"x∈[{lo_s}, {hi_s}]", f"μ={_fmt(mean)}", f"σ={_fmt(std)}"])

    st = _real_stats(x).tolist()  # the one host transfer
    n, lo, hi, s, ss, nan, pinf, ninf = st
    if numel == 1 and n == 1:
        parts.append(_fmt(lo))
    else:
        parts += _moments(n, lo, hi, s, ss, "x")
    for label, v in (("NaN", nan), ("+Inf", pinf), ("-Inf", ninf)):
        if v:
            parts.append(f"{label}!{int(v)}")
    if x.dtype in (torch.float16, torch.bfloat16) and n:
        fmax = torch.finfo(x.dtype).max
        amax = max(abs(lo), abs(hi))
        if amax > fmax / 16:  # within 4 bits of overflow
            parts.append(f"headroom={_fmt(fmax / amax)}x")
    return " ".join(parts)


def _moments(n: float, lo: float, hi: float, s: float, ss: float, sym: str) -> list[str]:
    if n == 0:
        return ["all non-finite"]
    mean = s / n
    std = math.sqrt(ss / (n - 1)) if n > 1 else math.nan
    mu = "μ" if sym == "x" else "μ|x|"
    sd = "σ" if sym == "x" else "σ|x|"
    return [f"{sym}∈[{_fmt(lo)}, {_fmt(hi)}]", f"{mu}={_fmt(mean)}", f"{sd}={_fmt(std)}"]
