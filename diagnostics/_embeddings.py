"""Embedding analysis: has the condition embedding collapsed, does it cluster by label?

Numbers (all on the ``(N, E)`` matrix of embeddings, one row per example):

* ``per_dim_variance``: variance of each dimension over the examples; ``dead_dims`` counts the
  dimensions with variance below ``1e-8`` of the largest.
* ``effective_rank``: ``exp(H(p))`` with ``p`` the normalised singular values of the centred
  matrix (Roy & Vetterli, 2007): 1 for embeddings that vary along one direction only.
* ``mean_pairwise_cosine``: mean cosine between distinct (uncentred) embeddings: near 1 when all
  embeddings point the same way.
* ``norm_min/max/mean``: range of the row norms.
* ``spread``: ``sqrt(total variance) / mean norm``: how much the embeddings differ relative to
  their size.
* ``collapsed``: ``spread < COLLAPSE_SPREAD`` (0.05) or ``effective_rank < COLLAPSE_RANK`` (1.5);
  ``collapse_reason`` says which. The rank test is judged only when the embeddings could span
  two directions (``min(N - 1, E) >= 2``: two embeddings, or 1-dimensional ones, always lie on
  one line); a note says when it was not.
* ``nonfinite``: rows holding NaN/Inf, left out of every number above (named in ``notes``).
* ``silhouette``: silhouette score by label (sklearn, Euclidean), in [-1, 1]; near 0 or below:
  no clustering by label. ``None`` without labels or with fewer than 2 labels.
* ``umap``: 2-D UMAP coordinates (umap-learn, imported lazily) for the scatter.

Example:
    >>> rep = analyze_embeddings(torch.randn(64, 16), labels=["a", "b"] * 32, umap=False)
    >>> rep.collapsed
    False
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

__all__ = ["COLLAPSE_RANK", "COLLAPSE_SPREAD", "EmbeddingReport", "analyze_embeddings"]

COLLAPSE_SPREAD = 0.05  # sqrt(total variance) / mean norm below this -> collapsed
COLLAPSE_RANK = 1.5  # effective rank below this -> collapsed (one direction or none)


def _r(x: float) -> float:
    return float(f"{x:.6g}")


@dataclass
class EmbeddingReport:
    """Result of :func:`analyze_embeddings` (see the module doc for each number)."""

    n: int
    dim: int
    per_dim_variance: np.ndarray
    dead_dims: int
    effective_rank: float
    mean_pairwise_cosine: float
    norm_min: float
    norm_max: float
    norm_mean: float
    spread: float
    collapsed: bool
    collapse_reason: str
    silhouette: float | None
    labels: list[str] | None = None
    umap: np.ndarray | None = None  # (N, 2)
    notes: list[str] = field(default_factory=list)
    embeddings: np.ndarray | None = None  # (N, E), kept for the TensorBoard projector
    nonfinite: int = 0  # rows with NaN/Inf, left out (``n`` counts the rows analysed)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready numbers (no coordinates, no raw embeddings)."""
        return {
            "n": self.n,
            "dim": self.dim,
            "per_dim_variance": [_r(float(v)) for v in self.per_dim_variance],
            "dead_dims": self.dead_dims,
            "effective_rank": _r(self.effective_rank),
            "mean_pairwise_cosine": _r(self.mean_pairwise_cosine),
            "norm_range": [_r(self.norm_min), _r(self.norm_max)],
            "norm_mean": _r(self.norm_mean),
            "spread": _r(self.spread),
            "collapsed": self.collapsed,
            "collapse_reason": self.collapse_reason,
            "silhouette": None if self.silhouette is None else _r(self.silhouette),
            "n_labels": None if self.labels is None else len(set(self.labels)),
            "umap": self.umap is not None,
            "nonfinite": self.nonfinite,
            "notes": list(self.notes),
        }

    def plot_umap(
        self, path: str | Path, title: str = "condition embeddings (UMAP)"
    ) -> Path | None:
        """Write the UMAP scatter coloured by label to ``path`` (PNG); None without UMAP."""
        if self.umap is None:
            return None
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(5.5, 4.5))
        xy = self.umap
        if self.labels is None:
            ax.scatter(xy[:, 0], xy[:, 1], s=12)
        else:
            for k, lab in enumerate(sorted(set(self.labels))):
                m = np.array([x == lab for x in self.labels])
                ax.scatter(xy[m, 0], xy[m, 1], s=12, label=lab, color=plt.cm.tab10(k % 10))
            ax.legend(fontsize=7, markerscale=1.5, loc="best")
        sil = "" if self.silhouette is None else f", silhouette {self.silhouette:.2f}"
        ax.set_title(f"{title}{sil}", fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
        fig.tight_layout()
        path = Path(path)
        fig.savefig(path, dpi=110)
        plt.close(fig)
        return path

    def add_to_tensorboard(self, writer: Any, tag: str = "condition_embedding") -> None:
        """Export to TensorBoard's projector via ``writer.add_embedding``: the labels as the
        metadata column, and a solid-colour sprite per point (one colour per label, the
        palette of ``plot_umap``), so the points show coloured by label without choosing
        "color by" (the projector has no setting to preselect it)."""
        assert self.embeddings is not None, "EmbeddingReport: raw embeddings were not kept"
        sprites = None
        if self.labels is not None:
            import matplotlib

            names = sorted(set(self.labels))
            cmap = matplotlib.colormaps["tab10"]
            rgb = torch.tensor(
                [cmap(names.index(x) % 10)[:3] for x in self.labels], dtype=torch.float32
            )  # (N, 3)
            sprites = rgb[:, :, None, None].expand(-1, -1, 8, 8)  # (N, 3, 8, 8)
        writer.add_embedding(
            torch.from_numpy(self.embeddings),
            metadata=list(self.labels) if self.labels is not None else None,
            label_img=sprites,
            tag=tag,
        )


def _effective_rank(x: np.ndarray) -> float:
    s = np.linalg.svd(x - x.mean(0, keepdims=True), compute_uv=False)
    total = s.sum()
    if total <= 0:
        return 0.0
    p = s / total
    p = p[p > 0]
    return float(np.exp(-(p * np.log(p)).sum()))


def _umap(x: np.ndarray, n: int, seed: int, notes: list[str]) -> np.ndarray | None:
    """2-D UMAP coordinates, or None with a note when umap-learn is missing, fails to import
    (a numba/llvmlite mismatch raises more than ImportError) or fails to fit."""
    try:
        import umap as umap_lib
    except ImportError as exc:
        notes.append(f"UMAP skipped: umap-learn is not installed (pip install umap-learn): {exc}")
        return None
    except Exception as exc:
        notes.append(f"UMAP skipped: importing umap-learn failed: {type(exc).__name__}: {exc}")
        return None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            reducer = umap_lib.UMAP(
                n_neighbors=min(15, n - 1),
                n_components=2,
                random_state=seed,
                init="spectral" if n > 10 else "random",
            )
            coords = np.asarray(reducer.fit_transform(x.astype(np.float32)))
    except Exception as exc:
        notes.append(f"UMAP skipped: the fit failed: {type(exc).__name__}: {exc}")
        return None
    return coords


def analyze_embeddings(
    embeddings: Tensor | np.ndarray,
    labels: Sequence[Any] | None = None,
    *,
    umap: bool = True,
    seed: int = 0,
    keep: bool = True,
) -> EmbeddingReport:
    """Statistics of condition embeddings (collapse, clustering by label) and a UMAP map.

    Args:
        embeddings: ``(N, E)`` (higher ranks are flattened per row).
        labels: one label per row (e.g. the noise type), or None.
        umap: compute 2-D UMAP coordinates (needs umap-learn and N >= 5; the first call in a
            process compiles numba code, ~15 s).
        seed: UMAP's random state.
        keep: keep the raw embeddings on the report (for the TensorBoard projector).

    Returns:
        An :class:`EmbeddingReport`.

    Example:
        >>> rep = analyze_embeddings(torch.ones(10, 4) + 1e-4 * torch.randn(10, 4), umap=False)
        >>> rep.collapsed, rep.collapse_reason
        (True, 'spread 2.5e-05 < 0.05: the embeddings barely differ')
    """
    x = embeddings.detach().cpu() if isinstance(embeddings, Tensor) else torch.as_tensor(embeddings)
    if x.dim() == 0 or x.shape[0] < 2:
        got = "a scalar" if x.dim() == 0 else f"{x.shape[0]} (shape {tuple(x.shape)})"
        raise ValueError(f"analyze_embeddings: need at least 2 embeddings (rows), got {got}")
    if x.is_complex():
        x = torch.view_as_real(x)  # (N, ..., 2)
    x = x.reshape(x.shape[0], -1).to(torch.float64).numpy()  # (N, E)
    if isinstance(labels, (Tensor, np.ndarray)):
        labels = labels.tolist()  # class ids as numbers ("3"), not "tensor(3)"
    labs = None if labels is None else [str(v) for v in labels]
    assert labs is None or len(labs) == x.shape[0], (
        f"analyze_embeddings: {len(labs) if labs else 0} labels for {x.shape[0]} embeddings"
    )
    notes: list[str] = []
    finite = np.isfinite(x).all(axis=1)  # (N,)
    bad = int((~finite).sum())
    if bad:
        rows = np.flatnonzero(~finite)
        notes.append(
            f"{bad} of {x.shape[0]} embeddings hold NaN/Inf (rows {', '.join(map(str, rows[:8]))}"
            + (" ..." if bad > 8 else "")
            + "): left out of every statistic"
        )
        x = x[finite]
        labs = None if labs is None else [v for v, ok in zip(labs, finite, strict=True) if ok]
        if x.shape[0] < 2:
            raise ValueError(
                f"analyze_embeddings: {bad} of {bad + x.shape[0]} embeddings hold NaN/Inf; "
                "fewer than 2 finite ones are left to analyse"
            )
    n, dim = x.shape
    var = x.var(axis=0)  # (E,)
    dead = int((var <= 1e-8 * max(float(var.max()), 1e-30)).sum()) if var.max() > 0 else dim
    norms = np.linalg.norm(x, axis=1)  # (N,)
    unit = x / np.maximum(norms[:, None], 1e-12)
    # mean over pairs i != j of <u_i, u_j> = (|sum u|^2 - sum |u|^2) / (N (N-1)): O(N E), no
    # N x N Gram matrix (3.2 GB at N = 20 000)
    total = unit.sum(axis=0)
    mean_cos = float((total @ total - (unit * unit).sum()) / (n * (n - 1)))
    eff_rank = _effective_rank(x)
    spread = float(np.sqrt(var.sum()) / max(norms.mean(), 1e-12))
    reasons = []
    if spread < COLLAPSE_SPREAD:
        reasons.append(f"spread {spread:.2g} < {COLLAPSE_SPREAD}: the embeddings barely differ")
    if min(n - 1, dim) >= 2:
        if eff_rank < COLLAPSE_RANK:
            reasons.append(
                f"effective rank {eff_rank:.2f} < {COLLAPSE_RANK}: one direction or none"
            )
    else:
        notes.append(
            f"effective rank not judged: {n} embeddings of dimension {dim} span at most "
            f"{min(n - 1, dim)} direction(s) whatever they are"
        )
    sil = None
    if labs is not None:
        k = len(set(labs))
        if 2 <= k <= n - 1 and spread > 0:
            try:
                from sklearn.metrics import silhouette_score
            except Exception as exc:  # scikit-learn comes with umap-learn (the viz extra)
                notes.append(f"silhouette skipped: scikit-learn not importable ({exc!r})")
            else:
                sil = float(silhouette_score(x, labs))
        elif spread == 0:
            notes.append(f"silhouette skipped: all {n} embeddings are identical")
        else:
            notes.append(f"silhouette skipped: {k} distinct labels for {n} embeddings")
    coords = None
    if umap:
        if n < 5:
            notes.append(f"UMAP skipped: {n} embeddings (need >= 5)")
        else:
            coords = _umap(x, n, seed, notes)
    return EmbeddingReport(
        n=n,
        dim=dim,
        per_dim_variance=var,
        dead_dims=dead,
        effective_rank=eff_rank,
        mean_pairwise_cosine=mean_cos,
        norm_min=float(norms.min()),
        norm_max=float(norms.max()),
        norm_mean=float(norms.mean()),
        spread=spread,
        collapsed=bool(reasons),
        collapse_reason="; ".join(reasons),
        silhouette=sil,
        labels=labs,
        umap=coords,
        notes=notes,
        embeddings=x.astype(np.float32) if keep else None,
        nonfinite=bad,
    )
