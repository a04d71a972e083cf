# %% [markdown]
# # Session 4 — the global encoder: the seeds' claims against measurements
#
# **Seeds 000 and 001** report a CNN+Transformer `GlobalAudioEncoder` added to an AudioSR U-Net
# (every SpatialTransformer cross-attends to a global context of the whole clip) as "production
# ready": a 549,280-parameter encoder, +11.5% parameters, under 5% forward overhead, 5–10 MB more
# memory, "linear scaling" with duration and batch, "gradient flow verification" passed, the
# global context "applied to all attention layers". None of these came with a measurement that
# could fail. Here each claim is put next to what torchdx measures on `models.audiosr` (a small,
# faithful reimplementation, with `use_global_encoder` as the seeds' toggle), and a cell — not the
# prose — marks each one holds / does not hold. Sizes are small (CPU, one thread, a shared
# machine): ratios come from interleaved repeats in one process.

# %%
import warnings

import matplotlib.pyplot as plt
import torch

import contracts
import diagnostics
from models.audio import make_mixtures
from models.audiosr import AudioSR, AudioSRConfig, GlobalAudioEncoder

torch.set_num_threads(1)
warnings.filterwarnings("ignore", message="IProgress not found")  # tqdm in a notebook
SEED_ENCODER_PARAMS = 549_280  # seed 000/001
SEED_BASE, SEED_WITH = 258_195_088, 287_896_368  # seed 000, "Model Size Comparison"
claims = []  # (claim, measured, holds) rows of the final table

# %% [markdown]
# ## 1. Parameters, latency, memory: `diagnostics.compare_models`
# The same comparison as `python -m diagnostics.compare_models` (default: `default` vs
# `default,use_global_encoder=true`): parameters per submodule, the median forward latency of
# interleaved repeats, and the peak memory of one forward.

# %%
cmp = diagnostics.compare_models("default", "default,use_global_encoder=true", repeats=5)
print(cmp.to_text())

# %%
enc = cmp.params_b["global_encoder"]
path = cmp.params_b["unet[global path]"]
added = cmp.total_b - cmp.total_a
ratio = cmp.latency_b_ms / cmp.latency_a_ms
mem_delta_mb = (cmp.peak_b_bytes - cmp.peak_a_bytes) / 2**20
seed_added = SEED_WITH - SEED_BASE
print(
    f"seed arithmetic: +{seed_added:,} = +{seed_added / SEED_BASE:.2%}; that is "
    f"{seed_added / SEED_ENCODER_PARAMS:.0f}x the encoder's own {SEED_ENCODER_PARAMS:,}"
)
print(
    f"here: encoder {enc:,}, per-layer global path {path:,}, total +{added:,} "
    f"(+{added / cmp.total_a:.2%}); latency ratio {ratio:.3f}; peak delta {mem_delta_mb:+.2f} MiB"
)
claims += [
    (
        "encoder has ~549,280 parameters",
        f"{enc:,} (64 mel bins)",
        0.5 < enc / SEED_ENCODER_PARAMS < 2,
    ),
    ("< 5% forward overhead", f"ratio {ratio:.3f} (median of interleaved repeats)", ratio < 1.05),
    (
        "+5-10 MB runtime memory (upper bound)",
        f"peak delta {mem_delta_mb:+.2f} MiB (CPU)",
        mem_delta_mb <= 10,
    ),
]
assert path > 0 and seed_added / SEED_ENCODER_PARAMS > 50  # the seed's +29.7 M is not the encoder

# %% [markdown]
# The seeds' own figures disagree with each other: +29.7 M added parameters is ~54× the 549,280
# they give for the encoder, so most of the cost must sit in the per-layer global path inside
# the U-Net ("all 20+ SpatialTransformers"), which the "~2 MB" of seed 001 leaves out. In our
# small default model the encoder is most of the added parameters; how does the split move with
# the U-Net's width? Counted on the meta device (no memory, no compute):


# %%
def n_params(m):
    return sum(p.numel() for p in m.parameters())


widths = {}
for width in (32, 64, 128):
    with torch.device("meta"):
        base = AudioSR(AudioSRConfig(base_channels=width))
        withenc = AudioSR(AudioSRConfig(base_channels=width, use_global_encoder=True))
    extra, in_enc = n_params(withenc) - n_params(base), n_params(withenc.global_encoder)
    widths[width] = (extra / n_params(base), (extra - in_enc) / extra)
    print(
        f"base_channels {width:3d}: {n_params(base):>11,} -> +{extra:>9,} (+{extra / n_params(base):.1%}); "
        f"encoder {in_enc:,}, per-layer global path {extra - in_enc:,} ({(extra - in_enc) / extra:.0%})"
    )
rel, path_share = zip(*widths.values())
assert list(rel) == sorted(rel, reverse=True) and list(path_share) == sorted(path_share)
claims.insert(
    1,
    (
        "+11.5% parameters (the encoder's cost)",
        f"+{rel[0]:.1%} / +{rel[1]:.1%} / +{rel[2]:.1%} at widths 32 / 64 / 128",
        all(abs(r - 0.115) < 0.03 for r in rel),
    ),
)

# %% [markdown]
# ## 2. Scaling over duration and batch: `diagnostics.run_scaling`
# "Linear scaling confirmed" (seed 000) was read off the *input and output tensor sizes*. The
# scaling tool measures peak memory (allocations during the call) and time of the encoder's
# forward at several sizes, fits the exponent with a bootstrap CI, and names the module
# responsible for super-linear growth.

# %%
cfg = AudioSRConfig(use_global_encoder=True)
encoder = GlobalAudioEncoder(cfg).eval()
fps = cfg.sample_rate / cfg.hop  # mel frames per second


def mel(batch, seconds, g):
    return (torch.randn(batch, cfg.n_mels, int(seconds * fps) + 1, generator=g),)  # (B, M, T)


def no_contracts(model, batch):
    with contracts.mode("off"):
        return model(*batch)


target = diagnostics.ScalingTarget(
    model=encoder,
    axes={"duration": lambda s, g: mel(1, s, g), "batch": lambda b, g: mel(b, 2, g)},
    forward=no_contracts,
    name="global_encoder",
)
settings = diagnostics.ScalingConfig(repeats=3, n_boot=300, progress=False)
scaling = {
    "duration": diagnostics.run_scaling(target, "duration", [1, 2, 4, 8], config=settings),
    "batch": diagnostics.run_scaling(target, "batch", [1, 2, 4, 8], config=settings),
}
for axis, rep in scaling.items():
    print(f"--- {axis} (sizes {rep['sizes']})")
    for f in rep["findings"]:
        print(" ", f["message"])


# %%
def memory_kind(rep):
    return next(f["kind"] for f in rep["findings"] if f["metric"] == "memory" and not f["module"])


fig, axes = plt.subplots(1, 2, figsize=(9, 3.2))
for ax, (axis, rep) in zip(axes, scaling.items()):
    peak = [b / 2**20 for b in rep["total"]["peak_bytes"]]
    ax.loglog(rep["sizes"], peak, "o-", label="measured peak")
    ax.loglog(
        rep["sizes"],
        [peak[0] * s / rep["sizes"][0] for s in rep["sizes"]],
        "--",
        label="linear from the first size",
    )
    e = rep["total"]["exponent"]["memory"]["exponent"]
    ax.set_title(f"{axis}: memory exponent {e:.2f}")
    ax.set_xlabel(axis)
axes[0].set_ylabel("peak MiB")
axes[0].legend(fontsize=8)
plt.tight_layout()
plt.show()

dur, bat = scaling["duration"], scaling["batch"]
e_dur = dur["total"]["exponent"]["memory"]
e_bat = bat["total"]["exponent"]["memory"]
claims += [
    (
        "memory linear in duration",
        f"exponent {e_dur['exponent']:.2f} {e_dur['ci95']} ({memory_kind(dur)})",
        memory_kind(dur) == "linear",
    ),
    (
        "memory linear in batch",
        f"exponent {e_bat['exponent']:.2f} {e_bat['ci95']} ({memory_kind(bat)})",
        memory_kind(bat) == "linear",
    ),
]
assert memory_kind(dur) == "super-linear" and memory_kind(bat) == "linear"
responsible = {(f["metric"], f["module"]) for f in dur["findings"] if f["kind"] == "responsible"}
print("named responsible for super-linear growth over duration:", sorted(responsible))
assert ("memory", "transformer.layers.*") in responsible  # (time: only when timing is clear)

# %% [markdown]
# Batch scaling is linear, as claimed. Duration scaling is not: self-attention over all frames of
# the clip makes the transformer layers' memory grow faster than the duration (their share of the
# peak rises with the duration, printed above). The seed measured the input and the output
# (a fixed-size global vector), which cannot show this.

# %% [markdown]
# ## 3. Gradient flow into the encoder: zero-init vs after training (`diagnostics.GradFlow`)
# The new cross-attention output layers are zero-initialized (so that old checkpoints load and
# behave as before). Then nothing downstream depends on the encoder at step 0, and its gradient
# is exactly zero — "gradient flow verification passed" cannot have been checked at
# initialization. A few training steps of a tiny model show how much reaches it later.

# %%
torch.manual_seed(0)
model = AudioSR(AudioSRConfig.tiny(use_global_encoder=True))
clips = torch.stack([m.clean for m in make_mixtures("train", 32, seed=0, seconds=0.128)])
clips = clips / clips.abs().amax(-1, keepdim=True).clamp_min(1e-3) * 0.9  # (32, 2048) in [-1, 1]
flow = diagnostics.GradFlow(model)
opt = torch.optim.Adam(model.parameters(), lr=2e-3)
shares, losses = [], []
for step in range(20):
    batch = clips[(step * 4) % 32 : (step * 4) % 32 + 4]  # (4, 2048)
    loss = model(batch)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    report = flow.record(opt)
    shares.append(report.share("global_encoder"))
    losses.append(float(loss.detach()))
    if step == 0:
        print("step 0:", report)
    opt.step()
print(f"step {step}:", report)
print(
    "encoder gradient share: step 0", shares[0], "| last 5 steps", [f"{s:.1e}" for s in shares[-5:]]
)
print(f"loss {losses[0]:.3f} -> {losses[-1]:.3f}")
unused = [n for n in report.unused if n.startswith("global_encoder")]
assert shares[0] == 0.0 and 0 < max(shares[-5:]) < 1e-3
claims += [
    ("gradient flows into the encoder (at init)", f"share {shares[0]:g} at step 0", shares[0] > 0),
    (
        "gradient flows into the encoder (trained)",
        f"share ≤ {max(shares[-5:]):.1e} of |g|² after {step + 1} steps",
        max(shares[-5:]) > 0.01,
    ),
    (
        "sequence context output is trained",
        f"no gradient ever reaches {', '.join(unused) or '-'}",
        not unused,
    ),
]

# %% [markdown]
# ## 4. Does the model use the global context? (`diagnostics.run_ablation`)
# The ablation tool replaces the encoder's global context (`global_encoder[0]`: the first output
# of the encoder) with zeros or another clip's context, on the same noisy latents, and gives a
# verdict against the floor. On the freshly initialized model and on the model trained above:


# %%
def v_prediction(m, b):
    with contracts.mode("shapes"):
        hi, lo = m.mels(b["wave"])
        g = m.global_context(lo)
        x0 = m.to_latent(m._pad_frames(hi))
        cond = m.to_latent(m._pad_frames(lo))
        t = b["t"]
        a, s = m.sqrt_ab[t][:, None, None, None], m.sqrt_1mab[t][:, None, None, None]
        return m.unet(a * x0 + s * b["eps"], t, cond, g)  # (B, C, M/f, T/f)


gen = torch.Generator().manual_seed(1)
held = torch.stack([m.clean for m in make_mixtures("heldout", 12, seed=0, seconds=0.128)])
held = held / held.abs().amax(-1, keepdim=True).clamp_min(1e-3) * 0.9  # (12, 2048)
with torch.no_grad():
    latent_shape = model.to_latent(model._pad_frames(model.mels(held[:1])[0])).shape[1:]
batches = [
    {
        "wave": held[i : i + 6],
        "t": torch.randint(0, model.cfg.n_timesteps, (6,), generator=gen),
        "eps": torch.randn(6, *latent_shape, generator=gen),
    }
    for i in (0, 6)
]
torch.manual_seed(0)
fresh = AudioSR(AudioSRConfig.tiny(use_global_encoder=True))
verdicts = {}
for name, m in (("zero-init", fresh), ("trained 20 steps", model)):
    tgt = diagnostics.AblationTarget(
        model=m.eval(),
        batches=batches,
        forward=v_prediction,
        sites=["global_encoder[0]"],
        name=name,
    )
    rep = diagnostics.run_ablation(
        tgt, ablations=["zero", "shuffle"], seed=0, n_boot=300, embeddings=False, umap=False
    )
    site = rep.sites[0]
    verdicts[name] = site
    print(f"--- {name}\n{rep.verdict_table()}")
assert verdicts["zero-init"].verdict == "ignored"
assert verdicts["trained 20 steps"].verdict in ("weak", "ignored")
site = verdicts["trained 20 steps"]
claims.append(
    (
        "global context changes the model's output",
        f"zero-init: {verdicts['zero-init'].verdict}; trained: {site.verdict} "
        f"(zero changes the output by {site.channel.effect:.2g})",
        site.verdict == "used",
    )
)

# %% [markdown]
# ## 5. The claims, side by side
# Built from the measurements above; nothing in it is typed by hand.

# %%
w = max(len(c) for c, _, _ in claims)
print(f"{'claim (seeds 000/001)':{w}s}  {'verdict':15s} measured here")
for claim, measured, holds in claims:
    print(f"{claim:{w}s}  {'holds' if holds else 'does not hold':15s} {measured}")
verdict = {c: h for c, _, h in claims}
assert verdict["encoder has ~549,280 parameters"]
assert not verdict["+11.5% parameters (the encoder's cost)"]
assert verdict["+5-10 MB runtime memory (upper bound)"]
assert not verdict["memory linear in duration"] and verdict["memory linear in batch"]
assert not verdict["gradient flows into the encoder (at init)"]
assert not verdict["global context changes the model's output"]

# %% [markdown]
# What holds: the encoder's size is of the order the seeds give, batch scaling is linear, and
# no memory overhead shows up at these sizes. What does not: the added parameters depend on the
# U-Net's width (the relative cost falls and the per-layer path's share rises as it widens), so
# "+11.5%" is a property of one configuration, not of the encoder; the forward overhead is the
# ratio measured in this run (a timing on a shared CPU: the table's verdict is computed from it);
# memory grows super-linearly with the clip's duration because of the transformer's attention;
# at initialization no gradient reaches the encoder, and after a short training run its share is
# tiny; the sequence-context head of the encoder is never trained; and the ablation finds the
# global context ignored at initialization and at most weakly used after training. "Production
# ready" rested on tests that could not fail; each of these measurements can.
