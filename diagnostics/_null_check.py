"""check_null_condition: is the null (unconditional) input at inference the one trained on?

Classifier-free guidance trains a null condition (a learned embedding, zeros, an empty prompt)
and evaluates ``f(x, null)`` at inference. When the code that builds the null depends on the
mode (``if self.training: ... else: ...``) the two can differ silently: the guidance then mixes
in an unconditional branch the model never learned.

The rule: run the unconditional input (the batch with the null applied) and the conditioned
batch once in training mode and once in eval mode, on the same inputs and the same RNG draw,
with dropout and normalization layers held in eval mode (their train/eval difference is not the
null's) and no gradient. The **null change** is the mean over examples of
``||f_train(null) - f_eval(null)|| / ||f_eval(null)||``; the **conditioned change** the same for
the conditioned batch. The null differs between training and inference when the null change is
above ``tol`` *and* more than ``ratio`` times the conditioned change (a mode difference that
moves the conditioned output just as much is not the null's).

The model is left exactly as found: every module's mode, every buffer and the global RNG state
are restored, and nothing is written to the parameters.

Example:
    >>> rep = check_null_condition(model, {"x": x, "cond": c}, null={"cond": None})
    >>> rep.ok, rep.message  # doctest: +SKIP
    (True, 'the null input (arg:cond) gives the same output in training and eval mode ...')
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from contracts import TorchdxError

__all__ = ["NullConditionError", "NullConditionReport", "check_null_condition"]

_HELD = (
    nn.modules.dropout._DropoutNd,
    nn.modules.batchnorm._BatchNorm,
    nn.modules.instancenorm._InstanceNorm,
)
_EPS = 1e-12


class NullConditionError(TorchdxError, ValueError):
    """Bad input to :func:`check_null_condition` (the message names the argument)."""

    __module__ = "diagnostics"


@dataclass
class NullConditionReport:
    """Result of :func:`check_null_condition`.

    Attributes:
        model: the model's class name.
        args: the null's arguments, as ``arg:NAME`` (the batch keys the null changes).
        null_change: mean relative change of the unconditional output, train vs eval mode.
        cond_change: the same for the conditioned output.
        tol, ratio: the thresholds of the rule (see the module doc).
        differs: the null differs between training and inference.
        message: the finding in words.
    """

    model: str
    args: list[str]
    null_change: float
    cond_change: float
    tol: float
    ratio: float
    differs: bool
    message: str

    @property
    def ok(self) -> bool:
        return not self.differs

    def __str__(self) -> str:
        return f"null condition: {'FLAG differs' if self.differs else 'OK'}: {self.message}"


def _call(model: nn.Module, batch: Any, forward: Callable[[nn.Module, Any], Tensor] | None):
    if forward is not None:
        return forward(model, batch)
    if isinstance(batch, Mapping):
        return model(**batch)
    if isinstance(batch, (tuple, list)):
        return model(*batch)
    return model(batch)


def _rel(a: Tensor, b: Tensor) -> float:
    """Mean over examples of ||a - b|| / ||b|| (complex as pairs of reals)."""
    if a.is_complex():
        a, b = torch.view_as_real(a), torch.view_as_real(b)
    a = a.detach().double().reshape(a.shape[0] if a.dim() else 1, -1)  # (B, D)
    b = b.detach().double().reshape(a.shape[0], -1)  # (B, D)
    return float(((a - b).norm(dim=1) / b.norm(dim=1).clamp_min(_EPS)).mean())


def check_null_condition(
    model: nn.Module,
    batch: Any,
    *,
    null: Mapping[str, Any] | Callable[[Any], Any],
    forward: Callable[[nn.Module, Any], Tensor] | None = None,
    tol: float = 1e-4,
    ratio: float = 10.0,
    seed: int = 0,
) -> NullConditionReport:
    """Compare the model's unconditional output in training mode with the one in eval mode.

    Args:
        model: the conditioned model (any mode; it is left as found).
        batch: one conditioned batch: a dict (``model(**batch)``), a tuple (``model(*batch)``)
            or anything ``forward`` takes.
        null: how the unconditional input is made: a dict of arguments to override in a dict
            batch (``{"cond": None}``, ``{"drop_cond": torch.ones(B, dtype=bool)}``), or a
            callable ``null(batch) -> batch``.
        forward: optional ``forward(model, batch) -> Tensor [B, ...]``.
        tol: null change (relative) at or below which the two nulls agree.
        ratio: the null change must also exceed ``ratio`` times the conditioned change.
        seed: the RNG seed of every forward (the same draw in both modes).

    Returns:
        A :class:`NullConditionReport`; ``.ok`` is False when the null differs.

    Raises:
        NullConditionError: ``null`` is neither a dict nor a callable, a dict null for a batch
            that is not a dict, an override of an argument the batch lacks, an output that
            is not a tensor, or outputs holding NaN/Inf (except an unconditional output that is
            non-finite in one mode only: that null differs).

    Example:
        >>> rep = check_null_condition(model, {"x": x, "cond": c}, null={"cond": None})
        >>> if not rep.ok: print(rep)  # doctest: +SKIP
    """
    name = type(model).__name__
    if isinstance(null, Mapping):
        if not isinstance(batch, Mapping):
            raise NullConditionError(
                f"check_null_condition: null is a dict of overrides but batch is "
                f"{type(batch).__name__}; give null=callable(batch) -> batch for such batches"
            )
        missing = [k for k in null if k not in batch]
        if missing:
            raise NullConditionError(
                f"check_null_condition: null overrides {', '.join(map(repr, missing))}, which "
                f"batch lacks (batch keys: {', '.join(map(repr, batch))})"
            )
        null_batch: Any = {**batch, **null}
    elif callable(null):
        null_batch = null(batch)
    else:
        raise NullConditionError(
            f"check_null_condition: null is {type(null).__name__}; give a dict of argument "
            "overrides ({'cond': None}) or a callable null(batch) -> batch"
        )
    if isinstance(batch, Mapping) and isinstance(null_batch, Mapping):
        args = [k for k in batch if k in null_batch and null_batch[k] is not batch[k]]
    else:
        args = []
    modes = {m: m.training for m in model.modules()}
    buffers = [(b, b.detach().clone()) for b in model.buffers()]
    outs: dict[tuple[str, bool], Tensor] = {}
    # the generators seeded below are the ones restored after: the CPU one, and each CUDA
    # device's when CUDA is in use (torch.manual_seed would also queue a seed for CUDA devices
    # not yet initialized, which nothing would undo)
    cuda = torch.cuda.is_available() and torch.cuda.is_initialized()
    devices = list(range(torch.cuda.device_count())) if cuda else []
    try:
        with torch.no_grad(), torch.random.fork_rng(devices=devices):
            for train in (True, False):
                model.train(train)
                for m in model.modules():
                    if isinstance(m, _HELD):
                        m.eval()
                for key, b in (("null", null_batch), ("cond", batch)):
                    torch.random.default_generator.manual_seed(seed)
                    for d in devices:
                        with torch.cuda.device(d):
                            torch.cuda.manual_seed(seed)
                    out = _call(model, b, forward)
                    if not isinstance(out, Tensor):
                        raise NullConditionError(
                            f"check_null_condition: {name}'s output is {type(out).__name__}, "
                            "not a Tensor; give forward=lambda model, batch: <the output tensor>"
                        )
                    outs[(key, train)] = out
    finally:
        for m, was in modes.items():
            m.training = was
        with torch.no_grad():
            for b, saved in buffers:
                b.copy_(saved)
    where = f" ({', '.join(f'arg:{a}' for a in args)})" if args else ""
    finite = {k: bool(torch.isfinite(v).all()) for k, v in outs.items()}
    bad = [
        f"{'unconditional' if k == 'null' else 'conditioned'} output in "
        f"{'training' if t else 'eval'} mode"
        for (k, t), ok in finite.items()
        if not ok
    ]
    null_one_mode = finite[("null", True)] != finite[("null", False)]
    if bad and not (null_one_mode and finite[("cond", True)] and finite[("cond", False)]):
        # a NaN compares as "no change": no verdict can be drawn from these outputs
        which = (
            "outputs, conditioned and unconditional in both modes,"
            if len(bad) == 4
            else (" and ".join(bad))
        )
        raise NullConditionError(
            f"check_null_condition: {name}'s {which} hold NaN/Inf, so the outputs "
            "cannot be compared; check the model on this batch first (e.g. with NanWatch)"
        )
    cond_change = _rel(outs[("cond", True)], outs[("cond", False)])
    null_change = math.inf if bad else _rel(outs[("null", True)], outs[("null", False)])
    differs = null_change > tol and null_change > ratio * cond_change
    if bad:
        msg = (
            f"the null condition differs between training and inference: {name}'s "
            f"unconditional output{where} holds NaN/Inf in {bad[0].rsplit(' in ', 1)[1]} only, "
            "while the conditioned output is finite in both modes: the null built in that mode "
            "is broken (look for a self.training branch where the null is made)"
        )
    elif differs:
        msg = (
            f"the null condition differs between training and inference: {name}'s "
            f"unconditional output{where} changes by {100 * null_change:.3g}% between training "
            f"and eval mode while the conditioned output changes by {100 * cond_change:.3g}%: "
            "the null that inference builds is not the one the model trained on (look for a "
            "self.training branch where the null is made)"
        )
    else:
        msg = (
            f"the null input{where} gives the same output in training and eval mode "
            f"({100 * null_change:.3g}% change; conditioned {100 * cond_change:.3g}%)"
        )
    return NullConditionReport(
        model=name,
        args=[f"arg:{a}" for a in args],
        null_change=null_change,
        cond_change=cond_change,
        tol=tol,
        ratio=ratio,
        differs=differs,
        message=msg,
    )
