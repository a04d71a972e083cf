"""pytest plugin (entry point ``pytest11: contracts``): generated property tests.

For every contract registered in the modules named by the ini option ``contracts_modules``
(packages are walked recursively), one test item feeds ``inputs_for(fn)`` to the function and
lets the decorator check the output contract. Contracts marked ``generate=False`` get no item:
each has a hand-written property test instead (tests/contracts/test_generate_false.py checks
that none is missing). Items carry the ``contracts`` marker, so
``pytest -m contracts`` runs them beside the hand-written contract tests.

Items are added when the whole suite is collected (no explicit paths), or whenever the marker
expression mentions ``contracts``. ``contracts_max_examples`` (default 8) bounds each item.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest

from ._registry import import_tree

__all__: list[str] = []


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addini(
        "contracts_modules",
        "modules/packages whose contracts get generated tests",
        type="linelist",
        default=[],
    )
    parser.addini(
        "contracts_max_examples", "hypothesis examples per generated contract test", default="8"
    )


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "contracts: property tests generated from tensor contracts, plus hand-written"
    )


class ContractsFile(pytest.File):
    """Collector of the generated items (anchored at the config file that asked for them)."""

    def collect(self) -> Iterator[pytest.Item]:
        from ._registry import all_plans

        modules = tuple(self.config.getini("contracts_modules"))
        errors: list[str] = []
        for m in modules:
            try:
                errors += import_tree(m)
            except Exception as e:
                errors.append(f"{m}: {type(e).__name__}: {e}")
        for err in errors:
            yield ImportFailure.from_parent(self, name=f"import[{err.split(':')[0]}]", error=err)
        for plan in all_plans(modules):
            if not plan.generate:
                continue  # a hand-written property test covers it (tests/contracts)
            yield ContractItem.from_parent(self, name=f"{plan.module}.{plan.qualname}", plan=plan)


class ImportFailure(pytest.Item):
    def __init__(self, *, error: str, **kw: Any) -> None:
        super().__init__(**kw)
        self.error = error
        self.add_marker(pytest.mark.contracts)

    def runtest(self) -> None:
        raise ImportError(f"cannot import a module that declares contracts: {self.error}")

    def reportinfo(self) -> tuple[Any, int, str]:
        return self.path, 0, self.name


class ContractItem(pytest.Item):
    """One generated property test: inputs drawn from the contract, output contract checked."""

    def __init__(self, *, plan: Any, **kw: Any) -> None:
        super().__init__(**kw)
        self.plan = plan
        self.add_marker(pytest.mark.contracts)

    def runtest(self) -> None:
        from hypothesis import HealthCheck, given, settings

        import contracts

        from .strategies import CannotGenerate, bound_callable, inputs_for

        plan = self.plan
        try:
            call, inst = bound_callable(plan)
            strategy = inputs_for(plan.fn, instance=inst)
        except CannotGenerate as e:  # a contract that says too little: its author must act
            pytest.fail(f"{e}; or mark it @contract(generate=False) with a hand-written test")
        n = int(self.config.getini("contracts_max_examples"))

        @settings(
            max_examples=n,
            deadline=None,
            derandomize=True,
            database=None,
            suppress_health_check=list(HealthCheck),
            print_blob=False,
        )
        @given(strategy)
        def prop(ai: tuple[tuple, dict]) -> None:
            args, kwargs = ai
            with contracts.mode("full"):
                call(*args, **kwargs)

        prop()

    def reportinfo(self) -> tuple[Any, int, str]:
        return self.path, 0, f"contract property test: {self.plan.qualname}"

    def repr_failure(self, excinfo: pytest.ExceptionInfo[BaseException], style: Any = None) -> str:
        from ._errors import ContractError

        if isinstance(excinfo.value, ContractError):
            return f"generated property test of {self.plan.qualname} failed:\n{excinfo.value}"
        return super().repr_failure(excinfo, style=style)


def _wanted(config: pytest.Config) -> bool:
    if not config.getini("contracts_modules"):
        return False
    markexpr = getattr(config.option, "markexpr", "") or ""
    if "contracts" in markexpr:
        return "not contracts" not in markexpr
    explicit = [
        a
        for a in config.invocation_params.args
        if not str(a).startswith("-") and os.path.exists(str(a).split("::")[0])
    ]
    root = str(config.rootpath)
    return not explicit or any(os.path.abspath(a) == root for a in explicit)


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(
    session: pytest.Session, config: pytest.Config, items: list[pytest.Item]
) -> None:
    if not _wanted(config):
        return
    anchor = config.inipath or config.rootpath / "pyproject.toml"
    collector = ContractsFile.from_parent(session, path=anchor)
    items.extend(collector.collect())
