"""Training hygiene (seed 004): padding counted in the loss, graphs retained across steps."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .._cases import ProbeCase, fault
from ._common import paraformer_batch, tiny_whisper, whisper_batch


def _leak_probe(loss_fn, logits: Tensor, targets: Tensor, mask: Tensor):
    from diagnostics import check_padding_leak

    return lambda: check_padding_leak(loss_fn, logits.detach(), targets, mask)


@fault(
    "hygiene.padding_in_loss",
    "hygiene",
    "torch",
    "token cross-entropy averaged over all positions, padding included",
    {"names": ["padding"]},
    quick=True,
)
def _pad_loss(faulty: bool):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Embedding(12, 16), nn.Linear(16, 12))
    tokens = torch.randint(3, 12, (4, 7))
    lengths = torch.tensor([7, 5, 3, 6])
    mask = torch.arange(7)[None, :] < lengths[:, None]  # (B, T) True = valid
    tokens = tokens.masked_fill(~mask, 0)  # PAD = 0
    logits = model(tokens)

    def loss_fn(lg: Tensor, tg: Tensor, m: Tensor) -> Tensor:
        ce = F.cross_entropy(lg.flatten(0, 1), tg.flatten(), reduction="none").view_as(tg)
        if faulty:
            return ce.mean()  # padding counted
        return (ce * m).sum() / m.sum()

    return ProbeCase(_leak_probe(loss_fn, logits, tokens, mask), "check_padding_leak")


@fault(
    "hygiene.paraformer_loss_mask_dropped",
    "hygiene",
    "torchdx",
    "Paraformer's MaskedCrossEntropy called with an all-True mask (the token mask was lost)",
    {"names": ["padding"]},
)
def _paraformer_pad(faulty: bool):
    from models.paraformer import Paraformer, ParaformerConfig, create_padding_mask

    cfg = ParaformerConfig.tiny(max_tokens=4)
    model = Paraformer(cfg)
    feats, toks, fl, tl = paraformer_batch(cfg)
    fm, tm = create_padding_mask(fl, feats.shape[1]), create_padding_mask(tl, toks.shape[1])
    with torch.no_grad():
        logits = model(feats, toks, fm, tm)["logits"]

    def loss_fn(lg: Tensor, tg: Tensor, m: Tensor) -> Tensor:
        return model.criterion_ce(lg, tg, torch.ones_like(m) if faulty else m)

    return ProbeCase(_leak_probe(loss_fn, logits, toks, tm), "check_padding_leak")


@fault(
    "hygiene.whisper_pad_labels_not_ignored",
    "hygiene",
    "transformers",
    "Whisper labels padded with pad_token_id instead of -100: padding trained as a class",
    {"names": ["padding"]},
)
def _whisper_pad(faulty: bool):
    model, cfg = tiny_whisper()
    feats, labels = whisper_batch(cfg, b=3, s=6)
    mask = torch.arange(6)[None, :] < torch.tensor([6, 4, 2])[:, None]
    labels = labels.masked_fill(~mask, cfg.pad_token_id)
    with torch.no_grad():
        logits = model(input_features=feats, decoder_input_ids=labels).logits

    def loss_fn(lg: Tensor, tg: Tensor, m: Tensor) -> Tensor:
        prepared = tg if faulty else tg.masked_fill(~m, -100)  # the user's label preparation
        return F.cross_entropy(lg.flatten(0, 1), prepared.flatten(), ignore_index=-100)

    return ProbeCase(_leak_probe(loss_fn, logits, labels, mask), "check_padding_leak")


def _history_probe(faulty: bool, make_step, name: str):
    from diagnostics import check_no_retained_graph

    def probe() -> None:
        history = []
        for i in range(3):
            loss = make_step(i)
            history.append(loss if faulty else loss.item())  # the fault keeps every graph
        check_no_retained_graph(history, name)

    return probe


@fault(
    "hygiene.retained_graph",
    "hygiene",
    "torch",
    "loss tensors (not .item()) kept in a history list: every step's graph stays alive",
    {"names": ["history[0]"]},
    quick=True,
)
def _retained(faulty: bool):
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 1))
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    x, y = torch.randn(16, 8), torch.randn(16, 1)

    def step(i: int) -> Tensor:
        loss = F.mse_loss(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        return loss

    return ProbeCase(_history_probe(faulty, step, "history"), "check_no_retained_graph")


@fault(
    "hygiene.paraformer_retained_logits",
    "hygiene",
    "torchdx",
    "Paraformer training loop keeps each step's output dict (logits with graph) for logging",
    {"names": ["logs[0]"]},
)
def _paraformer_retained(faulty: bool):
    from diagnostics import check_no_retained_graph
    from models.paraformer import Paraformer, ParaformerConfig, create_padding_mask

    cfg = ParaformerConfig.tiny(max_tokens=4)
    model = Paraformer(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    feats, toks, fl, tl = paraformer_batch(cfg)
    fm, tm = create_padding_mask(fl, feats.shape[1]), create_padding_mask(tl, toks.shape[1])

    def probe() -> None:
        logs = []
        for _ in range(2):
            out = model(feats, toks, fm, tm)
            opt.zero_grad()
            out["loss"].backward()
            opt.step()
            logs.append(out if faulty else {k: v.detach() for k, v in out.items()})
        check_no_retained_graph(logs, "logs")

    return ProbeCase(probe, "check_no_retained_graph")


@fault(
    "hygiene.paraformer_early_eos",
    "hygiene",
    "torchdx",
    "Paraformer decoder with an inflated EOS bias: greedy decoding stops at EOS too early",
    {"names": ["early EOS"]},
)
def _early_eos(faulty: bool):
    from models.paraformer import (
        Paraformer,
        ParaformerConfig,
        Tokenizer,
        create_padding_mask,
        greedy_decode,
    )

    cfg = ParaformerConfig.tiny(max_tokens=4)
    model = Paraformer(cfg).eval()
    if faulty:  # e.g. EOS over-weighted in training: its logit dominates every position
        with torch.no_grad():
            model.decoder.out.bias[Tokenizer.eos_token_id] += 6.0
    feats, _, fl, _ = paraformer_batch(cfg)
    fm = create_padding_mask(fl, feats.shape[1])
    return ProbeCase(
        lambda: greedy_decode(model, feats, max_len=20, feat_mask=fm, check="raise"),
        "greedy_decode(check='raise')",
    )
