"""Errors of the audio core."""

from __future__ import annotations

from contracts import TorchdxError

__all__ = ["AudioError"]


class AudioError(TorchdxError, ValueError):
    """Bad audio input: wrong channel count, sample rate, length, NaN samples, bad folders."""

    __module__ = "models.audio"
