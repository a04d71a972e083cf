"""Mask(padding=True): PyTorch's key_padding_mask convention (True = padded), checked as such."""

from typing import Annotated

import pytest
import torch
from hypothesis import given, settings
from jaxtyping import Bool, Float
from torch import Tensor

import contracts
from contracts import ContractError, Mask, contract
from contracts.strategies import inputs_for


@contract
def attend(
    x: Float[Tensor, "B T D"], key_padding_mask: Annotated[Bool[Tensor, "B T"], Mask(padding=True)]
) -> Float[Tensor, "B T D"]:
    return x.masked_fill(key_padding_mask[..., None], 0.0)


LENGTHS = torch.tensor([6, 4, 2])
VALID = torch.arange(6)[None, :] < LENGTHS[:, None]  # True = valid


def test_a_key_padding_mask_passes() -> None:
    attend(torch.randn(3, 6, 4), ~VALID)


@pytest.mark.parametrize("mode", ["full"])
def test_a_valid_mask_given_as_padding_mask_is_refused_with_the_inverted_hint(mode: str) -> None:
    with contracts.mode(mode), pytest.raises(ContractError) as info:
        attend(torch.randn(3, 6, 4), VALID)  # the longest row is all True: "all padded"
    e = info.value
    assert e.argument == "key_padding_mask" and e.axis == 1
    assert "at least one False (valid) position per row along axis 1 (True = padded)" in str(e)
    assert "key padding masks are True for padded positions; this one looks inverted" in str(e)
    assert "pass ~key_padding_mask?" in str(e)


def test_plain_mask_keeps_its_convention() -> None:
    @contract
    def f(m: Annotated[Bool[Tensor, "B T"], Mask()]) -> None:
        return None

    f(VALID)
    with pytest.raises(ContractError, match="masks are True for valid positions"):
        f(~VALID)


@settings(max_examples=25, deadline=None, derandomize=True)
@given(inputs_for(attend))
def test_strategies_draw_padding_masks_the_contract_accepts(ai) -> None:
    args, kwargs = ai
    attend(*args, **kwargs)
