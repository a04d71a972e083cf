"""contracts.strategies.inputs_for: generated inputs satisfy the contract they came from."""

from __future__ import annotations

from typing import Annotated

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from jaxtyping import Bool, Float, Int
from torch import Tensor, nn

import contracts
from contracts import Mask, Probability, Range, contract
from contracts.strategies import CannotGenerate, inputs_for

pytestmark = pytest.mark.contracts
FAST = settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))


@contract(sizes={"T": (1, 6)})
def ranged(
    x: Annotated[Float[Tensor, "B T F"], Range(-2, 2)],
    mask: Annotated[Bool[Tensor, "B T"], Mask()],
    lengths: Annotated[Int[Tensor, "B"], Range(1, "T")],
    p: Annotated[Float[Tensor, "B"], Probability()],
    k: Annotated[int, Range(1, "T")],
) -> Float[Tensor, "B F"]:
    return x.sum(1)


@FAST
@given(inputs_for(ranged))
def test_generated_inputs_satisfy_contract(ai):
    args, kw = ai
    x, mask, lengths = kw["x"], kw["mask"], kw["lengths"]
    assert x.shape[:2] == mask.shape and lengths.shape == x.shape[:1]  # shared dims drawn once
    assert 1 <= x.shape[1] <= 6
    assert x.min() >= -2 and x.max() <= 2
    assert mask.any(-1).all()
    assert (lengths >= 1).all() and (lengths <= x.shape[1]).all()
    assert 1 <= kw["k"] <= x.shape[1]
    ranged(*args, **kw)  # and the decorator agrees


def test_size_one_edges_occur():
    seen = set()

    @settings(max_examples=40, deadline=None, database=None)
    @given(inputs_for(ranged))
    def collect(ai):
        seen.add(ai[1]["x"].shape[0])

    collect()
    assert 1 in seen and max(seen) > 1


class Lookup(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.vocab_size = 7
        self.emb = nn.Embedding(7, 3)

    @contract(dims={"V": "self.vocab_size"})
    def forward(
        self, tokens: Annotated[Int[Tensor, "B N"], Range(0, "V-1")]
    ) -> Float[Tensor, "B N 3"]:
        return self.emb(tokens)


@FAST
@given(inputs_for(Lookup()))
def test_module_instance_and_self_dims(ai):
    _, kw = ai
    assert kw["tokens"].max() <= 6


def test_method_without_example_cannot_generate():
    with pytest.raises(CannotGenerate, match="has no example instance"):
        inputs_for(Lookup.forward)


def test_string_argument_without_strategy_cannot_generate():
    @contract
    def f(x: Float[Tensor, "B"], method: str) -> None:
        return None

    with pytest.raises(CannotGenerate, match="cannot generate argument 'method' of type str"):
        inputs_for(f)

    @contract(strategies={"method": lambda s: s.sampled_from(["a", "b"])})
    def g(x: Float[Tensor, "B"], method: str) -> None:
        return None

    @FAST
    @given(inputs_for(g))
    def ok(ai):
        assert ai[1]["method"] in ("a", "b")

    ok()


def test_undecorated_function_is_refused():
    def plain(x):
        return x

    with pytest.raises(CannotGenerate, match="has no contract"):
        inputs_for(plain)


@st.composite
def _bad_value(draw):
    kind = draw(
        st.sampled_from(
            [
                "none",
                "list",
                "int",
                "str",
                "wrong_dtype",
                "wrong_rank",
                "zero",
                "nan",
                "inf",
                "huge",
                "bool",
                "complex",
            ]
        )
    )
    shape = tuple(draw(st.lists(st.integers(0, 4), min_size=0, max_size=4)))
    return kind, shape


def _make(kind, shape):
    return {
        "none": None,
        "list": [[1.0]],
        "int": 3,
        "str": "x",
        "wrong_dtype": torch.zeros(shape, dtype=torch.int32),
        "wrong_rank": torch.zeros(shape),
        "zero": torch.zeros((0, *shape)),
        "nan": torch.full(shape or (1,), float("nan")),
        "inf": torch.full(shape or (1,), float("inf")),
        "huge": torch.full(shape or (1,), 1e6),
        "bool": torch.ones(shape, dtype=torch.bool),
        "complex": torch.zeros(shape, dtype=torch.complex64),
    }[kind]


@settings(max_examples=200, deadline=None, suppress_health_check=list(HealthCheck))
@given(_bad_value(), _bad_value(), st.sampled_from(["x", "mask", "lengths", "p"]))
def test_fuzz_bad_inputs_raise_contract_error_only(a, b, target):
    """Garbage in any argument: a ContractError or success, never an internal error."""
    good = {
        "x": torch.zeros(2, 3, 4),
        "mask": torch.ones(2, 3, dtype=torch.bool),
        "lengths": torch.ones(2, dtype=torch.long),
        "p": torch.zeros(2),
        "k": 1,
    }
    good[target] = _make(*a)
    other = "x" if target != "x" else "p"
    good[other] = _make(*b)
    try:
        ranged(**good)
    except contracts.ContractError as e:
        assert e.argument in good or e.argument.startswith("return")
        assert str(e).startswith("ranged(): ")
