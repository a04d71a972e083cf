"""Words for contract failures: tensor descriptions, value-failure details, hints.

Everything here runs only after a check has failed, so it may be slow and thorough.
"""

from __future__ import annotations

import itertools
from typing import Any

import torch

__all__ = ["describe_value", "permutation_hint", "value_details"]


def _fmt(x: float) -> str:
    if isinstance(x, int) or (isinstance(x, float) and x.is_integer() and abs(x) < 1e15):
        return str(int(x))
    return f"{x:.4g}"


def describe_value(x: Any) -> str:
    """A short, never-whole description of an argument value (tensors summarized)."""
    if isinstance(x, torch.Tensor):
        dt = str(x.dtype).replace("torch.", "")
        head = f"tensor[{', '.join(map(str, x.shape))}] {dt} {x.device.type}"
        if x.numel() == 0 or x.is_meta:
            return head + " (empty)" if x.numel() == 0 else head
        with torch.no_grad():
            if x.dtype == torch.bool:
                return head + f" true={int(x.sum())}/{x.numel()}"
            v = x.detach()
            if v.is_complex():
                v = v.abs()
            if v.is_floating_point():
                finite = torch.isfinite(v)
                n_nan = int(torch.isnan(v).sum())
                n_inf = int((~finite).sum()) - n_nan
                fv = v[finite].double()
                rng = f" x∈[{_fmt(fv.min().item())}, {_fmt(fv.max().item())}]" if fv.numel() else ""
                bad = (f" NaN!{n_nan}" if n_nan else "") + (f" Inf!{n_inf}" if n_inf else "")
                return head + rng + bad
            return head + f" x∈[{int(v.min())}, {int(v.max())}]"
    if x is None:
        return "None"
    r = repr(x)
    return f"{type(x).__name__} {r[:60] + '…' if len(r) > 60 else r}"


def value_details(x: torch.Tensor, lo: float | None, hi: float | None) -> tuple[str, dict]:
    """Count and locate the values of ``x`` outside ``[lo, hi]`` or non-finite."""
    with torch.no_grad():
        v = torch.view_as_real(x.detach()) if x.is_complex() else x.detach()
        if v.is_floating_point():
            nan = torch.isnan(v)
            posinf = torch.isposinf(v)
            neginf = torch.isneginf(v)
        else:
            nan = posinf = neginf = torch.zeros_like(v, dtype=torch.bool)
        bad = nan | posinf | neginf
        if lo is not None:
            bad |= v < lo
        if hi is not None:
            bad |= v > hi
        n_bad = int(bad.sum())
        idx = bad.nonzero()
        first = tuple(int(i) for i in idx[0]) if len(idx) else None
        finite = ~(nan | posinf | neginf)
        fv = v[finite]
        info = {
            "count": n_bad,
            "numel": v.numel(),
            "nan": int(nan.sum()),
            "+inf": int(posinf.sum()),
            "-inf": int(neginf.sum()),
            "min": fv.min().item() if fv.numel() else None,
            "max": fv.max().item() if fv.numel() else None,
            "first_bad_index": first,
        }
    parts = [f"{n_bad} of {info['numel']} values outside it"]
    nonfin = [
        f"{info[k]} {k.upper() if k == 'nan' else k.replace('inf', 'Inf')}"
        for k in ("nan", "+inf", "-inf")
        if info[k]
    ]
    if nonfin:
        parts.append("non-finite: " + ", ".join(nonfin))
    if info["min"] is not None:
        parts.append(f"finite min={_fmt(info['min'])}, max={_fmt(info['max'])}")
    if first is not None:
        parts.append(f"first bad at index {first}")
    return "; ".join(parts), info


def permutation_hint(
    argname: str, shape: tuple[int, ...], names: list[str], expected: list[int | None]
) -> str | None:
    """Suggest a transpose/permute when ``shape`` is a permutation of the expected sizes.

    ``expected[i]`` is the known size of axis i (or None when any size fits). Returns e.g.
    ``"features looks like [B, F, T]; transpose(1, 2)?"``.
    """
    n = len(shape)
    if n != len(expected) or n > 6 or all(e is None for e in expected):
        return None
    best: tuple[int, ...] | None = None
    for perm in itertools.permutations(range(n)):
        # perm[i] = which actual axis would go to expected position i
        if perm == tuple(range(n)):
            continue
        if all(expected[i] is None or shape[perm[i]] == expected[i] for i in range(n)):
            # the permutation must actually move a constrained axis
            moved = [i for i in range(n) if perm[i] != i]
            if not any(expected[i] is not None for i in moved):
                continue
            if best is None or len(moved) < sum(1 for i in range(n) if best[i] != i):
                best = perm
    if best is None:
        return None
    inv = [0] * n
    for i, p in enumerate(best):
        inv[p] = i
    looks = "[" + ", ".join(names[inv[a]] for a in range(n)) + "]"
    moved = [i for i in range(n) if best[i] != i]
    if len(moved) == 2:
        fix = f"transpose({moved[0]}, {moved[1]})"
    else:
        fix = f"permute({', '.join(map(str, best))})"
    return f"{argname} looks like {looks}; {fix}?"
