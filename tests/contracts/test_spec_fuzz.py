"""Malformed contract specs are refused at decoration time with a clear error.

Hypothesis draws broken dim strings, broken ``Range`` bounds, metadata of the wrong type and bad
``dims=`` bindings; decoration must raise ``TypeError`` (or a ``TorchdxError``) whose message quotes
the offending piece — never an ``AttributeError`` from deep inside, never silence — and metadata
the checker cannot check must at least warn (``ContractWarning``).
"""

import warnings
from typing import Annotated, Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from jaxtyping import Float
from torch import Tensor

import contracts
from contracts import Range, TorchdxError, contract

CORPUS = {"specs": 0}

BAD_EXPRESSIONS = st.sampled_from(["T-", "3x", "self..x", "a b", "T**", "(T", "T)", "1/", "$T"])
# one token of a dim string ("B T" is two dims, so no spaces here)
BAD_DIM_TOKENS = st.sampled_from(["T-", "3x", "self..x", "T**", "(T", "1/", "T+*2"])
BAD_RANGES = st.one_of(
    st.tuples(st.integers(1, 100), st.integers(-100, 0)),  # empty: lo > hi
    st.tuples(st.just(float("nan")), st.integers(0, 5)),
    st.tuples(st.integers(0, 5), st.just(float("nan"))),
    st.tuples(st.just(0), BAD_EXPRESSIONS),
    st.tuples(BAD_EXPRESSIONS, st.just(1)),
    st.tuples(st.just([0]), st.just(1)),  # a list is not a bound
)
BAD_DIMS = st.one_of(
    st.builds(lambda v: {"T": v}, st.sampled_from([5.5, [1], None, object()])),
    st.builds(lambda e: {"T": e}, BAD_EXPRESSIONS),
    st.builds(lambda k: {k: 3}, st.sampled_from(["", "1T", "T T", "-"])),
)
UNCHECKABLE_META = st.sampled_from([3, "x", 1.5, None, object(), ["Finite"]])


def _decorate(annotation: Any, **kw: Any) -> Any:
    def f(x: annotation) -> None:  # type: ignore[valid-type]
        return None

    return contract(**kw)(f) if kw else contract(f)


def _assert_clear(exc: BaseException, piece: str) -> None:
    assert isinstance(exc, (TypeError, TorchdxError)), f"{type(exc).__name__}: {exc}"
    assert piece in str(exc), f"the message does not quote {piece!r}: {exc}"


@settings(max_examples=60, deadline=None, derandomize=True)
@given(BAD_DIM_TOKENS)
def test_bad_dim_strings(expr: str) -> None:
    CORPUS["specs"] += 1
    with pytest.raises(Exception) as info:
        _decorate(Float[Tensor, f"B {expr}"])
    _assert_clear(info.value, expr.strip("()"))


@settings(max_examples=60, deadline=None, derandomize=True)
@given(BAD_RANGES)
def test_bad_range_bounds(bounds: tuple[Any, Any]) -> None:
    CORPUS["specs"] += 1
    with pytest.raises(Exception) as info:
        _decorate(Annotated[Float[Tensor, "B T"], Range(*bounds)])
    assert isinstance(info.value, (TypeError, TorchdxError)), repr(info.value)
    assert "Range" in str(info.value) or any(str(b) in str(info.value) for b in bounds)


@settings(max_examples=40, deadline=None, derandomize=True)
@given(BAD_DIMS)
def test_bad_dims_bindings(dims: dict[str, Any]) -> None:
    CORPUS["specs"] += 1
    with pytest.raises(Exception) as info:
        _decorate(Float[Tensor, "B T"], dims=dims)
    assert isinstance(info.value, (TypeError, TorchdxError)), repr(info.value)
    assert "dims" in str(info.value), str(info.value)


@settings(max_examples=20, deadline=None, derandomize=True)
@given(UNCHECKABLE_META)
def test_metadata_the_checker_cannot_check_warns(meta: Any) -> None:
    CORPUS["specs"] += 1
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _decorate(Annotated[Float[Tensor, "B T"], meta])
    assert any(issubclass(w.category, contracts.ContractWarning) for w in caught), (
        f"Annotated metadata {meta!r} is silently unchecked"
    )
    message = next(
        str(w.message) for w in caught if issubclass(w.category, contracts.ContractWarning)
    )
    assert "'x'" in message and "f()" in message, message
