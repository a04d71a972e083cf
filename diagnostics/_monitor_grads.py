"""Gradient-side helpers of TrainingMonitor and GradFlow: the direction of each parameter's next
update (for update ratios), and the NaN-safe histogram payload (one host transfer) and writer."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

__all__ = [
    "adam_second_moments",
    "histogram_payload",
    "needs_directions",
    "update_directions",
    "write_histograms",
]


def _real(t: Tensor) -> Tensor:
    """A complex tensor as its ``(..., 2)`` real view (optimizers step complex parameters that
    way: element-wise moments of the real and imaginary parts), others as they are."""
    return torch.view_as_real(t) if t.is_complex() else t


def adam_second_moments(
    optimizer: Any, params: list[Tensor], grads: list[Tensor]
) -> list[tuple[int, Tensor, float, float]]:
    """``(position, exp_avg_sq, 1/sqrt(1 - beta2**t), eps)`` of the parameters an adaptive
    optimizer (Adam, AdamW, ...) keeps a second moment for; ``[]`` for SGD or no optimizer.

    ``exp_avg_sq`` of a complex parameter is returned as its real view (pair it with
    ``_real(grad)``). The step count ``t`` is read from the optimizer state when it lives on the
    host; on a device (capturable/fused Adam) reading it would sync, so no bias correction is
    applied.
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
        out.append((k, _real(v), scale, float(hp.get("eps", 1e-8))))
    return out


def _rule(hp: dict[str, Any]) -> str | None:
    """The update rule a param group's hyperparameters name (torch.optim's own names), when it
    is not ``lr * grad``: ``"rmsprop"``, ``"adagrad"``, ``"sgd"`` (momentum or weight decay)."""
    if "alpha" in hp and "centered" in hp:
        return "rmsprop"
    if "lr_decay" in hp and "initial_accumulator_value" in hp:
        return "adagrad"
    if "dampening" in hp and (hp.get("momentum") or hp.get("weight_decay")):
        return "sgd"
    return None


def needs_directions(optimizer: Any) -> bool:
    """Whether some parameter's update direction is not its gradient: Adam's second moment is
    kept, or a param group follows RMSprop, Adagrad, or SGD with momentum or weight decay."""
    if optimizer is None:
        return False
    if any(_rule(g) for g in optimizer.param_groups):
        return True
    state = getattr(optimizer, "state", None)
    return bool(state) and any("exp_avg_sq" in st for st in state.values())


def update_directions(
    optimizer: Any, params: list[Tensor], grads: list[Tensor]
) -> tuple[list[int], list[Tensor]]:
    """Positions ``k`` (into ``params``) whose next update is not ``lr * grads[k]``, and the
    direction ``d`` of each (the update is ``lr * d``; norms of ``d`` equal those of the update
    over ``lr``, complex parameters as their real views).

    - Adam-like (the state keeps ``exp_avg_sq``): ``g / (sqrt(v_hat) + eps)`` with ``v_hat``
      the bias-corrected second moment of the previous step (an estimate before the step).
    - RMSprop (``alpha``, ``centered``): the step's own ``g / (sqrt(v') + eps)`` with ``v'`` the
      second moment updated with this gradient (centred: minus the updated mean squared), plus
      ``momentum * buffer`` when it keeps one; coupled weight decay folded into ``g``.
    - Adagrad (``lr_decay``, ``initial_accumulator_value``): ``g / (sqrt(sum + g^2) + eps)``,
      divided by ``1 + step * lr_decay``.
    - SGD with momentum or weight decay (``dampening``): ``g' = g + weight_decay * w``, then
      ``buf' = momentum * buf + (1 - dampening) * g'`` (``g'`` on the first step), Nesterov's
      ``g' + momentum * buf'``: exactly the step SGD is about to take.

    Everything else (plain SGD, optimizers it does not know, sparse gradients) is left out: the
    caller reads ``lr * |g|``. Nothing is written: every result is a new tensor.
    """
    if optimizer is None:
        return [], []
    group_of = {id(p): g for g in optimizer.param_groups for p in g["params"]}
    state = getattr(optimizer, "state", None) or {}
    pos: list[int] = []
    out: list[Tensor] = []
    moments = adam_second_moments(optimizer, params, grads)
    adam = {k for k, *_ in moments}
    if moments:
        ks, vs, scale, eps = zip(*moments, strict=True)
        den = torch._foreach_sqrt(list(vs))
        torch._foreach_mul_(den, list(scale))  # Adam's bias correction of v
        torch._foreach_add_(den, list(eps))
        pos += ks
        gs = [grads[k] for k in ks]
        if any(g.is_complex() for g in gs):
            gs = [_real(g) for g in gs]
        out += torch._foreach_div(gs, den)
    sgd: list[tuple[int, dict[str, Any]]] = []
    if not any(_rule(g) for g in optimizer.param_groups):
        return pos, out  # Adam's moments, or plain lr * g
    for k, (p, g) in enumerate(zip(params, grads, strict=True)):
        hp = group_of.get(id(p))
        if k in adam or hp is None or g.is_sparse or g.shape != p.shape:
            continue
        rule = _rule(hp)
        if rule is None:
            continue
        st = state.get(p, {})
        if rule == "sgd":
            sgd.append((k, hp))
            continue
        gr, w = _real(g), _real(p.detach())
        wd = float(hp.get("weight_decay", 0.0))
        if wd:
            gr = gr + wd * w
        if rule == "rmsprop":
            alpha, eps = float(hp["alpha"]), float(hp.get("eps", 1e-8))
            sq = st.get("square_avg")
            sq = gr * gr * (1 - alpha) if sq is None else _real(sq) * alpha + gr * gr * (1 - alpha)
            if hp.get("centered"):
                ga = st.get("grad_avg")
                ga = gr * (1 - alpha) if ga is None else _real(ga) * alpha + gr * (1 - alpha)
                sq = sq - ga * ga
            d = gr / (sq.sqrt() + eps)
            mom = float(hp.get("momentum", 0.0))
            buf = st.get("momentum_buffer")
            if mom and buf is not None:
                d = _real(buf) * mom + d
        else:  # adagrad
            acc = st.get("sum")
            acc = gr * gr if acc is None else _real(acc) + gr * gr
            d = gr / (acc.sqrt() + float(hp.get("eps", 1e-10)))
            decay = float(hp.get("lr_decay", 0.0))
            t = st.get("step", 0)
            if decay and not (isinstance(t, Tensor) and t.device.type != "cpu"):
                d = d / (1 + float(t) * decay)
        pos.append(k)
        out.append(d)
    if sgd:  # fused: a few _foreach kernels over every such parameter
        ks = [k for k, _ in sgd]
        gs = [grads[k] for k in ks]
        wds = [float(hp.get("weight_decay", 0.0)) for _, hp in sgd]
        if any(wds):
            gs = torch._foreach_add(gs, torch._foreach_mul([params[k].detach() for k in ks], wds))
        moms = [float(hp.get("momentum", 0.0)) for _, hp in sgd]
        bufs = [state.get(params[k], {}).get("momentum_buffer") if m else None
                for k, m in zip(ks, moms, strict=True)]  # fmt: skip
        ds = list(gs)  # no momentum: g'; no buffer yet: the buffer starts as g'
        have = [j for j, b in enumerate(bufs) if isinstance(b, Tensor)]
        if have:
            nb = torch._foreach_mul([bufs[j] for j in have], [moms[j] for j in have])
            damp = [1.0 - float(sgd[j][1].get("dampening", 0.0)) for j in have]
            torch._foreach_add_(nb, torch._foreach_mul([gs[j] for j in have], damp))
            for j, b in zip(have, nb, strict=True):
                ds[j] = b
        nest = [j for j, (_, hp) in enumerate(sgd) if moms[j] and hp.get("nesterov")]
        if nest:
            nd = torch._foreach_add([gs[j] for j in nest],
                                    torch._foreach_mul([ds[j] for j in nest], [moms[j] for j in nest]))  # fmt: skip
            for j, d in zip(nest, nd, strict=True):
                ds[j] = d
        pos += ks
        out += ds
    return pos, out


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
