"""Pinned wording of contract failures: people act on these messages, so they are API."""

from __future__ import annotations

from typing import Annotated

import pytest
import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor, nn

from contracts import ContractError, Mask, Range, contract


@contract
def encode(
    features: Annotated[Float[Tensor, "B T F"], Range(-2, 2)],
    mask: Annotated[Bool[Tensor, "B T"], Mask()],
) -> Float[Tensor, "B T F"]:
    return features


class Embed(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.vocab_size = 100
        self.n_feats = 80

    @contract(dims={"V": "self.vocab_size", "F": "self.n_feats"})
    def forward(
        self,
        features: Float[Tensor, "B T F"],
        tokens: Annotated[Int[Tensor, "B N"], Range(0, "V-1")],
    ) -> Float[Tensor, "B T F"]:
        return features


def msg(fn, *args):
    with pytest.raises(ContractError) as e:
        fn(*args)
    return str(e.value)


def test_binding_provenance_sentence():
    m = msg(encode, torch.zeros(4, 10, 80), torch.ones(2, 10, dtype=torch.bool))
    assert m.splitlines()[0] == "encode(): argument 'mask', axis 0: expected size B=4, got 2"
    assert "  B=4 from features.shape[0], but mask.shape[0]=2" in m
    assert (
        "  bindings: B=4 (features.shape[0]), T=10 (features.shape[1]), F=80 "
        "(features.shape[2])" in m
    )


def test_transposed_features_hint_from_model_dim():
    m = msg(Embed(), torch.zeros(2, 80, 50), torch.zeros(2, 3, dtype=torch.long))
    assert "argument 'features', axis 2: expected size F=80, got 50" in m
    assert "F=80 from self.n_feats, but features.shape[2]=50" in m
    assert "hint: features looks like [B, F, T]; transpose(1, 2)?" in m


def test_transposed_features_hint_from_later_argument():
    m = msg(encode, torch.zeros(4, 80, 10), torch.ones(4, 10, dtype=torch.bool))
    assert (
        "hint: features.shape[2]=10 matches mask.shape[1]: features looks like [B, F, T]; "
        "features.transpose(1, 2)?"
    ) in m


def test_range_violation_counts_and_locates():
    tok = torch.zeros(2, 5, dtype=torch.long)
    tok[1, 3] = 104
    tok[1, 4] = 100
    m = msg(Embed(), torch.zeros(2, 7, 80), tok)
    assert (
        "argument 'tokens': expected values in [0, V-1=99], got 2 of 10 values outside it; "
        "finite min=0, max=104; first bad at index (1, 3)"
    ) in m
    assert "hint: values reach 104 but the bound V-1 comes from the model" in m


def test_nan_inside_ranged_argument():
    f = torch.zeros(1, 3, 2)
    f[0, 1, 1] = float("nan")
    m = msg(encode, f, torch.ones(1, 3, dtype=torch.bool))
    assert (
        "argument 'features': expected values in [-2, 2], got 1 of 6 values outside it; "
        "non-finite: 1 NAN; finite min=0, max=0; first bad at index (0, 1, 1)" in m
    )
    assert "diagnostics.NanWatch" in m


def test_inverted_mask_polarity_hint():
    mask = torch.zeros(2, 4, dtype=torch.bool)
    mask[:, 3] = True  # one padded frame marked True: polarity inverted
    mask = ~mask
    mask[0] = False
    m = msg(encode, torch.zeros(2, 4, 1), mask)
    assert "argument 'mask', axis 1: expected at least one True (valid) position per row" in m
    assert "1 of 2 rows have none; first at row (0,)" in m


def test_all_false_mask_hint():
    m = msg(encode, torch.zeros(2, 4, 1), torch.zeros(2, 4, dtype=torch.bool))
    assert "2 of 2 rows have none" in m
    assert "a fully masked row makes softmax return NaN" in m


def test_wrong_dtype_hint():
    m = msg(encode, torch.zeros(2, 4, 1), torch.ones(2, 4))
    assert "argument 'mask': expected dtype bool, got float32" in m
    assert "hint: use mask.bool() (masks are True for valid positions)" in m


def test_non_tensor_and_none():
    m = msg(encode, [[0.0]], torch.ones(1, 1, dtype=torch.bool))
    assert "argument 'features': expected a torch.Tensor [B, T, F] float" in m
    assert "got list" in m and "hint: convert with torch.as_tensor(features)" in m
    m = msg(encode, torch.zeros(1, 1, 1), None)
    assert "argument 'mask': expected a tensor [B, T], got None" in m


def test_tensor_is_summarized_never_printed():
    big = torch.randn(64, 1000, 3) * 10
    m = msg(encode, big, torch.ones(64, 1000, dtype=torch.bool))
    assert "features: tensor[64, 1000, 3] f32 cpu n=192000 x∈[" in m
    assert len(m) < 1200


def test_error_attributes():
    with pytest.raises(ContractError) as e:
        encode(torch.zeros(4, 10, 80), torch.ones(2, 10, dtype=torch.bool))
    err = e.value
    assert err.function == "encode"
    assert err.argument == "mask"
    assert err.axis == 0
    assert err.expected == "size B=4"
    assert err.actual == "2"
    assert err.bindings == {"B": 4, "T": 10, "F": 80}
    assert type(err).__module__ == "contracts"


@contract(allow_empty=True)
def masked_sum(
    x: Float[Tensor, "B T"], mask: Annotated[Bool[Tensor, "B T"], Mask()]
) -> Float[Tensor, "B"]:
    return (x * mask).sum(-1)


def test_empty_mask_axis_under_allow_empty():
    m = msg(masked_sum, torch.zeros(4, 0), torch.ones(4, 0, dtype=torch.bool))
    assert m.splitlines() == [
        "masked_sum(): argument 'mask', axis 1: expected at least one True (valid) position "
        "per row along axis 1, got an empty axis (size 0), so none of its 4 rows has one",
        "  mask: tensor[4, 0] bool cpu n=0 empty",
        "  bindings: B=4 (x.shape[0]), T=0 (x.shape[1])",
        "  hint: allow_empty=True accepts empty batches (a mask with no rows), not rows without "
        "a single position: a row with no valid position makes softmax return NaN",
    ]
    with pytest.raises(ContractError) as e:
        masked_sum(torch.zeros(4, 0), torch.ones(4, 0, dtype=torch.bool))
    assert e.value.argument == "mask" and e.value.axis == 1
    assert e.value.actual == "an empty axis (size 0), so none of its 4 rows has one"


def test_summaries_in_messages_print_integers_exactly():
    @contract
    def ids(t: Annotated[Int[Tensor, "N"], Range(0, 10)]) -> None:
        return None

    m = msg(ids, torch.tensor([0, 2**63 - 1]))
    assert "finite min=0, max=9223372036854775807; first bad at index (1,)" in m
    assert "  t: tensor[2] i64 cpu n=2 x∈[0, 9223372036854775807] μ=4.6117e+18 σ=6.5219e+18" in m


def test_a_generic_python_hint_is_named_whole_with_beartypes_reason():
    @contract
    def f(ids: list[int], x: Float[Tensor, "B"]) -> Float[Tensor, "B"]:
        return x

    f([1, 2], torch.ones(2))
    with pytest.raises(ContractError) as e:
        f([1, "a"], torch.ones(2))
    text = str(e.value)
    assert "f(): argument 'ids': expected list[int], got list [1, 'a']" in text
    assert "hint: ids[1] = 'a' does not satisfy int (beartype: str 'a' not instance of int)" in text


@pytest.mark.parametrize(
    ("value", "hint", "ok"),
    [
        ([1] * 40 + ["a"], list[int], False),
        ([1] * 41, list[int], True),
        ((1, "a"), tuple[int, str], True),
        ((1, 2, "x"), tuple[int, ...], False),
        ({"a": [1, 2]}, dict[str, list[int]], True),
        ({"a": [1, "x"]}, dict[str, list[int]], False),
        ([None, 3], list[int | None], True),
    ],
)
def test_every_item_of_a_python_container_is_checked(value, hint, ok):
    # beartype alone checks one random item of a list: a bad item passed or failed by chance
    from contracts._check import bearable

    assert all(bearable(value, hint) is ok for _ in range(20))
