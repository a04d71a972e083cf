# %% [markdown]
# # Session 1 — Paraformer: shapes, masks, lengths, vocabulary, padding, early EOS, α sums
#
# **Seed 004** is a Paraformer ASR with full tensor-contract tables and a troubleshooting guide.
# Its entries ("Expected shape [B,T,F] but got [B,F,T]", "Attention produces NaN values with
# masking", "Token accuracy is 0%", "Padding tokens affect loss calculation", "Greedy decoding
# produces empty sequences", "Predictor outputs are all zeros or ones") are planted here in the
# real `models.paraformer`, one at a time. Each is caught by a contract or a check **at the call
# that causes it**, with its message shown, then fixed. Every finding is asserted, so this
# notebook fails when a tool's answer changes.

# %%
import torch
import torch.nn.functional as F

import contracts
import diagnostics
from contracts import ContractError
from models.paraformer import (
    MaskedCrossEntropy,
    Paraformer,
    ParaformerConfig,
    PredictorCollapseError,
    Tokenizer,
    ToySeq2SeqDataset,
    VocabError,
    check_alphas,
    check_vocab,
    collate_fn,
    create_padding_mask,
    greedy_decode,
    unpack_batch,
)

torch.set_num_threads(1)
torch.manual_seed(0)
cfg = ParaformerConfig.tiny()
model = Paraformer(cfg)
ds = ToySeq2SeqDataset(cfg, num_samples=4)
batch = collate_fn([ds[i] for i in range(4)])
feats, tokens, feat_lens, tok_lens = batch
feat_mask, tok_mask = unpack_batch(batch)[4:]
print("features", diagnostics.summarize(feats))
print("feat_mask", diagnostics.summarize(feat_mask))
out = model(feats, tokens, feat_mask, tok_mask)
print("healthy loss:", round(float(out["loss"].detach()), 4))

# %% [markdown]
# ## 1. Features stored as [B, F, T]
# The contract binds `F` from `self.n_feats`, sees the sizes swapped, and suggests the transpose:

# %%
try:
    model(feats.transpose(1, 2), tokens, feat_mask, tok_mask)
except ContractError as e:
    print(e)
    err = e
assert err.argument == "features" and err.axis == 2 and "transpose(1, 2)" in str(err)

# %% [markdown]
# ## 2. Mask polarity: PyTorch's `key_padding_mask` convention (True = padded)
# The reference model's masks are True = valid. A mask built the other way round marks the
# padded frames of the longest item as valid and can leave a row with no valid position — the
# NaN in the guide's attention entry. The `Mask()` contract refuses it and says it looks inverted:

# %%
try:
    model(feats, tokens, ~feat_mask, tok_mask)
except ContractError as e:
    print(e)
    err = e
assert err.argument == "feat_mask" and "inverted" in str(err)

# %% [markdown]
# ## 3. Lengths larger than T (an end index instead of a length)

# %%
try:
    create_padding_mask(feat_lens + 1, feats.shape[1])
except contracts.TorchdxError as e:
    print(type(e).__name__, e)
    err = e
assert "mask and sequence length disagree" in str(err)
print("fixed:", diagnostics.summarize(create_padding_mask(feat_lens, feats.shape[1])))

# %% [markdown]
# ## 4. Vocabulary: a tokenizer that does not match the model
# Token accuracy 0 % in the guide came from a tokenizer with more symbols than the model's
# output layer. The contract on `tokens` bounds them by `V-1`, and `check_vocab` compares the two
# objects directly:

# %%
tok = Tokenizer("abcdefgh")  # the model was built for "abcd"
t2, l2 = tok.batch_encode(["ah", "hd"])
try:
    model(torch.zeros(2, 10, cfg.n_feats), t2, torch.ones(2, 10, dtype=torch.bool),
          create_padding_mask(l2, t2.shape[1]))
except ContractError as e:
    print(e)
    err = e
assert err.argument == "tokens"
try:
    check_vocab(model, tok)
except VocabError as e:
    print(e)
    verr = e
assert "vocab_size=7 != tokenizer vocab_size=11" in str(verr)

# %% [markdown]
# ## 5. Padding counted in the loss
# `diagnostics.check_padding_leak` perturbs the logits at padded positions only; if the loss
# moves, padding leaks into it. The guide's unmasked cross-entropy is caught, the masked one passes:

# %%
logits = torch.randn(4, tokens.shape[1], cfg.vocab_size)


def unmasked_ce(lg, t, m):  # the bug: averages over every position, padding included
    return F.cross_entropy(lg.flatten(0, 1), t.flatten())


try:
    diagnostics.check_padding_leak(unmasked_ce, logits, tokens, tok_mask)
except diagnostics.TrainingCheckError as e:
    print(e)
    leak = e
assert "padding leaks into the loss" in str(leak)
diagnostics.check_padding_leak(MaskedCrossEntropy(0.1), logits, tokens, tok_mask)
print("MaskedCrossEntropy: no leak")

# %% [markdown]
# ## 6. The predictor's α sums and early EOS
# Paraformer's CIF predictor fires one token each time the running sum of α reaches 1, so Σα is
# the predicted token count. A predictor whose α saturates (all ≈ 0 or ≈ 1) is named by
# `check_alphas`; here the output bias is pushed to −30:

# %%
sat = Paraformer(cfg).eval()
with torch.no_grad():
    sat.predictor.out.bias.fill_(-30.0)
    alphas = sat.encode(feats, feat_mask)[1]
print("Σα per item:", alphas.sum(1).tolist(), "target lengths:", tok_lens.tolist())
try:
    check_alphas(alphas, feat_mask)
except PredictorCollapseError as e:
    print(e)
    col = e
assert "collapsed" in str(col)

# %% [markdown]
# A decoder that says EOS at once gives empty hypotheses. `greedy_decode` compares the number of
# tokens the predictor counted with where EOS came, and warns (or raises with `check="raise"`):

# %%
dec = Paraformer(cfg).eval()
with torch.no_grad():
    dec.predictor.out.weight.zero_()
    dec.predictor.out.bias.zero_()  # α = 0.5 everywhere: 12 frames -> 6 tokens
    dec.decoder.out.bias[Tokenizer.eos_token_id] = 50.0  # the planted bug
x = torch.rand(2, 12, cfg.n_feats) - 0.5
import warnings
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    greedy_decode(dec, x, 50)
messages = [str(w.message) for w in caught]
print(messages[0])
assert any("early EOS" in m for m in messages)
