"""Public embedding-analysis API: ``from diagnostics.embeddings import analyze_embeddings``.

Example:
    >>> from diagnostics.embeddings import analyze_embeddings
    >>> rep = analyze_embeddings(torch.randn(64, 16), labels=["a", "b"] * 32, umap=False)
    >>> rep.collapsed, round(rep.silhouette, 1)
"""

from diagnostics._cfg_monitor import CFGDropoutMonitor as CFGDropoutMonitor
from diagnostics._cfg_monitor import CFGDropoutReport as CFGDropoutReport
from diagnostics._embeddings import COLLAPSE_RANK as COLLAPSE_RANK
from diagnostics._embeddings import COLLAPSE_SPREAD as COLLAPSE_SPREAD
from diagnostics._embeddings import EmbeddingReport as EmbeddingReport
from diagnostics._embeddings import analyze_embeddings as analyze_embeddings

__all__ = [
    "COLLAPSE_RANK",
    "COLLAPSE_SPREAD",
    "CFGDropoutMonitor",
    "CFGDropoutReport",
    "EmbeddingReport",
    "analyze_embeddings",
]
