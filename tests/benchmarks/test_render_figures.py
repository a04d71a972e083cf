"""Figures in docs are rendered from results files; --check catches every disagreement."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks import render_figures as rf


def _results(tmp: Path, name: str, figures: dict) -> Path:
    d = tmp / "results"
    d.mkdir(exist_ok=True)
    (d / f"{name}.json").write_text(json.dumps({"name": name, "figures": figures}))
    return d


def test_render_fills_markers_and_check_then_passes(tmp_path: Path) -> None:
    results = _results(tmp_path, "nw", {"ratio": {"small": 1.01349}, "sizes": [4, 16]})
    doc = tmp_path / "DOC.md"
    doc.write_text(
        "cost <!-- fig nw:ratio.small:{:.3f}× -->?<!-- /fig --> at "
        "<!-- fig nw:sizes.1 -->?<!-- /fig --> layers\n"
    )
    assert rf.render([doc], results) == []
    assert doc.read_text() == (
        "cost <!-- fig nw:ratio.small:{:.3f}× -->1.013×<!-- /fig --> at "
        "<!-- fig nw:sizes.1 -->16<!-- /fig --> layers\n"
    )
    assert rf.check([doc], results) == []


def test_check_reports_stale_missing_and_unmarked(tmp_path: Path) -> None:
    results = _results(tmp_path, "nw", {"ratio": 1.5})
    doc = tmp_path / "DOC.md"
    doc.write_text(
        "a <!-- fig nw:ratio -->1.4<!-- /fig -->\n"
        "b <!-- fig nw:nope -->1<!-- /fig -->\n"
        "c <!-- fig gone:x -->1<!-- /fig -->\n"
        "d the step costs 2.91× a bare step\n"
        "e the target is ≤ 1.02× <!-- not-measured -->\n"
        "```\nf 3.5 ms inside code is an example\n```\n"
    )
    messages = [str(p) for p in rf.check([doc], results)]
    assert len(messages) == 4, messages
    assert "DOC.md:1: nw:ratio renders 1.5, the doc says 1.4" in messages[0]
    assert "has no figure 'nope'" in messages[1]
    assert "no results file docs/results/gone.json" in messages[2]
    assert "DOC.md:4: measured-looking figure '2.91×'" in messages[3]
    assert doc.read_text().startswith("a <!-- fig nw:ratio -->1.4")  # check changes nothing


def test_cli_bad_path_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert rf.main(["no/such/doc.md"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no such doc" in err


def test_repository_docs_agree_with_their_results() -> None:
    problems = rf.check()
    assert not problems, "\n".join(map(str, problems))
