"""Error translation that costs the models' hot paths nothing.

The forward passes carry no checks beyond their contracts (the benchmarks time them). When torch
fails deep inside one, its ``except`` branch asks :func:`explain_inputs` whether an input on
another device than the model's parameters (:class:`DeviceError`), or of another precision
(:class:`DtypeError`), explains the failure, and if so raises that error naming the function,
the argument, what was expected and the call that fixes it. A ``try`` block costs nothing in
CPython 3.11+ (one cheap opcode in 3.10), so the good path pays nothing.

Nested calls work out: the innermost handler raises first; an outer handler whose own argument
is the culprit raises again, naming the argument the caller actually passed.

Example:
    >>> try:
    ...     h = self.in_proj(features)
    ... except (RuntimeError, InputError) as err:
    ...     explain_inputs(err, "Encoder.forward", self, features=features)
    ...     raise
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from contracts import ContractError

__all__ = ["DeviceError", "DtypeError", "InputError", "explain_inputs", "param_dtype"]

_REAL = {
    torch.complex32: torch.float16,
    torch.complex64: torch.float32,
    torch.complex128: torch.float64,
}
_COMPLEX = {v: k for k, v in _REAL.items()}


class InputError(ContractError):
    """An input does not match the model's parameters (base of the two errors below)."""

    __module__ = "models"


class DtypeError(InputError):
    """An input's dtype differs from the model's parameters (``float16`` features into a
    ``float32`` model, ``float64`` audio, ``complex128`` spectra)."""

    __module__ = "models"


class DeviceError(InputError):
    """An input lives on another device than the model's parameters."""

    __module__ = "models"


def _first_param(module: nn.Module) -> Tensor | None:
    for p in module.parameters():
        if p.is_floating_point():
            return p
    return None


def param_dtype(module: nn.Module) -> torch.dtype | None:
    """The dtype of ``module``'s first floating-point parameter (None when it has none)."""
    p = _first_param(module)
    return None if p is None else p.dtype


def _name(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "")


def explain_inputs(err: BaseException, where: str, module: nn.Module, **tensors: object) -> None:
    """In an ``except`` block: raise :class:`DeviceError` or :class:`DtypeError` (from ``err``)
    for the first tensor in ``tensors`` on another device than ``module``'s parameters, or, for
    a floating or complex one, of another precision; return when none is (the caller re-raises
    ``err``).

    ``where`` is the public function (``"Paraformer.forward"``); complex tensors match the
    parameters when their real dtype does (``complex64`` with ``float32``).
    """
    p = _first_param(module)
    if p is None:
        return
    want = p.dtype
    for name, t in tensors.items():
        if not isinstance(t, Tensor):
            continue
        if t.device != p.device:
            raise DeviceError(
                f"{where}(): argument {name!r} is on device {t.device} but the model's parameters "
                f"are on {p.device}\n"
                f"  hint: move the input ({name}.to({str(p.device)!r})) or the model "
                f"(model.to({str(t.device)!r}))",
                function=where,
                argument=name,
                expected=str(p.device),
                actual=str(t.device),
            ) from err
        if not (t.is_floating_point() or t.is_complex()):
            continue
        real = _REAL.get(t.dtype, t.dtype)
        if real == want:
            continue
        expected = _COMPLEX.get(want, want) if t.is_complex() else want
        also = f" (expected {_name(expected)})" if expected != want else ""
        raise DtypeError(
            f"{where}(): argument {name!r} has dtype {_name(t.dtype)} but the model's parameters "
            f"are {_name(want)}{also}\n"
            f"  hint: cast the input ({name}.to(torch.{_name(expected)})) or the model "
            f"(model.to(torch.{_name(real)}))",
            function=where,
            argument=name,
            expected=_name(expected),
            actual=_name(t.dtype),
        ) from err
