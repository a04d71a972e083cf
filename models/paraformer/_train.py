"""Training and evaluation steps, the guards from seed 004's troubleshooting guide, and the
training loop behind ``python -m models.paraformer.train``."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Annotated, Any

import torch
from jaxtyping import Float
from torch import Tensor

from contracts import Range, contract

from ._config import BatchError, ParaformerConfig, TrainingError, VocabError
from ._data import ToySeq2SeqDataset, collate_fn
from ._decode import greedy_decode
from ._losses import SequenceAccuracy, TokenAccuracy
from ._masks import create_padding_mask
from ._model import Paraformer
from ._predictor import check_alphas
from ._tokenizer import Tokenizer

__all__ = [
    "LossWatch",
    "check_no_retained_graph",
    "check_padding_leak",
    "check_vocab",
    "fit",
    "load_checkpoint",
    "predict",
    "train_step",
    "unpack_batch",
    "val_step",
]

Batch = Sequence[Tensor]


def unpack_batch(batch: Batch) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """``(features, tokens, feat_lens, token_lens)`` -> the same plus the two padding masks.

    Raises:
        BatchError: the batch lacks its lengths (a collate_fn that returns only padded
            tensors), is empty, or its lengths disagree with the padded tensors.
    """
    if not isinstance(batch, (tuple, list)) or len(batch) != 4:
        n = len(batch) if isinstance(batch, (tuple, list)) else type(batch).__name__
        raise BatchError(
            f"unpack_batch: batch has {n} items; expected (features, tokens, feat_lens, "
            "token_lens) -- the collate_fn must return the lengths too, otherwise padding "
            "cannot be masked (use models.paraformer.collate_fn)"
        )
    features, tokens, feat_lens, token_lens = batch
    if features.shape[0] == 0:
        raise BatchError("unpack_batch: empty batch (B = 0)")
    feat_mask = create_padding_mask(feat_lens, features.shape[1])
    token_mask = create_padding_mask(token_lens, tokens.shape[1])
    return features, tokens, feat_lens, token_lens, feat_mask, token_mask


def train_step(
    model: Paraformer,
    batch: Batch,
    optimizer: torch.optim.Optimizer,
    scheduler: Any = None,
    grad_clip: float | None = 1.0,
) -> dict[str, float]:
    """One optimisation step. Returns Python floats (never tensors, so no graph is kept):
    ``loss`` (>= 0), ``loss_ce``, ``loss_predictor``, ``grad_norm``, ``lr``."""
    model.train()
    features, tokens, _, _, feat_mask, token_mask = unpack_batch(batch)
    out = model(features, tokens, feat_mask, token_mask)
    optimizer.zero_grad(set_to_none=True)
    out["loss"].backward()
    gn = torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip or float("inf"))
    optimizer.step()
    if scheduler is not None:
        scheduler.step()
    return {
        "loss": out["loss"].item(),
        "loss_ce": out["loss_ce"].item(),
        "loss_predictor": out["loss_predictor"].item(),
        "grad_norm": float(gn),
        "lr": optimizer.param_groups[0]["lr"],
    }


def val_step(model: Paraformer, batch: Batch, max_len: int = 200) -> dict[str, float]:
    """Validation metrics, each in [0, 1]: ``token_accuracy`` (teacher-forced lengths),
    ``sequence_accuracy`` and ``length_accuracy`` (free greedy decoding); plus ``loss``."""
    was_training = model.training
    model.eval()
    try:
        features, tokens, _, token_lens, feat_mask, token_mask = unpack_batch(batch)
        with torch.no_grad():
            out = model(features, tokens, feat_mask, token_mask)
            tok_acc = TokenAccuracy()(out["logits"], tokens, token_mask)
            hyp = greedy_decode(model, features, max_len, feat_mask, check="ignore")
            hyp_lens = _lengths_through_eos(hyp)
            seq_acc = SequenceAccuracy()(hyp, tokens, hyp_lens, token_lens)
            len_acc = (hyp_lens == token_lens).float().mean()
        return {
            "loss": out["loss"].item(),
            "token_accuracy": tok_acc.item(),
            "sequence_accuracy": seq_acc.item(),
            "length_accuracy": len_acc.item(),
        }
    finally:
        model.train(was_training)


def _lengths_through_eos(tokens: Tensor) -> Tensor:
    """Number of non-PAD tokens per row (decoded rows are PAD after EOS)."""
    return (tokens != Tokenizer.pad_token_id).sum(dim=-1)


@contract(generate=False)
def predict(
    model: Paraformer,
    tokenizer: Tokenizer,
    features: Annotated[Float[Tensor, "T_feat F"], Range(-2, 2)],
    max_len: Annotated[int, Range(1, None)] = 200,
    check: str = "warn",
) -> str:
    """Transcribe one utterance ``[T_feat, F]``.

    Example:
        >>> predict(model, tokenizer, dataset[0][0])  # doctest: +SKIP
        'cabbage'
    """
    check_vocab(model, tokenizer)
    was_training = model.training
    model.eval()
    try:
        tokens = greedy_decode(model, features[None], max_len, check=check)
    finally:
        model.train(was_training)
    return tokenizer.decode(tokens[0])


# ----------------------------------------------------------------------------- guards


def check_vocab(model: Paraformer, tokenizer: Tokenizer) -> None:
    """Raise :class:`VocabError` when model and tokenizer disagree on the vocabulary size
    (seed guide, "Token accuracy is 0% or very low")."""
    if model.vocab_size != tokenizer.vocab_size:
        raise VocabError(
            f"check_vocab: model vocab_size={model.vocab_size} != tokenizer vocab_size="
            f"{tokenizer.vocab_size} ({tokenizer!r}); build both from the same config "
            "(ParaformerConfig.alphabet)"
        )


def check_padding_leak(
    loss_fn: Callable[[Tensor, Tensor, Tensor], Tensor],
    logits: Tensor,
    targets: Tensor,
    mask: Tensor,
    seed: int = 0,
) -> None:
    """Raise :class:`TrainingError` if ``loss_fn(logits, targets, mask)`` depends on padding.

    Seed guide, "Padding tokens affect loss calculation": the targets and logits at padded
    positions (``mask`` False) are replaced by random values; a correctly masked loss does not
    move. Does not touch autograd state of the inputs.
    """
    if bool(mask.all()):
        raise TrainingError(
            "check_padding_leak: mask has no padded position, so nothing can be checked; "
            "use a batch with padding"
        )
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        base = float(loss_fn(logits, targets, mask))
        t2 = torch.where(
            mask, targets, torch.randint(0, logits.shape[-1], targets.shape, generator=g)
        )
        l2 = torch.where(
            mask[..., None], logits, 3 * torch.randn(logits.shape, generator=g, dtype=logits.dtype)
        )
        moved = float(loss_fn(l2, t2, mask))
    if not math.isclose(base, moved, rel_tol=1e-5, abs_tol=1e-6):
        raise TrainingError(
            f"check_padding_leak: padding leaks into the loss -- changing only the padded "
            f"positions ({int((~mask).sum())} of {mask.numel()}) moved "
            f"{getattr(loss_fn, '__name__', type(loss_fn).__name__)} from {base:.6g} to "
            f"{moved:.6g}; mask the loss (MaskedCrossEntropy) or set ignore_index to the "
            "pad id"
        )


def check_no_retained_graph(obj: Any, name: str = "obj") -> None:
    """Raise :class:`TrainingError` if ``obj`` (a tensor or nested dict/list/tuple of them)
    holds a tensor attached to an autograd graph.

    Seed guide, "Memory leak during training": keeping ``loss`` (not ``loss.item()``) in a
    history list keeps every step's graph alive, so memory grows with the step count.
    """

    def walk(o: Any, path: str) -> None:
        if isinstance(o, Tensor):
            if o.requires_grad or o.grad_fn is not None:
                raise TrainingError(
                    f"check_no_retained_graph: {path} is a tensor attached to an autograd "
                    f"graph (grad_fn={type(o.grad_fn).__name__ if o.grad_fn else None}); it "
                    "keeps the step's whole graph alive and memory grows each step -- store "
                    ".item() or .detach()"
                )
        elif isinstance(o, dict):
            for k, v in o.items():
                walk(v, f"{path}[{k!r}]")
        elif isinstance(o, (list, tuple)):
            for i, v in enumerate(o):
                walk(v, f"{path}[{i}]")

    walk(obj, name)


class LossWatch:
    """Flag a training loss that oscillates wildly or blows up instead of falling.

    Seed guide, "Loss oscillates wildly during training": over the last ``window`` steps, if
    the mean step-to-step change exceeds ``rel_jump`` x the mean loss, the direction flips on
    more than ``flip_share`` of the steps and the second half of the window is not below the
    first -- or the second half's mean is over twice the first's (divergence) -- the learning
    rate is the usual cause.

    Example:
        >>> watch = LossWatch(optimizer)                     # doctest: +SKIP
        >>> for batch in loader: watch.update(train_step(model, batch, optimizer)["loss"])
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer | None = None,
        window: int = 20,
        rel_jump: float = 0.25,
        flip_share: float = 0.4,
    ) -> None:
        self.optimizer, self.window = optimizer, window
        self.rel_jump, self.flip_share = rel_jump, flip_share
        self.history: list[float] = []

    def update(self, loss: float) -> None:
        loss = float(loss)
        self.history.append(loss)
        step = len(self.history)
        lr = self.optimizer.param_groups[0]["lr"] if self.optimizer is not None else None
        lr_s = f"lr={lr:g}" if lr is not None else "the learning rate"
        if not math.isfinite(loss):
            raise TrainingError(
                f"LossWatch: loss is {loss} at step {step}; {lr_s} may be too high (or the "
                "data holds NaN) -- lower it, add warm-up and gradient clipping"
            )
        if step < self.window:
            return
        w = torch.tensor(self.history[-self.window :], dtype=torch.float64)
        d = w.diff()
        jump = float(d.abs().mean() / w.abs().mean().clamp(min=1e-12))
        flips = float((d[1:].sign() * d[:-1].sign() < 0).double().mean())
        half = self.window // 2
        falling = float(w[half:].mean()) < 0.95 * float(w[:half].mean())
        if float(w[half:].mean()) > 2.0 * float(w[:half].mean()):
            raise TrainingError(
                f"LossWatch: loss diverges over steps {step - self.window + 1}-{step} "
                f"({float(w[0]):.3g} -> {float(w[-1]):.3g}); learning rate too high ({lr_s}) -- "
                "lower it, use warm-up, clip gradients"
            )
        if jump > self.rel_jump and flips > self.flip_share and not falling:
            raise TrainingError(
                f"LossWatch: loss oscillates wildly over steps {step - self.window + 1}-{step}"
                f" (mean jump {jump:.0%} of the loss, direction flips on {flips:.0%} of "
                f"steps, not decreasing); learning rate too high ({lr_s}) -- lower it, "
                "use warm-up, clip gradients or grow the batch"
            )


# ----------------------------------------------------------------------------- loop


def _make_batches(items: list, batch_size: int, g: torch.Generator | None) -> list[Batch]:
    order = torch.randperm(len(items), generator=g).tolist() if g is not None else range(len(items))
    order = list(order)
    return [
        collate_fn([items[i] for i in order[s : s + batch_size]])
        for s in range(0, len(order), batch_size)
    ]


def _schedule(cfg: ParaformerConfig, total: int) -> Callable[[int], float]:
    def lr_lambda(step: int) -> float:  # linear warm-up, then cosine to 10 %
        if step < cfg.warmup_steps:
            return (step + 1) / cfg.warmup_steps
        p = min(1.0, (step - cfg.warmup_steps) / max(1, total - cfg.warmup_steps))
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * p))

    return lr_lambda


def evaluate(model: Paraformer, batches: list[Batch]) -> dict[str, float]:
    """Item-weighted mean of :func:`val_step` over ``batches``."""
    totals: dict[str, float] = {}
    n = 0
    for b in batches:
        m = val_step(model, b)
        k = b[0].shape[0]
        n += k
        for key, v in m.items():
            totals[key] = totals.get(key, 0.0) + v * k
    return {k: v / n for k, v in totals.items()}


def fit(
    cfg: ParaformerConfig,
    steps: int = 600,
    train_samples: int = 2000,
    val_samples: int = 256,
    log_dir: str | Path | None = None,
    checkpoint: str | Path | None = None,
    eval_every: int = 100,
    target_accuracy: float | None = None,
    time_budget_s: float | None = None,
    progress: bool = True,
    watch: bool = True,
) -> dict[str, Any]:
    """Train a :class:`Paraformer` on :class:`ToySeq2SeqDataset`.

    Args:
        cfg: model/data/optimiser configuration.
        steps: optimisation steps (at most).
        train_samples, val_samples: toy items (validation uses another seed: held out).
        log_dir: TensorBoard directory (scalars ``train/*``, ``val/*``); None = no logging.
        checkpoint: where to save ``{"model", "config", "step", "metrics"}``; None = no save.
        eval_every: validation period in steps.
        target_accuracy: stop once held-out token accuracy reaches it.
        time_budget_s: stop after this many seconds (checked at each step).
        progress: show a tqdm bar.
        watch: run :class:`LossWatch` and :func:`check_alphas` during training.

    Returns:
        ``{"model", "steps", "seconds", "train_loss" (list), "val" (last metrics), "history"}``.
    """
    from tqdm.auto import tqdm

    torch.manual_seed(cfg.seed)
    model = Paraformer(cfg)
    tokenizer = Tokenizer.from_config(cfg)
    check_vocab(model, tokenizer)
    train_ds = ToySeq2SeqDataset(cfg, train_samples, seed=cfg.seed + 1)
    val_ds = ToySeq2SeqDataset(cfg, val_samples, seed=cfg.seed + 10_000)
    train_items = [train_ds[i] for i in range(len(train_ds))]
    val_batches = _make_batches([val_ds[i] for i in range(len(val_ds))], 64, None)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _schedule(cfg, steps))
    loss_watch = LossWatch(opt) if watch else None
    writer = None
    if log_dir is not None:
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(str(log_dir))
    g = torch.Generator().manual_seed(cfg.seed)
    history: list[dict[str, float]] = []
    losses: list[float] = []
    val: dict[str, float] = {}
    t0 = time.perf_counter()
    step = 0
    bar = tqdm(total=steps, disable=not progress, desc="paraformer", unit="step")
    try:
        while step < steps:
            for batch in _make_batches(train_items, cfg.batch_size, g):
                m = train_step(model, batch, opt, sched, cfg.grad_clip)
                step += 1
                losses.append(m["loss"])
                if loss_watch is not None:
                    loss_watch.update(m["loss"])
                if writer is not None:
                    for k, v in m.items():
                        writer.add_scalar(f"train/{k}", v, step)
                bar.update(1)
                bar.set_postfix(loss=f"{m['loss']:.3f}", acc=f"{val.get('token_accuracy', 0):.2f}")
                done = step >= steps or (
                    time_budget_s is not None and time.perf_counter() - t0 > time_budget_s
                )
                if step % eval_every == 0 or done:
                    val = evaluate(model, val_batches)
                    val["step"], val["seconds"] = step, time.perf_counter() - t0
                    history.append(dict(val))
                    if writer is not None:
                        for k, v in val.items():
                            if k not in ("step", "seconds"):
                                writer.add_scalar(f"val/{k}", v, step)
                    if watch and step >= 2 * eval_every:
                        with torch.no_grad():
                            f, _, _, _, fm, _ = unpack_batch(val_batches[0])
                            check_alphas(model.encode(f, fm)[1], fm)
                    if target_accuracy is not None and val["token_accuracy"] >= target_accuracy:
                        done = True
                if done:
                    break
            if done:
                break
    finally:
        bar.close()
        if writer is not None:
            writer.close()
    seconds = time.perf_counter() - t0
    if checkpoint is not None:
        Path(checkpoint).parent.mkdir(parents=True, exist_ok=True)
        torch.save(
            {"model": model.state_dict(), "config": cfg.to_dict(), "step": step, "metrics": val},
            checkpoint,
        )
    return {
        "model": model,
        "steps": step,
        "seconds": seconds,
        "train_loss": losses,
        "val": val,
        "history": history,
    }


def load_checkpoint(path: str | Path) -> tuple[Paraformer, Tokenizer]:
    """Rebuild ``(model, tokenizer)`` from a checkpoint written by :func:`fit`."""
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    cfg = ParaformerConfig.from_dict(ckpt["config"])
    model = Paraformer(cfg)
    model.load_state_dict(ckpt["model"])
    return model.eval(), Tokenizer.from_config(cfg)
