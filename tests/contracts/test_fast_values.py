"""The CPU value checks of the fast path (``contracts._fast``) decide as the reference judge does.

The reference is ``values_pending`` + ``judge_values`` (the reductions every device uses, read
on the host); the fast checks pick other reductions by size (a Python read for small 2-D masks,
``any``/``all`` along the axis, a ``uint8`` row count for large masks) and remember large tensors
that passed. Each property below crosses those size thresholds.
"""

from __future__ import annotations

import gc
from typing import Annotated

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from jaxtyping import Bool, Float
from torch import Tensor

import contracts
from contracts import ContractError, Mask, Range, contract
from contracts._check import Fail, judge_values, values_pending
from contracts._fast import (
    _INLINE_MAX,
    _LIST_MASK,
    _MEMO,
    _OFF_FOR,
    _PROBE,
    _SMALL_MASK,
    _UNBROADCAST_MIN,
    cpu_value_check,
)
from contracts._plan import make_slot


def _slot(annotation):
    return make_slot("test", "x", 0, None, annotation)


def _reference(slot, x) -> bool:
    pending: list = []
    values_pending(slot, x, pending)
    try:
        judge_values(pending, {}, None)
    except Fail:
        return False
    return True


# row lengths and row counts that put masks on every path: list read (<= _LIST_MASK elements),
# any/all along the axis (< _SMALL_MASK), uint8 row count (>= _SMALL_MASK)
sizes = st.sampled_from([1, 2, 3, 7, 16, 40, 70, 130])


@settings(max_examples=300, deadline=None, derandomize=True, database=None)
@given(
    shape=st.lists(sizes, min_size=1, max_size=3),
    axis_pick=st.integers(0, 5),
    padding=st.booleans(),
    fill=st.sampled_from(["ones", "zeros", "random", "one_row_empty", "one_row_full"]),
    seed=st.integers(0, 2**16),
    layout=st.sampled_from(["contiguous", "transposed", "broadcast"]),
)
def test_mask_checks_agree_with_the_reference(shape, axis_pick, padding, fill, seed, layout):
    ndim = len(shape)
    axis = axis_pick % ndim - (ndim if axis_pick >= ndim else 0)  # both signs
    dims = " ".join(f"d{i}" for i in range(ndim))
    slot = _slot(Annotated[Bool[Tensor, dims], Mask(axis=axis, padding=padding)])
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(shape, generator=g) > 0.5
    if fill == "ones":
        x[:] = True
    elif fill == "zeros":
        x[:] = False
    elif fill in ("one_row_empty", "one_row_full"):
        x[:] = fill == "one_row_empty"  # every row valid except the one set below
        idx = [int(torch.randint(0, n, (), generator=g)) for n in shape]
        idx[axis] = slice(None)
        x[tuple(idx)] = fill != "one_row_empty"
    if layout == "transposed" and ndim >= 2:  # a non-contiguous mask
        x = x.transpose(0, -1).contiguous().transpose(0, -1)
    elif layout == "broadcast":  # a new stride-0 axis in front, 40 repeats (some above
        # _UNBROADCAST_MIN elements, where the repeats are dropped before reducing)
        slot = _slot(Annotated[Bool[Tensor, f"r {dims}"], Mask(axis=axis, padding=padding)])
        x = x.expand(40, *shape)
    assert cpu_value_check(slot.tensor)(x, {}, None) == _reference(slot, x)


@settings(max_examples=200, deadline=None, derandomize=True, database=None)
@given(
    n=st.sampled_from([1, 5, 64, _INLINE_MAX - 1, _INLINE_MAX, 3000]),
    special=st.sampled_from([None, "nan", "inf", "-inf", "low", "high"]),
    dtype=st.sampled_from([torch.float32, torch.float64, torch.bfloat16, torch.float16]),
    bounds=st.sampled_from([(None, None), (-2.0, 2.0), (0.0, None), (None, 0.5)]),
    grad=st.booleans(),
    broadcast=st.booleans(),
)
def test_float_range_checks_agree_with_the_reference(n, special, dtype, bounds, grad, broadcast):
    lo, hi = bounds
    meta = Range(lo, hi) if (lo, hi) != (None, None) else contracts.Finite()
    slot = _slot(Annotated[Float[Tensor, " N"], meta])
    x = torch.linspace(-0.25, 0.25, n).to(dtype)
    value = {"nan": float("nan"), "inf": float("inf"), "-inf": float("-inf"), "low": -3.0}
    if special == "high":
        x[-1] = 1.0
    elif special is not None:
        x[n // 2] = value[special]
    x.requires_grad_(grad)
    if broadcast:  # [8, N] reading one row eight times (stride 0); 8 x 3000 > _UNBROADCAST_MIN
        slot = _slot(Annotated[Float[Tensor, "R N"], meta])
        x = x.expand(8, n)
    # bounds are exact in every dtype here, so the fast check must agree both ways
    assert cpu_value_check(slot.tensor)(x, {}, None) == _reference(slot, x)


def test_a_remembered_tensor_is_checked_again_after_an_in_place_write():
    slot = _slot(Annotated[Float[Tensor, " N"], Range(-1, 1)])
    ok = cpu_value_check(slot.tensor)
    x = torch.zeros(_INLINE_MAX)
    assert ok(x, {}, None)
    assert id(x) in _MEMO  # large enough to be remembered
    assert ok(x, {}, None)
    x[3] = float("nan")  # bumps the version counter
    assert not ok(x, {}, None)
    y = torch.zeros(2 * _INLINE_MAX)
    assert ok(y, {}, None)
    y[:_INLINE_MAX].view(-1)[0] = 5.0  # a write through a view bumps the base's counter too
    assert not ok(y, {}, None)


def test_a_remembered_tensor_is_checked_again_for_another_constraint():
    loose = cpu_value_check(_slot(Annotated[Float[Tensor, " N"], Range(-10, 10)]).tensor)
    tight = cpu_value_check(_slot(Annotated[Float[Tensor, " N"], Range(0, 1)]).tensor)
    x = torch.full((_INLINE_MAX,), 5.0)
    assert loose(x, {}, None)
    assert not tight(x, {}, None)


def test_a_new_tensor_at_a_recycled_address_is_checked():
    ok = cpu_value_check(_slot(Annotated[Float[Tensor, " N"], Range(-1, 1)]).tensor)
    seen = set()
    for _ in range(50):  # the allocator hands out recycled ids; a weak reference tells them apart
        x = torch.zeros(_INLINE_MAX)
        assert ok(x, {}, None)
        seen.add(id(x))
        del x
        gc.collect()
        bad = torch.full((_INLINE_MAX,), 7.0)
        if id(bad) in seen:
            assert not ok(bad, {}, None)
            return
        del bad
    pytest.fail("no id was recycled in 50 tries: the property went untested")


def test_large_broadcast_tensors_are_judged_through_their_base():
    """Past _UNBROADCAST_MIN elements the repeats of a stride-0 axis are dropped before the
    reduction; a bad value or a bad row in the base must still be found, as by the reference."""
    rows = _UNBROADCAST_MIN // 100 + 1  # [rows, 100] read from one [1, 100] row
    base = torch.linspace(-1, 1, 100)[None]
    spec = _slot(Annotated[Float[Tensor, "R N"], Range(-1, 1)])
    for x in (base, torch.cat([base[:, :-1], torch.full((1, 1), 3.0)], 1)):
        big = x.expand(rows, 100)
        assert big.numel() >= _UNBROADCAST_MIN and 0 in big.stride()
        assert cpu_value_check(spec.tensor)(big, {}, None) == _reference(spec, big)
    mspec = _slot(Annotated[Bool[Tensor, "R T S"], Mask()])
    m = torch.ones(4, 1, 100, dtype=torch.bool)
    m[2] = False  # one batch element with no valid key, repeated over every query
    for mask in (torch.ones(4, 1, 100, dtype=torch.bool), m):
        big = mask.expand(4, _UNBROADCAST_MIN // 400 + 1, 100)
        assert big.numel() >= _UNBROADCAST_MIN
        assert cpu_value_check(mspec.tensor)(big, {}, None) == _reference(mspec, big)


def test_remembering_switches_off_where_every_tensor_is_new_and_back_on_later():
    ok = cpu_value_check(_slot(Annotated[Float[Tensor, " N"], Range(-1, 1)]).tensor)
    keep = [torch.zeros(4) for _ in range(_PROBE)]  # alive: no id is recycled
    for x in keep:
        assert ok(x, {}, None)
    assert ok.gate[0] == _OFF_FOR  # no hit in a window of misses: off for a while
    bad = torch.full((4,), 5.0)
    assert not ok(bad, {}, None)  # off means not remembered, never unchecked
    for _ in range(_OFF_FOR):
        ok(keep[0], {}, None)
    assert ok.gate[0] == 0  # and on again


def test_remembering_stays_on_where_tensors_come_back():
    ok = cpu_value_check(_slot(Annotated[Float[Tensor, " N"], Range(-1, 1)]).tensor)
    for _ in range(4 * _PROBE):
        mask = torch.zeros(4)  # a new tensor per "step", checked by four "layers"
        for _layer in range(4):
            assert ok(mask, {}, None)
    assert ok.gate[0] == 0


def test_inference_tensors_are_checked_without_a_version_counter():
    ok = cpu_value_check(_slot(Annotated[Float[Tensor, " N"], Range(-1, 1)]).tensor)
    with torch.inference_mode():
        x = torch.zeros(_INLINE_MAX)
        y = torch.full((_INLINE_MAX,), 3.0)
    assert ok(x, {}, None)
    assert not ok(y, {}, None)


# -- the generated wrapper ------------------------------------------------------------------


@contract
def masked(
    x: Annotated[Float[Tensor, "B T"], Range(-10, 10)],
    pad: Annotated[Bool[Tensor, "B T"], Mask(padding=True)],
) -> Annotated[Float[Tensor, "B T"], Range(-10, 10)]:
    return x * 2


def test_the_common_call_takes_the_generated_wrapper():
    assert hasattr(masked, "__wrapped_generic__")


@pytest.mark.parametrize("T", [4, _LIST_MASK, _SMALL_MASK])
def test_generated_wrapper_words_failures_as_the_reference(T):
    x, pad = torch.zeros(2, T), torch.zeros(2, T, dtype=torch.bool)
    generic = masked.__wrapped_generic__
    for f in (masked, masked):  # the second call takes the cached signature
        f(x, pad)
    cases = [
        ((torch.full((2, T), 11.0), pad), "expected values in \\[-10, 10\\]"),
        ((torch.full((2, T), 6.0), pad), "return"),  # x * 2 leaves the range
        ((x, torch.ones(2, T, dtype=torch.bool)), "True = padded"),
    ]
    for args, pattern in cases:
        with pytest.raises(ContractError, match=pattern) as fast:
            masked(*args)
        with pytest.raises(ContractError) as ref:
            generic(*args)
        assert str(fast.value) == str(ref.value)


def test_inputs_failing_in_the_generated_wrapper_do_not_run_the_function():
    calls = []

    @contract
    def f(x: Annotated[Float[Tensor, "B T"], Range(0, 1)]) -> Float[Tensor, "B T"]:
        calls.append(1)
        return x

    f(torch.zeros(2, 3))
    f(torch.zeros(2, 3))
    with pytest.raises(ContractError):
        f(torch.full((2, 3), 2.0))
    assert len(calls) == 2


@contract
def layered(
    x: Float[Tensor, "B T"],
    index: Annotated[int, Range(0, 3)],
    mask: Annotated[Bool[Tensor, "B T"], Mask()] | None = None,
    memory: Float[Tensor, "B S"] | None = None,
) -> Annotated[Float[Tensor, "B T"], Range(-5, 5)]:
    return x + index


def _outcome(f, args):
    try:
        f(*args)
    except ContractError as e:
        return str(e)
    return None


@settings(max_examples=120, deadline=None, derandomize=True, database=None)
@given(
    arity=st.integers(2, 4),
    index=st.sampled_from([0, 3, 4, -1]),
    xval=st.sampled_from([0.0, 4.5]),
    mask_ok=st.booleans(),
    mem_t=st.sampled_from([3, 4]),
)
def test_calls_leaving_out_defaults_decide_as_the_reference(arity, index, xval, mask_ok, mem_t):
    """One branch per number of arguments, plain numbers with ranges in the key and checked
    every call: each outcome (and each message) equals the general wrapper's."""
    mask = torch.ones(2, 4, dtype=torch.bool)
    if not mask_ok:
        mask[1] = False
    args = (torch.full((2, 4), xval), index, mask, torch.zeros(2, mem_t))[:arity]
    generic = layered.__wrapped_generic__
    want = _outcome(generic, args)
    for _ in range(2):  # the second call may take the cached signature
        assert _outcome(layered, args) == want


@contract
def pair(
    x: Float[Tensor, "B T"], k: int
) -> tuple[Annotated[Float[Tensor, "B T"], Range(-5, 5)], Annotated[Bool[Tensor, "B T"], Mask()]]:
    return x * k, x > -k


@contract(
    returns={
        "y": Annotated[Float[Tensor, "B N"], Range(0, None)],
        "n": Annotated[Float[Tensor, " B"], Range(0, "N")],
    }
)
def keyed(x: Float[Tensor, "B T"], k: int) -> dict[str, Tensor]:
    y = x[:, : max(k, 0)].abs() if k != 3 else -x[:, :1].abs() - 1
    out = {"y": y, "n": torch.full((x.shape[0],), float(k))}
    if k == 4:
        del out["n"]
    return out


@settings(max_examples=150, deadline=None, derandomize=True, database=None)
@given(
    which=st.sampled_from(["pair", "keyed"]),
    T=st.integers(1, 4),
    k=st.integers(-2, 6),
    xval=st.sampled_from([0.0, 1.0, 2.0]),
    shape_bad=st.booleans(),
)
def test_tuple_and_dict_returns_decide_as_the_reference(which, T, k, xval, shape_bad):
    """Returns checked by the generated code (signature, then CPU value checks) give the same
    outcome and message as the general wrapper, for tuples and dicts, passing or failing."""
    f = pair if which == "pair" else keyed
    x = torch.full((2, T), xval)
    args = (x, k)
    if shape_bad and which == "pair":
        args = (x[0], k)  # an input of the wrong rank: refused before the call
    generic = f.__wrapped_generic__
    want = _outcome(generic, args)
    for _ in range(2):
        assert _outcome(f, args) == want
