"""Checkpoints: save with the config; load with an explicit report of missing/new keys."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from models._checkpoint import (
    build_from_checkpoint,
    check_save_args,
    read_checkpoint,
    write_checkpoint,
)

from ._config import AudioSRConfig, CheckpointError
from ._model import AudioSR

__all__ = ["LoadReport", "load_checkpoint", "load_state_into", "save_checkpoint"]

# keys that only the global-encoder path has; they may be missing from an older checkpoint
_GLOBAL_MARKERS = ("global_encoder.", ".global_proj.", ".global_norm.", ".global_attn.")


def _is_global(key: str) -> bool:
    return key.startswith("global_encoder.") or any(m in key for m in _GLOBAL_MARKERS[1:])


@dataclass
class LoadReport:
    """What a load did: keys the checkpoint lacked (left at their fresh initialization).

    Attributes:
        missing: model keys not in the checkpoint (all belong to the global-encoder path).
        loaded: number of tensors copied from the checkpoint.
        fresh_parameters: number of scalar parameters left at initialization.
    """

    missing: list[str] = field(default_factory=list)
    loaded: int = 0
    fresh_parameters: int = 0

    def __str__(self) -> str:
        if not self.missing:
            return f"LoadReport: all {self.loaded} tensors loaded, nothing missing"
        groups: dict[str, int] = {}
        for k in self.missing:
            head = "global_encoder" if k.startswith("global_encoder.") else k.rsplit(".", 2)[0]
            groups[head] = groups.get(head, 0) + 1
        lines = [
            f"LoadReport: {self.loaded} tensors loaded; {len(self.missing)} missing keys "
            f"({self.fresh_parameters:,} parameters) left at their initialization:"
        ]
        lines += [f"  {head}: {n} keys" for head, n in sorted(groups.items())]
        return "\n".join(lines)


def load_state_into(model: AudioSR, state: dict[str, torch.Tensor]) -> LoadReport:
    """Load ``state`` into ``model``; only global-encoder keys may be missing.

    Raises:
        CheckpointError: unexpected keys, shape mismatches, or missing keys outside the global
            path (an incompatible checkpoint), naming up to five of each.

    Example:
        >>> report = load_state_into(AudioSR(AudioSRConfig(use_global_encoder=True)), old_state)
        >>> print(report)  # lists global_encoder / *.global_attn keys left at initialization
    """
    own = model.state_dict()
    unexpected = sorted(set(state) - set(own))
    missing = sorted(set(own) - set(state))
    bad_missing = [k for k in missing if not _is_global(k)]
    shapes = [
        f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
        for k in sorted(set(state) & set(own))
        if state[k].shape != own[k].shape
    ]
    problems = []
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected keys (e.g. {unexpected[:5]})")
    if bad_missing:
        problems.append(f"{len(bad_missing)} missing non-global keys (e.g. {bad_missing[:5]})")
    if shapes:
        problems.append(f"{len(shapes)} shape mismatches (e.g. {shapes[:5]})")
    if problems:
        raise CheckpointError(
            "load_state_into: incompatible checkpoint: "
            + "; ".join(problems)
            + ". Hint: build the model from the checkpoint's own config (load_checkpoint)."
        )
    model.load_state_dict(state, strict=False)
    fresh = sum(own[k].numel() for k in missing if k in dict(model.named_parameters()))
    return LoadReport(missing=missing, loaded=len(state), fresh_parameters=fresh)


def save_checkpoint(
    model: AudioSR,
    path: str | Path,
    step: int = 0,
    metrics: dict[str, Any] | None = None,
    **extra: Any,
) -> Path:
    """Save config, weights and metadata (step, metrics, torch version) to ``path``.

    Example:
        >>> save_checkpoint(model, "runs/audiosr/ge.pt", step=200, metrics={"eval_loss": 0.1})
    """
    check_save_args(
        "save_checkpoint",
        model,
        path,
        AudioSR,
        "save_checkpoint(model, path, step=0, metrics=None)",
        CheckpointError,
    )
    return write_checkpoint(
        path, kind="audiosr", config=model.cfg.to_dict(),
        weights={"state_dict": model.state_dict()}, step=step, metrics=metrics, **extra,
    )  # fmt: skip


def load_checkpoint(
    path: str | Path, config: AudioSRConfig | None = None, map_location: str = "cpu"
) -> tuple[AudioSR, LoadReport]:
    """Build a model (from ``config``, or the checkpoint's own) and load the weights.

    Files written before the shared format (``{"config", "state_dict"}`` only) still load.

    Example:
        >>> model, report = load_checkpoint("old.pt", AudioSRConfig(use_global_encoder=True))
        >>> print(report)
    """
    ckpt = read_checkpoint(
        path, kind="audiosr", label="AudioSR", error=CheckpointError,
        legacy_keys=("config", "state_dict"), hint="write it with save_checkpoint",
    )  # fmt: skip
    if config is not None and not isinstance(config, AudioSRConfig):
        raise CheckpointError(
            f"load_checkpoint: argument 'config' is a {type(config).__name__}; expected an "
            "AudioSRConfig or None (None: the checkpoint's own config)"
        )
    state = {k: v.to(map_location) for k, v in ckpt["state_dict"].items()}
    if config is not None:
        model = AudioSR(config)
    else:
        model = build_from_checkpoint(
            path, ckpt, lambda c: AudioSR(AudioSRConfig.from_dict(c)), CheckpointError
        )
    return model, load_state_into(model, state)
