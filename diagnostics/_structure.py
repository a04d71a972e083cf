"""When a model's parameters, buffers or submodules change after a tool was built.

Tools that read a model every step (NanWatch, GradFlow) list its parameters once, when they are
built. A head swapped in for fine-tuning (``model.head = nn.Linear(...)``), a module added
(``add_module``) or a parameter replaced (``model.w = nn.Parameter(...)``) would then never be
read. :func:`structure_version` counts such registrations process-wide through torch's global
registration hooks (installed once, on first use): a tool compares the count with the one it
last indexed at, and indexes the model again only when it moved. The hooks return ``None``, so
what is registered is never changed; reading the count is one list read.

Example:
    >>> v = structure_version()
    >>> model.head = nn.Linear(4, 2)
    >>> structure_version() > v
    True
"""

from __future__ import annotations

from typing import Any

from torch.nn.modules import module as _module

__all__ = ["structure_version"]

_COUNT = [0]
_INSTALLED: list[Any] = []  # the hook handles, kept for the process's lifetime


def _bump(_owner: Any, _name: str, _value: Any) -> None:
    _COUNT[0] += 1  # returning None keeps the registered value as it is


def structure_version() -> int:
    """A count that moves whenever any module anywhere registers a parameter, a buffer or a
    submodule (construction included)."""
    if not _INSTALLED:
        _INSTALLED.extend(
            register(_bump)
            for register in (
                _module.register_module_parameter_registration_hook,
                _module.register_module_buffer_registration_hook,
                _module.register_module_module_registration_hook,
            )
        )
    return _COUNT[0]
