"""TrainingMonitor: one object that logs what a training run needs watched, to TensorBoard.

Two lines in any training loop::

    mon = TrainingMonitor(model, "runs/exp1", every=10, optimizer=opt)
    ...; loss.backward(); mon.step(step, loss=loss, acc=acc); opt.step()
    mon.close()                                   # or: with TrainingMonitor(...) as mon:

Per logged step: the loss and any extra scalars; per module group (the first ``depth`` parts of
a parameter's name) the gradient norm, the parameter norm and the update ratio
``lr * |grad| / |param|``; the total gradient norm; NanWatch's status when a ``NanWatch`` is
passed; the observed CFG drop rate beside the configured ``p`` when a ``CFGDropoutMonitor`` is
passed; and every ``hist_every`` steps NaN-safe histograms of weights and gradients (finite
values only, the non-finite count as a scalar). A custom-scalars layout groups related curves.

Cost and guarantees: the norms are computed on the device with ``torch._foreach_norm`` (as
:class:`~diagnostics.GradFlow` does) and every number of a logged step reaches the host in ONE
transfer: one host sync per logged step, histogram steps included (their values travel in the
same transfer). Nothing observed is written to: training with the monitor is bit-identical to
training without it. On an exception inside a ``with`` block (or :meth:`guard`) the exception is written as text and the
writer flushed before it propagates; a monitor left open is flushed at interpreter exit.

Tag layout (what ``python -m diagnostics.inspect_run`` reads):
``train/loss``, ``train/<name>`` (extra scalars without a ``/``), ``val/<name>`` (extra scalars
named ``val_<name>``), verbatim ``<prefix>/<name>`` for extra names with a ``/``,
``grad_norm/<group>`` and ``grad_norm/total``, ``param_norm/<group>``,
``update_ratio/<group>``, ``param_count/<group>`` (once), ``train/lr``, ``nanwatch/status`` (0 ok, 1 scaler overflow,
2 non-finite), ``cfg/drop_rate`` and ``cfg/p``, histograms ``weights/<group>`` and
``grads/<group>`` with ``nonfinite/weights/<group>`` and ``nonfinite/grads/<group>`` counts.
"""

from __future__ import annotations

import atexit
import contextlib
import math
import os
import sys
import time
import weakref
from collections.abc import Iterator
from dataclasses import dataclass
from operator import attrgetter
from typing import Any

import torch
from torch import Tensor, nn

from contracts import TorchdxError

from ._gradflow import _clean, _fused_norms, _scaled
from ._gradflow import _unwrap as _unwrap_all
from ._monitor_grads import histogram_payload, needs_directions, update_directions, write_histograms
from ._monitor_render import custom_scalars_layout, grad_flow_image, summary_markdown
from ._structure import structure_version

__all__ = ["MonitorConfig", "TrainingMonitor", "TrainingMonitorError"]

NANWATCH_CODES = {"ok": 0.0, "scaler_overflow": 1.0, "nonfinite": 2.0}


class TrainingMonitorError(TorchdxError, ValueError):
    """Bad arguments to :class:`TrainingMonitor` (culprit named in the message)."""

    __module__ = "diagnostics"


@dataclass
class MonitorConfig:
    """Settings of a :class:`TrainingMonitor`.

    Attributes:
        every: log every this many steps (calls with ``loss``; calls without are always logged).
        hist_every: histograms every this many steps (0: never).
        depth: module depth of a parameter group (1: ``encoder``, 2: ``encoder.blocks``).
        layout: write a custom-scalars layout.
        ratio_every: with an adaptive optimizer (Adam), update ratios every this many logged
            steps (the normalized direction costs a few passes over the gradients; with SGD
            the ratio is free and logged at every logged step).
    """

    every: int = 1
    hist_every: int = 100
    ratio_every: int = 10
    depth: int = 1
    layout: bool = True

    def __post_init__(self) -> None:
        for name in ("every", "depth", "ratio_every"):
            if getattr(self, name) < 1:
                raise TrainingMonitorError(
                    f"TrainingMonitor: argument {name!r} is {getattr(self, name)}; must be >= 1"
                )
        if self.hist_every < 0:
            raise TrainingMonitorError(
                f"TrainingMonitor: argument 'hist_every' is {self.hist_every}; must be >= 0 "
                "(0: no histograms)"
            )


def _unwrap(model: nn.Module) -> nn.Module:
    """The module inside DistributedDataParallel / DataParallel / torch.compile wrappers."""
    return _unwrap_all(model)[0]


_REQUIRES_GRAD = attrgetter("requires_grad")
# monitors not closed yet: flushed and closed at interpreter exit (an uncaught exception, or
# sys.exit, in a loop without ``with``), so the steps logged before a crash reach the disk
_OPEN: weakref.WeakSet[TrainingMonitor] = weakref.WeakSet()


def _close_at_exit() -> None:
    crash = getattr(sys, "last_value", None)  # set by the interpreter for an uncaught exception
    for mon in list(_OPEN):
        try:
            if crash is not None and crash is not mon._last_value_at_start and not mon.closed:
                mon.log_exception(crash)
            mon.close()
        except Exception:  # at exit: never mask the program's own outcome
            pass


atexit.register(_close_at_exit)


def _group_of(name: str, depth: int) -> str:
    parts = name.split(".")
    return ".".join(parts[: min(depth, max(1, len(parts) - 1))])


class TrainingMonitor:
    """Log loss, scalars, per-group gradient health and more to TensorBoard (see module doc).

    Args:
        model: the model being trained (parameters with ``requires_grad`` are watched).
        logdir_or_writer: a log directory, or an object with ``add_scalar`` (a ``SummaryWriter``;
            it is flushed, not closed, by :meth:`close`).
        every: log every this many steps.
        optimizer: gives the learning rate of each group (update ratios, ``train/lr``).
        hist_every: histograms every this many steps (0: never).
        depth: module depth of a parameter group.
        nanwatch: a :class:`~diagnostics.NanWatch` whose ``last_status`` is logged.
        cfg_monitor: a :class:`~diagnostics.CFGDropoutMonitor` whose drop rate is logged.
        layout: write a custom-scalars layout (default True).
        ratio_every: update ratios every this many logged steps when the update direction is
            not the gradient (Adam, RMSprop, Adagrad, SGD with momentum or weight decay).
        scaler: a ``torch.amp.GradScaler``: gradient norms, update ratios and gradient
            histograms are of the unscaled gradients (divided by the scale while the gradients
            still carry it).

    A monitor never closed is flushed and closed at interpreter exit (an uncaught exception,
    written as ``monitor/exception``, or ``sys.exit``); a signal that kills the process runs no
    exit code.

    Example:
        >>> with TrainingMonitor(model, "runs/exp1", every=10, optimizer=opt) as mon:
        ...     for step, batch in enumerate(loader):
        ...         loss = model(batch); opt.zero_grad(); loss.backward()
        ...         mon.step(step, loss=loss)
        ...         opt.step()
    """

    def __init__(
        self,
        model: nn.Module,
        logdir_or_writer: Any,
        every: int = 1,
        *,
        optimizer: Any = None,
        hist_every: int = 100,
        depth: int = 1,
        nanwatch: Any = None,
        cfg_monitor: Any = None,
        layout: bool = True,
        ratio_every: int = 10,
        scaler: Any = None,
    ) -> None:
        if not isinstance(model, nn.Module):
            raise TrainingMonitorError(
                f"TrainingMonitor: argument 'model' is a {type(model).__name__}, expected an "
                "nn.Module"
            )
        self.cfg = MonitorConfig(
            every=every, hist_every=hist_every, depth=depth, layout=layout, ratio_every=ratio_every
        )
        if isinstance(logdir_or_writer, (str, os.PathLike)):
            from torch.utils.tensorboard import SummaryWriter  # heavy: imported lazily

            self.writer = SummaryWriter(str(logdir_or_writer))
            self._own_writer = True
        elif hasattr(logdir_or_writer, "add_scalar"):
            self.writer = logdir_or_writer
            self._own_writer = False
        else:
            raise TrainingMonitorError(
                "TrainingMonitor: argument 'logdir_or_writer' is a "
                f"{type(logdir_or_writer).__name__}; give a directory or a SummaryWriter"
            )
        self.model, self.optimizer = model, optimizer
        self.nanwatch, self.cfg_monitor = nanwatch, cfg_monitor
        self.scaler = scaler
        self._inner = _unwrap(model)  # group names of the user's module, not module./_orig_mod.
        self.groups: list[str] = []
        self._counts: dict[str, int] = {}  # param_count/<group> written
        self._index()
        if not self._named:
            raise TrainingMonitorError(
                f"TrainingMonitor: {type(model).__name__} has no trainable parameters"
            )
        self._cfg_seen = 0  # CFGDropoutMonitor.history entries already logged
        self._layout_written = False
        self._grad_logs = 0  # logged steps with gradients (update-ratio cadence)
        self._adaptive_seen = False
        self._layout_prefixes: set[str] = set()
        self._extra_prefixes: set[str] = set()
        self.logged_steps = 0
        self.last_step: int | None = None
        self._pending: list[tuple[Any, int]] = []  # step events not yet handed to the writer
        self._pushed_at = time.monotonic()
        self._flow_steps: list[int] = []  # grad-norm history for the closing figure
        self._flow: list[list[float]] = []  # per logged step: grad norm per group (nan: none)
        self.closed = False
        self._last_value_at_start = getattr(sys, "last_value", None)
        _OPEN.add(self)

    def _signature(self) -> list[tuple[str, int, bool]]:
        return [(n, id(p), p.requires_grad) for n, p in self._inner.named_parameters()]

    def _index(self) -> None:
        """List the trainable parameters and their groups; done again when this model's
        parameters change (a module added, a parameter frozen or unfrozen). Groups keep their
        order; new ones are appended (older heat-map columns show them blank)."""
        self._structure = structure_version()
        self._sig = self._signature()
        named = list(self._inner.named_parameters())
        self._named = [(_clean(n), p) for n, p in named if p.requires_grad]
        self._frozen_params = [p for _, p in named if not p.requires_grad]
        index = {g: j for j, g in enumerate(self.groups)}
        self._gidx: list[int] = []
        for n, _ in self._named:
            g = _group_of(n, self.cfg.depth)
            if g not in index:
                index[g] = len(self.groups)
                self.groups.append(g)
            self._gidx.append(index[g])
        self._gi_cache: dict[tuple[Any, tuple[int, ...]], Tensor] = {}
        if self._named:
            self._gi_all = torch.tensor(self._gidx, device=self._named[0][1].device)  # (P,)
        self._counts_written = False  # (again) the size of each group

    def _check_index(self) -> None:
        """Index again when something registered a parameter or module (anywhere: checked
        against this model) or a frozen parameter was unfrozen."""
        moved = structure_version() != self._structure
        if moved or any(map(_REQUIRES_GRAD, self._frozen_params)):
            self._structure = structure_version()
            if self._signature() != self._sig:
                self._index()

    def __repr__(self) -> str:
        where = getattr(self.writer, "log_dir", "?")
        return (
            f"TrainingMonitor({type(self.model).__name__}, {where!r}, every={self.cfg.every}, "
            f"{len(self.groups)} groups, {self.logged_steps} logged steps)"
        )

    # ------------------------------------------------------------------ per step
    def step(self, step: int, loss: Any = None, **scalars: Any) -> None:
        """Log step ``step`` (call after ``backward()``, before ``optimizer.step()``).

        Args:
            step: the global step (TensorBoard's x axis).
            loss: the training loss (tensor or number). A call with a loss is a training step:
                it is logged every ``every`` steps, with gradient statistics. A call without
                one (validation metrics) is always logged, scalars only.
            **scalars: more scalars (tensors or numbers); see the module doc for their tags.
        """
        if self.closed:
            raise TrainingMonitorError(f"TrainingMonitor.step({step}): the monitor is closed")
        train = loss is not None
        if train and step % self.cfg.every:
            return
        self.last_step = step
        names: list[str] = []
        tensors: list[Tensor] = []
        floats: dict[str, float] = {}

        def put(tag: str, v: Any) -> None:
            if isinstance(v, Tensor):
                assert v.numel() == 1, (
                    f"TrainingMonitor.step: scalar {tag!r} has {v.numel()} values"
                )
                names.append(tag)
                tensors.append(v.detach().reshape(1).float())
            else:
                floats[tag] = float(v)

        if train:
            put("train/loss", loss)
        for k, v in scalars.items():
            put(self._tag(k), v)
        n_scalars = len(tensors)
        grads_stats = False
        have: list[int] = []
        if train:
            self._check_index()
            # a parameter frozen since may keep a stale .grad: not a gradient of this step
            have = [
                i for i, (_, p) in enumerate(self._named) if p.grad is not None and p.requires_grad
            ]
        n_upd, adaptive_opt = 0, False
        scale = None  # the GradScaler scale the gradients still carry (device tensor)
        if have and self.scaler is not None and _scaled(self.scaler, self.optimizer):
            sc = getattr(self.scaler, "_scale", None)
            scale = sc if isinstance(sc, Tensor) else torch.tensor(float(self.scaler.get_scale()))
        if have:
            grads_stats = True
            adaptive_opt = self._is_adaptive()
            ratio_step = self._grad_logs % self.cfg.ratio_every == 0
            self._grad_logs += 1
            grad_t, n_upd = self._grad_tensors(
                have, directions=adaptive_opt and ratio_step, scale=scale
            )
            tensors += grad_t
        hist_step = bool(train and have and self.cfg.hist_every and step % self.cfg.hist_every == 0)
        spans: list[tuple[str, int]] = []
        n_values = sum(t.numel() for t in tensors)
        if hist_step:  # the histogram values travel in the same transfer
            pieces, spans = self._hist_payload(have, scale)
            tensors += pieces
        values: list[float] = []
        host = torch.zeros(0)
        if tensors:
            dev = tensors[-1].device
            host = torch.cat([t.to(dev) for t in tensors]).cpu()  # the one host sync
            values = host[:n_values].tolist()
        out: list[tuple[str, float]] = list(zip(names, values[:n_scalars], strict=True))
        out += floats.items()
        if grads_stats:
            G = len(self.groups)
            gnorm = values[n_scalars : n_scalars + G]
            pnorm = values[n_scalars + G : n_scalars + 2 * G]
            total = values[n_scalars + 2 * G]
            unorm = values[n_scalars + 2 * G + 1 : n_scalars + 3 * G + 1] if n_upd else gnorm
            lrs = self._group_lrs()
            for j in sorted({self._gidx[i] for i in have}):
                g = self.groups[j]
                out += [(f"grad_norm/{g}", gnorm[j]), (f"param_norm/{g}", pnorm[j])]
                ratio_now = not adaptive_opt or n_upd > 0
                if ratio_now and lrs is not None and lrs[j] is not None and pnorm[j] > 0:
                    out.append((f"update_ratio/{g}", lrs[j] * unorm[j] / pnorm[j]))
            out.append(("grad_norm/total", total))
            if not self._counts_written:  # the size of each group (inspect_run reads it): once,
                counts = [0] * G  # and again for a group that changed (a module added)
                for (_, prm), j in zip(self._named, self._gidx, strict=True):
                    counts[j] += prm.numel()
                for g, n in zip(self.groups, counts, strict=True):
                    if n and self._counts.get(g) != n:
                        out.append((f"param_count/{g}", float(n)))
                        self._counts[g] = n
                self._counts_written = True
            if len(self._flow) < 5000:
                present_set = {self._gidx[i] for i in have}
                self._flow_steps.append(step)
                self._flow.append([gnorm[j] if j in present_set else math.nan for j in range(G)])
        if train and self.optimizer is not None:
            out.append(("train/lr", float(self.optimizer.param_groups[0]["lr"])))
        if self.nanwatch is not None:
            status = getattr(self.nanwatch, "last_status", "none")
            if status in NANWATCH_CODES:
                out.append(("nanwatch/status", NANWATCH_CODES[status]))
        if self.cfg_monitor is not None:
            out += self._cfg_pairs()
        self._emit(step, out)
        if hist_step:
            write_histograms(self.writer, step, host[n_values:], spans)
        if self.cfg.layout and (
            not self._layout_written or self._extra_prefixes != self._layout_prefixes
        ):
            self._write_layout()
        self.logged_steps += 1

    def _is_adaptive(self) -> bool:
        """Is some update direction not the gradient (Adam's second moment kept, RMSprop,
        Adagrad, SGD with momentum or weight decay)? Once it is, it stays so."""
        if not self._adaptive_seen:  # checked until it is
            self._adaptive_seen = needs_directions(self.optimizer)
        return self._adaptive_seen

    def _grad_tensors(
        self, have: list[int], directions: bool, scale: Tensor | None = None
    ) -> tuple[list[Tensor], int]:
        """Device tensors: group gradient norms (G), parameter norms (G), the total norm (1)
        and, when the update direction is not the gradient, group norms of the direction (G).

        The update direction of a parameter is its gradient, or what
        :func:`~diagnostics._monitor_grads.update_directions` reads off the optimizer:
        ``grad / (sqrt(v_hat) + eps)`` when it keeps Adam's second moment ``v`` (``exp_avg_sq``;
        ``v_hat`` its bias-corrected value), the step RMSprop, Adagrad or SGD with momentum is
        about to take; so ``update_ratio = lr * |direction| / |param|`` estimates |Δθ|/|θ|
        (as GradFlow's update ratios do). ``scale``: the GradScaler scale the gradients carry;
        every gradient-side number is unscaled. A sparse gradient is read through its values.
        Returns the tensors and how many parameters had their own direction (0: the fourth
        block is absent).
        """
        params = [self._named[i][1] for i in have]
        grads = [p.grad for p in params]
        grads = [g.coalesce().values() if g.is_sparse else g for g in grads]
        dev = grads[0].device
        gn = _fused_norms(grads).to(dev)  # (P,)
        inv = None
        if scale is not None:  # norms are linear in the gradient: unscaled after the fact
            inv = (1.0 / scale.float()).reshape(()).to(dev)
            gn = gn * inv
        pn = _fused_norms([p.detach() for p in params]).to(dev)  # (P,)
        key = (dev, tuple(have))
        if len(have) == len(self._named) and key not in self._gi_cache:
            if self._gi_all.device == dev:
                self._gi_cache[key] = self._gi_all  # built in __init__: no copy in a step
        gi = self._gi_cache.get(key)
        if gi is None:  # built once per (device, set of parameters with a gradient)
            gi = torch.tensor([self._gidx[i] for i in have], device=dev)  # (P,)
            self._gi_cache[key] = gi
        zeros = torch.zeros(len(self.groups), device=dev)
        gsq = zeros.index_add(0, gi, gn.square())  # (G,) squared group grad norms
        psq = zeros.index_add(0, gi, pn.square())  # (G,)
        out = [gsq.sqrt(), psq.sqrt(), gsq.sum().sqrt().reshape(1)]
        if directions and inv is not None:  # the optimizer's rules see unscaled gradients
            grads = [g * inv.to(g.device) for g in grads]  # new tensors: .grad is untouched
        idx, ds = update_directions(self.optimizer, params, grads) if directions else ([], [])
        if idx:
            dirs = list(grads)
            for k, u in zip(idx, ds, strict=True):
                dirs[k] = u
            un = _fused_norms(dirs).to(dev)  # (P,)
            out.append(zeros.index_add(0, gi, un.square()).sqrt())  # (G,)
        return out, len(idx)

    def _emit(self, step: int, pairs: list[tuple[str, float]]) -> None:
        """Write the scalars of one step: as ONE event through a SummaryWriter's file writer
        (one queue hand-off to its writer thread instead of one per tag), else one by one."""
        get = getattr(self.writer, "_get_file_writer", None)
        if get is None:
            for tag, v in pairs:
                self.writer.add_scalar(tag, v, step)
            return
        from torch.utils.tensorboard.summary import scalar

        values = [scalar(tag, v).value[0] for tag, v in pairs]
        self._pending.append((type(scalar("x", 0.0))(value=values), step))
        now = time.monotonic()
        if len(self._pending) >= 256 or now - self._pushed_at > 2.0:
            self._push()

    def _push(self) -> None:
        """Hand the buffered step events to the writer's thread in one go (waking it once per
        batch, not once per step: on a busy machine each wake-up costs the training thread a
        GIL hand-off of several milliseconds)."""
        self._pushed_at = time.monotonic()
        if not self._pending:
            return
        fw = self.writer._get_file_writer()
        for summary, step in self._pending:
            fw.add_summary(summary, step)
        self._pending.clear()

    def _tag(self, key: str) -> str:
        if "/" in key:
            self._extra_prefixes.add(key.split("/", 1)[0])
            return key
        if key.startswith("val_"):
            return f"val/{key[4:]}"
        return f"train/{key}"

    def _group_lrs(self) -> list[float | None] | None:
        if self.optimizer is None:
            return None
        lr_of = {
            id(p): float(g.get("lr", 0.0)) for g in self.optimizer.param_groups for p in g["params"]
        }
        out: list[float | None] = [None] * len(self.groups)
        for (_, p), j in zip(self._named, self._gidx, strict=True):
            if out[j] is None and id(p) in lr_of:
                out[j] = lr_of[id(p)]
        return out

    def _cfg_pairs(self) -> list[tuple[str, float]]:
        mon = self.cfg_monitor
        hist = list(mon.history[self._cfg_seen :])
        self._cfg_seen = len(mon.history)
        pending = getattr(mon, "_cur", [0, 0])
        if pending[1]:
            hist.append((pending[0], pending[1]))
        total = sum(n for _, n in hist)
        if not total:
            return []
        rate = sum(d for d, _ in hist) / total
        return [("cfg/drop_rate", rate), ("cfg/p", float(mon.p)), ("cfg/drop_n", float(total))]

    def _hist_payload(
        self, have: list[int], scale: Tensor | None = None
    ) -> tuple[list[Tensor], list[tuple[str, int]]]:
        by_group: dict[int, list[tuple[Tensor, Tensor]]] = {}
        for i in have:
            p = self._named[i][1]
            g = p.grad.coalesce().values() if p.grad.is_sparse else p.grad
            by_group.setdefault(self._gidx[i], []).append((p, g))
        pieces, spans = histogram_payload({self.groups[j]: pg for j, pg in by_group.items()})
        if scale is not None:  # gradients as the optimizer will see them
            inv = (1.0 / scale.float()).reshape(())
            pieces = [x * inv.to(x.device) if tag.startswith("grads/") else x
                      for x, (tag, _) in zip(pieces, spans, strict=True)]  # fmt: skip
        return pieces, spans

    def _write_layout(self) -> None:
        """Write the custom-scalars layout; rewritten when a new tag prefix appears."""
        layout = custom_scalars_layout(
            self._extra_prefixes, cfg=self.cfg_monitor is not None or "cfg" in self._extra_prefixes
        )
        if hasattr(self.writer, "add_custom_scalars"):
            self.writer.add_custom_scalars(layout)
        self._layout_written = True
        self._layout_prefixes = set(self._extra_prefixes)

    def _summary_text(self) -> str:
        counts = [0] * len(self.groups)
        for (_, p), j in zip(self._named, self._gidx, strict=True):
            counts[j] += p.numel()
        last = list(self._flow[-1]) if self._flow else []
        last += [math.nan] * (len(self.groups) - len(last))  # a group added since
        head = (
            f"TrainingMonitor over {type(self.model).__name__}: {self.logged_steps} logged steps "
            f"(every={self.cfg.every}, hist_every={self.cfg.hist_every}), last step "
            f"{self.last_step}. Read the run back with `python -m diagnostics.inspect_run`."
        )
        return summary_markdown(head, self.groups, counts, last)

    def _grad_flow_image(self) -> Any:
        return grad_flow_image(self.groups, self._flow_steps, self._flow)

    # ------------------------------------------------------------------ lifetime
    def log_exception(self, exc: BaseException, step: int | None = None) -> None:
        """Write ``exc`` as text (a NonFiniteError with its report) and flush at once."""
        at = self.last_step if step is None else step
        report = getattr(exc, "report", None)
        text = report.to_markdown() if hasattr(report, "to_markdown") else f"`{exc!r}`"
        if hasattr(self.writer, "add_text"):
            self.writer.add_text("monitor/exception", f"step {at}: {type(exc).__name__}\n\n{text}",
                                 at or 0)  # fmt: skip
        self.writer.add_scalar("monitor/exception", 1.0, at or 0)
        self.flush()

    @contextlib.contextmanager
    def guard(self, step: int | None = None) -> Iterator[TrainingMonitor]:
        """Log (and flush) any exception raised inside, then let it propagate."""
        try:
            yield self
        except BaseException as exc:
            self.log_exception(exc, step)
            raise

    def flush(self) -> None:
        """Hand buffered events to the writer and flush it to disk."""
        self._push()
        if hasattr(self.writer, "flush"):
            self.writer.flush()

    def close(self) -> None:
        """Write the run's summary (text) and gradient-flow heat map (image), flush, and close
        the writer when the monitor opened it. Idempotent."""
        if self.closed:
            return
        self.closed = True
        at = self.last_step or 0
        self._push()
        if hasattr(self.writer, "add_text"):
            self.writer.add_text("monitor/summary", self._summary_text(), at)
        if self._flow and hasattr(self.writer, "add_image"):
            try:  # matplotlib and PIL come with the `viz` extra; without them: no image
                image = self._grad_flow_image()
                self.writer.add_image("monitor/grad_flow", image, at, dataformats="HWC")
            except ImportError:
                pass
        if self._own_writer:
            self.writer.close()
        else:
            self.flush()

    def __enter__(self) -> TrainingMonitor:
        return self

    def __exit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> None:
        try:
            if exc is not None and not self.closed:
                self.log_exception(exc)
        finally:
            self.close()
