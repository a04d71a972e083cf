"""On CUDA, a full-mode call costs at most one host sync (all value checks fetched together).

Runs only where a CUDA device is present (skipped on CPU-only machines such as CI here).
"""

from __future__ import annotations

from typing import Annotated

import pytest
import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from contracts import Mask, Range, contract
from diagnostics import count_host_syncs

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


@contract
def f(
    x: Annotated[Float[Tensor, "B T"], Range(-1, 1)],
    mask: Annotated[Bool[Tensor, "B T"], Mask()],
    lengths: Annotated[Int[Tensor, "B"], Range(1, "T")],
) -> Annotated[Float[Tensor, "B T"], Range(-1, 1)]:
    return x * mask


def test_one_host_sync_for_inputs_and_one_for_outputs():
    x = torch.rand(8, 16, device="cuda") * 2 - 1
    m = torch.ones(8, 16, dtype=torch.bool, device="cuda")
    n = torch.full((8,), 16, device="cuda")
    f(x, m, n)  # warm-up
    # three checked inputs fetched in one sync, the checked return in one more
    assert count_host_syncs(lambda: f(x, m, n)) == 2
