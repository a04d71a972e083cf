"""Embedding analysis: collapse flag, effective rank, silhouette, UMAP and the projector export."""

import numpy as np
import pytest
import torch

from diagnostics import EmbeddingReport, analyze_embeddings
from diagnostics._embeddings import COLLAPSE_RANK, COLLAPSE_SPREAD


def _clusters(n_per=20, k=4, dim=16, spread=0.1, seed=0):
    g = torch.Generator().manual_seed(seed)
    centres = 3 * torch.randn(k, dim, generator=g)
    x = centres.repeat_interleave(n_per, 0) + spread * torch.randn(k * n_per, dim, generator=g)
    labels = [f"c{i}" for i in range(k) for _ in range(n_per)]
    return x, labels


def test_healthy_clusters():
    x, labels = _clusters()
    rep = analyze_embeddings(x, labels, umap=False)
    assert isinstance(rep, EmbeddingReport)
    assert not rep.collapsed and rep.collapse_reason == ""
    assert rep.silhouette > 0.8
    assert rep.per_dim_variance.shape == (16,) and rep.dead_dims == 0
    assert rep.norm_min <= rep.norm_mean <= rep.norm_max
    d = rep.to_dict()
    assert d["n_labels"] == 4 and len(d["per_dim_variance"]) == 16


def test_random_labels_do_not_cluster():
    x, labels = _clusters(spread=0.1)
    rng = np.random.default_rng(0)
    rep = analyze_embeddings(x, list(rng.permutation(labels)), umap=False)
    assert rep.silhouette < 0.1


def test_collapse_to_a_point_is_flagged():
    x = torch.ones(50, 8) + 1e-4 * torch.randn(50, 8)
    rep = analyze_embeddings(x, umap=False)
    assert rep.collapsed and rep.spread < COLLAPSE_SPREAD
    assert "barely differ" in rep.collapse_reason
    assert rep.mean_pairwise_cosine > 0.999


def test_collapse_to_one_direction_is_flagged():
    direction = torch.randn(32)
    x = torch.linspace(0.5, 3.0, 40)[:, None] * direction  # varies only in norm
    rep = analyze_embeddings(x, umap=False)
    assert rep.effective_rank < COLLAPSE_RANK and rep.collapsed
    assert "one direction" in rep.collapse_reason


def test_effective_rank_of_isotropic_gaussian():
    x = torch.randn(2000, 12, generator=torch.Generator().manual_seed(0))
    assert analyze_embeddings(x, umap=False).effective_rank > 0.9 * 12


def test_dead_dims_counted():
    x = torch.randn(30, 6)
    x[:, 2] = 0.7
    assert analyze_embeddings(x, umap=False).dead_dims == 1


def test_silhouette_needs_two_labels():
    x, _ = _clusters()
    rep = analyze_embeddings(x, ["same"] * len(x), umap=False)
    assert rep.silhouette is None and "silhouette skipped" in rep.notes[0]


def test_label_count_must_match():
    with pytest.raises(AssertionError, match=r"3 labels for 80 embeddings"):
        analyze_embeddings(_clusters()[0], ["a", "b", "c"], umap=False)


@pytest.mark.slow
def test_umap_scatter_and_tensorboard_projector(tmp_path):
    from torch.utils.tensorboard import SummaryWriter

    x, labels = _clusters(n_per=10)
    rep = analyze_embeddings(x, labels, umap=True, seed=0)
    assert rep.umap.shape == (40, 2) and np.isfinite(rep.umap).all()
    png = rep.plot_umap(tmp_path / "umap.png")
    assert png.stat().st_size > 1000
    with SummaryWriter(log_dir=str(tmp_path / "tb")) as w:
        rep.add_to_tensorboard(w, tag="cond")
    meta = list((tmp_path / "tb").rglob("metadata.tsv"))
    assert meta and meta[0].read_text().split() == labels
    assert (tmp_path / "tb" / "projector_config.pbtxt").is_file()
