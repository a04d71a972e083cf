"""Sharded conditioning ablation: ``torchrun --nproc_per_node=2 -m diagnostics.cond_ablation``
against the single-process run of the same target and seed (gloo on CPU, hard timeout)."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from diagnostics.cond_ablation import main

pytestmark = pytest.mark.ddp

TARGET = f"{Path(__file__).with_name('ddp_worker.py')}:tiny_target"
ARGS = ["--target", TARGET, "--seed", "3", "--no-umap", "--quiet", "--no-guidance"]
ROOT = Path(__file__).resolve().parents[2]


def _close(a, b, path="") -> list[str]:
    """Paths where two JSON trees differ (numbers to 1e-6 relative)."""
    if isinstance(a, dict) and isinstance(b, dict):
        if a.keys() != b.keys():
            return [f"{path}: keys {sorted(a)} != {sorted(b)}"]
        return [d for k in a for d in _close(a[k], b[k], f"{path}.{k}")]
    if isinstance(a, list) and isinstance(b, list):
        if len(a) != len(b):
            return [f"{path}: len {len(a)} != {len(b)}"]
        return [d for i, (x, y) in enumerate(zip(a, b)) for d in _close(x, y, f"{path}[{i}]")]
    if isinstance(a, float) and isinstance(b, float):
        ok = math.isclose(a, b, rel_tol=1e-6, abs_tol=1e-9) or (a != a and b != b)
        return [] if ok else [f"{path}: {a} != {b}"]
    return [] if a == b else [f"{path}: {a!r} != {b!r}"]


def test_sharded_report_equals_single_process(tmp_path):
    n = torch.get_num_threads()
    try:
        assert main([*ARGS, "--threads", "1", "--out", str(tmp_path / "one")]) == 0
    finally:
        torch.set_num_threads(n)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(k, None)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "-m", "diagnostics.cond_ablation", *ARGS, "--threads", "1",
           "--out", str(tmp_path / "two")]  # fmt: skip
    proc = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    one = json.loads((tmp_path / "one" / "report.json").read_text())
    two = json.loads((tmp_path / "two" / "report.json").read_text())
    assert one["n_examples"] == two["n_examples"] == 32
    assert _close(one, two) == []
    # rank 0 alone wrote: one event file, and the timing says two ranks ran it
    assert len(list((tmp_path / "two" / "tensorboard").glob("events.out.tfevents.*"))) == 1
    assert json.loads((tmp_path / "two" / "timing.json").read_text())["world_size"] == 2
    assert proc.stdout.count("report:") == 1  # one verdict table, printed by rank 0
