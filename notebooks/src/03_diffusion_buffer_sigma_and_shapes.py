# %% [markdown]
# # Session 3 — the diffusion buffer: σ → 0, a buffer larger than the clip, fp16 overflow
#
# **Seed 003** (a diffusion-buffer model with the BBED SDE) lists three ways the training run dies:
# the time schedule reaches σ = 0 so the score target `-z/σ` is infinite; the buffer holds more
# frames than the STFT of a short clip produces; and mixed precision overflows float16.
# Each is planted below in the real `models.diffusion_buffer`, found by a torchdx tool with its
# numbers, fixed, and the fix confirmed by the same tool. Every finding is asserted, so this
# notebook fails when a tool's answer changes.

# %%
import torch

import contracts
import diagnostics
from diagnostics import NanWatch, NonFiniteError
from models.diffusion_buffer import (
    AmpOverflowError,
    BBED,
    BufferSizeError,
    DiffusionBuffer,
    DiffusionBufferConfig,
)

torch.set_num_threads(1)


def clip(b=2, n=2048, scale=0.1, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, 1, n, generator=g) * scale


mix, target = clip(), clip(seed=1)

# %% [markdown]
# ## 1. σ(t) reaches zero
# BBED's σ(t) is zero at t = 0 (and at t = 1, where the bridge reaches the noisy mixture). The
# seed's config started the buffer at `t_eps = 0`. With contracts on, the config refuses it at
# construction and says why:

# %%
try:
    DiffusionBufferConfig.tiny(t_eps=0.0)
except contracts.ContractError as e:
    print(e)
    caught = e
assert caught.argument == "t_eps"

sde = BBED(DiffusionBufferConfig())
print("σ(0) =", float(sde.sigma(torch.tensor(0.0))), " σ(0.03) =", float(sde.sigma(torch.tensor(0.03))))

# %% [markdown]
# With contracts switched off (as in the seed's training script) the model builds, and the loss
# is NaN. Where does it come from? `NanWatch` runs the step; on a non-finite loss it replays the
# step with hooks and names the module that first produced a non-finite value from finite
# inputs, the phase and the op.

# %%
with contracts.mode("off"):
    torch.manual_seed(0)
    model = DiffusionBuffer(DiffusionBufferConfig.tiny(t_eps=0.0))

    def step():
        loss = model(mix, target)
        loss.backward()
        return loss

    try:
        NanWatch(model).run(step)
    except NonFiniteError as e:
        report = e.report
        print(str(e)[:1500])
assert report.module == "score_head" and report.phase == "forward"

# %% [markdown]
# The producer is `score_head` in the forward pass: the score target divides by σ(t), and the
# oldest buffer frame has t = 0. **Fix:** `t_eps = 0.03` (the default). The same watch confirms it:

# %%
torch.manual_seed(0)
model = DiffusionBuffer(DiffusionBufferConfig.tiny())
watch = NanWatch(model)
loss = watch.run(lambda: (lambda l: (l.backward(), l)[1])(model(mix, target)))
print("loss", float(loss.detach()), "| watch:", watch)
assert torch.isfinite(loss)

# %% [markdown]
# ## 2. A buffer larger than the clip's frames
# The online model keeps `buffer_size` frames in flight. A clip shorter than the buffer gives
# fewer STFT frames than that, and the seed's code failed later with an index error. Here the
# refusal names both numbers and the STFT settings that produced them:

# %%
big = DiffusionBuffer(DiffusionBufferConfig.tiny(buffer_size=40))
short = clip(n=1024)
try:
    big(short, short)
except BufferSizeError as e:
    print(e)
    msg = str(e)
assert "33 STFT frames but buffer_size=40" in msg

# %% [markdown]
# **Fix:** train on crops at least as long as the hint says (1248 samples here), or shrink the
# buffer; with 2048-sample crops the same model trains:

# %%
print("loss on 2048-sample crops:", float(big(clip(n=2048), clip(n=2048, seed=1)).detach()))

# %% [markdown]
# ## 3. float16 overflow under autocast
# Loud inputs under float16 autocast overflow the backbone (float16's largest value is 65504).
# `diagnostics.summarize` shows each tensor in one line — the input's range, and the same tensor
# cast to float16, where every element is ±Inf — and the model names the overflow (with the
# largest input magnitude and the float16 limit) instead of returning NaN:

# %%
loud = clip(scale=1e12)
print(diagnostics.summarize(loud))
print(diagnostics.summarize(loud.half()))
torch.manual_seed(0)
amp = DiffusionBuffer(DiffusionBufferConfig.tiny(use_amp=True, amp_dtype="float16"))
try:
    amp(loud, loud)
except AmpOverflowError as e:
    print(e)
    amp_msg = str(e)
assert "65504" in amp_msg

# %% [markdown]
# **Fix:** normalise the input level (the seed's data loader skipped it), or train in bfloat16
# (same exponent range as float32). Both confirmed:

# %%
fixed = amp(clip(), clip(seed=1))
bf16 = DiffusionBuffer(DiffusionBufferConfig.tiny(use_amp=True, amp_dtype="bfloat16"))
bf16.load_state_dict(amp.state_dict())
print("fp16 at normal level:", float(fixed.detach()), "| bf16 on the loud clip:", float(bf16(loud, loud).detach()))
assert torch.isfinite(fixed) and torch.isfinite(bf16(loud, loud))
