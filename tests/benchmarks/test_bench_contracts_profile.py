"""The contracts profile: shims on every wrapper, removed after; every call of the step counted."""

from __future__ import annotations

import sys
from typing import Annotated

import pytest
import torch
from jaxtyping import Bool, Float
from torch import Tensor

import contracts
from benchmarks.bench_contracts import paraformer_setup
from benchmarks.bench_contracts_profile import (
    _Clock,
    profile,
    stubbed_value_checks,
    timed_contracts,
    timed_value_checks,
)
from contracts import Mask, Range
from contracts._inline import WRAPPER_CODES
from models.paraformer import Paraformer
from models.paraformer import _masks as masks


def test_the_shims_are_removed_even_when_the_body_raises():
    forward, check, padding = Paraformer.forward, contracts.check, masks.create_padding_mask
    fn = forward.__globals__["fn"]
    with pytest.raises(RuntimeError, match="boom"):
        with timed_contracts("models.paraformer", _Clock()) as found:
            assert "Paraformer.forward" in found and "create_padding_mask" in found
            assert Paraformer.forward is not forward and contracts.check is not check
            assert forward.__globals__["fn"] is not fn
            raise RuntimeError("boom")
    assert Paraformer.forward is forward and contracts.check is check
    assert masks.create_padding_mask is padding and forward.__globals__["fn"] is fn


def _wrapper_frames_per_step() -> int:
    """Contract wrapper frames entered in one training step, counted by a profile hook (not by
    the shims under test)."""
    _model, _batch, step = paraformer_setup()
    step()  # every signature cached: one wrapper frame per call
    count = 0

    def hook(frame, event, _arg):
        nonlocal count
        if event == "call" and WRAPPER_CODES.get(id(frame.f_code)) is frame.f_code:
            count += 1

    sys.setprofile(hook)
    try:
        step()
    finally:
        sys.setprofile(None)
    return count


@pytest.mark.slow
def test_the_profile_times_every_contract_call_of_the_step():
    got = profile(steps=2, repeats=2)
    rows = {r["name"]: r for r in got["contracts"]}
    assert len(rows) == len(got["contracts"])  # one row per contract
    assert rows["contracts.check"]["calls"] == 1  # the one in Paraformer.forward
    wrapper_calls = sum(r["calls"] for name, r in rows.items() if name != "contracts.check")
    assert wrapper_calls == _wrapper_frames_per_step()
    assert got["calls_per_step"] == wrapper_calls + 1
    assert set(got["us_per_step"]) == {"shapes", "full"}
    for name, r in rows.items():
        assert {"us_shapes", "us_full"} <= r.keys(), name
        if name != "contracts.check":  # every wrapper call was also repeated warm
            assert "us_shapes_warm" in r, name
    assert got["shapes_in_step_vs_warm"] is not None


def _checked_pair():
    """A fresh contract with a range and a mask, its signature seen (so the next calls take the
    generated wrapper and its value checks)."""

    @contracts.contract
    def f(
        x: Annotated[Float[Tensor, "B T"], Range(0, 1)],
        m: Annotated[Bool[Tensor, "B T"], Mask()],
    ) -> Float[Tensor, "B T"]:
        return x * m

    good_x, good_m = torch.full((2, 3), 0.5), torch.ones(2, 3, dtype=torch.bool)
    with contracts.mode("full"):
        f(good_x, good_m)
    return f, good_x, good_m


@pytest.mark.parametrize(
    ("bound", "range_checked", "mask_checked"),
    [("as_is", True, True), ("mask_bodies_free", True, False), ("value_bodies_free", False, False)],
)
def test_a_bound_stubs_exactly_its_part_of_the_value_checks(bound, range_checked, mask_checked):
    bad_x, bad_m = torch.full((2, 3), 5.0), torch.zeros(2, 3, dtype=torch.bool)
    with stubbed_value_checks(bound):
        f, good_x, good_m = _checked_pair()
        for args, checked in (((bad_x, good_m), range_checked), ((good_x, bad_m), mask_checked)):
            with contracts.mode("full"):
                if checked:
                    with pytest.raises(contracts.ContractError):
                        f(*args)
                else:
                    f(*args)  # the stub passes what the check would reject
    f, good_x, _ = _checked_pair()  # built after the stub was removed: checks again
    with contracts.mode("full"), pytest.raises(contracts.ContractError, match="m"):
        f(good_x, bad_m)


def test_timed_value_checks_log_reads_and_lookups_and_still_check():
    log: list = []
    with timed_value_checks(log):
        f, good_x, good_m = _checked_pair()  # built inside: timed
        log.clear()
        with contracts.mode("full"):
            f(good_x.clone(), good_m)  # a new x: read; the same m: found by its lookup
            with pytest.raises(contracts.ContractError, match="x"):
                f(torch.full((2, 3), 5.0), good_m)
    reads = [entry for entry in log if entry[0]]
    lookups = [entry for entry in log if not entry[0]]
    assert reads and lookups
    assert all(t > 0 and warm is not None and warm > 0 for _, t, warm in reads)
    assert all(warm is None for _, _, warm in lookups)
