"""One checkpoint format for every reference model: weights plus metadata.

A checkpoint is a dict saved with ``torch.save``::

    {"format": "torchdx.<kind>/1",        # which model wrote it, and the layout version
     "config": {...},                     # the model's config as plain data (to_dict())
     <weights key>: state_dict, ...       # "state_dict" (or "raw" + "ema" for SGMSE+)
     "step": int, "metrics": {...},       # where training stopped and what it measured
     "torch_version": "2.x", **extra}     # plus any extra metadata (command line, seconds)

:func:`write_checkpoint` writes it; :func:`read_checkpoint` reads it back, checks the format
and raises the model's own ``CheckpointError`` (a :class:`contracts.TorchdxError`) naming the
file. Older files without a ``format`` key are accepted when the caller says which keys an old
file of its kind holds (``legacy_keys``): the shipped checkpoints keep loading.

Example:
    >>> write_checkpoint("m.pt", kind="audiosr", config=cfg.to_dict(),
    ...                  weights={"state_dict": model.state_dict()}, step=200)  # doctest: +SKIP
    >>> ckpt = read_checkpoint("m.pt", kind="audiosr", error=CheckpointError)  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import torch
from torch import nn

from contracts import TorchdxError

__all__ = [
    "build_from_checkpoint",
    "check_save_args",
    "checkpoint_format",
    "load_weights",
    "read_checkpoint",
    "write_checkpoint",
]

_RESERVED = ("format", "config", "step", "metrics", "torch_version")


def checkpoint_format(kind: str) -> str:
    """The ``format`` value of a checkpoint of model ``kind`` (``"torchdx.sgmse/1"``)."""
    return f"torchdx.{kind}/1"


def write_checkpoint(
    path: str | Path,
    *,
    kind: str,
    config: Mapping[str, Any],
    weights: Mapping[str, Mapping[str, torch.Tensor] | None],
    step: int = 0,
    metrics: Mapping[str, Any] | None = None,
    **extra: Any,
) -> Path:
    """Write weights (detached CPU copies) and metadata to ``path``; returns the path.

    Args:
        path: the ``.pt`` file (parent folders are created).
        kind: the model (``"paraformer"``, ``"sgmse"``, ``"diffusion_buffer"``, ``"audiosr"``).
        config: the model's config as plain data.
        weights: weight sets by key (``{"state_dict": ...}``); a set may be None (no EMA).
        step: optimiser steps behind these weights.
        metrics: what training measured (final loss, held-out metrics).
        **extra: more metadata (command line, seconds, ...); may not reuse a reserved key.

    Example:
        >>> write_checkpoint("runs/db.pt", kind="diffusion_buffer", config=vars(cfg),
        ...                  weights={"state_dict": model.state_dict()}, step=200)  # doctest: +SKIP
    """
    clash = sorted(set(extra) & (set(_RESERVED) | set(weights)))
    if clash:  # would replace the weights or the config; raised even under python -O
        raise AssertionError(
            f"write_checkpoint: extra metadata reuses reserved keys {clash}; pass config, step "
            "and metrics as the arguments of that name and rename the extra keys"
        )
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload: dict[str, Any] = {"format": checkpoint_format(kind), "config": dict(config)}
    for key, state in weights.items():
        payload[key] = (
            None if state is None else {k: v.detach().cpu().clone() for k, v in state.items()}
        )
    payload.update(
        step=int(step),
        metrics=dict(metrics or {}),
        torch_version=str(torch.__version__),
        **extra,
    )
    torch.save(payload, path)
    return path


def read_checkpoint(
    path: str | Path,
    *,
    kind: str,
    error: type[TorchdxError],
    where: str = "load_checkpoint",
    legacy_keys: tuple[str, ...] | None = None,
    hint: str = "",
    label: str | None = None,
) -> dict[str, Any]:
    """Read a checkpoint of model ``kind``; raise ``error`` naming the file when it is not one.

    Args:
        path: the ``.pt`` file.
        kind: the model that must have written it.
        error: the model's ``CheckpointError`` class.
        where: the public function named in messages.
        legacy_keys: keys an older file of this kind holds when it has no ``format`` key; such a
            file is accepted (and given ``step`` 0 and empty ``metrics`` when it lacks them).
        hint: how to write a good checkpoint, appended to the "not a checkpoint" message.
        label: the model's name in messages (default ``kind``).

    Returns:
        the checkpoint dict, always with ``config``, ``step`` and ``metrics``.

    Example:
        >>> ckpt = read_checkpoint("runs/db.pt", kind="diffusion_buffer",
        ...                        error=CheckpointError)  # doctest: +SKIP
        >>> ckpt["step"], sorted(ckpt["metrics"])  # doctest: +SKIP
    """
    path = Path(path)
    name = str(path)
    if not path.is_file():
        raise error(f"{where}: checkpoint {name!r} does not exist")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise error(f"{where}: {name!r} is not a readable torch checkpoint ({err})") from err
    want = checkpoint_format(kind)
    found = ckpt.get("format") if isinstance(ckpt, dict) else type(ckpt).__name__
    legacy = (
        isinstance(ckpt, dict)
        and "format" not in ckpt
        and legacy_keys is not None
        and all(k in ckpt for k in legacy_keys)
    )
    if not legacy and found != want:
        raise error(
            f"{where}: {name!r} is not a torchdx {label or kind} checkpoint (format {found!r}, expected "
            f"{want!r}){'; ' + hint if hint else ''}"
        )
    ckpt.setdefault("step", 0)
    ckpt.setdefault("metrics", {})
    if not isinstance(ckpt.get("config"), dict):
        raise error(f"{where}: {name!r} has no config dict (keys {sorted(ckpt)})")
    return ckpt


M = TypeVar("M", bound=nn.Module)


def build_from_checkpoint(
    path: str | Path,
    ckpt: Mapping[str, Any],
    build: Callable[[dict[str, Any]], M],
    error: type[TorchdxError],
    where: str = "load_checkpoint",
) -> M:
    """``build(ckpt["config"])``, re-raising a bad config as ``error`` naming the file.

    A config that no longer validates (edited by hand, or written by a version with other
    fields) fails in the config's own check; the message says which file holds it.
    """
    try:
        return build(dict(ckpt["config"]))
    except (TorchdxError, TypeError, ValueError) as err:
        raise error(f"{where}: {str(path)!r} has a bad config: {err}") from err


def load_weights(
    path: str | Path,
    model: nn.Module,
    state: Mapping[str, torch.Tensor],
    error: type[TorchdxError],
    what: str = "weights",
    where: str = "load_checkpoint",
) -> None:
    """``model.load_state_dict(state, strict=True)``, re-raising a mismatch as ``error`` naming
    the file and the first missing / unexpected / mis-shaped keys."""
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as err:
        lines = [ln.strip() for ln in str(err).strip().splitlines() if ln.strip()]
        detail = " ".join(lines[1:3]) if len(lines) > 1 else (lines[0] if lines else "")
        raise error(
            f"{where}: the {what} in {str(path)!r} do not fit its config ({detail[:600]}); the "
            "config stored with them was changed after they were saved, or the file mixes two "
            "models"
        ) from err


def check_save_args(
    where: str, model: Any, path: Any, cls: type, signature: str, error: type[TorchdxError]
) -> None:
    """Raise ``error`` when ``model`` is not a ``cls`` (arguments swapped, or another model)."""
    if not isinstance(model, cls):
        swapped = isinstance(model, (str, Path)) and isinstance(path, nn.Module)
        hint = "the arguments look swapped; " if swapped else ""
        raise error(
            f"{where}: argument 'model' is a {type(model).__name__}, expected a {cls.__name__}; "
            f"{hint}the signature is {signature}"
        )
