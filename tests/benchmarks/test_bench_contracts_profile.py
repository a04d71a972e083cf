"""The contracts profile: shims on every wrapper, removed after; every call of the step counted."""

from __future__ import annotations

import sys

import pytest

import contracts
from benchmarks.bench_contracts import paraformer_setup
from benchmarks.bench_contracts_profile import _Clock, profile, timed_contracts
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
