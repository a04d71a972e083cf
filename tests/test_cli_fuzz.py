"""Every ``python -m`` entry point answers malformed arguments with one line and exit 2.

The entry points are discovered from the source (a module with ``def main(`` and a
``__main__`` guard under contracts/, diagnostics/, models/ and benchmarks/ — the ``bench_*``
measurement scripts excepted), so a new CLI is fuzzed without editing this file. Hypothesis
draws argument lists that are certainly malformed — an unknown flag, a non-number for a numeric
flag, a ``--target`` that names nothing — and each main() must return (or exit with) 2 and
write exactly one line on stderr, never a traceback. Calls run in-process: argument errors must
come before any work.
"""

from __future__ import annotations

import contextlib
import importlib
import inspect
import io
import re
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("contracts", "diagnostics", "models", "benchmarks")
CORPUS: dict[str, int] = {}  # module -> malformed argument lists drawn (printed with -s)


def _entry_points() -> dict[str, str]:
    found = {}
    for pkg in PACKAGES:
        for path in sorted((ROOT / pkg).rglob("*.py")):
            if path.name.startswith(("bench_", "_")) and path.name != "__main__.py":
                continue
            text = path.read_text()
            if "main" in text and '__name__ == "__main__"' in text:
                # the module to import (a package's CLI lives in its __main__)
                found[".".join(path.relative_to(ROOT).with_suffix("").parts)] = text
    return found


ENTRY_POINTS = _entry_points()
NUMERIC_FLAG = re.compile(r"""add_argument\(\s*["'](--[\w-]+)["'][^)]*?type=(?:int|float)""", re.S)
BAD_TARGETS = st.sampled_from(
    [
        "no_such_module_xyz:make",
        "no_colon_at_all",
        "/no/such/dir/file.py:make",
        ":",
        "os.path:no_such_factory",
        "json:dumps",  # a callable that is not a factory of the right thing
        "a b c:d",
    ]
)
JUNK = st.text(
    alphabet=st.characters(blacklist_categories=("Cs", "Cc")), min_size=1, max_size=12
).filter(lambda s: not s.startswith("-"))


def _malformed(text: str) -> st.SearchStrategy[list[str]]:
    bad: list[st.SearchStrategy[list[str]]] = [
        st.tuples(st.from_regex(r"--zz[a-z]{1,8}", fullmatch=True), JUNK).map(list)
    ]
    numeric = sorted(set(NUMERIC_FLAG.findall(text)))
    if numeric:
        bad.append(
            st.tuples(
                st.sampled_from(numeric), st.sampled_from(["abc", "1.5.2", "--", "0x", "1e", "½"])
            ).map(list)
        )
    if '"--target"' in text or "'--target'" in text:
        bad.append(BAD_TARGETS.map(lambda t: ["--target", t]))
    return st.one_of(bad)


def _run(module: str, argv: list[str]) -> tuple[int, str]:
    main = importlib.import_module(module).main
    err, out = io.StringIO(), io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
        try:
            rc = main(argv)
        except SystemExit as e:
            rc = e.code if isinstance(e.code, int) else 2 if e.code else 0
    return rc, err.getvalue()


def test_entry_points_are_discovered() -> None:
    assert "diagnostics.cond_ablation" in ENTRY_POINTS
    assert "contracts.docs" in ENTRY_POINTS


@pytest.mark.parametrize("module", sorted(ENTRY_POINTS))
def test_malformed_arguments_exit_2_with_one_line(module: str) -> None:
    main = importlib.import_module(module).main
    # a thin wrapper's flags live where its main() is defined
    text = ENTRY_POINTS[module] + Path(inspect.getsourcefile(main) or "").read_text()

    @settings(
        max_examples=15,
        deadline=None,
        derandomize=True,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
    )
    @given(_malformed(text))
    def prop(argv: list[str]) -> None:
        CORPUS[module] = CORPUS.get(module, 0) + 1
        rc, err = _run(module, argv)
        assert "Traceback" not in err, f"{module} {argv}: traceback on stderr:\n{err}"
        assert rc == 2, f"{module} {argv}: exit {rc}, stderr {err!r}"
        lines = err.rstrip("\n").splitlines()
        assert len(lines) == 1 and lines[0].strip(), (
            f"{module} {argv}: expected one line on stderr, got {len(lines)}:\n{err}"
        )

    prop()
    # the malformed-argument space of every CLI is large enough for a real corpus
    assert CORPUS[module] >= 10, f"{module}: only {CORPUS[module]} malformed argument lists drawn"
    print(f"\n{module}: {CORPUS[module]} malformed argument lists")
