"""The CPU value checks of the fast path (``contracts._values``) decide as the reference judge does.

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
from jaxtyping import Bool, Float, Int
from torch import Tensor

import contracts
from contracts import ContractError, Mask, Range, contract
from contracts._check import Fail, judge_values, values_pending
from contracts._plan import make_slot
from contracts._values import (
    _EXTREMA,
    _INLINE_MAX,
    _LIST_MASK,
    _OFF_FOR,
    _PROBE,
    _SMALL_MASK,
    _UNBROADCAST_MIN,
    cpu_value_check,
)


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
    layout=st.sampled_from(["contiguous", "transposed", "broadcast", "bytes_of_two"]),
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
    elif layout == "broadcast":  # a new stride-0 axis in front, 40 repeats (some at or above
        # _SMALL_MASK elements, where the repeats are dropped before the row count)
        slot = _slot(Annotated[Bool[Tensor, f"r {dims}"], Mask(axis=axis, padding=padding)])
        x = x.expand(40, *shape)
    elif layout == "bytes_of_two":  # True stored as byte 2 (a uint8 tensor viewed as bool)
        x = (x.to(torch.uint8) * 2).view(torch.bool)
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


_I64 = torch.iinfo(torch.int64)


def _bindings_reference(slot, x, b) -> bool:
    pending: list = []
    values_pending(slot, x, pending)
    try:
        judge_values(pending, b, None)
    except Fail:
        return False
    return True


@settings(max_examples=200, deadline=None, derandomize=True, database=None)
@given(
    n=st.sampled_from([1, 2, 64, _INLINE_MAX, 3000]),
    dtype=st.sampled_from([torch.int64, torch.int32, torch.int16, torch.uint8]),
    bounds=st.sampled_from([(0, None), (1, 5), (None, 7), (0, "V-1"), ("V", "2*V")]),
    V=st.integers(1, 9),
    special=st.sampled_from([None, "low", "high", "min", "max"]),
)
def test_integer_range_checks_agree_with_the_reference(n, dtype, bounds, V, special):
    """Integer tensors take the aminmax range check, with number or expression bounds; the
    expression is evaluated in the call's bindings (``V`` here) and the verdict matches the
    reference's on values at both bounds and at the dtype's extremes."""
    slot = _slot(Annotated[Int[Tensor, " N"], Range(*bounds)])
    info = torch.iinfo(dtype)
    x = torch.full((n,), min(max(3, info.min), info.max), dtype=dtype)
    value = {"low": -1, "high": 2 * V + 1, "min": info.min, "max": info.max}
    if special is not None:
        x[n // 2] = max(min(value[special], info.max), info.min)
    b = {"V": V}
    ok = cpu_value_check(slot.tensor)
    want = _bindings_reference(slot, x, b)
    for _ in range(2):  # the second may be remembered
        assert ok(x, b, None) == want


def test_expression_bounds_remember_a_tensor_only_for_the_numbers_they_gave():
    """Token ids valid for a vocabulary of 10 are not thereby valid for one of 5."""
    ok = cpu_value_check(_slot(Annotated[Int[Tensor, " N"], Range(0, "V-1")]).tensor)
    ids = torch.arange(8).repeat(_INLINE_MAX // 8)
    assert ok(ids, {"V": 10}, None)
    assert ok(ids, {"V": 10}, None)  # remembered
    assert not ok(ids, {"V": 5}, None)
    assert not ok(ids, {}, None)  # V unbound: the reference judge words it
    assert ok(ids, {"V": 8}, None)
    ids[0] = 8  # an in-place write: checked again
    assert not ok(ids, {"V": 8}, None)


def test_integer_bounds_compare_exactly_at_the_int64_extremes():
    """2**63 - 1 and 2**63 - 2 round to the same double: the bound test must not."""
    ok = cpu_value_check(_slot(Annotated[Int[Tensor, " N"], Range(None, _I64.max - 1)]).tensor)
    assert ok(torch.tensor([0, _I64.max - 1]), {}, None)
    assert not ok(torch.tensor([0, _I64.max]), {}, None)
    assert not _bindings_reference(
        _slot(Annotated[Int[Tensor, " N"], Range(None, _I64.max - 1)]),
        torch.tensor([0, _I64.max]),
        {},
    )


def test_extrema_remembered_under_one_range_decide_another():
    """The alphas a predictor returns as Probability() and a loss takes as Range(0, None) are
    reduced once; both verdicts still come out right, failing ones included."""
    prob = cpu_value_check(_slot(Annotated[Float[Tensor, " N"], Range(0, 1)]).tensor)
    nonneg = cpu_value_check(_slot(Annotated[Float[Tensor, " N"], Range(0, None)]).tensor)
    x = torch.linspace(0, 2, _INLINE_MAX)
    assert not prob(x, {}, None)
    assert _EXTREMA[id(x)][2:] == (0.0, 2.0)
    hits = nonneg.gate[1]
    assert nonneg(x, {}, None)
    assert nonneg.gate[1] == hits + 1  # decided from the remembered extrema
    y = torch.zeros(_INLINE_MAX)
    y[5] = float("nan")
    assert not nonneg(y, {}, None)
    assert not prob(y, {}, None)  # NaN remembered as NaN: fails every range


@settings(max_examples=200, deadline=None, derandomize=True, database=None)
@given(
    B=st.integers(1, 6),
    S=st.integers(1, 40),
    T=st.integers(1, 5),
    bad_row=st.one_of(st.none(), st.integers(0, 5)),
    view=st.sampled_from(
        [
            "expand",
            "expand_again",
            "unsqueeze",
            "rows",
            "cols",
            "step",
            "transpose",
            "shifted",
            "same",
        ]
    ),
    padding=st.booleans(),
    write=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_views_of_a_checked_mask_decide_as_the_reference(
    B, S, T, bad_row, view, padding, write, seed
):
    """A mask is also remembered by the rows it reads, so the attention masks expanded from a
    checked padding mask are not read again. No view that reads other rows (a slice, a
    transpose) and no mask written since may be taken as checked."""
    g = torch.Generator().manual_seed(seed)
    valid = torch.rand(B, S, generator=g) < 0.15  # sparse: slices often leave a row empty
    valid[:, 0] = True  # every row of the base valid, some only at position 0
    if bad_row is not None and bad_row < B:
        valid[bad_row] = False  # a row with no valid position
    base = ~valid if padding else valid
    spec2 = _slot(Annotated[Bool[Tensor, "B S"], Mask(padding=padding)])
    spec3 = _slot(Annotated[Bool[Tensor, "B T S"], Mask(padding=padding)])
    ok2, ok3 = cpu_value_check(spec2.tensor), cpu_value_check(spec3.tensor)
    first, fspec, fok = base, spec2, ok2
    if view == "shifted":  # the same geometry one row on
        first = base[:-1]
    elif view == "expand_again":  # a view of the same rows checked before
        first, fspec, fok = base[:, None, :], spec3, ok3
    assert fok(first, {}, None) == _reference(fspec, first)
    if write:  # an in-place write after the check: every view of it is checked again
        base[0] = padding  # row 0 now has no valid position
    if view in ("expand", "expand_again"):
        x, spec, ok = base[:, None, :].expand(B, T, S), spec3, ok3
    elif view == "unsqueeze":
        x, spec, ok = base[:, None, :], spec3, ok3
    elif view == "rows":
        x, spec, ok = base[1:], spec2, ok2
    elif view == "cols":
        x, spec, ok = base[:, 1:], spec2, ok2
    elif view == "step":
        x, spec, ok = base[:, ::2], spec2, ok2
    elif view == "transpose":
        x, spec, ok = base.t(), spec2, ok2
    elif view == "shifted":
        x, spec, ok = base[1:], spec2, ok2
    else:
        x, spec, ok = base, spec2, ok2
    for _ in range(2):
        assert ok(x, {}, None) == _reference(spec, x)


def test_an_expanded_mask_is_a_hit_on_the_mask_it_reads():
    ok2 = cpu_value_check(_slot(Annotated[Bool[Tensor, "B S"], Mask()]).tensor)
    ok3 = cpu_value_check(_slot(Annotated[Bool[Tensor, "B T S"], Mask()]).tensor)
    mask = torch.ones(4, 30, dtype=torch.bool)
    assert ok2(mask, {}, None)
    hits = ok3.gate[1]
    assert ok3(mask[:, None, :].expand(4, 7, 30), {}, None)  # a new tensor, the same rows
    assert ok3.gate[1] == hits + 1


def test_a_remembered_tensor_is_checked_again_after_an_in_place_write():
    slot = _slot(Annotated[Float[Tensor, " N"], Range(-1, 1)])
    ok = cpu_value_check(slot.tensor)
    x = torch.zeros(_INLINE_MAX)
    assert ok(x, {}, None)
    assert id(x) in _EXTREMA  # remembered
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


@contract
def scaled(
    x: Float[Tensor, " B"], s: Annotated[float, Range(0, None)], k: Annotated[int, Range(None, 3)]
) -> Float[Tensor, " B"]:
    return x * s


@pytest.mark.parametrize(
    "s, k",
    [(1.0, 0), (0.0, 3), (float("nan"), 0), (float("inf"), 0), (-1.0, 0), (1.0, 4), (True, 0)],
)
def test_number_ranges_written_into_the_wrapper_decide_as_the_reference(s, k):
    """Ranges with number bounds on Python numbers are compared in the generated code; NaN, inf
    and anything but an int or float fall through to the reference check."""
    x = torch.zeros(3)
    scaled(x, 1.0, 0)  # the signature is cached
    assert _outcome(scaled, (x, s, k)) == _outcome(scaled.__wrapped_generic__, (x, s, k))
    if s is True:  # a bool is no float: refused by the type check
        assert "argument 's': expected float, got bool True" in _outcome(scaled, (x, s, k))
    elif (s, k) in ((1.0, 0), (0.0, 3)):
        assert _outcome(scaled, (x, s, k)) is None
    else:
        assert "expected a value in" in _outcome(scaled, (x, s, k))


class _CountAminmax(torch.utils._python_dispatch.TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.n = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.n += func is torch.ops.aten.aminmax.default
        return func(*args, **(kwargs or {}))


@contract
def _layer(
    x: Annotated[Float[Tensor, "B T"], Range(-10, 10)],
) -> Annotated[Float[Tensor, "B T"], Range(-10, 10)]:
    return x * 0.5


@pytest.mark.parametrize("size", [(4, 8), (64, 64)])  # written-out and called checks alike
def test_a_stack_of_layers_reduces_each_activation_once(size):
    """A layer's return never comes back to its own check, so that check stops looking up; it
    still remembers the extrema it found, and the next layer's input check (the same tensor)
    is a hit: one reduction per activation, also long after the lookups were switched off."""
    x = torch.rand(*size)
    for _ in range(300):  # past the probe window: the return check's lookups are off
        x = _layer(x)
    with _CountAminmax() as count:
        for _ in range(100):
            x = _layer(x)
    assert count.n == 100


@contract
def _scaled(
    x: Annotated[Float[Tensor, "B T"], Range(-10, 10)], k: float
) -> Annotated[Float[Tensor, "B T"], Range(-10, 10)]:
    return x * k


@contract
def _first_valid(m: Annotated[Bool[Tensor, "B T"], Mask()]) -> Int[Tensor, " B"]:
    return m.int().argmax(dim=1)


@pytest.mark.parametrize("size", [(4, 8), (64, 64)])  # written-out and called checks alike
def test_checks_with_lookups_off_still_catch_every_bad_value(size):
    """Fresh tensors at every call switch the checks' lookups off (the generated wrapper then
    writes the small cases out); a bad argument, a bad return and a bad mask still fail."""
    g = torch.Generator().manual_seed(0)
    for _ in range(300):
        _scaled(torch.rand(*size, generator=g), 1.0)
        m = torch.rand(*size, generator=g) > 0.5
        m[:, 0] = True  # every row keeps a valid position
        _first_valid(m)
    bad = torch.rand(*size, generator=g)
    bad[-1, -1] = 50.0
    with pytest.raises(ContractError, match=r"argument 'x'.*expected values in \[-10, 10\]"):
        _scaled(bad, 1.0)
    with pytest.raises(ContractError, match=r"return.*expected values in \[-10, 10\]"):
        _scaled(torch.rand(*size, generator=g), 100.0)
    mask = torch.ones(*size, dtype=torch.bool)
    mask[-1] = False
    with pytest.raises(ContractError, match=r"argument 'm'"):
        _first_valid(mask)
