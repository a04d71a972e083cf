"""CPU value checks of the fast path: one specialised check per constraint, and memory.

:func:`cpu_value_check` builds ``ok(x, bindings, self) -> bool`` for one :class:`TensorSpec`:
True means the values surely meet the constraints; False hands the tensor to the reference
judge (``_check.judge_values``), which decides and words the failure. What a check learns is
remembered per tensor (object identity held by a weak reference, plus the version counter that
every in-place write bumps), so a tensor handed from layer to layer is read once per step:

* a range remembers the tensor's **extrema**, which decide every range: the alphas a predictor
  returns as ``Probability()`` and a loss takes as ``Range(0, None)`` are reduced once;
* a mask remembers its verdict, and a view of a mask is known by **the rows it reads**
  (:func:`_rows_read`): the ``[B, T, S]`` attention masks a model expands from a ``[B, S]``
  padding mask at each call read that padding mask's rows, checked when it came in.

Each check tallies its hits and switches its lookups off where tensors never come back (fresh
activations then pay no lookups); what it reduces is remembered all the same, since a tensor a
check sees once (a layer's return) is often the one the next check looks up (the next layer's
input). Writes that bypass the version counter (``.data``, NumPy or
DLPack views) are not seen.
"""

from __future__ import annotations

import functools
import math
import sys
import weakref
from collections.abc import Callable
from typing import Any

import torch

from ._plan import FLOAT_NAMES, TensorSpec
from ._spec import Expr

__all__ = ["UNREDUCED", "cpu_value_check", "remember_extrema", "remember_mask", "widened"]

_SMALL_MASK = 4096  # below this many elements a mask's row test is one any()/all() per axis
_SHORT_ROWS = 256  # a row-test result this short is read as a list (cheaper than .all())
# A 2-D mask this small is read whole and tested in Python: one tolist() beats a torch
# reduction's dispatch below ~200 elements (measured: [8, 16] 1.2 us vs 1.7 us; [16, 16] 2.2 vs
# 1.8 us); batch-1 masks of up to this many frames take this path.
_LIST_MASK = 192
_INLINE_MAX = 1024  # larger tensors take the check's call (broadcast axes are dropped there)
# dropping broadcast axes costs a view op: worth it when the repeats it skips are a large read
_UNBROADCAST_MIN = 16384
_MEMO_MAX = 512
_EXTREMA: dict[int, tuple[Any, int, Any, Any]] = {}  # id(tensor) -> (weakref, _version, min, max)
_MEMO: dict[int, tuple[Any, int, tuple]] = {}  # id(mask) -> (weakref, _version, constraint)
_ROWS: dict[tuple, tuple[Any, int]] = {}  # (id(owner), constraint, rows) -> (weakref, _version)
_CONSTRAINTS: dict[tuple, tuple] = {}  # interned mask constraints: compared by identity
# A lookup pays when a remembered tensor comes back: a hit saves a check (a reduction), a miss
# costs the lookup. Each check keeps its own tally over windows of _PROBE misses; below one hit
# per _BREAK_EVEN misses it stops looking up for _OFF_FOR calls, then tries again. What it
# reduces is remembered either way (another check may look it up).
_PROBE, _BREAK_EVEN, _OFF_FOR = 64, 8, 4096

# real dtypes, whose range is one aminmax: floats (Float lists the float8s) and integers
_REAL = (
    FLOAT_NAMES
    | {n for n in dir(torch) if n.startswith("float8_")}
    | {f"{u}int{k}" for u in ("", "u") for k in (8, 16, 32, 64)}
)
# the extreme finite doubles: a bound test against them also rejects inf and NaN (read as doubles)
_LOWEST, _HIGHEST = -sys.float_info.max, sys.float_info.max
_NUMBER = (int, float, type(None))


def cpu_value_check(spec: TensorSpec) -> Callable[[torch.Tensor, dict, Any], bool]:
    """A CPU value check specialised for one spec: ``ok(x, bindings, self) -> bool``.

    Specialised:

    * a :class:`Range`/:class:`Finite` on a float or integer tensor: the extrema (one
      ``aminmax``, two reads; a single element is read), compared with Python's exact int/float
      comparison; bounds that are expressions (``Range(0, "V-1")``) are evaluated first;
    * a bool :class:`Mask`: a Python read of small 2-D masks, one ``any``/``all`` along the axis
      for mid-sized ones, and a ``uint8`` row count for large ones (torch's ``any(dim)`` is
      2-5x slower on short rows);
    * everything else: :func:`_cpu_values_ok` (the reference's reductions, read at once).

    Large tensors are checked without the repeats of their broadcast axes (:func:`_unbroadcast`).
    The returned ``ok`` carries ``gate`` (its lookup tally), and for ranges with number bounds
    and masks ``values`` (the check without a lookup, remembering what it finds) and ``inline``
    (what the generated wrapper may write out: ``("range", lo, hi)`` or ``("mask", axis,
    padding)``; masks also carry their interned ``constraint``); other checks have no
    ``inline``.

    Example:
        >>> ok = cpu_value_check(spec)  # spec of Annotated[Float[Tensor, "B T"], Range(0, 1)]
        >>> ok(torch.rand(2, 3), {}, None)
        True
    """
    lo, hi = spec.lo, spec.hi
    gate = [0, 0, 0]  # calls left with lookups off, hits and misses in this window
    if spec.mask_axis is None and spec.dtypes and spec.dtypes <= _REAL:
        if isinstance(lo, Expr) or isinstance(hi, Expr):
            ok = _expression_range_check(lo, hi, gate)
        else:
            lo_v, hi_v = _limits(lo, hi)
            # partial: a C call straight into the check (one Python frame per check)
            ok = functools.partial(_within, lo_v, hi_v, gate)
            ok.values = functools.partial(_range_found, lo_v, hi_v)  # type: ignore[attr-defined]
            ok.inline = ("range", lo_v, hi_v)  # type: ignore[attr-defined]
    elif spec.mask_axis is not None and spec.is_bool:
        axis, padding = spec.mask_axis, spec.mask_padding
        key = (axis, padding)
        constraint = _CONSTRAINTS.setdefault(key, key)
        values = _mask_values(axis, padding)
        ok = functools.partial(_remembered_mask, constraint, values, gate, axis)
        ok.values = functools.partial(_mask_found, constraint, values)  # type: ignore[attr-defined]
        ok.inline = ("mask", axis, padding)  # type: ignore[attr-defined]
        ok.constraint = constraint  # type: ignore[attr-defined]
    else:
        ok = functools.partial(_cpu_values_ok, spec)
    ok.gate = gate  # type: ignore[attr-defined]
    return ok


# dtypes whose reductions and comparisons torch does not implement on the CPU
UNREDUCED = frozenset(
    {getattr(torch, n) for n in dir(torch) if n.startswith("float8_")}
    | {torch.uint16, torch.uint32, torch.uint64}
)


def widened(x: torch.Tensor) -> torch.Tensor:
    """``x`` (an :data:`UNREDUCED` dtype) in one torch reduces and compares: float8 as float32
    and uint16/uint32 as int64, exactly; uint64 as float64 (values past 2**53 rounded). The
    value checks call it only when a reduction raised (a dtype test on every check would cost
    the common case); messages and summaries test :data:`UNREDUCED` first."""
    dt = x.dtype
    if dt.is_floating_point:
        return x.float()
    return x.double() if dt == torch.uint64 else x.long()


def _limits(lo: Any, hi: Any) -> tuple[Any, Any]:
    """Number bounds as compared: None becomes the extreme finite double (so inf and NaN fail);
    ints stay ints (Python compares int and float exactly, past 2**53 too)."""
    lo_v = _LOWEST if lo is None else lo if isinstance(lo, int) else max(float(lo), _LOWEST)
    hi_v = _HIGHEST if hi is None else hi if isinstance(hi, int) else min(float(hi), _HIGHEST)
    return lo_v, hi_v


def _expression_range_check(lo: Any, hi: Any, gate: list) -> Callable:
    """The range check of bounds that are expressions, evaluated in each call's bindings (an
    error, or a bound that is not a number, is left to the reference judge)."""

    def ok(x: torch.Tensor, b: dict, self_obj: Any) -> bool:
        try:
            lo_v = lo(b, self_obj) if isinstance(lo, Expr) else lo
            hi_v = hi(b, self_obj) if isinstance(hi, Expr) else hi
        except Exception:
            return False  # a bound that cannot be evaluated: the reference judge words it
        if not (isinstance(lo_v, _NUMBER) and isinstance(hi_v, _NUMBER)):
            return False
        lo_v, hi_v = _limits(lo_v, hi_v)
        return _within(lo_v, hi_v, gate, x, b, self_obj)

    return ok


def _extrema(x: torch.Tensor) -> tuple[Any, Any] | None:
    """``(min, max)`` of a real tensor as Python numbers (NaN if any), None when empty."""
    n = x.numel()
    if n == 1:  # a scalar (a loss, a step size): read, not reduced
        v = x.item()
        return v, v
    if not n:
        return None
    if x.requires_grad:
        x = x.detach()
    if n >= _UNBROADCAST_MIN:
        x = _unbroadcast(x)
    try:
        mn, mx = torch.aminmax(x)
    except (RuntimeError, NotImplementedError):  # a dtype torch does not reduce (float8)
        mn, mx = torch.aminmax(widened(x))
    return mn.item(), mx.item()


def _range_values(lo_v: Any, hi_v: Any, x: torch.Tensor, b: dict, self_obj: Any) -> bool:
    """The range check without memory."""
    ext = _extrema(x)
    return ext is None or (lo_v <= ext[0] and ext[1] <= hi_v)  # NaN compares False


def _range_found(lo_v: Any, hi_v: Any, x: torch.Tensor, b: dict, self_obj: Any) -> bool:
    """The range check without a lookup, its extrema remembered (what ``ok.values`` does)."""
    ext = _extrema(x)
    if ext is None:
        return True
    remember_extrema(x, ext[0], ext[1])
    return lo_v <= ext[0] and ext[1] <= hi_v  # NaN compares False


def _within(lo_v: Any, hi_v: Any, gate: list, x: torch.Tensor, b: dict, self_obj: Any) -> bool:
    """Whether ``x`` lies in ``[lo_v, hi_v]``, from extrema remembered for this very tensor
    (same object, same version) when it has been reduced before under any range. The extrema
    found are remembered even while ``gate`` is closed (it skips only the lookup): a check
    whose own lookups never hit, such as a layer's return, still saves the next layer's input
    check its reduction."""
    if gate[0]:
        gate[0] -= 1
        return _range_found(lo_v, hi_v, x, b, self_obj)
    try:
        version = x._version
    except RuntimeError:  # inference tensors keep no version counter
        return _range_values(lo_v, hi_v, x, b, self_obj)
    key = id(x)
    seen = _EXTREMA.get(key)
    if seen is not None and seen[1] == version and seen[0]() is x:
        gate[1] += 1
        return lo_v <= seen[2] and seen[3] <= hi_v
    _tally_miss(gate)
    return _range_found(lo_v, hi_v, x, b, self_obj)


def _tally_miss(gate: list) -> None:
    gate[2] += 1
    if gate[2] >= _PROBE:
        if gate[1] * _BREAK_EVEN < gate[2]:
            gate[0] = _OFF_FOR
        gate[1] = gate[2] = 0


def _mask_values(axis: int, padding: bool) -> Callable:
    """Every row along ``axis`` keeps a valid position: for ``padding`` masks (True = padded)
    no row is all True, else no row is all False."""
    u8, i32 = torch.uint8, torch.int32
    by_row = axis in (1, -1)  # for a 2-D mask: the rows of tolist() are the rows tested

    def values(x: torch.Tensor, b: dict, self_obj: Any) -> bool:
        n = x.numel()
        if not n:
            return True
        if n >= _SMALL_MASK:  # a row count would read the repeats of broadcast axes
            x = _unbroadcast(x)
            n = x.numel()
        if x.ndim == 2 and n <= _LIST_MASK:
            rows = x.tolist() if by_row else zip(*x.tolist())
            return not any(map(all, rows)) if padding else all(map(any, rows))
        if n < _SMALL_MASK:
            r = x.all(axis) if padding else x.any(axis)  # per row: all padded / any valid
            if r.ndim == 1 and r.numel() <= _SHORT_ROWS:
                v = r.tolist()
                return not any(v) if padding else all(v)
            return not r.any().item() if padding else r.all().item()
        count = x.view(u8).sum(dim=axis, dtype=i32)  # per row: its True positions
        if padding:
            return count.amax().item() < x.shape[axis]
        return count.amin().item() > 0

    return values


def _unbroadcast(x: torch.Tensor) -> torch.Tensor:
    """``x`` without the repeats of its broadcast axes (stride 0: every index reads the same
    values), which change no minimum, maximum, any or all. An attention mask expanded from
    ``[B, 1, S]`` to ``[B, T, S]`` is checked as ``[B, 1, S]``: T times less work."""
    strides = x.stride()
    if 0 not in strides:
        return x
    shape = [1 if st == 0 else n for n, st in zip(x.shape, strides)]
    return x.as_strided(shape, strides, x.storage_offset())


def _mask_found(constraint: tuple, values: Callable, x: torch.Tensor, b: dict, s: Any) -> bool:
    """The mask check without a lookup, a valid mask remembered (what ``ok.values`` does)."""
    if not values(x, b, s):
        return False
    remember_mask(x, constraint)
    return True


def _remembered_mask(
    constraint: tuple,
    values: Callable,
    gate: list,
    axis: int,
    x: torch.Tensor,
    b: dict,
    self_obj: Any,
) -> bool:
    """``values(x, b, self_obj)``, skipped for a mask already found valid for ``constraint``:
    the same object with the same version (typical hit: one padding mask checked by every layer
    of a stack), or a view reading the same rows of the same memory, unwritten since
    (:func:`_rows_read`): the mask it was taken from, or an earlier view of it. Only views pay
    for working out their rows. While ``gate`` is closed the lookups are skipped, but a mask
    found valid is still remembered by identity (a later check of the same mask is a hit)."""
    if gate[0]:
        gate[0] -= 1
        return _mask_found(constraint, values, x, b, self_obj)
    try:
        version = x._version
    except RuntimeError:  # inference tensors keep no version counter
        return values(x, b, self_obj)
    key = id(x)
    seen = _MEMO.get(key)
    if seen is not None and seen[1] == version and seen[2] is constraint and seen[0]() is x:
        gate[1] += 1
        return True
    owner = x._base
    rows = None
    if owner is not None:  # a view: of a checked mask, or like a view checked before
        rows = _rows_read(x, axis)
        mine = (id(owner), constraint, rows)
        seen = _ROWS.get(mine)
        hit = seen is not None and seen[1] == version and seen[0]() is owner
        if not hit:
            seen = _MEMO.get(id(owner))  # the mask itself, checked whole
            hit = (
                seen is not None
                and seen[1] == version
                and seen[2][1] == constraint[1]  # the same padding convention
                and seen[0]() is owner
                and _rows_read(owner, seen[2][0]) == rows
            )
        if hit:
            gate[1] += 1
            _remember(_MEMO, key, (weakref.ref(x), version, constraint))
            return True
    _tally_miss(gate)
    if not values(x, b, self_obj):
        return False
    _remember(_MEMO, key, (weakref.ref(x), version, constraint))
    if rows is not None:
        _remember(_ROWS, mine, (weakref.ref(owner), version))
    return True


def remember_extrema(x: torch.Tensor, mn: Any, mx: Any) -> None:
    """Remember ``x``'s extrema for later range checks (nothing for inference tensors)."""
    try:
        version = x._version
    except RuntimeError:
        return
    _remember(_EXTREMA, id(x), (weakref.ref(x), version, mn, mx))


def remember_mask(x: torch.Tensor, constraint: tuple) -> None:
    """Remember that ``x`` passed the mask check ``constraint`` (its interned ``(axis,
    padding)``; nothing for inference tensors)."""
    try:
        version = x._version
    except RuntimeError:
        return
    _remember(_MEMO, id(x), (weakref.ref(x), version, constraint))


def _remember(memo: dict, key: Any, entry: tuple) -> None:
    if len(memo) >= _MEMO_MAX:
        memo.clear()
    memo[key] = entry


def _rows_read(x: torch.Tensor, axis: int) -> tuple:
    """The rows along ``axis`` that a mask check of ``x`` reads in its memory: its storage
    offset, dtype and the ``(size, stride)`` of each axis, with the repeats of broadcast axes
    (stride 0) and size-1 axes left out, as neither changes the set of rows; the checked axis is
    kept and its place recorded. ``mask[:, None, :].expand(B, T, S)`` reads the very rows of
    ``mask``."""
    ax = axis % x.ndim
    kept = []
    place = 0
    for i, (n, st) in enumerate(zip(x.shape, x.stride())):
        if i == ax:
            place = len(kept)
            kept.append((n, st))
        elif st and n != 1:
            kept.append((n, st))
    return (x.storage_offset(), x.dtype, place, tuple(kept))


def _cpu_values_ok(spec: TensorSpec, x: torch.Tensor, b: dict, self_obj: Any) -> bool:
    """Whether a CPU tensor surely meets its value constraints (False: let the reference judge
    decide and word it). The same reductions as ``_check.values_pending``, read at once."""
    if not x.numel():
        return True
    if x.requires_grad:
        x = x.detach()
    if spec.mask_axis is not None:
        return bool((~x if spec.mask_padding else x).any(dim=spec.mask_axis).all())
    floating = x.is_floating_point()
    if not floating:
        if x.is_complex():
            x = torch.view_as_real(x)
        elif spec.lo is None and spec.hi is None:
            return True  # integers are always finite
    try:
        mn, mx = torch.aminmax(x)
    except (RuntimeError, NotImplementedError):  # a dtype torch does not reduce (float8)
        mn, mx = torch.aminmax(widened(x))
    mn, mx = mn.item(), mx.item()
    if not (math.isfinite(mn) and math.isfinite(mx)):
        return False
    lo, hi = spec.lo, spec.hi
    try:
        if lo is not None and mn < (lo(b, self_obj) if isinstance(lo, Expr) else lo):
            return False
        if hi is not None and mx > (hi(b, self_obj) if isinstance(hi, Expr) else hi):
            return False
    except Exception:
        return False  # a bound that cannot be evaluated: the reference judge words it
    return True
