"""The planted faults, one module per category; importing this package registers them all."""

from . import shapes  # noqa: F401
