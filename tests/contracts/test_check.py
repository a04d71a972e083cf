"""contracts.check: one intermediate value, sharing the enclosing call's dim bindings."""

from __future__ import annotations

import threading
from typing import Annotated

import pytest
import torch
from jaxtyping import Float, Int
from torch import Tensor, nn

import contracts
from contracts import ContractError, Range, check, contract


class Encoder(nn.Module):
    def __init__(self, d: int = 8, bad: bool = False) -> None:
        super().__init__()
        self.proj = nn.Linear(4, d)
        self.bad = bad

    @contract(dims={"D": "self.proj.out_features"})
    def forward(self, x: Float[Tensor, "B T 4"]) -> Float[Tensor, "B T D"]:
        h = self.proj(x)
        if self.bad:
            h = h[:, :-1]  # a bug: drops a frame
        h = check(h, Float[Tensor, "B T D"], name="h")
        check(h.mean(-1), Float[Tensor, "B T"])
        return h


def test_returns_value_unchanged_and_passes():
    x = torch.randn(2, 5, 4)
    t = torch.randn(3, 2)
    assert check(t, Float[Tensor, "N 2"]) is t
    assert Encoder()(x).shape == (2, 5, 8)


def test_shares_bindings_of_the_enclosing_call():
    with pytest.raises(ContractError) as e:
        Encoder(bad=True)(torch.randn(2, 5, 4))
    err = e.value
    assert err.function == "Encoder.forward" and err.argument == "h" and err.axis == 1
    first = str(err).splitlines()[0]
    assert first == "Encoder.forward(): checked value 'h', axis 1: expected size T=5, got 4"
    assert "T=5 from x.shape[1], but h.shape[1]=4" in str(err)
    assert "D=8 (self.proj.out_features)" in str(err)


def test_binds_fresh_outside_a_call_and_into_given_bindings():
    check(torch.zeros(2, 3), Float[Tensor, "B T"])
    check(torch.zeros(4, 5), Float[Tensor, "B T"])  # fresh: no clash with the call above
    dims: dict = {}
    check(torch.zeros(2, 3), Float[Tensor, "B T"], bindings=dims)
    assert dims == {"B": 2, "T": 3}
    with pytest.raises(ContractError, match=r"contracts.check\(\): checked value 'y', axis 0"):
        check(torch.zeros(4, 3), Float[Tensor, "B T"], name="y", bindings=dims)


def test_unnamed_check_is_named_by_its_annotation():
    with pytest.raises(ContractError) as e:
        check(torch.zeros(2), Float[Tensor, "B T"])
    assert "checked value \"Float[Tensor, 'B T']\"" in str(e.value)
    assert "expected 2 axes [B, T], got 1 axes [2]" in str(e.value)


def test_value_constraints_in_full_mode_only():
    ann = Annotated[Int[Tensor, "N"], Range(0, 9)]
    bad = torch.tensor([1, 12])
    with pytest.raises(ContractError, match=r"expected values in \[0, 9\], got 1 of 2"):
        check(bad, ann, name="ids")
    with contracts.mode("shapes"):
        assert check(bad, ann, name="ids") is bad


def test_free_in_mode_off():
    with contracts.mode("off"):
        assert check("not even a tensor", Float[Tensor, "B"]) == "not even a tensor"


def test_bound_expressions_see_self_and_call_dims():
    class Head(nn.Module):
        vocab = 5

        @contract(dims={"V": "self.vocab"})
        def forward(self, x: Float[Tensor, "B T"]) -> Float[Tensor, "B T"]:
            check(x.long().clamp(min=0), Annotated[Int[Tensor, "B T"], Range(0, "V-1")], name="ids")
            return x

    Head()(torch.ones(2, 3))
    with pytest.raises(ContractError, match=r"values in \[0, V-1=4\]"):
        Head()(torch.full((2, 3), 7.0))


def test_context_is_popped_when_the_call_raises():
    @contract
    def boom(x: Float[Tensor, "B"]) -> None:
        raise RuntimeError("inside")

    with pytest.raises(RuntimeError, match="inside"):
        boom(torch.zeros(3))
    check(torch.zeros(5), Float[Tensor, "B"])  # B is not bound from the failed call


def test_threads_do_not_share_bindings():
    errors = []

    @contract
    def outer(x: Float[Tensor, "B"]) -> None:
        barrier.wait()
        try:
            check(x, Float[Tensor, "B"])
        except ContractError as e:  # pragma: no cover - would be the bug
            errors.append(e)

    barrier = threading.Barrier(2)
    ts = [threading.Thread(target=outer, args=(torch.zeros(n),)) for n in (2, 3)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert not errors


def test_not_an_annotation():
    with pytest.raises(TypeError, match=r"contracts.check\('x'\): .* is not a checkable"):
        check(torch.zeros(1), "B T", name="x")


def test_annotations_built_at_each_call_are_parsed_once():
    from contracts._inline import _SLOTS

    check(torch.zeros(2, 3), Float[Tensor, "B Tq"], name="q")
    n = len(_SLOTS)
    for _ in range(5):  # jaxtyping builds a new class at every subscription
        check(torch.zeros(2, 3), Float[Tensor, "B Tq"], name="q")
    assert len(_SLOTS) == n


def test_check_accepts_none_for_an_optional_annotation():
    assert contracts.check(None, Float[Tensor, " B"] | None, name="maybe") is None
    with pytest.raises(contracts.ContractError, match="maybe"):
        contracts.check(None, Float[Tensor, " B"], name="maybe")


def test_mode_blocks_ending_out_of_order_restore_the_process_mode():
    before = contracts.get_mode()
    a, b = contracts.mode("off"), contracts.mode("shapes")
    a.__enter__()
    b.__enter__()
    a.__exit__(None, None, None)  # the older block ends first (another thread's, say)
    assert contracts.get_mode() == "shapes"  # the newest block still open
    b.__exit__(None, None, None)
    assert contracts.get_mode() == before
