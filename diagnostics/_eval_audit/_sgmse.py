"""The embedded default: a shipped SGMSE+ checkpoint on held-out synthetic mixtures.

The model is loaded the way a user loads it (``models.sgmse.load_checkpoint``, EMA asked for);
the raw and EMA state dicts are read from the checkpoint file itself, independently of the
loader, so the audit can tell which ones the loaded model really holds.

Example:
    >>> from diagnostics._eval_audit import sgmse_eval_target
    >>> target = sgmse_eval_target("cond")            # or "uncond", or a path to a .pt file
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ._target import DEFAULT_REFERENCE, EvalAuditError, EvalTarget

__all__ = ["SGMSE_DEFAULTS", "default_eval_target", "sgmse_eval_target"]

# sized so that the default audit (5 protocols, 270 network calls per example) fits in ~3 min
# on 2 shared CPU cores (benchmarks/bench_eval_audit.py)
SGMSE_DEFAULTS: dict[str, Any] = {
    "n_examples": 6,  # held-out mixtures (one per noise type)
    "seconds": 1.0,  # clip length
    "batch_size": 6,  # mixtures per sampler call
    "data_seed": 0,  # seed of the held-out mixture stream
    "device": "cpu",  # where the model runs (the sampler follows the model)
}


def _file_weights(path: Path, loaded: nn.Module) -> dict[str, dict[str, Tensor] | None]:
    """``{"raw": sd, "ema": sd or None}`` from the file (not through the loader)."""
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
        return {"raw": dict(ckpt["raw"]), "ema": dict(ckpt["ema"]) if ckpt["ema"] else None}
    except (KeyError, TypeError, RuntimeError):  # another layout: ask the public loader
        from models.sgmse import load_checkpoint

        raw = load_checkpoint(path, weights="raw").state_dict()
        ema = loaded.state_dict() if getattr(loaded, "weights_used", None) == "ema" else None
        return {"raw": raw, "ema": ema}


def sgmse_eval_target(checkpoint: str | Path = "cond", **overrides: Any) -> EvalTarget:
    """An :class:`EvalTarget` for a ``models.sgmse`` checkpoint.

    Args:
        checkpoint: ``"cond"`` / ``"uncond"`` (the shipped files) or a path to a checkpoint
            written by ``models.sgmse.save_checkpoint``.
        **overrides: keys of :data:`SGMSE_DEFAULTS`.

    The sampler is ``models.sgmse.enhance_batch`` (predictor-corrector; ``steps`` = N,
    ``corrector_steps``, ``snr``, ``guidance`` = CFG scale), its seed drawn from the audit's
    generator; a conditioned checkpoint (``p_uncond < 1``) gets the noise reference, the
    unconditional baseline gets none.
    """
    from models.audio import make_mixtures
    from models.sgmse import load_checkpoint, load_pretrained

    unknown = set(overrides) - set(SGMSE_DEFAULTS)
    if unknown:
        raise EvalAuditError(
            f"sgmse_eval_target: unknown option(s) {sorted(unknown)}; valid: {sorted(SGMSE_DEFAULTS)}"
        )
    o = {**SGMSE_DEFAULTS, **overrides}
    try:
        if str(checkpoint) in ("cond", "uncond"):
            model = load_pretrained(str(checkpoint), weights="ema")
        else:
            model = load_checkpoint(checkpoint, weights="ema")
    except Exception as e:
        raise EvalAuditError(
            f"sgmse_eval_target: could not load {str(checkpoint)!r}: {e}"
        ) from None
    model.to(o["device"])
    path = Path(model.checkpoint["path"])
    weights = _file_weights(path, model)
    conditioned = float(model.cfg.p_uncond) < 1.0
    n, bs = int(o["n_examples"]), max(1, int(o["batch_size"]))
    mixes = make_mixtures("heldout", n, seed=int(o["data_seed"]), seconds=float(o["seconds"]))
    batches, labels = [], []
    for i in range(0, n, bs):
        group = mixes[i : i + bs]
        batches.append(
            {
                "noisy": torch.stack([m.noisy for m in group]),  # (B, L)
                "clean": torch.stack([m.clean for m in group]),  # (B, L)
                "noise_ref": torch.stack([m.noise_ref for m in group]),  # (B, L_ref)
            }
        )
        labels.append([m.noise_type for m in group])

    def sample(
        model_: nn.Module,
        batch: dict[str, Tensor],
        generator: torch.Generator,
        steps: int = 30,
        corrector_steps: int = 1,
        snr: float = 0.5,
        guidance: float = 1.0,
    ) -> Tensor:
        import contracts
        from models.sgmse import enhance_batch

        seed = int(torch.randint(0, 2**31 - 1, (1,), generator=generator))
        ref = batch["noise_ref"] if conditioned else None
        # the score model's value checks are skipped inside the sampler (speed); shapes stay
        with contracts.mode("shapes"):
            return enhance_batch(
                model_, batch["noisy"], ref, N=int(steps), snr=float(snr),
                corrector_steps=int(corrector_steps), guidance_scale=float(guidance), seed=seed,
            )  # fmt: skip  # (B, L)

    reference = dict(DEFAULT_REFERENCE)
    if not conditioned:
        reference.pop("guidance")  # no reference clip: the guidance scale has no effect
    return EvalTarget(
        model=model,
        batches=batches,
        sample=sample,
        weights=weights,
        evaluated="ema",
        reference=reference,
        sample_rate=16000,
        labels=labels,
        name=f"SGMSE+ {'noise-conditioned' if conditioned else 'unconditional'} "
        f"({path.name}, step {model.checkpoint.get('step')}), {n} held-out mixtures of "
        f"{float(o['seconds']):g} s",
    )


def default_eval_target() -> EvalTarget:
    """The shipped noise-conditioned SGMSE+ checkpoint (``--target`` not given)."""
    return sgmse_eval_target("cond")
