"""contracts.strategies.inputs_for: generated inputs satisfy the contract they came from."""

from __future__ import annotations

import inspect
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


# --- positional-only parameters, negative upper bounds, expression and f-string dims ----------


@contract
def posonly(
    x: Float[Tensor, "B T"],
    scale: Annotated[float, Range(0, 1)] = 0.5,
    /,
    y: Float[Tensor, "B"] | None = None,
    *,
    k: Annotated[int, Range(1, "T")],
) -> Float[Tensor, "B T"]:
    return x * scale


@contract
def posonly_required(x: Float[Tensor, "B"], lengths: Int[Tensor, "B"], /) -> None:
    return None


@FAST
@given(inputs_for(posonly))
def test_positional_only_parameters_are_passed_by_position(ai):
    """Regression: positional-only parameters were passed by keyword (TypeError)."""
    args, kw = ai
    assert len(args) == 1 and "x" not in kw and "scale" not in kw
    posonly(*args, **kw)


@FAST
@given(inputs_for(posonly_required))
def test_two_positional_only_parameters(ai):
    args, kw = ai
    assert len(args) == 2 and kw == {}
    posonly_required(*args, **kw)


def test_positional_only_default_filled_when_a_later_one_is_drawn():
    from contracts.strategies import _arrange

    sig = inspect.signature(lambda a=1, b=2, c=3, /: None).parameters
    assert _arrange({"c": 9}, ["a", "b", "c"], dict(sig)) == ((1, 2, 9), {})
    assert _arrange({"a": 7}, ["a", "b", "c"], dict(sig)) == ((7,), {})


@contract
def negative(
    x: Annotated[Float[Tensor, "B"], Range(None, -1)],
    i: Annotated[Int[Tensor, "B"], Range(None, -1)],
    j: Annotated[Int[Tensor, "B"], Range(None, 3)],
    n: Annotated[int, Range(None, -1)],
    f: Annotated[float, Range(None, -100.5)],
    g: Annotated[float, Range(-1e3, None)],
) -> None:
    return None


@FAST
@given(inputs_for(negative))
def test_negative_upper_bounds_generate_values_inside(ai):
    """Regression: Range(None, -1) drew from [0, -1] (Unsatisfiable / InvalidArgument)."""
    _, kw = ai
    assert kw["x"].max() <= -1 and kw["i"].max() <= -1 and kw["j"].max() <= 3
    assert kw["n"] <= -1 and kw["f"] <= -100.5 and kw["g"] >= -1e3
    negative(**kw)


class Halves(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.n = 3

    @contract(dims={"K": "self.n"})
    def forward(
        self,
        x: Float[Tensor, "B T"],
        prev: Float[Tensor, "B T-1"],
        pairs: Float[Tensor, "B 2*D"],
        d: Float[Tensor, "D"],
        half: Float[Tensor, "T//2+1"],
        ratio: Float[Tensor, "T/T"],
        widest: Float[Tensor, "max(T,D)"],
        model: Float[Tensor, "self.n K-1"],
        tokens: Annotated[Int[Tensor, "B T"], Range(0, "D*2-1")],
        steps: Annotated[int, Range("D", "D+4")],
    ) -> Float[Tensor, "B T"]:
        return x


@FAST
@given(inputs_for(Halves(), sizes={"T": (2, 6)}))
def test_expression_dims_generated_consistently(ai):
    """Every dim form the spec language accepts: arithmetic on drawn dims, // and / (an
    integral float is a size), min/max, self attributes, expressions in Range bounds."""
    _, kw = ai
    b, t = kw["x"].shape
    dd = kw["d"].shape[0]
    assert kw["prev"].shape == (b, t - 1)
    assert kw["pairs"].shape == (b, 2 * dd)
    assert kw["half"].shape == (t // 2 + 1,)
    assert kw["ratio"].shape == (1,)
    assert kw["widest"].shape == (max(t, dd),)
    assert kw["model"].shape == (3, 2)
    assert 0 <= kw["tokens"].min() and kw["tokens"].max() <= 2 * dd - 1
    assert dd <= kw["steps"] <= dd + 4
    Halves()(**kw)


@contract
def fstring_dims(
    n: Annotated[int, Range(1, 5)],
    x: Float[Tensor, "B {n}"],
    y: Float[Tensor, "{n}+B"],
    width: int = 4,
    z: Float[Tensor, "{width}"] | None = None,
) -> None:
    return None


@FAST
@given(inputs_for(fstring_dims))
def test_fstring_dims_read_the_drawn_arguments(ai):
    """Regression: f-string dims ("{n}") were evaluated without the call's arguments
    (KeyError)."""
    _, kw = ai
    assert kw["x"].shape[1] == kw["n"] and kw["y"].shape == (kw["n"] + kw["x"].shape[0],)
    if kw.get("z") is not None:
        assert kw["z"].shape == (4,)
    fstring_dims(**kw)


def test_dim_only_inside_an_expression_cannot_be_generated():
    """The checker refuses every call of such a contract (T is never bound), so say so rather
    than fail with KeyError while drawing."""

    @contract
    def shifted(y: Float[Tensor, "B T-1"]) -> None:
        return None

    with pytest.raises(
        CannotGenerate,
        match=r"shifted\(\): argument 'y' reads T in 'T-1', but no argument's shape binds it",
    ):
        inputs_for(shifted)
    with pytest.raises(contracts.ContractError, match="dim T is unbound"):
        shifted(torch.zeros(2, 3))


def test_unannotated_required_parameter():
    @contract
    def f(x: Float[Tensor, "B"], how) -> None:
        return None

    with pytest.raises(CannotGenerate, match="argument 'how' has no tensor or number annotation"):
        inputs_for(f)

    @contract(strategies={"how": lambda s: s.sampled_from(["a", "b"])})
    def g(x: Float[Tensor, "B"], how, /) -> None:
        assert how in ("a", "b")

    @FAST
    @given(inputs_for(g))
    def ok(ai):
        args, kw = ai
        assert len(args) == 2
        g(*args, **kw)

    ok()


@contract(allow_empty=True)
def empty_ok(
    x: Float[Tensor, "B T"],
    mask: Annotated[Bool[Tensor, "B T"], Mask()],
    pad: Annotated[Bool[Tensor, "B S"], Mask(padding=True)],
) -> None:
    return None


@FAST
@given(inputs_for(empty_ok, sizes={"B": (0, 3), "T": (0, 3), "S": (0, 3)}))
def test_allow_empty_masks_keep_a_valid_position(ai):
    """Empty batches are drawn, but a mask axis is never empty under rows (every row of a
    Mask needs a valid position: see test_robustness.py)."""
    _, kw = ai
    assert kw["mask"].shape[1] >= 1 and kw["pad"].shape[1] >= 1
    empty_ok(**kw)


def test_allow_empty_draws_empty_batches():
    seen = set()

    @settings(max_examples=40, deadline=None, database=None)
    @given(inputs_for(empty_ok, sizes={"B": (0, 3), "T": (0, 3), "S": (0, 3)}))
    def collect(ai):
        seen.add(ai[1]["x"].shape[0])

    collect()
    assert 0 in seen


@contract
def shifted_by_optional(
    y: Float[Tensor, "B T-1"],
    x: Float[Tensor, "B T"] | None = None,
    lengths: Annotated[Int[Tensor, "B"], Range(1, "L")] | None = None,
    frames: Float[Tensor, "L"] | None = None,
) -> None:
    return None


@FAST
@given(inputs_for(shifted_by_optional, sizes={"T": (2, 6)}))
def test_optional_tensor_binding_an_expression_dim_is_drawn(ai):
    """Only x binds T (read by "T-1"), only frames binds L (read by lengths' Range): left out,
    the checker refuses the call, so they are always drawn."""
    _, kw = ai
    assert kw["x"] is not None and kw["frames"] is not None
    shifted_by_optional(**kw)
