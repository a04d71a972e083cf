"""Lists and tuples of tensors: every element checked, their dims bound with the call's."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated

import pytest
import torch
import torch._dynamo
from hypothesis import given, settings
from jaxtyping import Float
from torch import Tensor

import contracts
from contracts import ContractError, Range, contract
from contracts.docs import _shape
from contracts.strategies import inputs_for, plan_of


@contract
def pool(xs: list[Float[Tensor, "B C T"]], y: Float[Tensor, "B C"]) -> Float[Tensor, "B C"]:
    return y + sum(x.mean(-1) for x in xs)


@contract
def skips(
    xs: tuple[Float[Tensor, "B C _"], ...],
) -> Annotated[list[Float[Tensor, "B C"]], Range(0, None)]:
    return [x.abs().mean(-1) for x in xs]


@contract
def bounded(xs: Annotated[Sequence[Float[Tensor, "B T"]], Range(0, 1)]) -> Float[Tensor, "B T"]:
    return sum(xs)


@contract
def maybe(xs: list[Float[Tensor, "B T"] | None]) -> Float[Tensor, "B T"]:
    return sum(x for x in xs if x is not None)


def _ones(*shape: int) -> Tensor:
    return torch.ones(*shape)


def test_every_element_is_checked_and_named():
    pool([_ones(2, 3, 5), _ones(2, 3, 5)], _ones(2, 3))
    with pytest.raises(ContractError) as e:
        pool([_ones(2, 3, 5)] * 20 + [_ones(2, 4, 5)], _ones(2, 3))
    text = str(e.value)
    assert text.startswith("pool(): argument 'xs[20]', axis 1: expected size C=3, got 4")
    assert "C=3 from xs[0].shape[1], but xs[20].shape[1]=4" in text
    assert "xs[20]: tensor[2, 4, 5]" in text  # the failing element is described
    assert e.value.argument == "xs[20]"


def test_elements_bind_dims_with_the_other_arguments():
    with pytest.raises(ContractError, match=r"argument 'y', axis 1: expected size C=4, got 3"):
        pool([_ones(2, 4, 5)], _ones(2, 3))


def test_a_bad_list_after_a_good_one_is_still_refused():
    # a list's class is its whole signature: such calls must never take the signature cache
    good = [_ones(2, 3, 5), _ones(2, 3, 5)]
    for _ in range(3):
        pool(good, _ones(2, 3))
    with pytest.raises(ContractError, match=r"'xs\[1\]', axis 1: expected size C=3, got 4"):
        pool([_ones(2, 3, 5), _ones(2, 4, 5)], _ones(2, 3))


@pytest.mark.parametrize(
    ("value", "got"),
    [((_ones(2, 3, 5),), "tuple"), (_ones(2, 3, 5), "Tensor"), ("abc", "str")],
)
def test_the_container_class_is_checked(value, got):
    with pytest.raises(ContractError) as e:
        pool(value, _ones(2, 3))
    assert str(e.value).startswith(
        "pool(): argument 'xs': expected a list of torch.Tensor [B, C, T] float "
        f"(float16/bfloat16/float32/float64), got {got}"
    )


def test_tuple_of_any_length_and_a_returned_list():
    out = skips((_ones(2, 3, 5), _ones(2, 3, 9), _ones(2, 3, 1)))
    assert [o.shape for o in out] == [(2, 3)] * 3
    with pytest.raises(ContractError, match=r"expected a tuple of torch.Tensor"):
        skips([_ones(2, 3, 5)])


def test_a_returned_list_is_checked_element_by_element():
    @contract
    def split(x: Float[Tensor, "B T"]) -> list[Float[Tensor, "B T"]]:
        return [x, x[:, :-1]]

    with pytest.raises(ContractError, match=r"return\[1\], axis 1: expected size T=4, got 3"):
        split(_ones(2, 4))


def test_constraints_on_the_list_apply_to_each_element_in_full_mode():
    good, bad = torch.full((2, 3), 0.5), torch.full((2, 3), 2.0)
    with contracts.mode("full"):
        bounded([good, good])
        bounded((good,))  # Sequence takes tuples too
        with pytest.raises(ContractError, match=r"'xs\[1\]': expected values in \[0, 1\]"):
            bounded([good, bad])
    with contracts.mode("shapes"):
        bounded([good, bad])  # values are full mode's


def test_optional_elements_may_be_none():
    assert maybe([None, _ones(2, 3)]).shape == (2, 3)
    with pytest.raises(ContractError, match=r"'xs\[1\]', axis 1: expected size T=3, got 4"):
        maybe([_ones(2, 3), None, _ones(2, 4)][::2])


@pytest.mark.slow
@pytest.mark.parametrize("fullgraph", [False, True])
def test_compiled_checks_every_element(fullgraph):
    torch._dynamo.reset()
    g = torch.compile(pool, backend="aot_eager", fullgraph=fullgraph)
    assert torch.equal(g([_ones(2, 3, 5)] * 2, _ones(2, 3)), torch.full((2, 3), 3.0))
    exc = ContractError if not fullgraph else Exception
    with pytest.raises(exc) as e:
        g([_ones(2, 3, 5), _ones(2, 4, 5)], _ones(2, 3))
    assert "pool(): argument 'xs" in str(e.value) and "expected size C" in str(e.value)


def test_docs_name_the_container():
    p = plan_of(pool)
    assert _shape(p.slot("xs")) == "list of [B, C, T]"
    assert _shape(plan_of(skips).slot("xs")) == "tuple of [B, C, _]"


@pytest.mark.contracts
@settings(max_examples=25, deadline=None)
@given(inputs_for(pool))
def test_generated_lists_meet_the_contract(ai):
    args, kwargs = ai
    xs = args[0] if args else kwargs["xs"]
    assert isinstance(xs, list) and 1 <= len(xs) <= 3
    pool(*args, **kwargs)


@pytest.mark.contracts
@settings(max_examples=25, deadline=None)
@given(inputs_for(skips))
def test_generated_tuples_meet_the_contract(ai):
    args, kwargs = ai
    xs = args[0] if args else kwargs["xs"]
    assert isinstance(xs, tuple)
    skips(*args, **kwargs)
