"""diagnostics.summarize: one line for every dtype, non-finite counts, no host copy of data."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from diagnostics import summarize
from diagnostics._summary import SummaryError


def test_float_counts_and_stats_over_finite_values():
    x = torch.tensor([1.0, 3.0, math.nan, math.inf, -math.inf, -math.inf])
    s = summarize(x)
    assert s.startswith("tensor[6] f32 cpu n=6 x∈[1, 3] μ=2 σ=1.414")
    assert "NaN!1" in s and "+Inf!1" in s and "-Inf!2" in s
    assert "\n" not in s


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_low_and_high_precision(dtype):
    x = torch.tensor([0.5, 1.5, math.nan], dtype=dtype)
    s = summarize(x)
    assert "x∈[0.5, 1.5]" in s and "NaN!1" in s


def test_fp16_headroom_flag():
    assert "headroom=" in summarize(torch.tensor([6.0e4], dtype=torch.float16).expand(4))
    assert "headroom" not in summarize(torch.ones(4, dtype=torch.float16))


@pytest.mark.parametrize("dtype", [torch.int64, torch.int32, torch.uint8, torch.int8])
def test_integer_tensors(dtype):
    # seed 000: integer timestep tensors crashed the stats code
    t = torch.tensor([0, 10, 20, 30], dtype=dtype)
    s = summarize(t)
    assert "x∈[0, 30]" in s and "μ=15" in s and "NaN" not in s


def test_bool_complex_scalar_empty_and_grad():
    assert "true=2 (66.7%)" in summarize(torch.tensor([True, False, True]))
    c = torch.tensor([3 + 4j, complex(math.nan, 0), complex(0, math.inf)], dtype=torch.complex64)
    s = summarize(c)
    assert "|x|∈[5, 5]" in s and "NaN!re1,im0" in s and "Inf!re0,im1" in s
    assert summarize(torch.tensor(2.5)).endswith("2.5")
    assert summarize(torch.empty(0, 3)).endswith("empty")
    assert " grad " in summarize(torch.ones(2, requires_grad=True))
    assert summarize(torch.ones(2), name="w").startswith("w: tensor[2]")


def test_never_prints_values_of_large_tensor():
    s = summarize(torch.arange(100_000, dtype=torch.float32))
    assert len(s) < 120 and "9.9999e+04" in s  # the max, not the elements


def test_not_a_tensor_is_a_clear_error():
    with pytest.raises(SummaryError, match=r"summarize\(t\): expected a torch.Tensor, got list"):
        summarize([1.0, 2.0])


@settings(max_examples=40, deadline=None)
@given(st.lists(st.floats(allow_nan=True, allow_infinity=True, width=32), min_size=1, max_size=30))
def test_counts_match_reference(values):
    x = torch.tensor(values, dtype=torch.float32)
    s = summarize(x)
    n_nan = sum(math.isnan(v) for v in values)
    n_pinf = sum(v == math.inf for v in values)
    n_ninf = sum(v == -math.inf for v in values)
    assert (f"NaN!{n_nan}" in s) == (n_nan > 0)
    assert (f"+Inf!{n_pinf}" in s) == (n_pinf > 0)
    assert (f"-Inf!{n_ninf}" in s) == (n_ninf > 0)


@pytest.mark.parametrize("dtype", [torch.float8_e4m3fn, torch.float8_e5m2])
def test_float8_tensors(dtype):
    x = torch.tensor([1.0, 2.0, float("nan")]).to(dtype)
    s = summarize(x)
    assert "x∈[1, 2]" in s and "NaN!1" in s, s
