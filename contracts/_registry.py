"""Every contract ever declared, and the example-instance factories for methods.

The pytest plugin and ``contracts.docs`` read this registry; checking never does.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable
from typing import Any, TypeVar

from ._errors import AnnotationError

__all__ = ["all_plans", "example", "example_factory", "import_tree", "register"]

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
        raise AnnotationError(
            "contracts.example() takes a zero-argument factory, e.g. lambda: Model()"
        )

    def decorate(cls: T) -> T:
        _EXAMPLES[(cls.__module__, cls.__qualname__)] = factory
        return cls

    return decorate


def example_factory(module: str, owner_qualname: str) -> Callable[[], Any] | None:
    return _EXAMPLES.get((module, owner_qualname))


def import_tree(name: str) -> list[str]:
    """Import ``name`` and, for a package, every submodule (so their contracts register).

    CLI entry modules and tests are skipped; a submodule that fails to import is returned as
    ``"module: Error: message"`` rather than raised.
    """
    errors = []
    mod = importlib.import_module(name)
    if hasattr(mod, "__path__"):
        for info in pkgutil.walk_packages(mod.__path__, prefix=name + "."):
            leaf = info.name.rsplit(".", 1)[-1]
            if leaf == "__main__" or leaf in ("train", "enhance") or leaf.startswith("test"):
                continue  # CLI entry modules: importing them must not be required
            try:
                importlib.import_module(info.name)
            except Exception as e:  # surfaced as a failing item below
                errors.append(f"{info.name}: {type(e).__name__}: {e}")
    return errors
