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
import struct

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


_I64_MIN, _I64_MAX = -(2**63), 2**63 - 1


def _int_stats(x: Tensor) -> list:
    """``[n, min, max, sum, sumsq_centered]`` of flat integer data, with one host transfer.

    The extrema are reduced in the integers and come back as exact Python ints (int64 extremes
    would not survive a float64 trip: 2**63-1 reads back as 2**63). The moments are taken of
    the differences from the minimum (exact in int64 modulo 2**64, whatever the spread),
    so large values close together keep their spread; they come back bit-cast into the same
    int64 vector as the extrema.
    """
    acc = _acc_dtype(x.device)
    if x.dtype == torch.uint64:  # no uint64 reductions: the int64 view, read as unsigned
        v = x.view(torch.int64)
        big = v < 0  # the values >= 2**63
        hi = torch.where(big.any(), torch.where(big, v, _I64_MIN).amax(), v.amax())
        lo = torch.where((~big).any(), torch.where(big, _I64_MAX, v).amin(), v.amin())
    else:
        if x.dtype in UNREDUCED:  # uint16/uint32: as int64, exactly
            x = widened(x)
        v = x.to(torch.int64)
        lo, hi = v.amin(), v.amax()
    if acc == torch.float64:
        d = (v - lo).double()  # the gap wraps past 2**63 (mod 2**64): negative, put back
        d = torch.where(d < 0, d + 2.0**64, d)
    else:  # no float64 (nor uint64) on the device: the values as floats
        d = x.to(acc)
    mean = d.mean()
    moments = torch.stack([d.sum(), ((d - mean) ** 2).sum()])
    bits = moments.view(torch.int64 if acc == torch.float64 else torch.int32).to(torch.int64)
    lo_i, hi_i, s_bits, ss_bits = torch.cat([torch.stack([lo, hi]), bits]).tolist()
    fmt, back = ("<q", "<d") if acc == torch.float64 else ("<i", "<f")
    s, ss = (struct.unpack(back, struct.pack(fmt, b))[0] for b in (s_bits, ss_bits))
    if x.dtype == torch.uint64:
        lo_i, hi_i = lo_i % 2**64, hi_i % 2**64
    n = x.numel()
    if acc == torch.float64:
        s += lo_i * n  # the sum of the values, from the sum of their gaps
    return [n, lo_i, hi_i, s, ss]


def _shape(t: Tensor) -> str:
    return "tensor[" + ", ".join(str(s) for s in t.shape) + "]"


def _dev(t: Tensor) -> str:
    d = t.device
    return d.type if d.index is None else f"{d.type}:{d.index}"


_SPARSE = frozenset(
    {torch.sparse_coo, torch.sparse_csr, torch.sparse_csc, torch.sparse_bsr, torch.sparse_bsc}
)
_NESTED_SHOWN = 3  # component shapes printed for a nested tensor


def _nested_shape(parts: list[Tensor]) -> str:
    shown = ", ".join("[" + ", ".join(str(s) for s in c.shape) + "]" for c in parts[:_NESTED_SHOWN])
    more = f", … ({len(parts)} tensors)" if len(parts) > _NESTED_SHOWN else ""
    return f"tensor[nested: {shown}{more}]"


def _layout_words(t: Tensor) -> list[str]:
    """The words for a tensor that is not a plain strided one: its layout, and how quantized
    values are scaled."""
    words = []
    if t.is_nested:
        words.append("jagged" if t.layout == torch.jagged else "nested")
    elif t.layout != torch.strided:
        words.append(str(t.layout).replace("torch.", "").lstrip("_"))
    if t.is_quantized:
        scheme = t.qscheme()
        if scheme in (torch.per_tensor_affine, torch.per_tensor_symmetric):
            words.append(f"q(scale={_fmt(t.q_scale())}, zero_point={t.q_zero_point()})")
        else:
            words.append(f"q({str(scheme).replace('torch.', '')}, axis={t.q_per_channel_axis()})")
    return words


def _values(x: Tensor) -> tuple[Tensor, int, int]:
    """``(flat values, logical element count, implicit zeros)`` of any layout, without making
    a sparse tensor dense: its stored values are read and its unstored elements counted as
    zeros; a nested tensor's components are read together; quantized values are dequantized."""
    if x.is_nested:
        parts = [c.reshape(-1) for c in x.unbind()]
        flat = torch.cat(parts) if parts else torch.empty(0, dtype=x.dtype, device=x.device)
        return flat, flat.numel(), 0
    layout = x.layout
    if layout == torch.sparse_coo:
        v = x.coalesce().values().reshape(-1)
        return v, x.numel(), x.numel() - v.numel()
    if layout in _SPARSE:  # the compressed layouts (COO is handled above)
        v = x.values().reshape(-1)
        if v.is_complex():  # .real/.imag of a view into a compressed tensor raise
            v = v.clone()
        return v, x.numel(), x.numel() - v.numel()
    if layout != torch.strided:  # mkldnn and other dense-convertible layouts
        x = x.to_dense()
    if x.is_quantized:
        x = x.dequantize()
    return x.reshape(-1), x.numel(), 0


def _with_zeros(st: list, zeros: int) -> list:
    """Statistics ``[n, min, max, sum, sumsq_centered, ...]`` with ``zeros`` zeros added (the
    unstored elements of a sparse tensor): min/max/mean/std as of the dense tensor."""
    if not zeros:
        return st
    n, lo, hi, s, ss = st[:5]
    if n:
        mean = s / n
        ss = ss + mean * mean * n * zeros / (n + zeros)
        lo, hi = min(lo, 0), max(hi, 0)
    else:
        lo = hi = 0
    return [n + zeros, lo, hi, s, ss, *st[5:]]


def summarize(t: Tensor, *, name: str | None = None) -> str:
    """Return a one-line summary of ``t``: shape, dtype, device, range, mean/std, non-finite counts.

    Statistics of floating tensors are over the finite values; NaN, +Inf and -Inf are counted
    separately and flagged with ``!``. Integer tensors get range/mean/std (the range exact, also
    for int64 and uint64 extremes), bool tensors the count of True, complex tensors the
    statistics of ``|x|`` plus NaN/Inf counts of the real and imaginary parts. All arithmetic
    runs on the tensor's device; one small vector is copied to the host. ``t`` is returned
    unchanged (it is only read).

    Other layouts: a sparse tensor (COO, CSR, CSC, BSR, BSC) is summarized as the dense tensor
    it stands for, from its stored values (never made dense), with ``nnz=`` its stored count; a
    nested tensor by its components' shapes and all their values; a quantized tensor by its
    dequantized values, after its scale and zero point. Anything that cannot be reduced (a
    dtype without arithmetic, a tensor under a tracing mode) degrades to shape, dtype, device
    and layout with a note: a summary never raises for a tensor.

    Args:
        t: any tensor.
        name: optional label printed first.

    Raises:
        SummaryError: ``t`` is not a tensor.

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
    parts = [head + "tensor[?]"]
    try:
        dt = _DTYPE_SHORT.get(t.dtype, str(t.dtype).replace("torch.", ""))
        parts = [head + (_nested_shape(t.unbind()) if t.is_nested else _shape(t)), dt, _dev(t)]
        if t.requires_grad:
            parts.append("grad")
        if t.device.type == "meta":
            return " ".join([*parts, *_layout_words(t), "meta"])
        parts += _layout_words(t)
        with torch.no_grad():
            return " ".join(parts + _body(t))
    except Exception as e:  # never raise for a tensor: what is known, and why no more
        why = str(e).strip().splitlines()[0] if str(e).strip() else ""
        why = why[:60] + "…" if len(why) > 60 else why
        return " ".join(
            [*parts, f"(values not summarized: {type(e).__name__}{': ' if why else ''}{why})"]
        )


def _body(t: Tensor) -> list[str]:
    """The words after the header: counts and statistics of the values."""
    x, numel, zeros = _values(t.detach())
    parts = [f"n={numel}"]
    if t.layout in _SPARSE:
        parts.append(f"nnz={numel - zeros}")
    if numel == 0:
        return [*parts, "empty"]

    if x.dtype == torch.bool:
        k = int(x.sum())
        return [*parts, f"true={k} ({100.0 * k / numel:.1f}%)"]

    if x.is_complex():
        mag = x.abs()
        acc = _acc_dtype(x.device)
        if x.numel():
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
        else:  # a sparse tensor storing nothing
            st = [0.0, math.inf, -math.inf, 0.0, 0.0, 0, 0, 0, 0, 0, 0, 0]
        n, lo, hi, s, ss = _with_zeros(st, zeros)[:5]
        re_nan, re_inf, im_nan, im_inf = (int(v) for v in st[8:12])
        parts += _moments(n, lo, hi, s, ss, "|x|")
        bad = []
        if re_nan or im_nan:
            bad.append(f"NaN!re{re_nan},im{im_nan}")
        if re_inf or im_inf:
            bad.append(f"Inf!re{re_inf},im{im_inf}")
        return parts + bad

    if not x.is_floating_point():  # integers (incl. uint8 timesteps, class ids)
        st = _int_stats(x) if x.numel() else [0, 0, 0, 0.0, 0.0]
        n, lo, hi, s, ss = _with_zeros(st, zeros)
        mean = s / n
        std = math.sqrt(ss / (n - 1)) if n > 1 else math.nan
        if numel == 1:
            return [*parts, str(lo)]
        return [*parts, f"x∈[{lo}, {hi}]", f"μ={_fmt(mean)}", f"σ={_fmt(std)}"]

    if x.numel():
        st = _real_stats(x).tolist()  # the one host transfer
    else:  # a sparse tensor storing nothing
        st = [0.0, math.inf, -math.inf, 0.0, 0.0, 0.0, 0.0, 0.0]
    n, lo, hi, s, ss, nan, pinf, ninf = _with_zeros(st, zeros)
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
    return parts


def _moments(n: float, lo: float, hi: float, s: float, ss: float, sym: str) -> list[str]:
    if n == 0:
        return ["all non-finite"]
    mean = s / n
    std = math.sqrt(ss / (n - 1)) if n > 1 else math.nan
    mu = "μ" if sym == "x" else "μ|x|"
    sd = "σ" if sym == "x" else "σ|x|"
    return [f"{sym}∈[{_fmt(lo)}, {_fmt(hi)}]", f"{mu}={_fmt(mean)}", f"{sd}={_fmt(std)}"]
