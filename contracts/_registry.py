"""Every contract ever declared, and the example-instance factories for methods.

The pytest plugin and ``contracts.docs`` read this registry; checking never does.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

__all__ = ["all_plans", "example", "example_factory", "register"]

_PLANS: dict[tuple[str, str], Any] = {}
_EXAMPLES: dict[tuple[str, str], Callable[[], Any]] = {}

T = TypeVar("T", bound=type)


def register(plan: Any) -> None:
    _PLANS[(plan.module, plan.qualname)] = plan


def all_plans(prefixes: tuple[str, ...] = ()) -> list[Any]:
    """Registered plans whose module starts with one of ``prefixes`` (all when empty)."""
    return [
        p
        for (mod, _q), p in sorted(_PLANS.items())
        if not prefixes or any(mod == x or mod.startswith(x + ".") for x in prefixes)
    ]


def example(factory: Callable[[], Any]) -> Callable[[T], T]:
    """Class decorator: how to build a small instance, for generated property tests of methods.

    Example:
        >>> @contracts.example(lambda: Encoder(EncoderConfig(d_model=16, n_layers=1)))
        ... class Encoder(nn.Module): ...
    """
    if not callable(factory):
        raise TypeError("contracts.example() takes a zero-argument factory, e.g. lambda: Model()")

    def decorate(cls: T) -> T:
        _EXAMPLES[(cls.__module__, cls.__qualname__)] = factory
        return cls

    return decorate


def example_factory(module: str, owner_qualname: str) -> Callable[[], Any] | None:
    return _EXAMPLES.get((module, owner_qualname))
