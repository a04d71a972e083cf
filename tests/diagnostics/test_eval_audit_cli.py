"""``python -m diagnostics.eval_audit``: exit codes, one-line errors, outputs, the doc block."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from diagnostics.eval_audit import main

STANDINS = str(Path(__file__).with_name("test_eval_audit_standins.py"))
ROOT = Path(__file__).resolve().parents[2]


def _err_line(capsys) -> str:
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1, f"expected one stderr line, got: {err!r}"
    return lines[0]


@pytest.mark.parametrize(
    ("argv", "match"),
    [
        (["--metrics", "si_sdr,mos"], "--metrics: unknown metric mos; choose from si_sdr,pesq,estoi"),
        (["--steps", "10,0"], "--steps '10,0': step count 0 must be >= 1"),
        (["--steps", "ten"], "--steps 'ten': 'ten' is not an integer"),
        (["--snr", "0"], "--snr '0': 0 must be > 0"),
        ([f"--target={STANDINS}:no_sampler_target"], "the EvalTarget has no sampler; set sample"),
        ([f"--target={STANDINS}:ablation_target"], "an AblationTarget has no protocol sampler"),
        ([f"--target={STANDINS}:nope"], "has no callable 'nope'"),
        ([f"--target={STANDINS}:analytic_si_sdr_target", "--corrector-steps", "0,1"],
         "--corrector-steps: the target's reference protocol has no 'corrector_steps'"),
        ([f"--target={STANDINS}:analytic_si_sdr_target", "--metrics", "pesq"],
         r"unknown metric\(s\) pesq; the target has si_sdr"),
    ],
)  # fmt: skip
def test_bad_input_exits_2_with_one_line(argv, match, capsys, tmp_path):
    assert main([*argv, "--out", str(tmp_path), "--quiet"]) == 2
    line = _err_line(capsys)
    assert line.startswith("eval_audit: error: "), line
    import re

    assert re.search(match, line), line


def test_target_run_writes_every_output_and_the_doc_block(tmp_path, capsys):
    doc = tmp_path / "MODEL.md"
    doc.write_text("# Model\n\nhand-written text\n")
    out = tmp_path / "out"
    argv = [f"--target={STANDINS}:analytic_si_sdr_target", "--steps", "4,8,64",
            "--weights", "ema,raw", "--out", str(out), "--doc", str(doc), "--quiet"]  # fmt: skip
    assert main(argv) == 0
    rep = json.loads((out / "report.json").read_text())
    assert set(rep) >= {"reference", "variants", "findings"}
    assert rep["reference"]["protocol"] == {"steps": 8, "weights": "ema"}
    assert [v["protocol"] for v in rep["variants"]] == [
        {"steps": 4, "weights": "ema"},
        {"steps": 64, "weights": "ema"},
        {"steps": 8, "weights": "raw"},
    ]
    for v in rep["variants"]:
        assert set(v) >= {"protocol", "metrics", "delta", "seconds_per_example"}
        assert set(v["metrics"]["si_sdr"]) == {"mean", "ci95", "n"}
        assert set(v["delta"]["si_sdr"]) >= {"delta", "ci95"}
        assert v["metrics"]["si_sdr"]["n"] == 4
    assert any(f["kind"] == "under_converged" for f in rep["findings"])
    assert (out / "pareto.png").stat().st_size > 1000
    assert "## Findings" in (out / "report.md").read_text()
    assert list((out / "tensorboard").glob("events.out.tfevents.*"))
    text = doc.read_text()
    assert text.startswith("# Model\n\nhand-written text\n")
    assert text.count("<!-- eval_audit:begin -->") == 1 and "under-converged" in text
    # a second run replaces the block instead of appending another one
    assert main([*argv[:-1], "--steps", "8,64", "--quiet"]) == 0
    text2 = doc.read_text()
    assert text2.count("<!-- eval_audit:begin -->") == 1 and text2.count("eval_audit:end") == 1
    assert "hand-written text" in text2 and "N=4 " not in text2.split("eval_audit:begin")[1]
    assert "under-converged" in capsys.readouterr().out
    # every figure of the block is quoted from its results file: the project's figure check
    # finds nothing typed by hand and nothing stale
    from benchmarks.render_figures import check

    assert (tmp_path / "results" / "eval_audit_doc.json").is_file()
    assert [str(p) for p in check([doc], results_dir=tmp_path / "results")] == []


def test_help_and_module_entry_point():
    r = subprocess.run(
        [sys.executable, "-m", "diagnostics.eval_audit", "--steps", "0"],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert r.returncode == 2, r.stderr
    assert r.stderr.strip().splitlines() == [
        "eval_audit: error: --steps '0': step count 0 must be >= 1"
    ]
    r = subprocess.run(
        [sys.executable, "-m", "diagnostics.eval_audit", "--help"],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert r.returncode == 0 and "paired" in r.stdout and "--corrector-steps" in r.stdout


def test_import_stays_light():
    code = (
        "import sys, diagnostics, diagnostics.eval_audit; diagnostics.EvalTarget; "
        "heavy = [m for m in ('matplotlib', 'tensorboard', 'pesq', 'pystoi') if m in sys.modules]; "
        "print(heavy)"
    )
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                       timeout=120)  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[]"
