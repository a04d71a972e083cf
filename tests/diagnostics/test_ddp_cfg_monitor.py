"""CFGDropoutMonitor.report_ranks under torch.distributed: 2 gloo ranks on CPU (hard timeout)."""

import pytest

from diagnostics import CFGDropoutMonitor
from tests.diagnostics.ddp_harness import shared_run

pytestmark = pytest.mark.ddp


@pytest.fixture(scope="module")
def cfg():
    return [r["cfg"] for r in shared_run()]


def test_identical_seeding_is_flagged_on_every_rank(cfg):
    for r in cfg:
        s = r["same_seed"]
        assert s["flags"] == ["identical"] and s["identical_steps"] == s["steps"] == 25
        assert "seeded identically on every rank" in s["text"]


def test_rank_seeded_dropout_is_ok(cfg):
    for r in cfg:
        assert r["rank_seed"]["flags"] == [] and r["rank_seed"]["identical_steps"] == 0


def test_rate_far_from_p_on_one_rank(cfg):
    for r in cfg:
        assert r["rank1_rate"]["flags"] == ["far"] and r["rank1_rate"]["far_ranks"] == [1]
        assert "rate far from p on rank(s) 1" in r["rank1_rate"]["text"]


def test_ranks_disagreeing_about_conditioning(cfg):
    a, b = cfg
    assert "disagree" in a["whole_batch"]["flags"] and a["whole_batch"]["disagree_steps"]
    assert a["whole_batch"]["disagree_steps"] == b["whole_batch"]["disagree_steps"]
    assert "conditioning branch gets no gradient" in a["whole_batch"]["text"]


def test_single_process_report_ranks_is_world_one():
    import torch
    from torch import nn

    class M(nn.Module):
        def forward(self, x, drop_cond=None):
            return x

    mon = CFGDropoutMonitor(M(), p=0.5).attach()
    g = torch.Generator().manual_seed(0)
    for _ in range(5):
        mon.model(torch.zeros(8, 1), drop_cond=torch.rand(8, generator=g) < 0.5)
        mon.step()
    rep = mon.report_ranks()
    assert rep.world_size == 1 and not rep.identical and rep.flags == []
    assert rep.per_rank[0].total == 40
