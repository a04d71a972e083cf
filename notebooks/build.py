"""Build the worked debugging sessions: ``notebooks/src/NN_name.py`` → ``notebooks/NN_name.ipynb``.

Each source is a plain Python file in the "percent" format (``# %%`` starts a code cell,
``# %% [markdown]`` a Markdown cell whose lines are ``# ``-commented), so it diffs and lints like
code. The build executes the notebook top to bottom with nbclient and writes it WITH its outputs,
so it reads on a code host without running. The test suite checks that every committed notebook
matches its source and executes it again (its cells assert the findings, so a notebook fails
when a tool's answer changes).

Run: ``python notebooks/build.py [NAME ...]`` (default: every source); ``--no-execute`` only
converts.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import nbformat

HERE = Path(__file__).resolve().parent
SRC = HERE / "src"


def cells_of(source: str) -> list[tuple[str, str]]:
    """Split a percent-format source into ``(kind, text)`` cells."""
    cells: list[tuple[str, list[str]]] = []
    for line in source.splitlines():
        if line.startswith("# %%"):
            cells.append(("markdown" if "[markdown]" in line else "code", []))
        elif cells:
            cells[-1][1].append(line)
    out = []
    for kind, lines in cells:
        if kind == "markdown":
            lines = [ln[2:] if ln.startswith("# ") else ln.lstrip("#") for ln in lines]
        text = "\n".join(lines).strip("\n")
        if text:
            out.append((kind, text))
    return out


def notebook_of(path: Path) -> nbformat.NotebookNode:
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.metadata["torchdx"] = {"source": f"notebooks/src/{path.name}"}
    for kind, text in cells_of(path.read_text()):
        cell = nbformat.v4.new_markdown_cell(text) if kind == "markdown" else nbformat.v4.new_code_cell(text)
        nb.cells.append(cell)
    return nb


def execute(nb: nbformat.NotebookNode, cwd: Path, timeout: int = 600) -> float:
    """Run every cell in ``cwd`` (the repository root); return the seconds it took."""
    from nbclient import NotebookClient

    t0 = time.perf_counter()
    NotebookClient(
        nb, timeout=timeout, kernel_name="python3", resources={"metadata": {"path": str(cwd)}}
    ).execute()
    return time.perf_counter() - t0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python notebooks/build.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("names", nargs="*", help="sources to build (stem, e.g. 03_diffusion_buffer...)")
    parser.add_argument("--no-execute", action="store_true")
    args = parser.parse_args(argv)
    sources = sorted(SRC.glob("*.py"))
    if args.names:
        sources = [p for p in sources if any(p.stem.startswith(n) for n in args.names)]
    if not sources:
        print("build: no notebook source matches", file=sys.stderr)
        return 2
    for src in sources:
        nb = notebook_of(src)
        if not args.no_execute:
            seconds = execute(nb, HERE.parent)
            print(f"{src.stem}: executed in {seconds:.1f} s")
        nbformat.write(nb, HERE / f"{src.stem}.ipynb")
    return 0


if __name__ == "__main__":
    sys.exit(main())
