"""Why a contracted module method failed inside torch: an input on another device, or of
another precision, than the module's parameters.

The contract wrappers call :func:`explain_failure` from the ``except`` branch around the wrapped
function (a ``try`` costs nothing on CPython 3.11+), so a call that succeeds pays nothing. When
``self`` is an ``nn.Module`` and torch's error speaks of a device or a dtype, the first tensor
argument that differs from the module's first floating-point parameter is named in a
:class:`DeviceError` or :class:`DtypeError`, with the cast that fixes it. An inner contracted
call's error is worded again by each outer call whose own argument is the culprit, so the error
names the argument the caller passed.

Example:
    >>> model(features.half())  # a float32 model
    DtypeError: Paraformer.forward(): argument 'features' has dtype float16 but the model's
    parameters are float32
      hint: cast the input (features.to(torch.float32)) or the model (model.to(torch.float16))
"""

from __future__ import annotations

import torch
from torch import Tensor

from ._check import call_arguments
from ._errors import ContractError
from ._plan import Plan

__all__ = ["FAILED", "DeviceError", "DtypeError", "InputError", "explain_failure"]

_REAL = {
    torch.complex32: torch.float16,
    torch.complex64: torch.float32,
    torch.complex128: torch.float64,
}
_COMPLEX = {v: k for k, v in _REAL.items()}
# words of torch's errors that a dtype or a device mismatch raises
_DTYPE_WORDS = ("dtype", "scalar type", "type (", "half", "bfloat16", "double", "complex")


class InputError(ContractError):
    """An input does not match the parameters of the module it was given to."""


class DtypeError(InputError):
    """An input's dtype differs from the module's parameters (``float16`` features into a
    ``float32`` model, ``complex128`` spectra)."""


class DeviceError(InputError):
    """An input lives on another device than the module's parameters."""


FAILED = (RuntimeError, InputError)  # what the wrappers' except branch hands to explain_failure


def explain_failure(plan: Plan, err: BaseException, args: tuple, kwargs: dict) -> None:
    """From the ``except`` branch of a contracted call: raise :class:`DeviceError` or
    :class:`DtypeError` (from ``err``) when ``self`` is a module and an argument on another
    device or of another precision explains ``err``; return otherwise (the caller re-raises)."""
    if not (plan.has_self and args and isinstance(args[0], torch.nn.Module)):
        return
    text = str(err).lower()
    device = isinstance(err, DeviceError) or (not isinstance(err, InputError) and "device" in text)
    dtype = isinstance(err, DtypeError) or (
        not isinstance(err, InputError) and any(w in text for w in _DTYPE_WORDS)
    )
    if not (device or dtype):
        return
    p = next((q for q in args[0].parameters() if q.is_floating_point()), None)
    if p is None:
        return
    where = plan.qualname
    for slot, t in call_arguments(plan, args, kwargs):
        if slot.position == 0 or not isinstance(t, Tensor):
            continue
        if device and t.device != p.device:
            raise DeviceError(
                f"{where}(): argument {slot.name!r} is on device {t.device} but the model's "
                f"parameters are on {p.device}\n"
                f"  hint: move the input ({slot.name}.to({str(p.device)!r})) or the model "
                f"(model.to({str(t.device)!r}))",
                function=where,
                argument=slot.name,
                expected=str(p.device),
                actual=str(t.device),
            ) from err
        if dtype and (t.is_floating_point() or t.is_complex()):
            _dtype(where, slot.name, t.dtype, p.dtype, err)


def _dtype(where: str, name: str, got: torch.dtype, want: torch.dtype, err: BaseException) -> None:
    real = _REAL.get(got, got)
    if real == want:
        return
    expected = _COMPLEX.get(want, want) if got.is_complex else want
    also = f" (expected {_name(expected)})" if expected != want else ""
    raise DtypeError(
        f"{where}(): argument {name!r} has dtype {_name(got)} but the model's parameters are "
        f"{_name(want)}{also}\n"
        f"  hint: cast the input ({name}.to(torch.{_name(expected)})) or the model "
        f"(model.to(torch.{_name(real)}))",
        function=where,
        argument=name,
        expected=_name(expected),
        actual=_name(got),
    ) from err


def _name(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "")
