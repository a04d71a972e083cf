"""`python -m diagnostics.cond_ablation`: outputs, reproducibility, exit status 2 on bad input."""

import json
import subprocess
import sys

import pytest
import torch

import diagnostics.ablation_example
from diagnostics.cond_ablation import main

EXAMPLE = "diagnostics.ablation_example"
EXAMPLE_FILE = diagnostics.ablation_example.__file__
STANDIN = "tests.diagnostics.ablation_standin"  # test-only factories that fail
QUICK = ["--no-umap", "--quiet", "--no-guidance", "--threads", "1"]


@pytest.fixture(autouse=True)
def _restore_threads():
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


def _err(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err  # one clear line
    return err[0]


def test_healthy_target_writes_report(tmp_path, capsys):
    out = tmp_path / "run"
    rc = main(["--target", f"{EXAMPLE}:healthy_target", "--out", str(out), *QUICK])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "cond_encoder  used" in printed and "arg:cond" in printed
    data = json.loads((out / "report.json").read_text())
    assert data["schema"] == 2 and data["min_effect"] == 0.05
    for s in data["sites"]:
        assert s["verdict"] == "used" and s["reason"] in printed
        assert s["content"]["ablation"] in ("shuffle", "mean") and "effect" in s["floor"]
        for r in s["ablations"].values():
            assert isinstance(r["effect"], float) and len(r["ci95"]) == 2
    md = (out / "report.md").read_text()
    assert md.startswith("# Conditioning ablation") and "## By label" in md
    assert all(s["reason"] in md for s in data["sites"])
    assert (out / "effect_vs_t.png").stat().st_size > 1000
    assert list((out / "tensorboard").glob("events.out.tfevents.*"))
    assert data["embeddings"]["site"] == "cond_encoder"


def test_same_seed_identical_report(tmp_path):
    args = ["--target", f"{EXAMPLE}:small_target", "--seed", "4", *QUICK]
    assert main([*args, "--out", str(tmp_path / "a")]) == 0
    assert main([*args, "--out", str(tmp_path / "b")]) == 0
    for f in ("report.json", "report.md"):
        assert (tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes()


def test_file_target_site_and_ablation_flags(tmp_path):
    out = tmp_path / "f"
    rc = main(
        [
            "--target",
            f"{EXAMPLE_FILE}:severed_target",
            "--site",
            "arg:cond",
            "--ablations",
            "zero,shuffle",
            "--out",
            str(out),
            "--tensorboard",
            str(tmp_path / "tb"),
            *QUICK,
        ]
    )
    assert rc == 0
    data = json.loads((out / "report.json").read_text())
    assert [s["site"] for s in data["sites"]] == ["arg:cond"]
    assert data["sites"][0]["verdict"] == "ignored"
    assert list(data["sites"][0]["ablations"]) == ["zero", "shuffle"]
    assert list((tmp_path / "tb").glob("events.out.tfevents.*"))


@pytest.mark.parametrize(
    ("args", "pattern"),
    [
        (["--site", "cond_encodr"], "unknown site 'cond_encodr'.*nearest: cond_encoder"),
        (["--site", "arg:noise"], "CondDenoiser.forward has no argument 'noise'"),
        (["--site", "arg:drop_cond"], "called without 'drop_cond'"),
        (["--ablations", "zero,nul"], "--ablations 'zero,nul': unknown nul"),
        (["--min-effect", "-0.1"], "argument --min-effect: '-0.1' must be a finite number >= 0"),
        (["--min-effect", "lots"], "argument --min-effect: 'lots' is not a number"),
        (["--min-effect", "nan"], "argument --min-effect: 'nan' must be a finite number >= 0"),
        (["--seed", "-5"], r"--seed -5: must be in \[0, 2\*\*63\)"),
        (["--device", "bogus"], "--device 'bogus': not a torch device"),
        (["--ablations", "zero,zero"], "--ablations 'zero,zero': zero twice"),
    ],
)
def test_bad_site_or_ablation_exit_2(tmp_path, capsys, args, pattern):
    import re

    rc = main(["--target", f"{EXAMPLE}:small_target", "--out", str(tmp_path), *args, *QUICK])
    assert rc == 2
    line = _err(capsys)
    assert line.startswith("cond_ablation: error: ") and re.search(pattern, line), line


@pytest.mark.parametrize(
    ("factory", "pattern"),
    [
        ("raising_factory", "the factory raised RuntimeError: checkpoint not found: /nowhere.pt"),
        ("wrong_type_factory", "the factory returned dict, not a diagnostics.AblationTarget"),
        ("empty_target", "AblationTarget.batches is empty"),
        ("no_such_factory", "has no callable 'no_such_factory'"),
    ],
)
def test_bad_factory_exit_2(tmp_path, capsys, factory, pattern):
    rc = main(["--target", f"{STANDIN}:{factory}", "--out", str(tmp_path), *QUICK])
    assert rc == 2
    assert pattern in _err(capsys)


def test_tuple_site_exit_2(tmp_path, capsys):
    rc = main(["--target", f"{STANDIN}:tuple_target", "--out", str(tmp_path), *QUICK])
    assert rc == 2
    assert "say which element, e.g. 'pair[0]'" in _err(capsys)


def test_completed_sites_written_when_later_site_fails(tmp_path, capsys):
    out = tmp_path / "partial"
    rc = main(
        [
            "--target",
            f"{EXAMPLE}:small_target",
            "--site",
            "cond_encoder",
            "--site",
            "bogus.path",
            "--out",
            str(out),
            *QUICK,
        ]
    )
    assert rc == 2
    assert "unknown site 'bogus.path'" in _err(capsys)
    data = json.loads((out / "report.json").read_text())
    assert [s["site"] for s in data["sites"]] == ["cond_encoder"]
    assert data["errors"][0]["site"] == "bogus.path"


def test_module_entry_point_bad_argument():
    proc = subprocess.run(
        [sys.executable, "-m", "diagnostics.cond_ablation", "--target", "nocolon"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "cond_ablation: error: --target 'nocolon': expected MODULE:FACTORY or path/to/file.py:FACTORY"
    ]


def test_min_effect_flag_changes_the_verdict(tmp_path):
    """A healthy model's content effect (~75%) is only 'weak' for a user who needs 300%."""
    out = tmp_path / "m"
    rc = main(["--target", f"{EXAMPLE}:small_target", "--min-effect", "3", "--out", str(out),
               "--site", "arg:cond", *QUICK])  # fmt: skip
    assert rc == 0
    data = json.loads((out / "report.json").read_text())
    assert data["min_effect"] == 3.0
    assert data["sites"][0]["verdict"] == "weak", data["sites"][0]["reason"]


def test_help_explains_the_rule(capsys):
    assert main(["--help"]) == 0
    text = capsys.readouterr().out
    for word in ("floor", "channel", "content", "used", "weak", "constant", "ignored",
                 "inconclusive", "--min-effect"):  # fmt: skip
        assert word in text


def test_out_pointing_at_a_file_is_refused_before_the_run(tmp_path, capsys):
    afile = tmp_path / "afile"
    afile.write_text("")
    for flag, value in (("--out", afile), ("--out", afile / "sub"), ("--tensorboard", afile)):
        extra = [] if flag == "--out" else ["--out", str(tmp_path / "ok")]
        rc = main(["--target", f"{EXAMPLE}:small_target", flag, str(value), *extra, *QUICK])
        assert rc == 2
        err = _err(capsys)
        assert f"{flag} '{value}'" in err and "is a file" in err, err


def test_threads_below_one_is_refused(tmp_path, capsys):
    quick = [a for a in QUICK if a not in ("--threads", "1")]
    rc = main(
        ["--target", f"{EXAMPLE}:small_target", "--out", str(tmp_path), *quick, "--threads", "0"]
    )
    assert rc == 2
    assert "--threads 0: must be >= 1" in _err(capsys)
