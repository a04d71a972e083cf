"""The fast path (signatures already seen) decides exactly as the full walk does."""

from __future__ import annotations

from typing import Annotated

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from jaxtyping import Float, Int, Shaped
from torch import Tensor, nn

import contracts
from contracts import ContractError, Range, contract
from contracts._check import Fail, check_inputs, check_outputs
from contracts._config import FULL


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.width = 3

    @contract(dims={"W": "self.width"})
    def forward(
        self,
        x: Float[Tensor, "B T W"],
        y: Annotated[Float[Tensor, "B #T"], Range(-5, 5)],
        z: Shaped[Tensor, "*rest T-1"],
        k: Annotated[Int[Tensor, " B"], Range(0, "T")],
    ) -> Float[Tensor, "B T W"]:
        return x + y[..., None] if self.width > 0 else x


dims = st.integers(1, 3)
shape3 = st.tuples(dims, dims, dims)


def _reference(net, args) -> str | None:
    """Outcome of the full walk without any cache: None (passes) or the failing check."""
    plan = Net.forward.__contract__
    try:
        b, s = check_inputs(plan, (net, *args), {}, FULL, None)
        out = args[0] + args[1][..., None]  # what forward returns
        check_outputs(plan, out, b, s, FULL, None)
    except Fail as f:
        return f"{f.code}:{f.slot}:{f.axis}"
    except RuntimeError:
        return "runtime"
    return None


@settings(max_examples=150, deadline=None, derandomize=True, database=None)
@given(
    xs=shape3,
    ys=st.tuples(dims, dims),
    zs=st.lists(dims, min_size=1, max_size=3),
    kb=dims,
    kval=st.integers(-1, 4),
    width=st.integers(2, 3),
    ydt=st.sampled_from([torch.float32, torch.int64]),
    yval=st.sampled_from([0.0, 9.0]),
)
def test_fast_path_agrees_with_the_walk(xs, ys, zs, kb, kval, width, ydt, yval):
    net = NET
    net.width = width
    args = (
        torch.zeros(xs),
        torch.full(ys, yval).to(ydt),
        torch.zeros(zs),
        torch.full((kb,), kval),
    )
    want = _reference(net, args)
    for _ in range(2):  # second call: the signature may now be cached
        try:
            net(*args)
            got = None
        except ContractError as e:
            got = e
        except RuntimeError:
            got = "runtime"
        if want is None:
            assert got is None
        elif want == "runtime":
            assert got == "runtime"
        else:
            assert isinstance(got, ContractError), (want, got)
            _code, slot, axis = want.split(":")
            assert got.argument == slot and str(got.axis) == axis, (want, str(got))


NET = Net()


def test_value_checks_run_on_every_cached_call():
    f = NET
    NET.width = 3
    good = (
        torch.zeros(2, 4, 3),
        torch.zeros(2, 4),
        torch.zeros(3),
        torch.zeros(2, dtype=torch.long),
    )
    f(*good)
    f(*good)
    with pytest.raises(ContractError, match=r"argument 'y': expected values in \[-5, 5\]"):
        f(good[0], torch.full((2, 4), 7.0), good[2], good[3])
    with contracts.mode("shapes"):
        f(good[0], torch.full((2, 4), 7.0), good[2], good[3])


def test_self_dims_are_part_of_the_signature():
    good = (
        torch.zeros(2, 4, 3),
        torch.zeros(2, 4),
        torch.zeros(3),
        torch.zeros(2, dtype=torch.long),
    )
    NET.width = 3
    NET(*good)
    NET.width = 2
    with pytest.raises(ContractError, match=r"expected size W=2, got 3"):
        NET(*good)
    NET.width = 3


def test_check_inside_a_cached_call_still_binds():
    @contract
    def f(x: Float[Tensor, "B"]) -> Float[Tensor, "B D"]:
        h = x[:, None].expand(-1, 2 if x.shape[0] < 3 else 4)
        contracts.check(h, Float[Tensor, "B D"], name="h")
        return h[:, :2]

    f(torch.zeros(2))
    f(torch.zeros(2))
    with pytest.raises(ContractError, match=r"return, axis 1: expected size D=4, got 2"):
        f(torch.zeros(3))


def test_dims_bound_by_the_return_reach_value_checks_of_cached_calls():
    @contract
    def f(
        x: Float[Tensor, "B T"],
    ) -> tuple[Float[Tensor, "B N"], Annotated[Int[Tensor, " B"], Range(0, "N")]]:
        return x[:, :2], torch.full((x.shape[0],), 2)

    for _ in range(3):
        f(torch.zeros(2, 5))


def test_ranges_on_python_numbers_are_checked_on_every_cached_call():
    @contract
    def f(x: Float[Tensor, "B T"], k: Annotated[int, Range(0, "T-1")]) -> None:
        return None

    for k in (0, 4, 2):
        f(torch.zeros(2, 5), k)
    with pytest.raises(
        ContractError, match=r"argument 'k': expected a value in \[0, T-1=4\], got 5"
    ):
        f(torch.zeros(2, 5), 5)
    with contracts.mode("shapes"):
        f(torch.zeros(2, 5), 5)


@contract(
    returns={
        "h": Annotated[Float[Tensor, "B D"], Range(None, "D")],
        "n": Annotated[Int[Tensor, " B"], Range(0, "D-1")],
    }
)
def bound_inside(x: Float[Tensor, " B"], d: int, out_d: int, n: int, v: float) -> dict:
    contracts.check(x[:, None].expand(-1, d), Float[Tensor, "B D"], name="h")
    return {"h": x[:, None].expand(-1, out_d) + v, "n": torch.full((x.shape[0],), n)}


def _bound_inside_reference(args) -> str | None:
    """The walk without caches, with D bound as the contracts.check inside the call binds it."""
    plan = bound_inside.__contract__
    x, d, out_d, n, v = args
    try:
        b, s = check_inputs(plan, args, {}, FULL, None)
        b["D"] = d
        out = {"h": x[:, None].expand(-1, out_d) + v, "n": torch.full((x.shape[0],), n)}
        check_outputs(plan, out, b, s, FULL, None)
    except Fail as f:
        return f"{f.code}:{f.slot}:{f.axis}"
    return None


@settings(max_examples=150, deadline=None, derandomize=True, database=None)
@given(
    d=st.integers(1, 3),
    out_d=st.integers(1, 3),
    n=st.integers(-1, 3),
    v=st.sampled_from([0.0, 2.5]),
)
def test_returns_after_dims_bound_inside_the_call_decide_as_the_walk(d, out_d, n, v):
    """A dim bound by contracts.check inside the call joins the cached return signature: a
    return read with D=2 is never taken as seen for D=3, and the value bounds use the D the
    check bound."""
    args = (torch.zeros(2), d, out_d, n, v)
    want = _bound_inside_reference(args)
    for _ in range(2):  # the second call takes the cached signatures
        try:
            bound_inside(*args)
            got = None
        except ContractError as e:
            got = f"{e.argument}:{e.axis}"
        if want is None:
            assert got is None
        else:
            _code, slot, axis = want.split(":")
            assert got == f"{slot}:{axis}", (want, got)


def test_a_failing_return_is_explained_with_the_dims_checked_inside_the_call():
    """The message names where each dim came from: D from the check in the call (not from the
    return it contradicts), and a dim the return bound itself from the return."""
    args = (torch.zeros(2), 1, 1, 0, 0.0)
    bound_inside(*args)
    for _ in range(2):  # a failing return is never cached: the same words twice
        with pytest.raises(ContractError) as e:
            bound_inside(torch.zeros(2), 1, 2, 0, 0.0)
        assert "return['h'], axis 1: expected size D=1, got 2" in str(e.value)
        assert "D=1 from a contracts.check in the call" in str(e.value)

    @contract
    def counted(
        x: Float[Tensor, " B"],
    ) -> tuple[Float[Tensor, "B N"], Annotated[Int[Tensor, " B"], Range(0, "N")]]:
        return x[:, None].expand(-1, 3), torch.full((x.shape[0],), 5)

    with pytest.raises(ContractError) as e:
        counted(torch.zeros(2))
    assert "N=3 (return[0].shape[1])" in str(e.value), str(e.value)


def test_a_seen_return_after_dims_bound_inside_the_call_stays_in_the_generated_wrapper(
    monkeypatch,
):
    """The generated wrapper keys such a return as the checker caches it (the check's dims
    joined): a seen one is not handed to the reference return check again."""

    @contract(returns={"h": Annotated[Float[Tensor, "B D"], Range(None, "D")]})
    def f(x: Float[Tensor, " B"], d: int) -> dict:
        contracts.check(x[:, None].expand(-1, d), Float[Tensor, "B D"], name="h")
        return {"h": x[:, None].expand(-1, d)}

    handed = []
    check_out = f.__globals__["check_out"]

    def counted(*args):
        handed.append(args[0]["h"].shape)
        return check_out(*args)

    monkeypatch.setitem(f.__globals__, "check_out", counted)
    for d in (2, 3, 2, 3):
        f(torch.zeros(2), d)
    # the first call is walked whole by the generic wrapper; D=3's return is new once; the
    # repeats of both are found in the generated wrapper
    assert handed == [torch.Size([2, 3])]


class _Sized(nn.Module):
    def __init__(self, n):
        super().__init__()
        self.n = n

    @contract
    def forward(self, x: Float[Tensor, "B self.n"]) -> Float[Tensor, "B self.n"]:
        return x


def test_a_shape_dim_read_off_self_is_part_of_the_signature():
    """Two instances, or one whose attribute changed, never share a cached pass."""
    x = torch.zeros(2, 3)
    three, four = _Sized(3), _Sized(4)
    for _ in range(2):
        three(x)
    with pytest.raises(ContractError, match=r"self\.n"):
        four(x)
    three.n = 4
    with pytest.raises(ContractError, match=r"self\.n"):
        three(x)
    three.n = 3
    three(x)


def test_an_unhashable_value_read_off_self_is_walked_and_worded():
    class Listy(nn.Module):
        def __init__(self):
            super().__init__()
            self.n = [3]

        @contract
        def forward(self, x: Float[Tensor, "B self.n"]) -> Float[Tensor, "B self.n"]:
            return x

    with pytest.raises(ContractError) as e:
        Listy()(torch.zeros(2, 3))
    assert "axis 1: expected size self.n=[3], got 3" in str(e.value)  # the walk's words
    # (through dims= a list is refused as no size: test_probe.py)


def test_in_shapes_mode_an_unchecked_value_range_is_never_the_culprit():
    """The explanation checks what the mode checks: in ``shapes`` mode a return of the wrong
    shape is named, not an argument's value range that mode does not check."""

    @contract
    def f(x: Annotated[Float[Tensor, "B T"], Range(0, 1)]) -> Float[Tensor, "B T"]:
        return x[:, :-1]

    with contracts.mode("shapes"), pytest.raises(ContractError) as e:
        f(torch.full((2, 3), 5.0))
    assert "return, axis 1: expected size T=3, got 2" in str(e.value), str(e.value)
    with pytest.raises(ContractError, match=r"argument 'x'.*expected values in \[0, 1\]"):
        f(torch.full((2, 3), 5.0))  # full mode: the argument fails first


def test_a_number_left_to_its_default_is_range_checked_on_every_path():
    class Sched:
        def __init__(self, k: int) -> None:
            self.k = k

        @contract
        def step(
            self, x: Float[Tensor, " B"], i: Annotated[int, Range(0, "self.k")] = 5
        ) -> Float[Tensor, " B"]:
            return x

    s = Sched(10)
    with contracts.mode("full"):
        s.step(torch.zeros(2))  # the signature is cached: the generated wrapper from now on
        s.k = 3
        for call in (lambda: s.step(torch.zeros(2)), lambda: s.step(x=torch.zeros(2))):
            with pytest.raises(ContractError, match=r"argument 'i': expected a value in \[0, "):
                call()


def test_a_return_failure_is_not_blamed_on_an_argument_the_function_wrote_to():
    @contract
    def scale_(x: Annotated[Float[Tensor, "B T"], Range(0, 1)]) -> Float[Tensor, "B T"]:
        x.mul_(100)  # legal: x passed its check on entry
        return x[:, :-1]

    for mode in ("shapes", "full"):
        with contracts.mode(mode), pytest.raises(ContractError) as exc:
            scale_(torch.rand(2, 3))
        assert exc.value.argument == "return" and exc.value.axis == 1, mode
