"""A contracted module method that torch fails on an input of another dtype or device than the
module's parameters: the contract wrapper names the argument (any module, not only ours)."""

from __future__ import annotations

import pytest
import torch
from jaxtyping import Float, Int
from torch import Tensor, nn

import contracts
from contracts import ContractError, DtypeError, InputError, contract


class Head(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(4, 3)

    @contract
    def forward(self, x: Float[Tensor, "B 4"], ids: Int[Tensor, " B"]) -> Float[Tensor, "B 3"]:
        return self.proj(x) + ids[:, None]


class Outer(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.head = Head()

    @contract
    def forward(self, feats: Float[Tensor, "B 4"]) -> Float[Tensor, "B 3"]:
        return self.head(feats, torch.zeros(feats.shape[0], dtype=torch.long))


@pytest.mark.parametrize("mode", ["shapes", "full"])
@pytest.mark.parametrize("calls", [1, 3])  # the first call walks, later ones take the fast path
def test_an_input_of_another_precision_is_named(mode, calls):
    head = Head()
    x = torch.ones(2, 4)
    with contracts.mode(mode):
        for _ in range(calls):
            head(x, torch.zeros(2, dtype=torch.long))
        with pytest.raises(DtypeError) as e:
            head(x.half(), torch.zeros(2, dtype=torch.long))
    text = str(e.value)
    assert text.startswith(
        "Head.forward(): argument 'x' has dtype float16 but the model's parameters are float32"
    )
    assert (
        "hint: cast the input (x.to(torch.float32)) or the model (model.to(torch.float16))" in text
    )
    assert isinstance(e.value.__cause__, RuntimeError)  # torch's own error kept as the cause
    assert isinstance(e.value, InputError) and isinstance(e.value, ContractError)


def test_an_outer_call_names_the_argument_its_caller_passed():
    with pytest.raises(
        DtypeError, match=r"^Outer\.forward\(\): argument 'feats' has dtype float64"
    ):
        Outer()(torch.ones(2, 4, dtype=torch.float64))


def test_other_failures_pass_through_unchanged():
    class Broken(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.w = nn.Parameter(torch.ones(3))

        @contract
        def forward(self, x: Float[Tensor, "B 4"]) -> Float[Tensor, "B 4"]:
            raise RuntimeError("something else went wrong")

    with pytest.raises(RuntimeError, match="something else went wrong") as e:
        Broken()(torch.ones(2, 4).double())  # a float64 input, but torch did not complain of it
    assert not isinstance(e.value, InputError)


def test_mode_off_adds_nothing():
    with contracts.mode("off"), pytest.raises(RuntimeError) as e:
        Head()(torch.ones(2, 4).half(), torch.zeros(2, dtype=torch.long))
    assert not isinstance(e.value, InputError)
