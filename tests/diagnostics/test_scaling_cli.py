"""``python -m diagnostics.scaling``: outputs, the default target, exit 2 with one line."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from diagnostics import scaling
from diagnostics._scaling._docs import (
    BEGIN,
    END,
    claim_verdicts,
    claims_block,
    paraformer_block,
    replace_block,
)

ROOT = Path(__file__).resolve().parents[2]
PLANTED = "tests/diagnostics/scaling_planted.py"
FAST = ["--repeats", "3", "--quiet", "--threads", "1"]


@pytest.fixture(autouse=True)
def _restore_threads():
    old = torch.get_num_threads()
    yield
    torch.set_num_threads(old)


def test_planted_target_writes_every_output(tmp_path: Path, capsys) -> None:
    out = tmp_path / "run"
    code = scaling.main(
        ["--target", f"{PLANTED}:quadratic", "--out", str(out), "--memory-budget", "512MiB", *FAST]
    )
    assert code == 0
    rep = json.loads((out / "report.json").read_text())
    assert rep["axis"] == "T" and rep["sizes"] == [128, 256, 512, 1024]
    for metric in ("time", "memory"):
        assert set(rep["total"]["exponent"][metric]) >= {"exponent", "ci95", "status"}
    assert len(rep["total"]["seconds"]) == len(rep["total"]["peak_bytes"]) == 4
    assert {"modules", "max_size_within_budget", "findings"} <= set(rep)
    assert rep["budget"]["budget_bytes"] == 512 * 2**20
    assert any(f["kind"] == "responsible" and f["module"] == "attn" for f in rep["findings"])
    assert (out / "scaling.png").stat().st_size > 1000
    assert "# Scaling of `quadratic` over `T`" in (out / "report.md").read_text()
    assert list((out / "tensorboard").glob("events.out.tfevents.*"))
    printed = capsys.readouterr().out
    assert "[quadratic / T] `attn`: memory exponent" in printed


def test_default_target_paraformer_axis_small(tmp_path: Path) -> None:
    out = tmp_path / "para"
    code = scaling.main(
        ["--axis", "T", "--sizes", "4,8,16,32,64,128", "--out", str(out), "--no-tensorboard", *FAST]
    )
    assert code == 0
    rep = json.loads((out / "report.json").read_text())
    assert rep["target"] == "paraformer_encoder"
    attn = next(m for m in rep["modules"] if m["module"] == "blocks.*.attn")
    assert attn["instances"] == 2
    assert attn["exponent"]["memory"]["exponent"] > rep["total"]["exponent"]["memory"]["local"][0]
    # at tiny T the linear work dominates the peak; the T^2 term takes over inside the range
    below = [f for f in rep["findings"] if f["kind"] == "linear-below" and f["metric"] == "memory"]
    assert below and 4 < below[0]["size"] < 128, rep["findings"]
    assert "work linear in T dominates below T ~ " in below[0]["message"]


def _err(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    err = [e for e in err if not e.startswith("USDT")]
    assert len(err) == 1, err
    return err[0]


@pytest.mark.parametrize(
    ("argv", "match"),
    [
        (["--sizes", "100,50,200"], "sizes must be strictly increasing, got 50 after 100"),
        (["--sizes", "100,200"], r"need at least 3 to fit an exponent"),
        (["--axis", "F"], "--axis 'F': the default target has axes T, duration, batch"),
        (["--memory-budget", "12 apples"], "--memory-budget '12 apples': expected a number"),
        (["--target", "no_such_module_xyz:make"], "importing 'no_such_module_xyz' failed"),
        (["--target", f"{PLANTED}:not_a_target"], "returned int, not a diagnostics.ScalingTarget"),
        (["--target", f"{PLANTED}:missing"], "has no callable 'missing'"),
        (["--target", f"{PLANTED}:linear", "--axis", "B"], "target 'linear' has axes T"),
        (["--target", "nocolon"], "expected MODULE:FACTORY"),
        (["--repeats", "2"], r"repeats=2: need >= 3 repeats"),
        (["--target", f"{PLANTED}:linear", "--update-docs"], "only for the default target"),
    ],
)
def test_bad_input_exits_2_with_one_line(argv, match, capsys, tmp_path: Path) -> None:
    import re

    code = scaling.main([*argv, "--out", str(tmp_path / "x"), "--quiet"])
    assert code == 2
    line = _err(capsys)
    assert line.startswith("scaling: error: ")
    assert re.search(match, line), line
    assert not (tmp_path / "x").exists()


def test_help_and_bad_flag_subprocess() -> None:
    r = subprocess.run(
        [sys.executable, "-m", "diagnostics.scaling", "--help"],
        capture_output=True, text=True, cwd=ROOT, timeout=120,
    )  # fmt: skip
    assert r.returncode == 0 and "--memory-budget" in r.stdout and "Exit status" in r.stdout
    r = subprocess.run(
        [sys.executable, "-m", "diagnostics.scaling", "--sizes", "3,2,1"],
        capture_output=True, text=True, cwd=ROOT, timeout=120,
    )  # fmt: skip
    lines = [x for x in r.stderr.strip().splitlines() if not x.startswith("USDT")]
    assert r.returncode == 2 and len(lines) == 1 and "Traceback" not in r.stderr


def _fake(target: str, axis: str, cls: str, exponent: float) -> dict:
    fit = {"exponent": exponent, "ci95": [exponent - 0.01, exponent + 0.01], "status": "ok",
           "reason": "", "local": [exponent], "sizes_fitted": [2, 4, 8], "n_repeats": 5}  # fmt: skip
    return {
        "target": target, "axis": axis, "sizes": [1, 2, 4, 8], "device": "cpu", "threads": 1,
        "backward": False, "modules": [],
        "total": {"seconds": [1e-3] * 4, "peak_bytes": [1024, 2048, 4096, 8192],
                  "exponent": {"time": fit, "memory": fit}, "class": {"time": cls, "memory": cls}},
        "findings": [{"kind": cls, "metric": "memory", "module": "", "message": "m"}],
    }  # fmt: skip


def test_doc_blocks_are_generated_from_reports(tmp_path: Path) -> None:
    reports = [
        _fake("global_encoder", "duration", "super-linear", 1.78),
        _fake("global_encoder", "batch", "linear", 1.0),
        _fake("paraformer_encoder", "T", "super-linear", 1.96),
    ]
    block = claims_block(reports)
    assert "peak memory exponent 1.78 [1.77, 1.79]" in block
    assert "**not confirmed**: super-linear" in block and "**confirmed** (linear)" in block
    assert "1.96 [1.95, 1.97]" in paraformer_block(reports)
    v = claim_verdicts(reports)
    assert v["seed000_duration_linear_memory"] == "not confirmed (super-linear)"
    assert v["seed000_batch_linear_time"] == "confirmed"
    assert v["seed004_attention_quadratic"] == "no attention module measured"
    attn = {"module": "blocks.*.attn", "share": {"memory": 0.9},
            "exponent": {"memory": dict(reports[2]["total"]["exponent"]["memory"])}}  # fmt: skip
    reports[2]["modules"] = [attn]
    assert claim_verdicts(reports)["seed004_attention_quadratic"] == "confirmed"
    attn["exponent"]["memory"]["exponent"] = 1.5
    assert claim_verdicts(reports)["seed004_attention_quadratic"] == "not confirmed"
    doc = "# Claims\n\nbefore\n"
    once = replace_block(doc, block)
    assert once.startswith(doc.rstrip("\n")) and once.count(BEGIN) == 1 and END in once
    twice = replace_block(once.replace("1.78", "9.99") + "\nafter\n", block)
    assert twice.count(BEGIN) == 1 and "9.99" not in twice and twice.endswith("after\n")
