"""Model-agnostic training checks (moved out of the Paraformer reference)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from contracts import TorchdxError
from diagnostics import LossWatch, TrainingCheckError, check_no_retained_graph, check_padding_leak


def _masked_ce(logits, targets, mask):
    ce = F.cross_entropy(logits.flatten(0, 1), targets.flatten(), reduction="none")
    return (ce * mask.flatten()).sum() / mask.sum()


def test_padding_leak_found_and_masked_loss_passes():
    torch.manual_seed(0)
    logits, targets = torch.randn(2, 5, 7), torch.randint(0, 7, (2, 5))
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], dtype=torch.bool)
    check_padding_leak(_masked_ce, logits, targets, mask)

    def plain_ce(lg, t, m):
        return F.cross_entropy(lg.flatten(0, 1), t.flatten())

    with pytest.raises(TrainingCheckError, match=r"changing only the padded positions \(2 of 10\)"):
        check_padding_leak(plain_ce, logits, targets, mask)
    with pytest.raises(TrainingCheckError, match="mask has no padded position"):
        check_padding_leak(plain_ce, logits, targets, torch.ones_like(mask))


def test_retained_graph_named_by_path():
    w = torch.ones(2, requires_grad=True)
    with pytest.raises(TrainingCheckError, match=r"hist\[1\]\['loss'\] is a tensor attached"):
        check_no_retained_graph([{"loss": 1.0}, {"loss": (w * 2).sum()}], "hist")
    check_no_retained_graph([{"loss": (w * 2).sum().item()}], "hist")


def test_loss_watch_divergence_nan_and_healthy():
    watch = LossWatch(window=10)
    with pytest.raises(TrainingCheckError, match=r"loss diverges over steps 1-10"):
        for i in range(10):
            watch.update(1.0 * 1.5**i)
    with pytest.raises(TrainingCheckError, match="loss is nan at step 1"):
        LossWatch().update(float("nan"))
    healthy = LossWatch(window=10)
    for i in range(50):
        healthy.update(2.0 * 0.95**i)
    assert issubclass(TrainingCheckError, TorchdxError)
