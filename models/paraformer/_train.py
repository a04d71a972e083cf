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
from models._checkpoint import (
    build_from_checkpoint,
    check_save_args,
    load_weights,
    read_checkpoint,
    write_checkpoint,
)
from models._fields import is_int

from ._config import BatchError, CheckpointError, ConfigError, ParaformerConfig, VocabError
from ._data import ToySeq2SeqDataset, collate_fn
from ._decode import greedy_decode
from ._losses import SequenceAccuracy, TokenAccuracy
from ._masks import create_padding_mask
from ._model import Paraformer
from ._predictor import check_alphas
from ._tokenizer import Tokenizer

__all__ = [
    "check_vocab",
    "fit",
    "load_checkpoint",
    "predict",
    "save_checkpoint",
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
    after_backward: Callable[[dict[str, Tensor], Tensor], None] | None = None,
) -> dict[str, float]:
    """One optimisation step. Returns Python floats (never tensors, so no graph is kept):
    ``loss`` (>= 0), ``loss_ce``, ``loss_predictor``, ``grad_norm``, ``lr``.

    ``after_backward(out, token_lens)``, when given, is called between backward and the
    optimizer step with the model's outputs (a monitor reads gradients there).
    """
    model.train()
    features, tokens, _, _, feat_mask, token_mask = unpack_batch(batch)
    out = model(features, tokens, feat_mask, token_mask)
    optimizer.zero_grad(set_to_none=True)
    out["loss"].backward()
    if after_backward is not None:
        after_backward(out, batch[3])
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
    loss_watch: Callable[[torch.optim.Optimizer], Any] | None = None,
    monitor: Any = None,
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
        watch: run :func:`check_alphas` on held-out data during training.
        loss_watch: a factory ``optimizer -> watcher`` (``diagnostics.LossWatch``); the
            watcher's ``update(loss)`` is called every step and may raise.
        monitor: a ``diagnostics.TrainingMonitor`` or a factory ``(model, optimizer) -> one``;
            called after each backward with the losses, the predictor's α sums and the target
            lengths (seed 004: does the CIF predictor count tokens right?), and with the
            held-out metrics at each validation.

    Returns:
        ``{"model", "steps", "seconds", "train_loss" (list), "val" (last metrics), "history"}``.
    """
    from tqdm.auto import tqdm

    for name, value in (
        ("steps", steps),
        ("train_samples", train_samples),
        ("val_samples", val_samples),
        ("eval_every", eval_every),
    ):
        if not is_int(value) or value < 1:
            raise ConfigError(
                f"fit: argument {name!r} = {value!r} is invalid: expected an int >= 1"
            )
    cfg.validate()  # a config mutated after it was made
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
    watcher = loss_watch(opt) if loss_watch is not None else None
    if monitor is not None and not hasattr(monitor, "step"):
        monitor = monitor(model, opt)

    def observe(out: dict[str, Tensor], token_lens: Tensor) -> None:
        alpha_sum = out["alphas"].detach().sum(-1)  # (B,) predicted token counts
        monitor.step(
            step + 1,
            loss=out["loss"],
            loss_ce=out["loss_ce"],
            loss_predictor=out["loss_predictor"],
            **{
                "cif/alpha_sum_mean": alpha_sum.mean(),
                "cif/target_len_mean": token_lens.float().mean(),
                "cif/count_error_mean": (alpha_sum - token_lens).abs().mean(),
            },
        )

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
                hook = observe if monitor is not None else None
                m = train_step(model, batch, opt, sched, cfg.grad_clip, after_backward=hook)
                step += 1
                losses.append(m["loss"])
                if watcher is not None:
                    watcher.update(m["loss"])
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
                    if monitor is not None:
                        monitor.step(step, **{f"val_{k}": v for k, v in val.items()
                                              if k not in ("step", "seconds")})  # fmt: skip
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
        if monitor is not None:
            monitor.close()
    seconds = time.perf_counter() - t0
    if checkpoint is not None:
        save_checkpoint(model, checkpoint, step=step, metrics=val)
    return {
        "model": model,
        "steps": step,
        "seconds": seconds,
        "train_loss": losses,
        "val": val,
        "history": history,
    }


def save_checkpoint(
    model: Paraformer, path: str | Path, step: int = 0, metrics: dict[str, Any] | None = None
) -> Path:
    """Save config, weights and metadata (step, metrics, torch version) to ``path``.

    Example:
        >>> save_checkpoint(model, "runs/paraformer/paraformer.pt", step=600)  # doctest: +SKIP
    """
    check_save_args(
        "save_checkpoint", model, path, Paraformer, "save_checkpoint(model, path)", CheckpointError
    )
    return write_checkpoint(
        path, kind="paraformer", config=model.cfg.to_dict(),
        weights={"state_dict": model.state_dict()}, step=step, metrics=metrics,
    )  # fmt: skip


def load_checkpoint(path: str | Path) -> tuple[Paraformer, Tokenizer]:
    """Rebuild ``(model, tokenizer)`` from a checkpoint written by :func:`fit`.

    Files written before the shared format (weights under ``"model"``) still load.

    Raises:
        CheckpointError: naming the file when it is missing or not a Paraformer checkpoint.

    Example:
        >>> model, tokenizer = load_checkpoint("runs/paraformer/paraformer.pt")  # doctest: +SKIP
    """
    ckpt = read_checkpoint(
        path, kind="paraformer", label="Paraformer", error=CheckpointError,
        legacy_keys=("model", "config"), hint="write it with models.paraformer.train",
    )  # fmt: skip
    model = build_from_checkpoint(
        path, ckpt, lambda c: Paraformer(ParaformerConfig.from_dict(c)), CheckpointError
    )
    load_weights(
        path, model, ckpt["state_dict"] if "state_dict" in ckpt else ckpt["model"], CheckpointError
    )
    return model.eval(), Tokenizer.from_config(model.cfg)
