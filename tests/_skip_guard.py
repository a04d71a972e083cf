"""The skip guard of the whole suite (registered by the repository's root conftest.py).

A test may skip only for a reason on :data:`SKIP_ALLOWLIST` (a device, a process count or a
program that this machine lacks). Any other skip — an import that failed, a checkpoint that did
not load, a helper that said "not available" — is turned into a failure: a regression must fail,
never pass as a skip.
"""

from __future__ import annotations

import re

import pytest

# The only reasons a test may skip. Each names something outside the project that is missing.
SKIP_ALLOWLIST: tuple[re.Pattern[str], ...] = (
    re.compile(r"\bCUDA\b|\bcuda\b|needs a GPU", re.I),
    re.compile(r"needs \d+ processes|fewer processes|world size", re.I),
    re.compile(r"\bchromium\b", re.I),
)


def skip_allowed(reason: str) -> bool:
    """Whether a skip reason names a missing device, process count or program."""
    return any(p.search(reason) for p in SKIP_ALLOWLIST)


def _reason(report: pytest.TestReport | pytest.CollectReport) -> str:
    longrepr = report.longrepr
    if isinstance(longrepr, tuple) and len(longrepr) == 3:
        return str(longrepr[2]).removeprefix("Skipped: ")
    return str(longrepr)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> object:
    outcome = yield
    report = outcome.get_result()
    if report.skipped and not hasattr(report, "wasxfail"):
        reason = _reason(report)
        if not skip_allowed(reason):
            report.outcome = "failed"
            report.longrepr = (
                f"skip guard: {item.nodeid} skipped for a reason that is not on the allowlist "
                f"(missing CUDA / processes / Chromium): {reason!r}. A failure of our own code "
                f"must fail; see tests/conftest.py."
            )


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector: pytest.Collector) -> object:
    outcome = yield
    report = outcome.get_result()
    if report.skipped:
        reason = _reason(report)
        if not skip_allowed(reason):
            report.outcome = "failed"
            report.longrepr = (
                f"skip guard: collecting {collector.nodeid} skipped for a reason that is not on "
                f"the allowlist: {reason!r}"
            )
