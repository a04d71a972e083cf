"""The planted faults, one module per category; importing this package registers them all."""

from . import conditioning, gradflow, hygiene, nonfinite, shapes  # noqa: F401
