"""Shared fixtures for the Paraformer tests: tiny configs, one thread."""

from __future__ import annotations

import pytest

from models.paraformer import ParaformerConfig, ToySeq2SeqDataset, collate_fn


@pytest.fixture
def cfg() -> ParaformerConfig:
    return ParaformerConfig.tiny()


@pytest.fixture
def batch(cfg: ParaformerConfig):
    ds = ToySeq2SeqDataset(cfg, num_samples=4)
    return collate_fn([ds[i] for i in range(4)])
