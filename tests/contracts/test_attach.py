"""contracts.attach: contracts on code we don't own, removed cleanly."""

from __future__ import annotations

import pytest
import torch
from jaxtyping import Float
from torch import Tensor, nn

import contracts
from contracts import ContractError


def test_attach_to_torch_module_and_remove():
    lin = nn.Linear(16, 4)
    original = nn.Linear.forward
    handle = contracts.attach(
        nn.Linear, "forward", input=Float[Tensor, "*b 16"], returns=Float[Tensor, "*b 4"]
    )
    try:
        assert lin(torch.zeros(3, 16)).shape == (3, 4)
        with pytest.raises(ContractError, match=r"Linear.forward\(\): argument 'input', axis 1"):
            lin(torch.zeros(3, 8))
    finally:
        handle.remove()
    assert nn.Linear.forward is original
    handle.remove()  # idempotent
    assert "removed" in repr(handle)


def test_attach_context_manager_removes_on_exception():
    original = nn.Linear.forward
    with pytest.raises(ContractError):
        with contracts.attach(nn.Linear, "forward", input=Float[Tensor, "B 2"]):
            nn.Linear(2, 2)(torch.zeros(1, 3))
    assert nn.Linear.forward is original


def test_attach_on_subclass_does_not_touch_base():
    class Mine(nn.Linear):
        pass

    with contracts.attach(Mine, "forward", input=Float[Tensor, "B 2"]):
        nn.Linear(3, 1)(torch.zeros(1, 3))  # base class unaffected
        with pytest.raises(ContractError):
            Mine(3, 1)(torch.zeros(1, 3))
    assert "forward" not in Mine.__dict__


def test_attach_bad_parameter_name():
    with pytest.raises(TypeError, match="has no parameter inputs; its parameters are self, input"):
        contracts.attach(nn.Linear, "forward", inputs=Float[Tensor, "B 2"])
    with pytest.raises(TypeError, match="has no attribute 'fwd'"):
        contracts.attach(nn.Linear, "fwd")
