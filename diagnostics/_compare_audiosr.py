"""The AudioSR variants of ``python -m diagnostics.compare_models`` (the default factory):
a model spec is a checkpoint (``.pt``), a JSON config, or a preset with overrides
(``default,use_global_encoder=true``); the compared forward is the encoder + one U-Net call, and
the ablated path is the global context (zeroed).

Example:
    >>> variant = audiosr_variant("tiny,use_global_encoder=true")
    >>> variant.ablate is not None
    True
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from diagnostics._compare import CompareError, Variant

__all__ = ["PRESETS", "audiosr_variant", "build_model", "param_groups"]


PRESETS = ("tiny", "default")


def _parse_value(raw: str) -> Any:
    low = raw.lower()
    if low in ("true", "false"):
        return low == "true"
    try:
        return json.loads(raw)
    except json.JSONDecodeError:
        return raw


def build_model(spec: str) -> tuple[Any, str]:
    """``spec`` -> (AudioSR model, description). Checkpoint ``.pt``, ``.json`` config, or preset.

    Example:
        >>> model, desc = build_model("tiny,use_global_encoder=true")
    """
    from models.audiosr import AudioSR, AudioSRConfig, load_checkpoint

    path = Path(spec)
    if spec.endswith(".pt"):
        if not path.is_file():
            raise CompareError(f"compare_models: checkpoint {spec!r} does not exist")
        model, report = load_checkpoint(path)
        return model, f"checkpoint {spec} ({report.loaded} tensors)"
    if spec.endswith(".json"):
        if not path.is_file():
            raise CompareError(f"compare_models: config {spec!r} does not exist")
        try:
            return AudioSR(AudioSRConfig.from_dict(json.loads(path.read_text()))), f"config {spec}"
        except (TypeError, ValueError) as e:
            raise CompareError(f"compare_models: config {spec!r}: {e}") from None
    preset, *pairs = spec.split(",")
    if preset not in PRESETS:
        raise CompareError(
            f"compare_models: unknown model spec {spec!r}; give a .pt checkpoint, a .json config "
            f"or a preset {PRESETS} with key=value overrides"
        )
    overrides = {}
    for pair in pairs:
        key, eq, val = pair.partition("=")
        if not eq:
            raise CompareError(f"compare_models: override {pair!r} in {spec!r} is not key=value")
        overrides[key.strip()] = _parse_value(val.strip())
    make = AudioSRConfig.tiny if preset == "tiny" else AudioSRConfig
    try:
        cfg = make(**overrides)
    except TypeError as e:
        raise CompareError(f"compare_models: bad override in {spec!r}: {e}") from None
    except ValueError as e:
        raise CompareError(f"compare_models: {e}") from None
    return AudioSR(cfg), f"preset {spec}"


def param_groups(model: torch.nn.Module) -> dict[str, int]:
    """Parameter counts by submodule: ``mel``, ``global_encoder``, ``unet.<part>``, and the
    global path inside the U-Net (``unet[global path]``, the ``global_*`` layers)."""
    out: dict[str, int] = {}
    for name, p in model.named_parameters():
        parts = name.split(".")
        if parts[0] == "unet":
            key = (
                "unet[global path]"
                if any(s.startswith("global_") for s in parts)
                else ("unet." + parts[1])
            )
        else:
            key = parts[0]
        out[key] = out.get(key, 0) + p.numel()
    return out


def _inputs(model: Any, batch: int, seconds: float, seed: int) -> dict[str, torch.Tensor]:
    cfg = model.cfg
    g = torch.Generator().manual_seed(seed)
    n = int(seconds * cfg.sample_rate)
    wave = (torch.rand(batch, n, generator=g) - 0.5) * 1.8
    with torch.no_grad():
        hi, lo = model.mels(wave)
        x0 = model.to_latent(model._pad_frames(hi))
        cond = model.to_latent(model._pad_frames(lo))
    t = torch.full((batch,), cfg.n_timesteps // 2, dtype=torch.long)
    noise = torch.randn(x0.shape, generator=g)
    a, s = model.sqrt_ab[t][:, None, None, None], model.sqrt_1mab[t][:, None, None, None]
    return {"lo": lo, "x_t": a * x0 + s * noise, "t": t, "cond": cond}


def _forward(model: Any, inp: Any, zero_context: bool = False) -> torch.Tensor:
    g = model.global_context(inp["lo"])  # the encoder runs inside the timed forward
    if g is not None and zero_context:
        g = torch.zeros_like(g)
    return model.unet(inp["x_t"], inp["t"], inp["cond"], g)


def audiosr_variant(spec: str) -> Variant:
    """An AudioSR model spec -> :class:`~diagnostics._compare.Variant` (see the module doc)."""
    model, desc = build_model(spec)
    return Variant(
        model=model,
        description=desc,
        inputs=lambda batch, seconds, seed: _inputs(model, batch, seconds, seed),
        forward=_forward,
        ablate=None
        if model.global_encoder is None
        else (lambda m, inp: _forward(m, inp, zero_context=True)),
        ablated="the global context",
        groups=param_groups,
    )
