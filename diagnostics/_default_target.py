"""Moved to ``diagnostics._ablation._default_target``; this name stays for existing imports."""

from diagnostics._ablation._default_target import DEFAULTS, default_target, sgmse_target

__all__ = ["DEFAULTS", "default_target", "sgmse_target"]
