"""The skip guard turns a skip for a reason off the allowlist into a failure."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from tests._skip_guard import skip_allowed

pytest_plugins = ["pytester"]


@pytest.mark.parametrize(
    ("reason", "allowed"),
    [
        ("needs a CUDA device", True),
        ("needs 2 processes, this machine has 1", True),
        ("Chromium is not installed", True),
        ("shipped SGMSE+ checkpoint unavailable: EOFError", False),
        ("could not import 'diagnostics'", False),
        ("diagnostics.NanWatch has not landed yet", False),
    ],
)
def test_allowlist(reason: str, allowed: bool) -> None:
    assert skip_allowed(reason) is allowed


def test_guard_fails_a_foreign_skip_and_keeps_an_allowed_one(pytester: pytest.Pytester) -> None:
    guard = (Path(__file__).parent / "_skip_guard.py").read_text()
    pytester.makeconftest(guard)
    pytester.makepyfile(
        test_x=textwrap.dedent(
            """
            import pytest

            def test_bad():
                pytest.skip("checkpoint unavailable: EOFError")

            def test_good():
                pytest.skip("needs a CUDA device")

            def test_bad_import():
                pytest.importorskip("no_such_module_xyz")
            """
        )
    )
    result = pytester.runpytest_inprocess("-p", "no:cacheprovider", "-q")
    result.assert_outcomes(failed=2, skipped=1)
    result.stdout.fnmatch_lines(["*skip guard*checkpoint unavailable*"])
