"""The pytest plugin generates one property test per registered contract."""

from __future__ import annotations

import textwrap

import pytest

pytest_plugins = ["pytester"]


def test_plugin_generates_marked_items(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        mymodels=textwrap.dedent(
            """
            from typing import Annotated
            import torch
            from torch import Tensor, nn
            from jaxtyping import Float, Int
            import contracts
            from contracts import contract, Range

            @contract
            def double(x: Float[Tensor, "B T"]) -> Float[Tensor, "B T"]:
                return 2 * x

            @contract
            def broken(x: Float[Tensor, "B T"]) -> Float[Tensor, "B T"]:
                return x.sum(0)          # violates its own output contract

            @contracts.example(lambda: Emb())
            class Emb(nn.Module):
                def __init__(self):
                    super().__init__()
                    self.vocab_size = 5
                    self.e = nn.Embedding(5, 2)

                @contract(dims={"V": "self.vocab_size"})
                def forward(self, t: Annotated[Int[Tensor, "B"], Range(0, "V-1")]
                            ) -> Float[Tensor, "B 2"]:
                    return self.e(t)
            """
        )
    )
    pytester.makeini("[pytest]\ncontracts_modules = mymodels\n")
    pytester.makepyfile(test_dummy="def test_nothing():\n    pass\n")
    result = pytester.runpytest("-m", "contracts", "-p", "no:cacheprovider", "-q")
    result.assert_outcomes(passed=2, failed=1, deselected=1)
    result.stdout.fnmatch_lines(["*generated property test of broken failed*"])
