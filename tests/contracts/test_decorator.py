"""Behaviour of @contract: shapes, dtypes, values, returns, modes, methods, torch.compile."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from typing import Annotated

import pytest
import torch
from jaxtyping import Bool, Complex, Float, Int, Shaped
from torch import Tensor, nn

import contracts
from contracts import ContractError, Finite, Mask, Probability, Range, contract


@contract
def pool(
    x: Float[Tensor, "B T F"],
    mask: Annotated[Bool[Tensor, "B T"], Mask()],
    lengths: Annotated[Int[Tensor, "B"], Range(1, "T")],
) -> Float[Tensor, "B F"]:
    m = mask.unsqueeze(-1).to(x.dtype)
    return (x * m).sum(1) / m.sum(1)


def _good(b=4, t=7, f=3):
    return torch.randn(b, t, f), torch.ones(b, t, dtype=torch.bool), torch.full((b,), t)


def test_valid_call_passes_and_returns_result():
    x, m, n = _good()
    torch.testing.assert_close(pool(x, m, n), x.mean(1))


def test_keyword_and_positional_mix():
    x, m, n = _good()
    assert pool(x, mask=m, lengths=n).shape == (4, 3)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_float_category_accepts_all_float_dtypes(dtype):
    x, m, n = _good()
    assert pool(x.to(dtype), m, n).dtype == dtype


def test_rank_mismatch():
    x, m, n = _good()
    with pytest.raises(ContractError) as e:
        pool(x[0], m, n)
    assert e.value.argument == "x" and e.value.axis is None


def test_shared_dim_mismatch_names_axis_and_binding():
    x, m, n = _good()
    with pytest.raises(ContractError) as e:
        pool(x, m[:2], n)
    err = e.value
    assert (err.function, err.argument, err.axis) == ("pool", "mask", 0)
    assert err.bindings["B"] == 4


def test_fixed_and_variadic_dims():
    @contract
    def f(x: Float[Tensor, "*batch 3"], y: Float[Tensor, "*batch"]) -> Float[Tensor, "*batch"]:
        return x.sum(-1) + y

    assert f(torch.zeros(2, 5, 3), torch.zeros(2, 5)).shape == (2, 5)
    assert f(torch.zeros(3), torch.zeros(())).shape == ()
    with pytest.raises(ContractError, match=r"argument 'y', axis 0: expected axes \*batch"):
        f(torch.zeros(2, 5, 3), torch.zeros(5, 2))
    with pytest.raises(ContractError, match="expected size 3, got 4"):
        f(torch.zeros(2, 4), torch.zeros(2))


def test_expression_dims():
    @contract
    def shift(x: Float[Tensor, "B T"]) -> Float[Tensor, "B T-1"]:
        return x[:, 1:]

    assert shift(torch.zeros(2, 5)).shape == (2, 4)

    @contract
    def wrong(x: Float[Tensor, "B T"]) -> Float[Tensor, "B T-1"]:
        return x

    with pytest.raises(ContractError, match=r"return, axis 1: expected size T-1=4, got 5"):
        wrong(torch.zeros(2, 5))


def test_tuple_and_dict_returns():
    @contract
    def two(x: Float[Tensor, "B T"]) -> tuple[Float[Tensor, "B"], Int[Tensor, "B T"]]:
        return x.sum(1), x.long()

    a, b = two(torch.zeros(2, 3))
    assert b.dtype == torch.long
    assert a.shape == (2,)

    @contract
    def bad_tuple(x: Float[Tensor, "B T"]) -> tuple[Float[Tensor, "B"], Int[Tensor, "B T"]]:
        return x.sum(1), x

    with pytest.raises(ContractError) as e:
        bad_tuple(torch.zeros(2, 3))
    assert e.value.argument == "return[1]"

    @contract(returns={"loss": Annotated[Float[Tensor, ""], Range(0, None)], "n": int})
    def d(x: Float[Tensor, "B"]) -> dict:
        return {"loss": x.abs().sum(), "n": 3}

    assert d(torch.ones(2))["n"] == 3

    @contract(returns={"loss": Annotated[Float[Tensor, ""], Range(0, None)]})
    def neg(x: Float[Tensor, "B"]) -> dict:
        return {"loss": -x.abs().sum()}

    with pytest.raises(ContractError, match=r"return\['loss'\]: expected values in \[0, ∞\)"):
        neg(torch.ones(2))


def test_optional_argument():
    @contract
    def f(x: Float[Tensor, "B"], m: Bool[Tensor, "B"] | None = None) -> Float[Tensor, "B"]:
        return x

    f(torch.zeros(2))
    f(torch.zeros(2), None)
    with pytest.raises(ContractError, match="argument 'm', axis 0"):
        f(torch.zeros(2), torch.ones(3, dtype=torch.bool))


def test_non_tensor_arguments_checked_by_type_and_range():
    @contract
    def f(x: Float[Tensor, "B T"], k: Annotated[int, Range(1, "T")], name: str = "a") -> None:
        return None

    f(torch.zeros(2, 5), 5)
    with pytest.raises(ContractError, match=r"argument 'k': expected a value in \[1, T=5\], got 6"):
        f(torch.zeros(2, 5), 6)
    with pytest.raises(ContractError, match="argument 'k': expected int, got float"):
        f(torch.zeros(2, 5), 2.0)
    with pytest.raises(ContractError, match="argument 'name': expected str"):
        f(torch.zeros(2, 5), 2, name=3)
    with pytest.raises(ContractError, match="expected int, got bool"):
        f(torch.zeros(2, 5), True)


def test_complex_and_shaped():
    @contract
    def f(x: Annotated[Complex[Tensor, "B F T"], Finite()], y: Shaped[Tensor, "B"]) -> None:
        return None

    f(torch.zeros(1, 2, 3, dtype=torch.complex64), torch.zeros(1, dtype=torch.int8))
    bad = torch.zeros(1, 2, 3, dtype=torch.complex64)
    bad[0, 1, 2] = complex(float("nan"), 0)
    with pytest.raises(ContractError, match="1 NAN"):
        f(bad, torch.zeros(1))
    with pytest.raises(ContractError, match="expected dtype complex"):
        f(torch.zeros(1, 2, 3), torch.zeros(1))


def test_probability_and_finite():
    @contract
    def f(
        p: Annotated[Float[Tensor, "B"], Probability()], z: Annotated[Float[Tensor, "B"], Finite()]
    ):
        return None

    f(torch.tensor([0.0, 1.0]), torch.tensor([1e30, -1e30]))
    with pytest.raises(ContractError, match=r"argument 'p': expected values in \[0, 1\]"):
        f(torch.tensor([0.0, 1.5]), torch.zeros(2))
    with pytest.raises(ContractError, match="argument 'z': expected finite values"):
        f(torch.zeros(2), torch.tensor([0.0, float("inf")]))


class Tiny(nn.Module):
    def __init__(self, vocab: int = 10, feats: int = 4) -> None:
        super().__init__()
        self.vocab_size = vocab
        self.cfg = type("Cfg", (), {"n_feats": feats})()
        self.emb = nn.Embedding(vocab, feats)

    @contract(dims={"V": "self.vocab_size", "F": "self.cfg.n_feats"})
    def forward(
        self, tokens: Annotated[Int[Tensor, "B N"], Range(0, "V-1")]
    ) -> Float[Tensor, "B N F"]:
        return self.emb(tokens)


def test_method_dims_from_self():
    m = Tiny()
    assert m(torch.tensor([[1, 2, 9]])).shape == (1, 3, 4)
    with pytest.raises(ContractError) as e:
        m(torch.tensor([[1, 2, 10]]))
    assert e.value.argument == "tokens" and e.value.bindings["V"] == 10


def test_zero_size_refused_unless_allowed():
    with pytest.raises(ContractError, match="expected a non-empty axis"):
        pool(*_good(b=0))

    @contract(allow_empty=True)
    def f(x: Annotated[Float[Tensor, "B"], Range(0, 1)]) -> Float[Tensor, "B"]:
        return x

    assert f(torch.zeros(0)).shape == (0,)


def test_modes_scope_and_restore():
    x, m, n = _good()
    assert contracts.get_mode() == "full"
    with contracts.mode("shapes"):
        pool(x, m, n + 100)  # value checks off
        with pytest.raises(ContractError):
            pool(x, m[:1], n)
    with contracts.mode("off"):
        pool(x.sum(), None, None) if False else pool(x, m[:1], n)  # no checks at all
    assert contracts.get_mode() == "full"
    with pytest.raises(contracts.ModeError, match="valid modes are 'off', 'shapes', 'full'"):
        contracts.set_mode("fast")
    with pytest.raises(contracts.ModeError):
        with contracts.mode("none"):
            pass
    assert contracts.get_mode() == "full"


def test_off_at_decoration_returns_function_itself():
    code = (
        "import contracts, torch\n"
        "from jaxtyping import Float\n"
        "def f(x: Float[torch.Tensor, 'B']) -> Float[torch.Tensor, 'B']: return x\n"
        "g = contracts.contract(f)\n"
        "assert g is f, 'off mode must return the function itself'\n"
        "print('ok')\n"
    )
    env = {**os.environ, "CONTRACTS_MODE": "off"}
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    env["CONTRACTS_MODE"] = "loud"
    r = subprocess.run(
        [sys.executable, "-c", "import contracts"], env=env, capture_output=True, text=True
    )
    assert r.returncode != 0
    assert "invalid contracts mode 'loud' from env CONTRACTS_MODE; valid modes are" in r.stderr


def test_malformed_annotations_fail_at_decoration():
    with pytest.raises(TypeError, match=r"malformed annotation of .x.*more than once"):

        @contract
        def f(x: Float[Tensor, "*a *b"]):
            pass

    with pytest.raises(TypeError, match="Mask\\(\\) needs a Bool"):

        @contract
        def g(x: Annotated[Float[Tensor, "B"], Mask()]):
            pass

    with pytest.raises(TypeError, match="Range on a Bool tensor"):

        @contract
        def h(x: Annotated[Bool[Tensor, "B"], Range(0, 1)]):
            pass

    with pytest.raises(TypeError, match="is empty: lower bound > upper bound"):
        Range(2, 1)
    with pytest.raises(TypeError, match="malformed contract expression 'V-'"):
        Range(0, "V-")
    with pytest.raises(TypeError, match="attributes may only be read from self"):
        Range(0, "os.sep")
    with pytest.raises(TypeError, match="reads self, but there is no self"):

        @contract(dims={"V": "self.v"})
        def k(x: Float[Tensor, "V"]):
            pass


def test_wrapper_preserves_metadata():
    assert pool.__name__ == "pool" and pool.__wrapped__ is not None
    assert pool.__contract__.qualname == "pool"


@pytest.mark.slow
def test_torch_compile_runs_without_false_positives():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(3, 2)

        @contract
        def forward(self, x: Annotated[Float[Tensor, "B T 3"], Finite()]) -> Float[Tensor, "B T 2"]:
            return torch.relu(self.lin(x))

    net = Net()
    compiled = torch.compile(net, backend="eager", fullgraph=True)
    x = torch.randn(2, 5, 3)
    torch.testing.assert_close(compiled(x), net(x))
    # eager calls around the compiled region keep checking
    with pytest.raises(ContractError):
        net(torch.randn(2, 5, 4))


def test_bounds_compare_in_the_tensor_dtype():
    """float32(0.03) lies below 0.03 in float64, but torch calls it in [0.03, 1]; so do we."""

    @contract
    def f(t: Annotated[Float[Tensor, "B"], Range(0.03, 1)]) -> None:
        return None

    f(torch.tensor([0.03, 1.0], dtype=torch.float32))
    f(torch.tensor([0.03], dtype=torch.float16))
    with pytest.raises(ContractError, match=r"got 1 of 1 values outside it; finite min=0.0299"):
        f(torch.tensor([0.0299], dtype=torch.float32))


def test_contract_above_staticmethod_and_classmethod():
    class K:
        @contracts.contract
        @staticmethod
        def s(x: Float[Tensor, "B 3"]) -> Float[Tensor, " B"]:
            return x.sum(1)

        @contracts.contract
        @classmethod
        def c(cls, x: Float[Tensor, "B 3"]) -> Float[Tensor, " B"]:
            return x.sum(1)

    for f in (K.s, K().s, K.c, K().c):
        assert f(torch.zeros(2, 3)).shape == (2,)
        with pytest.raises(contracts.ContractError, match="axis 1: expected size 3, got 4"):
            f(torch.zeros(2, 4))


def test_generators_and_coroutines_cannot_promise_a_return():
    with pytest.raises(contracts.AnnotationError, match="is a generator function"):

        @contracts.contract
        def frames(x: Float[Tensor, " B"]) -> Iterator[Float[Tensor, " B"]]:
            yield x

    with pytest.raises(contracts.AnnotationError, match="is a coroutine function"):

        @contracts.contract
        async def fetch(x: Float[Tensor, " B"]) -> Float[Tensor, " B"]:
            return x

    with pytest.warns(contracts.ContractWarning, match="what it yields or awaits is not"):

        @contracts.contract
        def chunks(x: Float[Tensor, " B"]):
            yield x

    with pytest.raises(contracts.ContractError, match="argument 'x'"):
        next(chunks(torch.zeros(2, 2)))


def test_annotated_star_args_are_named_as_unchecked():
    with pytest.warns(contracts.ContractWarning, match=r"annotation of \*xs is not checked"):

        @contracts.contract
        def f(*xs: Float[Tensor, " B"]) -> None:
            return None


def test_a_mask_axis_outside_the_annotation_is_refused_at_decoration():
    with pytest.raises(contracts.AnnotationError, match=r"Mask\(axis=5\) on a 2-axis"):

        @contracts.contract
        def f(m: Annotated[Bool[Tensor, "B T"], contracts.Mask(axis=5)]) -> None:
            return None

    assert issubclass(contracts.AnnotationError, contracts.TorchdxError)
    assert issubclass(contracts.AnnotationError, TypeError)  # what it was before


@pytest.mark.parametrize(
    "x",
    [
        torch.tensor([0.5, 20.0]).to(torch.float8_e4m3fn),
        torch.tensor([1, 20], dtype=torch.uint16),
        torch.tensor([1, 20], dtype=torch.uint32),
    ],
    ids=str,
)
def test_value_checks_on_dtypes_torch_does_not_reduce(x):
    @contracts.contract
    def f(v: Annotated[Shaped[Tensor, " N"], contracts.Range(0, 9)]) -> None:
        return None

    with contracts.mode("full"):
        f(torch.ones(2).to(x.dtype))
        for _ in range(2):  # the walk, then the generated wrapper
            with pytest.raises(contracts.ContractError, match="expected values in"):
                f(x)


def test_meta_tensors_are_checked_for_shape_only():
    @contracts.contract
    def f(
        x: Annotated[Float[Tensor, "B T"], contracts.Range(0, 1)],
        m: Annotated[Bool[Tensor, "B T"], contracts.Mask()],
    ) -> None:
        return None

    x = torch.empty(2, 3, device="meta")
    m = torch.empty(2, 3, device="meta", dtype=torch.bool)
    with contracts.mode("full"):
        f(x, m)
        f(x, m)
        with pytest.raises(contracts.ContractError, match="axis 1"):
            f(x, m[:, :2])
