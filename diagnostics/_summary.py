"""``diagnostics.summarize``: the project's one tensor formatter, re-exported.

The formatter lives in :mod:`contracts` (``contracts.summarize``) so that contract errors,
NaN reports and ablation reports describe a tensor in the same words; ``diagnostics`` offers it
under its own name because summaries are where a debugging session usually starts.

Example:
    >>> summarize(torch.tensor([1.0, 2.0, float("nan"), float("inf")]))
    'tensor[4] f32 cpu n=4 x∈[1, 2] μ=1.5 σ=0.707 NaN!1 +Inf!1'
"""

from __future__ import annotations

from contracts import SummaryError, summarize

__all__ = ["SummaryError", "summarize"]
