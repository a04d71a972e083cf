"""The fault zoo: the --quick subset in the suite, the registry, the scoring and the CLI."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.fault_zoo import CATEGORIES, FAMILIES, TOOLS, load_faults, run_zoo, select
from benchmarks.fault_zoo.__main__ import main
from benchmarks.fault_zoo._tools import _loc_argument, _trace_points_at

ROOT = Path(__file__).resolve().parents[3]
QUICK = [f.id for f in select(load_faults(), quick=True)]


@pytest.fixture(scope="module")
def quick_results():
    return run_zoo(select(load_faults(), quick=True))


def _by_id(res, key):
    return {r["id"]: r for r in res[key]}


def test_registry_meets_the_issue():
    faults = load_faults()
    assert len(faults) >= 40, f"only {len(faults)} faults"
    assert len({f.id for f in faults}) == len(faults), "duplicate fault ids"
    assert {f.family for f in faults} == set(FAMILIES)
    assert {f.category for f in faults} == set(CATEGORIES)
    assert all(f.expected for f in faults), "every fault states its ground truth"
    quick = select(faults, quick=True)
    assert {f.category for f in quick} == set(CATEGORIES), "--quick covers every category"
    assert {f.family for f in quick} == set(FAMILIES), "--quick covers every family"


@pytest.mark.parametrize("fid", QUICK)
def test_quick_torchdx_detects_and_localizes(quick_results, fid):
    r = _by_id(quick_results, "faults")[fid]["tools"]["torchdx"]
    assert not r.get("error"), r["message"]
    assert r["detected"], f"{fid}: torchdx missed it: {r['message']}"
    assert r["localized"], f"{fid}: detected but not localized: {r['message']}"
    assert r["message"] and r["seconds"] >= 0


@pytest.mark.parametrize("fid", QUICK)
def test_quick_healthy_twin_no_false_alarm(quick_results, fid):
    h = _by_id(quick_results, "healthy")[fid]["tools"]
    for tool in TOOLS:
        assert not h[tool].get("error"), f"{fid}/{tool}: {h[tool]['message']}"
        assert h[tool]["false_alarm"] in (False, None), f"{fid}/{tool}: {h[tool]['message']}"


def test_json_layout(quick_results):
    res = quick_results
    assert set(res) >= {"faults", "healthy", "summary"}
    for f in res["faults"]:
        assert set(f) >= {"id", "category", "family", "expected", "tools"}
        assert set(f["tools"]) == set(TOOLS)
        for r in f["tools"].values():
            assert set(r) >= {"detected", "localized", "message"}
            if r["detected"] is None:
                assert r["message"] == "—"
            else:
                assert "seconds" in r
    for h in res["healthy"]:
        assert set(h["tools"]) == set(TOOLS)
        assert all("false_alarm" in v for v in h["tools"].values())
    for s in res["summary"].values():
        assert set(s) >= {"detection", "localization", "false_alarms", "median_seconds"}
    s = res["summary"]["torchdx"]
    assert s["detection"] == s["detected"] / s["faults"]


def test_anchors_answer_not_applicable_where_blind(quick_results):
    f = _by_id(quick_results, "faults")
    # a gradient-flow fault: no anchor looks at gradients
    tools = f["gradflow.detached_cond_encoder"]["tools"]
    for t in ("detect_anomaly", "jaxtyping", "isfinite_hooks", "loss_check"):
        assert tools[t]["detected"] is None and tools[t]["message"] == "—"
    # value constraints are invisible to jaxtyping: a flipped mask has the right shape
    assert f["shapes.paraformer_mask_polarity"]["tools"]["jaxtyping"]["detected"] is False


def test_localization_rules_can_fail():
    class E(Exception):
        argument, axis = "mask", 1

    assert _loc_argument(E(), {"argument": "mask", "axis": 1})
    assert not _loc_argument(E(), {"argument": "features"})
    assert not _loc_argument(E(), {"argument": "mask", "axis": 2})
    here = str(Path(__file__).resolve())
    assert _trace_points_at(f'File "{here}", line 10, in f', (here, 5, 20))
    assert not _trace_points_at(f'File "{here}", line 30, in f', (here, 5, 20))


def _cli(*args, timeout=120):
    return subprocess.run(
        [sys.executable, "-m", "benchmarks.fault_zoo", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _main_exit(capsys, *args):
    """Run the CLI in-process; returns (exit status, stderr lines)."""
    try:
        rc = main(list(args))
    except SystemExit as exc:
        rc = exc.code
    return rc, capsys.readouterr().err.strip().splitlines()


def test_cli_only_matching_nothing_exits_2(capsys):
    rc, err = _main_exit(capsys, "--only", "no_such_fault")
    assert rc == 2
    assert len(err) == 1 and "--only 'no_such_fault' matches no fault" in err[0]
    rc, err = _main_exit(capsys, "--quick", "--only", "exploding_lr")  # not in the subset
    assert rc == 2 and len(err) == 1 and "--quick" in err[0]


def test_cli_unwritable_json_exits_2(tmp_path, capsys):
    rc, err = _main_exit(capsys, "--quick", "--json", str(tmp_path / "missing" / "out.json"))
    assert rc == 2 and len(err) == 1 and "does not exist" in err[0]
    rc, err = _main_exit(capsys, "--quick", "--json", str(tmp_path))
    assert rc == 2 and len(err) == 1 and "is a directory" in err[0]


def test_cli_bad_flag_exits_2(capsys):
    rc, err = _main_exit(capsys, "--frobnicate")
    assert rc == 2 and len(err) == 1 and "--frobnicate" in err[0]


def test_cli_list_and_help(capsys):
    assert main(["--list", "--only", "hygiene"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out and all(line.startswith("hygiene.") for line in out)
    p = _cli("--help")
    assert p.returncode == 0 and "--only" in p.stdout and "--quick" in p.stdout


def test_cli_subset_writes_json_not_docs(tmp_path):
    out = tmp_path / "zoo.json"
    before = (ROOT / "docs" / "results" / "fault_zoo.json").read_bytes() if (
        ROOT / "docs" / "results" / "fault_zoo.json").exists() else None  # fmt: skip
    p = _cli("--only", "shapes.lengths_exceed_T", "--json", str(out), "--quiet")
    assert p.returncode == 0, p.stderr
    data = json.loads(out.read_text())
    assert [f["id"] for f in data["faults"]] == ["shapes.lengths_exceed_T"]
    assert data["faults"][0]["tools"]["torchdx"]["detected"] is True
    after = (ROOT / "docs" / "results" / "fault_zoo.json").read_bytes() if (
        ROOT / "docs" / "results" / "fault_zoo.json").exists() else None  # fmt: skip
    assert before == after, "a subset run must not overwrite the full zoo's results"


def test_import_stays_light():
    code = (
        "import sys; from benchmarks.fault_zoo import load_faults; load_faults(); "
        "print('transformers' in sys.modules, 'diagnostics._ablation' in sys.modules)"
    )
    p = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    assert p.stdout.split() == ["False", "False"]
