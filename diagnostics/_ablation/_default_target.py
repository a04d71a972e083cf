"""The embedded default of ``python -m diagnostics.cond_ablation``: the reference
noise-conditioned SGMSE+ (shipped checkpoint, EMA weights) on held-out synthetic mixtures.

* batches: ``{"x0", "y", "noise_ref"}`` per group of mixtures: clean and noisy compressed
  spectra and the noise reference clip, all normalised by the noisy clip's peak (as SGMSE+'s
  sampler does);
* ``at_time``: ``x_t = mean(x0, y, t) + sigma(t) z`` from the OUVE marginal, ``z`` drawn from the
  engine's generator; the compared output is the score ``[B, F, T]``;
* sites: ``noise_encoder`` (its output is the condition embedding ``[B, E]``; null = the learned
  ``null_embedding``) and ``arg:noise_ref`` (null = ``None``: the model's unconditional path);
* labels: the noise type of each mixture (embedding clusters, silhouette, UMAP);
* sampler: ``models.sgmse.enhance_batch``, scored with SI-SDR and PESQ against the clean clip,
  for the quality-level deltas of the ablations (scale 1) and the guidance sweep; the noisy
  mixture's own scores are the sweep's baseline row.

Example:
    >>> from diagnostics._default_target import default_target
    >>> target = default_target()
    >>> report = run_ablation(target)
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from diagnostics._ablation._types import AblationError, AblationTarget

__all__ = ["DEFAULTS", "default_target", "sgmse_target"]

# sized so that the whole default run fits the 90 s goal on 2 CPU cores; the measured time is in
# docs/results/cond_ablation.json (benchmarks/bench_cond_ablation.py)
DEFAULTS: dict[str, Any] = {
    "n_mixtures": 36,  # held-out mixtures ablated (6 per noise type: a verdict per label)
    "batch_size": 6,  # mixtures per batch (x 6 variants per tiled forward)
    "seconds": 0.5,  # clip length (noise reference and sweep clips)
    "frames": 16,  # STFT frames (from the clip's middle) of the ablated score; multiple of 8
    "n_times": 8,  # diffusion times from t_eps to 1
    "n_embed": 48,  # mixtures whose noise embeddings are analysed (8 per noise type)
    "guidance_scales": (0.0, 1.0, 2.0),  # CFG scales of the sweep (0 = unconditional)
    "guidance_n": 6,  # mixtures in the sweep (one per noise type)
    "sampler_steps": 6,  # reverse steps N of the sweep's sampler (the model default is 30)
    "data_seed": 0,  # seed of the held-out mixture stream
}


def sgmse_target(model: nn.Module, **overrides: Any) -> AblationTarget:
    """An :class:`AblationTarget` for any ``models.sgmse.ScoreModel`` (see the module doc).

    Args:
        model: a ScoreModel (its ``cfg.n_fft`` and ``cfg.stft`` set the front end).
        **overrides: keys of :data:`DEFAULTS`.
    """
    from models.audio import make_mixtures, pesq_score, si_sdr, stft

    o = {**DEFAULTS, **overrides}
    unknown = set(overrides) - set(DEFAULTS)
    if unknown:
        raise AblationError(
            f"sgmse_target: unknown option(s) {sorted(unknown)}; valid: {sorted(DEFAULTS)}"
        )
    cfg = model.cfg
    n_mix, n_emb = int(o["n_mixtures"]), max(int(o["n_embed"]), int(o["n_mixtures"]))
    mixes = make_mixtures("heldout", n_emb, seed=int(o["data_seed"]), seconds=float(o["seconds"]))
    bs, frames = int(o["batch_size"]), int(o["frames"])

    def make_batches(group_mixes: list[Any], size: int) -> tuple[list[dict], list[list[str]]]:
        out, labs = [], []
        for i in range(0, len(group_mixes), size):
            group = group_mixes[i : i + size]
            clean = torch.stack([m.clean for m in group])  # (B, L)
            noisy = torch.stack([m.noisy for m in group])  # (B, L)
            ref = torch.stack([m.noise_ref for m in group])  # (B, L_ref)
            scale = noisy.abs().amax(-1, keepdim=True).clamp_min(1e-8)  # (B, 1)
            x0, y = stft(clean / scale, cfg.stft), stft(noisy / scale, cfg.stft)  # (B, F, T)
            start = max(0, (x0.shape[-1] - frames) // 2)
            out.append(
                {
                    "x0": x0[..., start : start + frames],  # (B, F, frames)
                    "y": y[..., start : start + frames],  # (B, F, frames)
                    "noise_ref": ref / scale,  # (B, L_ref)
                }
            )
            labs.append([m.noise_type for m in group])
        return out, labs

    batches, labels = make_batches(mixes[:n_mix], bs)
    emb_batches, emb_labels = make_batches(mixes, 4 * bs)

    t_eps = float(cfg.t_eps)
    n_t = int(o["n_times"])
    times = [t_eps + (1.0 - t_eps) * k / (n_t - 1) for k in range(n_t)]

    def at_time(batch: dict[str, Tensor], t: float, gen: torch.Generator) -> dict[str, Any]:
        x0, y = batch["x0"], batch["y"]
        tt = torch.full((x0.shape[0],), t, device=x0.device)
        # float32 rounds t_eps = 0.03 down; step to the next float so that t >= t_eps holds
        # (compare in float64: ``tt < t_eps`` would compare in float32 and see no difference)
        if float(tt[0]) < t_eps:
            tt = torch.nextafter(tt, torch.ones_like(tt))
        mean, std = model.sde.marginal_prob(x0, y, tt)
        z = torch.randn(x0.shape, dtype=x0.dtype, generator=gen).to(x0.device)  # complex normal
        return {
            "x_t": mean + std[:, None, None] * z,
            "y": y,
            "t": tt,
            "noise_ref": batch["noise_ref"],
        }

    # the sampler (quality deltas, guidance sweep) runs on one example per noise type
    n_g = int(o["guidance_n"])
    sweep_mix = mixes[:n_g]
    sweep = {
        "clean": torch.stack([m.clean for m in sweep_mix]),  # (G, L)
        "noisy": torch.stack([m.noisy for m in sweep_mix]),  # (G, L)
        "noise_ref": torch.stack([m.noise_ref for m in sweep_mix]),  # (G, L_ref)
    }
    n_steps = int(o["sampler_steps"])

    def score(est: Tensor, clean: Tensor) -> dict[str, Tensor]:
        """SI-SDR and (when the pesq package is installed) PESQ per example; NaN where PESQ
        refuses a clip (counted as a failure by the engine)."""
        out = {"si_sdr": si_sdr(est, clean)}
        try:
            import pesq  # noqa: F401
        except ImportError:
            return out
        vals = []
        for e, c in zip(est, clean, strict=True):
            try:
                vals.append(pesq_score(e, c, 16000))
            except Exception:  # PESQ refuses silent/too-short clips
                vals.append(float("nan"))
        out["pesq"] = torch.tensor(vals)
        return out

    def sample(model_: nn.Module, batch: Any, scale: float, seed: int) -> dict[str, Tensor]:
        import contracts
        from models.sgmse import enhance_batch

        # scale 0 is the unconditional score: one network call (null embedding) per step
        ref = None if float(scale) == 0.0 else batch["noise_ref"]
        # value checks of the score model's contract are skipped inside the sampler (speed:
        # every step would re-check t in [t_eps, 1] and finiteness); shapes stay checked
        with contracts.mode("shapes"):
            est = enhance_batch(
                model_, batch["noisy"], ref, N=n_steps, guidance_scale=float(scale), seed=seed
            )  # (B, L)
        return score(est, batch["clean"])

    def unprocessed(batch: Any) -> dict[str, Tensor]:
        return score(batch["noisy"], batch["clean"])

    def forward(model_: nn.Module, batch: dict[str, Any]) -> Tensor:
        import contracts

        # the score model's contract keeps checking shapes; its value checks (finiteness of
        # every complex input, t in range) are skipped here for speed
        with contracts.mode("shapes"):
            return model_(**batch)

    return AblationTarget(
        model=model,
        forward=forward,
        batches=batches,
        sites=["noise_encoder", "arg:noise_ref"],
        labels=labels,
        null={"noise_encoder": model.null_embedding, "arg:noise_ref": lambda ref: None},
        times=times,
        at_time=at_time,
        sample=sample,
        sample_batches=[sweep],
        unprocessed=unprocessed,
        guidance_scales=tuple(o["guidance_scales"]),
        guidance_batches=1,
        embedding_site="noise_encoder",
        embedding_batches=emb_batches,
        # measured (benchmarks/bench_cond_ablation.py): on CPU this conv net runs 6 forwards of
        # B rows faster than one of 6B rows; on a GPU one larger forward is expected to win
        # (not measured: no GPU here)
        batch_variants=next(model.parameters()).is_cuda,
        embedding_labels=emb_labels,
        name=f"SGMSE+ noise-conditioned ({getattr(model, 'weights_used', '?')} weights), "
        f"{n_mix} held-out mixtures",
    )


def default_target(**overrides: Any) -> AblationTarget:
    """The shipped noise-conditioned SGMSE+ checkpoint (EMA weights, eval mode)."""
    try:
        from models.sgmse import load_pretrained
    except ImportError as e:
        raise AblationError(
            f"the default target needs models.sgmse ({e}); pass --target MODULE:FACTORY"
        ) from None
    try:
        model = load_pretrained("cond")
    except Exception as e:
        raise AblationError(f"the default target could not load SGMSE+: {e}") from None
    return sgmse_target(model.eval(), **overrides)
