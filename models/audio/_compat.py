"""Contract decorators used by the reference models (re-exported from the contract core)."""

from __future__ import annotations

from contracts import Finite, Range, contract, example

__all__ = ["Finite", "Range", "contract", "example"]
