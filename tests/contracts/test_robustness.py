"""Robustness of the edges: empty masks under ``allow_empty``, and ``summarize`` on every
layout and dtype (sparse, nested, quantized, integer extremes): exact where it prints numbers,
never raising for a tensor."""

from __future__ import annotations

import math
import re
import warnings
from typing import Annotated

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from jaxtyping import Bool, Float
from torch import Tensor

import contracts
from contracts import ContractError, Mask, contract, summarize

pytestmark = pytest.mark.filterwarnings(
    "ignore:.*(Sparse|sparse|nested tensors|quantized tensor creation).*:UserWarning"
)
FAST = settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))


# --- allow_empty and masks ---------------------------------------------------------------------
#
# What allow_empty promises (ContractOptions, contract()): "accept zero-size axes". What Mask
# promises: "at least one valid position along axis per row". A mask with no rows (an empty
# batch) has nothing to violate, so allow_empty accepts it; a mask whose checked axis is empty
# while it has rows has rows with no valid position at all, which Mask refuses. The shape alone
# decides it, so it is refused wherever shapes are checked (modes shapes and full).


@contract(allow_empty=True)
def pool(
    x: Float[Tensor, "B T"],
    mask: Annotated[Bool[Tensor, "B T"], Mask()],
) -> Float[Tensor, "B"]:
    return (x * mask).sum(-1)


@contract(allow_empty=True)
def attend(
    scores: Float[Tensor, "B T S"],
    key_padding_mask: Annotated[Bool[Tensor, "B S"], Mask(padding=True)],
    attn_mask: Annotated[Bool[Tensor, "B T S"], Mask()],
) -> None:
    return None


@contract(allow_empty=True)
def make_mask(n: int, rows: int) -> Annotated[Bool[Tensor, "R N"], Mask()]:
    return torch.ones(rows, n, dtype=torch.bool)


@contract(allow_empty=True)
def checked_inside(x: Float[Tensor, "B T"]) -> None:
    contracts.check(x > 0, Annotated[Bool[Tensor, "B T"], Mask()], name="valid")


def _bool(*shape: int) -> Tensor:
    return torch.ones(shape, dtype=torch.bool)


@pytest.mark.parametrize("mode", ["full", "shapes"])
def test_empty_mask_axis_under_rows_is_refused(mode):
    """Regression: a [B, 0] Mask() argument passed under allow_empty=True."""
    with contracts.mode(mode):
        for _ in range(3):  # the first call walks; later ones would hit a cached signature
            with pytest.raises(ContractError, match=r"argument 'mask', axis 1: expected at least"):
                pool(torch.zeros(4, 0), _bool(4, 0))


@pytest.mark.parametrize("mode", ["full", "shapes"])
def test_empty_batch_of_masks_is_accepted(mode):
    with contracts.mode(mode):
        for _ in range(3):
            assert pool(torch.zeros(0, 5), _bool(0, 5)).shape == (0,)
            assert pool(torch.zeros(0, 0), _bool(0, 0)).shape == (0,)


def test_accepted_shape_then_empty_mask_axis():
    """A passing signature cached first does not let the empty mask through later."""
    pool(torch.zeros(2, 3), _bool(2, 3))
    pool(torch.zeros(2, 3), _bool(2, 3))
    with pytest.raises(ContractError, match="axis 1"):
        pool(torch.zeros(2, 0), _bool(2, 0))


def test_padding_and_attention_masks():
    attend(torch.zeros(2, 3, 4), ~_bool(2, 4), _bool(2, 3, 4))
    attend(torch.zeros(0, 3, 4), ~_bool(0, 4), _bool(0, 3, 4))  # no batch: fine
    attend(torch.zeros(2, 0, 4), ~_bool(2, 4), _bool(2, 0, 4))  # no queries: no rows
    with pytest.raises(ContractError, match=r"'key_padding_mask', axis 1: expected at least one "):
        attend(torch.zeros(2, 3, 0), ~_bool(2, 0), _bool(2, 3, 0))
    with pytest.raises(ContractError) as e:
        attend(torch.zeros(2, 3, 0), ~_bool(2, 0), _bool(2, 3, 0))
    assert "False (valid) position per row along axis 1 (True = padded)" in str(e.value)


def test_returned_mask_with_empty_axis():
    assert make_mask(3, 0).shape == (0, 3)
    with pytest.raises(ContractError, match=r"return, axis 1: expected at least one True"):
        make_mask(0, 2)


def test_checked_mask_inside_a_call():
    checked_inside(torch.ones(0, 3))
    with pytest.raises(ContractError, match=r"checked value 'valid', axis 1"):
        checked_inside(torch.ones(2, 0))


def test_without_allow_empty_the_empty_axis_rule_words_it():
    @contract
    def strict(mask: Annotated[Bool[Tensor, "B T"], Mask()]) -> None:
        return None

    with pytest.raises(ContractError, match=r"expected a non-empty axis \(size ≥ 1\), got size 0"):
        strict(_bool(2, 0))


# --- summarize: integers exactly ---------------------------------------------------------------


def _range(s: str) -> tuple[str, str]:
    m = re.search(r"x∈\[(-?\d+), (-?\d+)\]", s)
    assert m, s
    return m.group(1), m.group(2)


def test_int64_extremes_are_printed_exactly():
    """Regression: 2**63-1 printed as 9223372036854775808 (through float64)."""
    assert summarize(torch.tensor([2**63 - 1])).endswith(" n=1 9223372036854775807")
    s = summarize(torch.tensor([-(2**63), 2**63 - 1, 5]))
    assert _range(s) == ("-9223372036854775808", "9223372036854775807")
    s = summarize(torch.tensor([2**53 + 1, 2**53 + 3]))
    assert _range(s) == ("9007199254740993", "9007199254740995")
    assert "σ=1.414" in s  # the spread of large values close together survives too


@pytest.mark.parametrize(
    ("dtype", "lo", "hi"),
    [
        (torch.int64, -(2**63), 2**63 - 1),
        (torch.int32, -(2**31), 2**31 - 1),
        (torch.int16, -(2**15), 2**15 - 1),
        (torch.int8, -128, 127),
        (torch.uint8, 0, 255),
        (torch.uint16, 0, 2**16 - 1),
        (torch.uint32, 0, 2**32 - 1),
        (torch.uint64, 0, 2**64 - 1),
    ],
)
@pytest.mark.contracts
@FAST
@given(data=st.data())
def test_integer_range_exact_for_every_integer_dtype(dtype, lo, hi, data):
    values = data.draw(st.lists(st.integers(lo, hi), min_size=2, max_size=12))
    if dtype == torch.uint64:  # built through int64 (torch.tensor refuses ints >= 2**63)
        t = torch.tensor([v - 2**64 if v >= 2**63 else v for v in values]).view(torch.uint64)
    else:
        t = torch.tensor(values, dtype=dtype)
    assert _range(summarize(t)) == (str(min(values)), str(max(values)))


# --- summarize: other layouts ------------------------------------------------------------------


def _stats(s: str) -> tuple[str, float, float]:
    m = re.search(r"(\|?x\|?∈\[[^\]]*\]) μ\|?x?\|?=(\S+) σ\|?x?\|?=(\S+)", s)
    assert m, s
    return m.group(1), float(m.group(2)), float(m.group(3))


_LAYOUTS = {
    "sparse_coo": lambda d: d.to_sparse(),
    "sparse_csr": lambda d: d.to_sparse_csr(),
    "sparse_csc": lambda d: d.to_sparse_csc(),
    "sparse_bsr": lambda d: d.to_sparse_bsr((1, 1)),
    "sparse_bsc": lambda d: d.to_sparse_bsc((1, 1)),
}


@pytest.mark.contracts
@pytest.mark.parametrize("layout", sorted(_LAYOUTS))
@FAST
@given(
    values=st.lists(
        st.one_of(st.just(0.0), st.floats(-1e3, 1e3, width=32)), min_size=6, max_size=6
    ),
    complex_=st.booleans(),
)
def test_sparse_summary_is_the_dense_one(layout, values, complex_):
    """Regression: CSR/CSC/BSR/BSC raised; COO was made dense (a huge sparse tensor ran out
    of memory). Now every sparse layout reads its stored values and counts the rest as zeros."""
    dense = torch.tensor(values).reshape(2, 3)
    if complex_:
        dense = torch.complex(dense, dense.flip(0))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # sparse layouts "in beta"
        s = summarize(_LAYOUTS[layout](dense))
    ref = summarize(dense)
    nnz = int((dense != 0).sum())
    head = f"tensor[2, 3] {'c64' if complex_ else 'f32'} cpu {layout} n=6 nnz="
    assert s.startswith(head), s
    if layout in ("sparse_coo", "sparse_csr", "sparse_csc"):
        assert f"nnz={nnz} " in s
    rng, mean, std = _stats(s)
    ref_rng, ref_mean, ref_std = _stats(ref)
    assert rng == ref_rng
    assert math.isclose(mean, ref_mean, rel_tol=2e-3, abs_tol=1e-6)
    assert math.isclose(std, ref_std, rel_tol=2e-3, abs_tol=1e-6)


def test_huge_sparse_tensor_is_not_made_dense():
    i = torch.tensor([[0, 5], [7, 999_999]])
    t = torch.sparse_coo_tensor(i, torch.tensor([2.0, -1.0]), (10**6, 10**6))
    s = summarize(t)
    assert s.startswith("tensor[1000000, 1000000] f32 cpu sparse_coo n=1000000000000 nnz=2 ")
    assert "x∈[-1, 2]" in s


def test_sparse_bool_int_and_nan():
    assert summarize(torch.tensor([[True, False], [False, False]]).to_sparse()).endswith(
        "sparse_coo n=4 nnz=1 true=1 (25.0%)"
    )
    s = summarize(torch.tensor([[0, 2**62], [0, -5]]).to_sparse())
    assert _range(s) == ("-5", str(2**62))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        s = summarize(torch.tensor([[math.nan, 0.0], [1.0, 0.0]]).to_sparse_csr())
    assert s.endswith("sparse_csr n=4 nnz=2 x∈[0, 1] μ=0.333 σ=0.577 NaN!1")


@pytest.mark.parametrize("layout", [torch.strided, torch.jagged])
def test_nested_tensors(layout):
    """Regression: nested tensors raised (no sizes / no flat view)."""
    t = torch.nested.nested_tensor([torch.ones(2, 3), torch.zeros(4, 3)], layout=layout)
    word = "jagged" if layout == torch.jagged else "nested"
    assert summarize(t) == (
        f"tensor[nested: [2, 3], [4, 3]] f32 cpu {word} n=18 x∈[0, 1] μ=0.333 σ=0.485"
    )
    many = torch.nested.nested_tensor([torch.ones(i + 1) for i in range(5)], layout=layout)
    assert summarize(many).startswith("tensor[nested: [1], [2], [3], … (5 tensors)] f32 cpu")


def test_quantized_tensors():
    """Regression: quantized tensors raised (no float conversion)."""
    q = torch.quantize_per_tensor(torch.tensor([-1.0, 0.0, 2.5]), 0.1, 10, torch.quint8)
    assert summarize(q) == (
        "tensor[3] quint8 cpu q(scale=0.1, zero_point=10) n=3 x∈[-1, 2.5] μ=0.5 σ=1.803"
    )
    q = torch.quantize_per_channel(
        torch.tensor([[1.0, -1.0], [0.5, 2.0]]),
        torch.tensor([0.1, 0.5]),
        torch.tensor([0, 0]),
        0,
        torch.qint8,
    )
    assert summarize(q).startswith(
        "tensor[2, 2] qint8 cpu q(per_channel_affine, axis=0) n=4 x∈[-1, 2]"
    )


def _unsummarizable() -> dict[str, object]:
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():
        fake = torch.ones(2, 3)
    return {
        "bits8": torch.zeros(3, dtype=torch.uint8).view(torch.bits8),
        "fake": fake,
    }


@pytest.mark.parametrize("case", ["bits8", "fake"])
def test_what_cannot_be_reduced_degrades_to_a_note(case):
    t = _unsummarizable()[case]
    s = summarize(t, name="t")
    assert s.startswith("t: tensor[")
    assert "(values not summarized: " in s and "\n" not in s


def test_inside_vmap_degrades_to_a_note():
    seen = []

    def f(x):
        seen.append(summarize(x))
        return x

    torch.vmap(f)(torch.ones(3, 2))
    assert seen[0].startswith("tensor[2] f32 cpu (values not summarized: ")


@pytest.mark.parametrize(
    "make",
    [
        lambda: torch.ones(2, 3).to_mkldnn(),
        lambda: torch.empty(2, 3, device="meta"),
        lambda: torch.tensor([1 + 1j], dtype=torch.complex32),
        lambda: torch.tensor([1.0, 2.0]).to(torch.float8_e5m2),
        lambda: torch.nested.nested_tensor([]),
        lambda: torch.sparse_coo_tensor(
            torch.zeros(2, 0, dtype=torch.long), torch.zeros(0), (3, 3)
        ),
        lambda: torch.zeros(0, 3).to_sparse_csr(),
        lambda: torch.ones(3, 2).to_sparse(1),  # hybrid COO: dense values per index
    ],
)
def test_never_raises_for_a_tensor(make):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        s = summarize(make())
    assert s.startswith("tensor[") and "\n" not in s
