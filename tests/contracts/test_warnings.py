"""ContractWarning: nothing is left unchecked without a word at decoration time."""

import subprocess
import sys
import typing
import warnings

import pytest
import torch
from jaxtyping import Float
from torch import Tensor

import contracts
from contracts import ContractWarning, contract


def test_unresolvable_annotation_warns_naming_function_and_argument():
    def f(x: Float[Tensor, "B T"], y: "NoSuchType") -> Float[Tensor, "B T"]:
        return x

    with pytest.warns(
        ContractWarning, match=r"@contract on .*f\(\): the annotation of argument 'y'"
    ):
        g = contract(f)
    with pytest.raises(contracts.ContractError, match="argument 'x'"):
        g(torch.zeros(2))  # the resolvable argument is still checked


def test_unresolvable_return_annotation_names_the_return():
    def f(x: Float[Tensor, "B"]) -> "Missing":
        return x

    with pytest.warns(ContractWarning, match="the annotation of the return value"):
        contract(f)


class _NotAType:
    """Neither a class nor a typing construct: beartype cannot check it."""


def test_uncheckable_hint_warns():
    def f(x: Float[Tensor, "B"], k: _NotAType()) -> None:  # type: ignore[valid-type]
        return None

    with pytest.warns(ContractWarning, match=r"argument 'k'.*cannot be checked"):
        contract(f)


def test_checkable_hints_do_not_warn():
    def f(x: Float[Tensor, "B"], k: int, s: str | None = None, t: typing.Literal["a", "b"] = "a"):
        return None

    with warnings.catch_warnings():
        warnings.simplefilter("error", ContractWarning)
        contract(f)


def test_warning_is_attributed_to_the_user_module():
    def f(y: "Nope") -> None:
        return None

    with pytest.warns(ContractWarning) as rec:
        contract(f)
    assert rec[0].filename == __file__


def test_models_declare_no_unchecked_annotation():
    """Importing every model (fresh, in a subprocess) raises no ContractWarning."""
    code = (
        "import warnings, contracts\n"
        "from contracts._registry import import_tree\n"
        "warnings.simplefilter('error', contracts.ContractWarning)\n"
        "errs = import_tree('models')\n"
        "assert not errs, errs\n"
        "print(len(contracts._registry.all_plans(('models',))))\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert int(r.stdout.split()[-1]) > 50
