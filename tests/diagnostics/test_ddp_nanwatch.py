"""NanWatch / GradFlow / replica checks under torch.distributed: 2 gloo ranks on CPU.

Each launch starts two worker processes (``ddp_worker.py``) under a hard timeout; the scenario
results come back as JSON. The launch-environment errors are checked in-process.
"""

import datetime

import pytest
import torch
from torch import nn

from diagnostics import NanWatch
from diagnostics._distributed import DistributedError, check_launch, combine_flags
from tests.diagnostics.ddp_harness import launch, shared_run

pytestmark = pytest.mark.ddp

FAST = {"TORCHDX_DIST_GRACE": "1"}


@pytest.fixture(scope="module")
def suite():
    return [r["suite"] for r in shared_run()]


def test_nan_on_rank1_every_rank_raises_same_step_naming_rank1(suite):
    for me, r in enumerate(suite):
        nan = r["nan"]
        assert nan["raised_at"] == 2, nan  # the step where rank 1 got an all-zero row
        assert nan["rank"] == 1 and nan["fault_ranks"] == [1] and nan["observed_on"] == me
        assert nan["module"] == "normalize" and nan["op"] == "aten.div.Tensor"
        assert nan["phase"] == "forward" and nan["bad_items"] == [3]
        src = nan["source"]  # the line of the worker's Normalize.forward, gathered from rank 1
        assert src["file"].endswith("ddp_worker.py") and src["function"] == "forward"
        assert src["code"].endswith("# <ddp-producer>")
        assert "fault arose on rank(s) [1]" in nan["text"]
        assert "rank(s) [0] replayed their own shard without a non-finite value" in nan["text"]


def test_gradflow_local_vs_reduced_norms_and_unused(suite):
    g0, g1 = suite[0]["gradflow"], suite[1]["gradflow"]
    # reduced gradients are what every rank steps with: identical
    assert g0["module_norms"] == g1["module_norms"]
    # local (pre-all-reduce) norms are this rank's own gradient: equal to a non-DDP reference
    for g in (g0, g1):
        assert g["local_total"] == pytest.approx(g["ref_local_total"], rel=1e-5)
        assert g["ddp_unused"] == ["spare.weight", "spare.bias"]
    assert g0["local_total"] != pytest.approx(g1["local_total"], rel=1e-3)
    assert g0["rank_total_norms"] == pytest.approx([g0["local_total"], g1["local_total"]], 1e-5)
    # the reduced gradient is the mean of the local ones: its norm is at most their mean norm
    assert g0["total"] <= (g0["local_total"] + g1["local_total"]) / 2 + 1e-6


def test_replica_divergence_flags_rank_dependent_buffer_and_param(suite):
    for r in suite:
        assert r["div_buffer"]["buffers"] == ["calib"] and r["div_buffer"]["params"] == []
        assert "SyncBatchNorm or broadcast_buffers=True" in r["div_buffer"]["text"]
        assert r["div_param"]["params"] == ["head.bias"]
        assert r["div_clean"] == {"params": [], "buffers": []}


def test_rank_that_dies_mid_step_is_named():
    res = launch("die", timeout=45, env=FAST)
    r0 = res[0][2]
    assert res[1][0] == 3  # rank 1 died with its own exit code
    assert r0["error"]["type"] == "DistributedError" and r0["error"]["ranks"] == [1]
    assert "rank 1 did not reach this point" in r0["error"]["msg"]
    assert "NanWatch step 1" in r0["error"]["msg"]


def test_rank_that_raises_is_named_with_its_exception():
    err = shared_run()[0]["raise"]["error"]
    assert err["type"] == "DistributedError" and err["ranks"] == [1]
    assert "rank 1 raised: [nanwatch/1] ValueError: bad batch on rank 1" in err["msg"]


def test_hung_rank_times_out_instead_of_waiting_forever():
    res = launch("hang", timeout=45, env=FAST)
    r0 = res[0][2]
    assert r0["error"]["type"] == "DistributedError" and r0["error"]["ranks"] == [1]
    assert "NanWatch step 0 flag all_reduce failed on rank 0" in r0["error"]["msg"]
    assert r0["seconds"] < 10  # timeout=1 s + grace 1 s, not the group's 30 s


def test_torchrun_env_without_process_group(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    with pytest.raises(
        DistributedError, match=r"launched as rank 1 of WORLD_SIZE=2 .* not initialised"
    ):
        NanWatch(nn.Linear(2, 2))


def test_mismatched_world_size(monkeypatch, tmp_path):
    import torch.distributed as dist

    dist.init_process_group(
        "gloo", init_method=f"file://{tmp_path / 's'}", rank=0, world_size=1,
        timeout=datetime.timedelta(seconds=10),
    )  # fmt: skip
    try:
        monkeypatch.setenv("WORLD_SIZE", "2")
        monkeypatch.setenv("RANK", "0")
        with pytest.raises(
            DistributedError, match=r"world size 1 but the environment says RANK=0 of WORLD_SIZE=2"
        ):
            check_launch("NanWatch")
        monkeypatch.setenv("WORLD_SIZE", "1")
        assert check_launch().world_size == 1
        # one rank: the flag combine is local (no collective), shape (1, K)
        assert combine_flags(torch.tensor([1.0, 0.0]), tag="t").tolist() == [[1.0, 0.0]]
    finally:
        dist.destroy_process_group()
