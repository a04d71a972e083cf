"""Field checks shared by the reference models' config dataclasses.

Every config validates itself when it is made (and :class:`models.paraformer.ParaformerConfig`
again in ``validate()``): first each field's type against its annotation
(:func:`check_types`; an ``int`` field refuses ``"64"``, ``64.0`` and ``True``), then the
ranges of that config (:func:`require`). A failure raises the config's own error naming the
field, its value and what was expected, instead of a ``TypeError`` or a shape error deep inside
the model built from it.

Example:
    >>> check_types(cfg, ConfigError)  # doctest: +SKIP
    >>> require(cfg, ConfigError, "hop", cfg.hop >= 1, ">= 1")  # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import functools
import numbers
import typing
from typing import Any

__all__ = ["check_types", "is_int", "require", "require_positive"]


def _fail(cfg: Any, error: type[Exception], name: str, expected: str) -> Exception:
    value = getattr(cfg, name)
    return error(f"{type(cfg).__name__}.{name}={value!r} is invalid: expected {expected}")


def is_int(v: Any) -> bool:
    """An integer (Python or numpy), not a bool."""
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def _is_real(v: Any) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool)


def _matches(value: Any, hint: Any) -> tuple[bool, str]:
    """Whether ``value`` fits the annotation ``hint``, and the annotation in words."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is bool:
        return isinstance(value, bool), "a bool"
    if hint is int:
        return is_int(value), "an int"
    if hint is float:
        return _is_real(value), "a number"
    if hint is str:
        return isinstance(value, str), "a str"
    if origin is tuple:
        seq = isinstance(value, (tuple, list))
        if len(args) == 2 and args[1] is Ellipsis:  # tuple[int, ...]
            ok = seq and all(_matches(v, args[0])[0] for v in value)
            return ok, f"a tuple of {_matches(0, args[0])[1].split(' ', 1)[1]}s"
        ok = (
            seq
            and len(value) == len(args)
            and all(_matches(v, a)[0] for v, a in zip(value, args, strict=False))
        )
        return ok, f"a tuple of {len(args)} values"
    if origin is dict:
        return isinstance(value, dict), "a dict"
    return True, ""  # annotations this helper does not know are not checked


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    """The resolved field annotations of a config class (evaluated once per class)."""
    return typing.get_type_hints(cls)


def check_types(cfg: Any, error: type[Exception]) -> None:
    """Raise ``error`` naming the first dataclass field whose value does not fit its type.

    ``int`` fields take integers (not bools or floats), ``float`` fields any real number,
    ``tuple[int, ...]`` fields a tuple or list of integers (JSON turns tuples into lists).
    """
    hints = _hints(type(cfg))
    for f in dataclasses.fields(cfg):
        ok, words = _matches(getattr(cfg, f.name), hints.get(f.name, Any))
        if not ok:
            got = type(getattr(cfg, f.name)).__name__
            raise _fail(cfg, error, f.name, f"{words} (got {got})")


def require(cfg: Any, error: type[Exception], name: str, ok: bool, expected: str) -> None:
    """Raise ``error`` (``"Cfg.name=value is invalid: expected ..."``) unless ``ok``.

    Write ``ok`` so that NaN fails it (``x > 0``, not ``not x <= 0``).
    """
    if not ok:
        raise _fail(cfg, error, name, expected)


def require_positive(cfg: Any, error: type[Exception], *names: str) -> None:
    """Every named (int) field is >= 1."""
    for name in names:
        require(cfg, error, name, getattr(cfg, name) >= 1, ">= 1")
