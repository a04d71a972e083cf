"""Contracts inside torch.compile (fullgraph, static and dynamic shapes): no graph break, the
eager error's words, device-side value asserts, nothing at all in mode off."""

from __future__ import annotations

from typing import Annotated

import pytest
import torch
import torch._dynamo
from jaxtyping import Bool, Float, Int
from torch import Tensor, nn
from torch._dynamo.utils import counters

import contracts
from contracts import ContractError, Range, contract
from models.paraformer import ParaformerConfig
from models.paraformer._model import Encoder
from models.sgmse import ScoreModel, ScoreModelConfig

pytestmark = pytest.mark.slow


def _compile(model, dynamic):
    torch._dynamo.reset()
    counters.clear()
    return torch.compile(model, backend="aot_eager", fullgraph=True, dynamic=dynamic)


def _graph_breaks() -> int:
    return sum(counters["graph_break"].values())


def _raises(fn, *args) -> str:
    """Call ``fn`` and return the text of what it raised (Dynamo wraps trace-time failures)."""
    with pytest.raises(Exception) as e:
        fn(*args)
    return str(e.value)


@pytest.fixture(scope="module")
def encoder():
    torch.manual_seed(0)
    return Encoder(ParaformerConfig.tiny()).eval()


@pytest.mark.parametrize("dynamic", [False, True], ids=["static", "dynamic"])
def test_paraformer_encoder_compiled(encoder, dynamic):
    f = encoder.cfg.n_feats
    g = _compile(encoder, dynamic)
    x, m = torch.rand(2, 7, f) * 2 - 1, torch.ones(2, 7, dtype=torch.bool)
    torch.testing.assert_close(g(x, m), encoder(x, m))
    g(torch.rand(3, 5, f), torch.ones(3, 5, dtype=torch.bool))  # new B and T
    assert _graph_breaks() == 0
    # a transposed input: the shape relation fails while tracing, in the eager words
    text = _raises(g, x.transpose(1, 2), torch.ones(2, f, dtype=torch.bool))
    assert "Encoder.forward(): argument 'features', axis 2: expected size F" in text
    # a value out of range: a device-side assert, no host read, the eager words
    text = _raises(g, x * 5, m)
    assert "Encoder.forward(): argument 'features': expected values in [-2, 2]" in text
    text = _raises(g, x, torch.zeros(2, 7, dtype=torch.bool))
    assert "argument 'mask': expected at least one True (valid) position per row" in text


@pytest.mark.parametrize("dynamic", [False, True], ids=["static", "dynamic"])
def test_sgmse_score_net_compiled(dynamic):
    torch.manual_seed(0)
    model = ScoreModel(ScoreModelConfig.tiny()).eval()
    f = model.cfg.n_freqs

    def inputs(b=2, t=8):
        z = torch.randn(b, f, t, dtype=torch.complex64)
        y = torch.randn_like(z)
        if dynamic:  # F and T static: torch 2.13 fails on the U-Net's `-T % m` padding when
            for a in (z, y):  # they are symbols, with contracts off as well (aot_eager)
                torch._dynamo.mark_static(a, 1)
                torch._dynamo.mark_static(a, 2)
        return z, y, torch.full((b,), 0.5)

    g = _compile(model, dynamic)
    x, y, t = inputs()
    torch.testing.assert_close(g(x, y, t), model(x, y, t))
    g(*inputs(3, 8))
    assert _graph_breaks() == 0
    text = _raises(g, x.transpose(1, 2), y.transpose(1, 2), t)
    assert "ScoreModel.forward(): argument 'x_t', axis 1: expected size F" in text
    text = _raises(g, x, y, t * 3)
    assert "ScoreModel.forward(): argument 't': expected values in [self.cfg.t_eps, 1]" in text


class Head(nn.Module):
    def __init__(self, vocab: int = 5) -> None:
        super().__init__()
        self.vocab_size = vocab
        self.emb = nn.Embedding(vocab, 4)

    @contract(dims={"V": "self.vocab_size"})
    def forward(
        self, tokens: Annotated[Int[Tensor, "B N"], Range(0, "V-1")]
    ) -> Float[Tensor, "B N 4"]:
        return self.emb(tokens.clamp(0, self.vocab_size - 1))


@pytest.mark.parametrize("dynamic", [False, True], ids=["static", "dynamic"])
def test_wrong_vocabulary_size_is_refused_on_the_device(dynamic):
    g = _compile(Head(), dynamic)
    g(torch.tensor([[0, 4]]))
    assert _graph_breaks() == 0
    text = _raises(g, torch.tensor([[0, 7]]))  # tokens from a tokenizer with a larger vocab
    assert "Head.forward(): argument 'tokens': expected values in [0, V-1]" in text


def test_without_fullgraph_the_eager_contract_error_comes_through():
    torch._dynamo.reset()
    g = torch.compile(Head(), backend="aot_eager")
    g(torch.tensor([[0, 4]]))
    with pytest.raises(ContractError, match=r"argument 'tokens': expected 2 axes"):
        g(torch.tensor([[[0, 4]]]))


@contract
def _pair_sum(x: Float[Tensor, "B T"], y: Float[Tensor, "B T"]) -> Float[Tensor, "B T"]:
    return x + y


def _around_a_graph_break(x, y):
    torch._dynamo.graph_break()
    return _pair_sum(x, y) * 2


@pytest.mark.parametrize("history", ["good call first", "bad call first"])
def test_without_fullgraph_the_error_type_does_not_depend_on_the_call_history(history):
    # a good call first makes the next trace's sizes symbolic (automatic dynamic shapes): the
    # violating size must still fail the trace, not a graph node run on fake tensors
    torch._dynamo.reset()
    g = torch.compile(_around_a_graph_break, backend="eager")
    good, bad = (torch.ones(2, 3), torch.ones(2, 3)), (torch.ones(2, 3), torch.ones(2, 4))
    if history == "good call first":
        g(*good)
    with pytest.raises(ContractError, match=r"argument 'y', axis 1: expected size T=3, got 4"):
        g(*bad)
    assert torch.equal(g(*good), torch.full((2, 3), 4.0))


def _graph_ops(fn, *args) -> list[str]:
    """The ops of the graph Dynamo captures for ``fn(*args)``."""
    graphs = []

    def backend(gm, example_inputs):
        graphs.append(gm)
        return gm.forward

    torch._dynamo.reset()
    torch.compile(fn, backend=backend, fullgraph=True)(*args)
    return [str(n.target) for g in graphs for n in g.graph.nodes if n.op == "call_function"]


def test_mode_off_compiles_to_nothing_and_full_adds_asserts():
    head = Head()
    raw = Head.forward.__wrapped__
    x = torch.tensor([[0, 4]])
    plain = _graph_ops(lambda t: raw(head, t), x)
    with contracts.mode("off"):
        off = _graph_ops(head, x)
    with contracts.mode("full"):
        full = _graph_ops(head, x)
    assert off == plain
    assert any("_assert_async" in op for op in full) and len(full) > len(plain)
    with contracts.mode("shapes"):  # shapes: guards only, no op in the graph
        assert _graph_ops(head, x) == plain


@contract
def _with_checks(x: Float[Tensor, "B T"], cut: int = 0) -> Float[Tensor, "B T"]:
    h = contracts.check(x * 2, Float[Tensor, "B T"], name="h")
    contracts.check(h[:, cut:], Float[Tensor, "B T"], name="h2")
    return h


@pytest.mark.parametrize("dynamic", [False, True], ids=["static", "dynamic"])
def test_check_in_compiled_code_shares_the_call_bindings(dynamic):
    g = _compile(_with_checks, dynamic)
    torch.testing.assert_close(g(torch.ones(2, 3)), torch.full((2, 3), 2.0))
    assert _graph_breaks() == 0
    text = _raises(g, torch.ones(2, 3), 1)  # h2 has T-1 columns
    assert "checked value 'h2', axis 1: expected size T" in text


@contract(allow_empty=True)
def _masked(
    x: Float[Tensor, "B T"], m: Annotated[Bool[Tensor, "B T"], contracts.Mask()]
) -> Float[Tensor, "B T"]:
    return x * m


@pytest.mark.parametrize("dynamic", [False, True])
def test_compiled_allow_empty_takes_an_empty_batch_not_rows_without_positions(dynamic):
    g = _compile(_masked, dynamic)
    assert g(torch.ones(0, 3), torch.ones(0, 3, dtype=torch.bool)).shape == (0, 3)
    text = _raises(g, torch.ones(2, 0), torch.ones(2, 0, dtype=torch.bool))
    assert "_masked(): argument 'm'" in text and "got an empty axis (size 0)" in text
