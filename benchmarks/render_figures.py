"""Render the measured figures in README.md and docs/ from the results files; check them.

A figure in a doc is written between markers that name its results file and key::

    NanWatch's healthy path costs <!-- fig nanwatch:healthy.ratio.small:{:.3f}× -->1.013×<!-- /fig -->

``NAME`` is ``docs/results/NAME.json``; the key is a dotted path into its ``figures`` (list
items by index: ``sizes.2``); the optional third part is a Python format string (default: three
significant digits for floats). ``python -m benchmarks.render_figures`` rewrites the text between
the markers; ``--check`` (run by the test suite) changes nothing and exits 1 when a doc and its
results disagree, when a marker names a missing file or key, or when a doc states a measured
figure (a time, a ratio, a dB figure) outside markers and code. A line that states a goal or a
threshold rather than a measurement may carry ``<!-- not-measured -->``.

Exit status: 0 all good, 1 a check failed, 2 bad arguments.

Example:
    $ python -m benchmarks.render_figures --check
    docs/DIAGNOSTICS.md:41: nanwatch:healthy.ratio.small renders 1.013×, the doc says 1.02×
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from contracts.cli import ArgumentParser, fail

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "docs" / "results"

MARKER = re.compile(
    r"<!-- fig (?P<name>[A-Za-z0-9_.-]+):(?P<key>[A-Za-z0-9_.\-]+)(?::(?P<fmt>.*?))? -->"
    r"(?P<text>.*?)<!-- /fig -->"
)
# What a measured figure looks like when typed by hand: a time, a ratio, a dB value.
UNMARKED = re.compile(
    r"(?<![\w.])[+\-−]?\d+(?:\.\d+)?\s?(?:×|µs|us\b|ms\b|dB\b)|(?<![\w.])\d+\.\d+\s?s\b"
)
EXEMPT = "<!-- not-measured -->"

__all__ = ["FigureProblem", "check", "main", "render", "render_text"]


@dataclass(frozen=True)
class FigureProblem:
    """One disagreement between a doc and the results files."""

    path: Path
    line: int
    message: str

    def __str__(self) -> str:
        try:
            shown = self.path.relative_to(ROOT)
        except ValueError:
            shown = self.path
        return f"{shown}:{self.line}: {self.message}"


def _docs() -> list[Path]:
    docs = [
        ROOT / "README.md",
        *sorted((ROOT / "docs").rglob("*.md")),
        *sorted((ROOT / "notebooks").glob("*.md")),
    ]
    return [p for p in docs if p.is_file() and RESULTS not in p.parents]


def _lookup(figures: Any, key: str) -> Any:
    node = figures
    for part in key.split("."):
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif (
            isinstance(node, list)
            and part.lstrip("-").isdigit()
            and -len(node) <= int(part) < len(node)
        ):
            node = node[int(part)]
        else:
            raise KeyError(part)
    return node


def _format(value: Any, fmt: str | None) -> str:
    if fmt:
        return fmt.format(value)
    if isinstance(value, bool) or value is None:
        return str(value).lower() if value is not None else "—"
    if isinstance(value, float):
        return f"{value:.3g}"
    if isinstance(value, list) and all(isinstance(v, (int, float)) for v in value):
        return "[" + ", ".join(_format(v, None) for v in value) + "]"
    return str(value)


class _Results:
    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._cache: dict[str, dict[str, Any] | None] = {}

    def get(self, name: str) -> dict[str, Any] | None:
        if name not in self._cache:
            path = self.directory / f"{name}.json"
            self._cache[name] = json.loads(path.read_text()) if path.is_file() else None
        return self._cache[name]


def _code_lines(text: str) -> set[int]:
    """1-based numbers of the lines inside fenced code blocks."""
    inside, lines = False, set()
    for i, line in enumerate(text.splitlines(), 1):
        if line.lstrip().startswith("```"):
            inside = not inside
            lines.add(i)
        elif inside:
            lines.add(i)
    return lines


def _render(path: Path, text: str, results: _Results) -> tuple[str, list[FigureProblem]]:
    problems: list[FigureProblem] = []

    def sub(m: re.Match[str]) -> str:
        line = text.count("\n", 0, m.start()) + 1
        name, key, fmt = m["name"], m["key"], m["fmt"]
        data = results.get(name)
        if data is None:
            problems.append(FigureProblem(path, line, f"no results file docs/results/{name}.json"))
            return m.group(0)
        try:
            value = _lookup(data["figures"], key)
        except KeyError:
            problems.append(
                FigureProblem(path, line, f"docs/results/{name}.json has no figure {key!r}")
            )
            return m.group(0)
        try:
            shown = _format(value, fmt)
        except (ValueError, TypeError, IndexError) as e:
            problems.append(FigureProblem(path, line, f"format {fmt!r} cannot show {value!r}: {e}"))
            return m.group(0)
        if shown != m["text"]:
            problems.append(
                FigureProblem(path, line, f"{name}:{key} renders {shown}, the doc says {m['text']}")
            )
        head = m.group(0)[: m.start("text") - m.start()]
        return f"{head}{shown}<!-- /fig -->"

    return MARKER.sub(sub, text), problems


def _unmarked(path: Path, text: str) -> Iterator[FigureProblem]:
    code = _code_lines(text)
    for i, line in enumerate(text.splitlines(), 1):
        if i in code or EXEMPT in line:
            continue
        bare = MARKER.sub("", line)
        bare = re.sub(r"`[^`]*`", "", bare)  # inline code is an example, not a figure
        for m in UNMARKED.finditer(bare):
            yield FigureProblem(
                path,
                i,
                f"measured-looking figure {m.group(0).strip()!r} outside <!-- fig --> markers "
                f"(render it from a results file, or mark a goal with {EXEMPT})",
            )


def render_text(
    path: Path, text: str, results_dir: Path = RESULTS
) -> tuple[str, list[FigureProblem]]:
    """Render one doc's markers; return the new text and the problems found."""
    return _render(path, text, _Results(results_dir))


def render(paths: list[Path] | None = None, results_dir: Path = RESULTS) -> list[FigureProblem]:
    """Rewrite every doc's markers from the results files; return what could not be rendered."""
    results, problems = _Results(results_dir), []
    for path in paths or _docs():
        text = path.read_text()
        new, found = _render(path, text, results)
        problems += [p for p in found if "renders" not in p.message]
        if new != text:
            path.write_text(new)
    return problems


def check(paths: list[Path] | None = None, results_dir: Path = RESULTS) -> list[FigureProblem]:
    """Every disagreement between the docs and the results files; changes nothing."""
    results, problems = _Results(results_dir), []
    for path in paths or _docs():
        text = path.read_text()
        problems += _render(path, text, results)[1]
        problems += list(_unmarked(path, text))
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(
        prog="python -m benchmarks.render_figures",
        description=(
            "Fill the <!-- fig NAME:key --> markers in README.md and docs/ from "
            "docs/results/NAME.json, or check that they agree (--check)."
        ),
    )
    parser.add_argument(
        "--check", action="store_true", help="change nothing; exit 1 on any problem"
    )
    parser.add_argument("paths", nargs="*", type=Path, help="docs to handle (default: all)")
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:
        return int(e.code or 0)
    missing = [p for p in args.paths if not p.is_file()]
    if missing:
        return fail(parser, f"no such doc: {missing[0]}")
    paths = [p.resolve() for p in args.paths] or None
    problems = check(paths) if args.check else render(paths)
    for p in problems:
        print(p)
    if problems:
        print(f"{len(problems)} problem(s)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
