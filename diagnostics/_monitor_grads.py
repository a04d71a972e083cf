"""Gradient-side helpers of TrainingMonitor: Adam's second moments for update ratios, and the
NaN-safe histogram payload (one host transfer) and writer."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

__all__ = ["adam_second_moments", "histogram_payload", "write_histograms"]


def adam_second_moments(
    optimizer: Any, params: list[Tensor], grads: list[Tensor]
) -> list[tuple[int, Tensor, float, float]]:
    """``(position, exp_avg_sq, 1/sqrt(1 - beta2**t), eps)`` of the parameters an adaptive
    optimizer (Adam, AdamW, ...) keeps a second moment for; ``[]`` for SGD or no optimizer.

    The step count ``t`` is read from the optimizer state when it lives on the host; on a
    device (capturable/fused Adam) reading it would sync, so no bias correction is applied.
    """
    if optimizer is None or not getattr(optimizer, "state", None):
        return []
    group_of = {id(p): g for g in optimizer.param_groups for p in g["params"]}
    out = []
    for k, (p, g) in enumerate(zip(params, grads, strict=True)):
        st = optimizer.state.get(p, {})
        v = st.get("exp_avg_sq")
        if not isinstance(v, Tensor) or v.shape != g.shape or g.is_sparse:
            continue
        hp = group_of.get(id(p), {})
        beta2 = float(hp.get("betas", (0.9, 0.999))[1])
        t = st.get("step", 0)
        if isinstance(t, Tensor):
            t = float(t) if t.device.type == "cpu" else math.inf
        corr = 1.0 - beta2 ** float(t) if t else 1.0
        scale = 1.0 / math.sqrt(corr) if corr > 0 else 1.0
        out.append((k, v, scale, float(hp.get("eps", 1e-8))))
    return out


def histogram_payload(
    groups: dict[str, list[tuple[Tensor, Tensor]]],
) -> tuple[list[Tensor], list[tuple[str, int]]]:
    """Flattened float32 weights and gradients per group (``{group: [(param, grad)]}``) and the
    ``(tag, length)`` of each piece, to travel to the host in the step's one transfer."""
    pieces: list[Tensor] = []
    spans: list[tuple[str, int]] = []
    for name, pairs in groups.items():
        for kind, pos in (("weights", 0), ("grads", 1)):
            flat = torch.cat([pg[pos].detach().reshape(-1).float() for pg in pairs])  # (numel,)
            pieces.append(flat)
            spans.append((f"{kind}/{name}", flat.numel()))
    return pieces, spans


def write_histograms(writer: Any, step: int, host: Tensor, spans: list[tuple[str, int]]) -> None:
    """NaN-safe histograms: finite values only; the non-finite count as ``nonfinite/TAG``
    (TensorBoard's own histogram code drops or chokes on NaN/Inf)."""
    off = 0
    for tag, n in spans:
        x = host[off : off + n]
        off += n
        finite = torch.isfinite(x)
        writer.add_scalar(f"nonfinite/{tag}", float(n - int(finite.sum())), step)
        if bool(finite.any()):
            writer.add_histogram(tag, x[finite], step)
