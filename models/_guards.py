"""The models' input errors, raised by the contract wrappers (``contracts._inputs``): an input
on another device, or of another precision, than the module's parameters."""

from __future__ import annotations

from contracts import DeviceError, DtypeError, InputError

__all__ = ["DeviceError", "DtypeError", "InputError"]
