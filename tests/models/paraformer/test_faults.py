"""Seed 004's troubleshooting guide as faults: each test builds the faulty variant and shows
torchdx naming the cause. Tests needing ``diagnostics.NanWatch`` skip if it is missing."""

from __future__ import annotations

import types
from typing import Annotated

import pytest
import torch
import torch.nn.functional as F
from jaxtyping import Bool
from torch import Tensor

import contracts
from contracts import ContractError, Mask
from diagnostics import LossWatch, TrainingCheckError, check_no_retained_graph, check_padding_leak
from models.paraformer import (
    BatchError,
    ConfigError,
    DecodingError,
    DecodingWarning,
    MaskedCrossEntropy,
    Paraformer,
    ParaformerConfig,
    PredictorCollapseError,
    PredictorLoss,
    Tokenizer,
    ToySeq2SeqDataset,
    TransformerBlock,
    VocabError,
    check_alphas,
    check_vocab,
    collate_fn,
    create_padding_mask,
    greedy_decode,
    train_step,
    unpack_batch,
)
from models.paraformer import _model as model_module


def _nanwatch():
    import diagnostics

    return diagnostics.NanWatch, diagnostics.NonFiniteError


def _masks(batch):
    return unpack_batch(batch)[4:]


# --- "Expected shape [B,T,F] but got [B,F,T]"
def test_transposed_features_get_a_transpose_hint(cfg, batch):
    model = Paraformer(cfg)
    feats, tokens, *_ = batch
    fm, tm = _masks(batch)
    with pytest.raises(ContractError, match=r"(?s)argument 'features'.*transpose\(1, 2\)\?") as ei:
        model(feats.transpose(1, 2), tokens, fm, tm)
    assert ei.value.argument == "features" and ei.value.axis == 2


# --- "The size of tensor a must match the size of tensor b": mask vs sequence length
def test_mask_length_mismatch_names_the_mask_and_axis(cfg, batch):
    model = Paraformer(cfg)
    feats, tokens, flens, _tlens = batch
    wrong = create_padding_mask(flens, feats.shape[1] + 3)  # mask built for another length
    with pytest.raises(
        ContractError, match=r"(?s)argument 'feat_mask', axis 1: expected size T_feat"
    ):
        model(feats, tokens, wrong, _masks(batch)[1])
    with pytest.raises(BatchError, match=r"(?s)mask and sequence length disagree"):
        create_padding_mask(flens, int(flens.max()) - 1)


# --- "Attention produces NaN values with masking": a fully masked row
def test_fully_masked_attention_row_is_refused_before_the_nan(cfg):
    block = TransformerBlock(8, 2, 16)
    x = torch.randn(2, 5, 8)
    lengths = torch.tensor([5, 3])
    key_padding = ~create_padding_mask(lengths, 5)  # PyTorch's convention: True = padded
    with pytest.raises(
        ContractError, match=r"(?s)argument 'mask'.*at least one True.*looks inverted"
    ):
        block(x, key_padding[:, None, :].expand(2, 5, 5))


@pytest.mark.filterwarnings("ignore:For backward hooks to be called")
def test_fully_masked_attention_row_localized_by_nanwatch(cfg, batch):
    NanWatch, NonFiniteError = _nanwatch()
    model = Paraformer(cfg)
    feats, tokens, *_ = batch
    fm, tm = _masks(batch)
    fm = fm.clone()
    fm[1] = False  # item 1 has no valid frame at all

    def step(f, t, m, n):
        out = model(f, t, m, n)
        out["loss"].backward()
        return out["loss"]

    with contracts.mode("off"), pytest.raises(NonFiniteError) as ei:
        NanWatch(model).run(step, feats, tokens, fm, tm)
    assert ei.value.report.module.startswith("encoder.blocks.0.attn")
    assert ei.value.report.phase == "forward"


# --- "Padding tokens affect loss calculation"
def test_padding_in_the_loss_is_caught(cfg, batch):
    logits = torch.randn(4, batch[1].shape[1], cfg.vocab_size)
    tokens = batch[1]
    tm = _masks(batch)[1]

    def unmasked_ce(lg, t, m):  # the bug: averages over every position, padding included
        return F.cross_entropy(lg.flatten(0, 1), t.flatten())

    with pytest.raises(TrainingCheckError, match=r"(?s)padding leaks into the loss.*unmasked_ce"):
        check_padding_leak(unmasked_ce, logits, tokens, tm)
    check_padding_leak(MaskedCrossEntropy(0.1), logits, tokens, tm)  # the fix passes


# --- "Causal mask prevents model from seeing current token"
def test_causal_mask_without_diagonal_is_caught(cfg, batch, monkeypatch):
    def causal_no_diag(size):  # the bug from the guide: tril(diagonal=-1)
        return torch.ones(size, size, dtype=torch.bool).tril(diagonal=-1)

    owner = types.SimpleNamespace(create_causal_mask=causal_no_diag)
    with contracts.attach(
        owner, "create_causal_mask", returns=Annotated[Bool[Tensor, "T T"], Mask()]
    ):
        with pytest.raises(ContractError, match=r"(?s)return.*at least one True.*row"):
            owner.create_causal_mask(4)
    # the same bug wired into the (causal) decoder is refused by the attention mask contract
    monkeypatch.setattr(model_module, "create_causal_mask", causal_no_diag)
    model = Paraformer(ParaformerConfig.tiny(decoder_causal=True))
    fm, tm = _masks(batch)
    with pytest.raises(
        ContractError,
        match=r"(?s)TransformerBlock.forward\(\): argument 'mask'.*"
        r"at least one True",
    ):
        model(batch[0], batch[1], fm, tm)


# --- "Token accuracy is 0% or very low": vocabulary mismatch model vs tokenizer
def test_vocab_mismatch_between_model_and_tokenizer(cfg):
    model = Paraformer(cfg)  # alphabet "abcd": V = 7
    tok = Tokenizer("abcdefgh")  # V = 11
    tokens, lengths = tok.batch_encode(["ah", "hd"])
    feats = torch.zeros(2, 10, cfg.n_feats)
    fm = torch.ones(2, 10, dtype=torch.bool)
    with pytest.raises(
        ContractError, match=r"(?s)argument 'tokens'.*V-1=6.*tokenizer and the model"
    ):
        model(feats, tokens, fm, create_padding_mask(lengths, tokens.shape[1]))
    with pytest.raises(VocabError, match=r"(?s)model vocab_size=7 != tokenizer vocab_size=11"):
        check_vocab(model, tok)


def _counting_model(cfg):
    """A model whose predictor gives alpha = 0.5 everywhere (12 frames -> 6 tokens)."""
    model = Paraformer(cfg).eval()
    with torch.no_grad():
        model.predictor.out.weight.zero_()
        model.predictor.out.bias.zero_()
    return model


# --- "Greedy decoding produces empty or truncated sequences"
def test_early_eos_and_truncation_are_reported(cfg):
    feats = torch.rand(2, 12, cfg.n_feats) - 0.5
    model = _counting_model(cfg)
    with torch.no_grad():
        model.decoder.out.bias[Tokenizer.eos_token_id] = 50.0  # the decoder says EOS at once
    with pytest.raises(DecodingError, match=r"(?s)early EOS at position 0 of 6 predicted"):
        greedy_decode(model, feats, 50, check="raise")
    with pytest.warns(DecodingWarning, match="early EOS"):
        greedy_decode(model, feats, 50)
    model = _counting_model(cfg)
    with pytest.raises(
        DecodingError,
        match=r"(?s)truncated -- the predictor counts 6 tokens but "
        r"max_len=3",
    ):
        greedy_decode(model, feats, 3, check="raise")


# --- "Variable-length batching causes errors": collate without lengths
def test_collate_without_lengths_is_caught(cfg):
    ds = ToySeq2SeqDataset(cfg, num_samples=4)

    def bad_collate(items):  # pads but drops the lengths
        f, t, _, _ = collate_fn(items)
        return f, t

    model = Paraformer(cfg)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(BatchError, match=r"(?s)batch has 2 items.*must return the lengths"):
        train_step(model, bad_collate([ds[i] for i in range(4)]), opt)


# --- "Predictor outputs are all zeros or ones"
@pytest.mark.parametrize(("bias", "which"), [(-30.0, "0"), (30.0, "1")])
def test_saturated_predictor_is_caught(cfg, batch, bias, which):
    model = Paraformer(cfg).eval()
    with torch.no_grad():
        model.predictor.out.bias.fill_(bias)
        fm = _masks(batch)[0]
        alphas = model.encode(batch[0], fm)[1]
    with pytest.raises(
        PredictorCollapseError, match=rf"(?s)collapsed -- 100% of .* alpha about {which}"
    ):
        check_alphas(alphas, fm)
    with pytest.raises(ConfigError, match=r"(?s)predictor_weight=0.*collapse"):
        ParaformerConfig.tiny(predictor_weight=0.0)


# --- "Predictor loss is NaN"
def test_nan_into_predictor_loss_names_the_argument(cfg):
    mask = torch.ones(2, 6, dtype=torch.bool)
    alphas = torch.rand(2, 6)
    alphas[1, 2] = float("nan")
    with pytest.raises(
        ContractError, match=r"(?s)PredictorLoss.forward\(\): argument 'alphas'.*NAN"
    ):
        PredictorLoss()(alphas, mask, torch.tensor([2, 3]))
    # the seed's BCE variant with invalid alignment targets: refused, not NaN
    pred = model_module.Predictor(cfg)
    with pytest.raises(ContractError, match=r"(?s)argument 'target_alignments'.*\[0, 1\]"):
        pred.compute_alignment_loss(torch.rand(2, 6), torch.full((2, 6), 2.0), mask)


@pytest.mark.filterwarnings("ignore:For backward hooks to be called")
def test_nan_predictor_localized_by_nanwatch(cfg, batch):
    NanWatch, NonFiniteError = _nanwatch()
    model = Paraformer(cfg)
    with torch.no_grad():
        model.predictor.out.weight[0, 0] = float("inf")  # a poisoned weight
    fm, tm = _masks(batch)

    def step(f, t, m, n):
        out = model(f, t, m, n)
        out["loss"].backward()
        return out["loss"]

    with contracts.mode("off"), pytest.raises(NonFiniteError) as ei:
        NanWatch(model).run(step, batch[0], batch[1], fm, tm)
    assert ei.value.report.module.startswith("predictor")


# --- "Loss oscillates wildly during training" (learning rate too high)
def test_oscillating_loss_from_too_high_lr_is_caught(cfg):
    torch.manual_seed(0)
    ds = ToySeq2SeqDataset(cfg, num_samples=64)
    items = [ds[i] for i in range(64)]
    model = Paraformer(cfg)
    opt = torch.optim.SGD(model.parameters(), lr=2.0)  # far too high
    watch = LossWatch(opt, window=12)
    with pytest.raises(
        TrainingCheckError,
        match=r"(?s)(oscillates wildly|diverges).*learning rate too high \(lr=2\)",
    ):
        for i in range(60):
            b = collate_fn(items[(4 * i) % 64 : (4 * i) % 64 + 4])
            watch.update(train_step(model, b, opt, grad_clip=None)["loss"])
    # a healthy, falling loss curve passes
    healthy = LossWatch(window=12)
    for i in range(40):
        healthy.update(3.0 * 0.97**i + 0.02 * (-1) ** i)


# --- "Memory leak during training": retained graphs
def test_retained_graph_in_history_is_caught(cfg, batch):
    model = Paraformer(cfg)
    fm, tm = _masks(batch)
    history = []
    for _ in range(2):
        out = model(batch[0], batch[1], fm, tm)
        out["loss"].backward()
        history.append({"loss": out["loss"]})  # the bug: the tensor, not .item()
    with pytest.raises(
        TrainingCheckError,
        match=r"(?s)history\[0\]\['loss'\] is a tensor attached to an "
        r"autograd graph.*\.item\(\)",
    ):
        check_no_retained_graph(history, "history")
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    check_no_retained_graph([train_step(model, batch, opt)], "history")  # the fix passes


# --- bad input: empty batch, zero-length sequence, out-of-vocabulary text, wrong dtype
def test_bad_input_gets_clear_errors(cfg, batch):
    ds = ToySeq2SeqDataset(cfg, num_samples=2)
    with pytest.raises(BatchError, match="empty batch"):
        collate_fn([])
    f, t, _, _ = ds[0]
    with pytest.raises(BatchError, match="zero-length sequence"):
        collate_fn([ds[1], (f[:0], t, 0, len(t))])
    with pytest.raises(ContractError, match=r"argument 'lengths': expected values in \[1, "):
        create_padding_mask(torch.tensor([3, 0]), 4)
    with contracts.mode("off"), pytest.raises(BatchError, match="zero-length sequences are not"):
        create_padding_mask(torch.tensor([3, 0]), 4)
    with pytest.raises(VocabError, match=r"(?s)outside the vocabulary \['z'\].*index 2"):
        Tokenizer("abcd").encode("abz")
    with pytest.raises(BatchError, match="texts is empty"):
        Tokenizer("abcd").batch_encode([])
    model = Paraformer(cfg)
    fm, tm = _masks(batch)
    with pytest.raises(ContractError, match=r"(?s)argument 'tokens'"):
        model(batch[0], batch[1].float(), fm, tm)
    with pytest.raises(ContractError, match=r"(?s)argument 'features'"):
        model.encode(batch[0][:, :0], fm[:, :0])
    with pytest.raises(ContractError, match=r"(?s)argument 'features'.*\[-2, 2\]"):
        model.encode(batch[0] * 10, fm)
