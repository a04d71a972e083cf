"""The worked debugging sessions in notebooks/ stay true.

Each notebook is built from ``notebooks/src/NAME.py`` by ``notebooks/build.py`` and committed
with its outputs. Here every committed notebook must (1) match its source cell for cell, (2)
carry the outputs of a complete run, and (3) run again top to bottom: its cells assert the
findings, so a notebook fails when a tool's answer changes.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "notebooks"
SOURCES = sorted((NOTEBOOKS / "src").glob("*.py"))

_spec = importlib.util.spec_from_file_location("notebooks_build", NOTEBOOKS / "build.py")
build = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(build)


def test_every_notebook_has_a_source_and_is_listed() -> None:
    committed = {p.stem for p in NOTEBOOKS.glob("*.ipynb")}
    assert committed == {p.stem for p in SOURCES}, "build every notebook from notebooks/src"
    listing = (NOTEBOOKS / "README.md").read_text()
    missing = [s.stem for s in SOURCES if s.stem not in listing]
    assert not missing, f"notebooks/README.md does not list {missing}"


@pytest.mark.slow
@pytest.mark.parametrize("src", SOURCES, ids=[p.stem for p in SOURCES])
def test_notebook_is_current_and_executes(src: Path) -> None:
    committed = nbformat.read(NOTEBOOKS / f"{src.stem}.ipynb", as_version=4)
    expected = build.cells_of(src.read_text())
    assert [(c.cell_type, c.source) for c in committed.cells] == expected, (
        f"{src.stem}.ipynb is stale: run `python notebooks/build.py {src.stem}`"
    )
    code = [c for c in committed.cells if c.cell_type == "code"]
    assert all(c.execution_count is not None for c in code), "committed without its outputs"
    assert not [o for c in code for o in c.outputs if o.get("output_type") == "error"]

    fresh = build.notebook_of(src)
    build.execute(fresh, ROOT)  # raises CellExecutionError when a finding no longer holds
