"""The watch: a cheap finiteness check per step; on a failing step, the localizer.

Healthy path cost: one RNG-state copy, one float32 L2 norm over the loss and every gradient
(``torch._foreach_norm``, accumulated in float32), one host sync; no module hooks. The L2 norm is
NaN when any element is NaN and Inf when any is Inf, and it can overflow on huge *finite*
gradients (past ~1e19), so a non-finite norm is confirmed element-wise before it counts.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from .. import _distributed as _dd
from .._hooks import HookSet
from .._structure import structure_version
from .._summary import summarize
from ._compiled import clean_name, has_compiled, unwrap_compiled
from ._localize import (
    Localizer,
    apply_input_origin,
    apply_param_origin,
    apply_stale_origin,
    nonfinite_grads,
    nonfinite_inputs,
    nonfinite_params,
    report_from,
)
from ._numerics import RngState, find_loss, grads_norm_all, quiet_hooks
from ._recorder import Recorder
from ._sidestate import ObjectStates, check_stateful
from ._state import StepState
from ._types import NanWatchError, NonFiniteError, NonFiniteReport

__all__ = ["NanWatch"]

_MODES = ("replay", "eager")
_CONTEXT_KEYS = ("padding_mask", "valid_mask", "t")


class NanWatch:
    """Watch training steps for NaN/Inf; on one, replay the step to find who produced it.

    Args:
        model: the module whose activations and gradients are watched.
        mode: ``"replay"`` (default): healthy steps cost one fused finiteness check; a failing
            step is replayed with full instrumentation. ``"eager"``: for steps that cannot be
            replayed (non-deterministic data); per-module max-|x| flags stay on the device during
            the step and are read once at its end (no op-level attribution).
        scaler: a ``torch.amp.GradScaler``. With it, a step whose loss is finite but whose
            gradients overflowed is the scaler's business: it is counted in ``skipped_steps``,
            ``last_status`` becomes ``"scaler_overflow"`` and no error is raised. Its state
            (scale, growth tracker, per-optimizer stage) is saved before each step and restored
            around every replay, so a failing step leaves it as the user's step did.
        stateful: objects with ``state_dict()``/``load_state_dict()`` that ``step_fn`` may change
            (optimizers, LR schedulers, your own): their state is copied before each step
            (a deep copy: pass only what ``step_fn`` touches) and restored around every replay.
            Plain Python attributes of the model's modules that a replay changes are restored
            too and named in ``report.notes``.
        batch_dim: batch axis of activations (used for ``bad_items``; a context mask or ``t``
            lets NanWatch find the batch axis by size instead).
        backward_hooks: full backward hooks on every module (grad_output / grad_input per
            module). Default: on in the replay (which falls back automatically when a model's
            in-place ops are incompatible with them), off in eager mode, where a backward fault
            is attributed from the parameter gradients after the step instead (the module
            called last in forward whose own parameter gradient is non-finite). ``True`` turns
            them on in eager mode too.
        ddp: the ``DistributedDataParallel`` wrapper ``step_fn`` calls, when ``model`` is the
            inner module (passing the wrapper as ``model`` does the same). The replay runs under
            its ``no_sync()`` so it is local to each rank and issues no collective.
        timeout: seconds (or a ``timedelta``) bounding NanWatch's own collectives under
            torch.distributed; default ``$TORCHDX_DIST_TIMEOUT`` or 300 s.

    Under torch.distributed (see ``docs/DDP.md``) the healthy path adds ONE small all_reduce of
    every rank's ``[loss bad, grads bad]`` flags, so all ranks raise at the same step; each rank
    then replays its own shard under ``no_sync()`` and the reports are gathered, so every rank
    raises the report of the rank where the fault arose (``report.rank``, ``fault_ranks``). A
    failed or timed-out collective raises :class:`DistributedError` naming the rank that died,
    hung or raised.

    ``run(step_fn, *args, context=None, **kwargs)`` calls ``step_fn(*args, **kwargs)``, which
    must do forward + backward (no optimizer step) and return the loss (or a tuple/dict holding
    it), and returns what ``step_fn`` returned. ``context`` is NanWatch's own (never passed to
    ``step_fn``): a dict with any of ``padding_mask`` (bool ``[B, T]``, True = padded, PyTorch's
    ``key_padding_mask`` convention), ``valid_mask`` (bool ``[B, T]``, True = valid, the
    contracts ``Mask()`` convention) and ``t`` (``[B]`` diffusion times).

    Example:
        >>> watch = NanWatch(model)
        >>> def step(x, y):
        ...     loss = F.mse_loss(model(x), y)
        ...     loss.backward()
        ...     return loss
        >>> for x, y in loader:
        ...     opt.zero_grad()
        ...     loss = watch.run(step, x, y, context={"t": t})  # raises NonFiniteError
        ...     opt.step()
    """

    def __init__(
        self,
        model: nn.Module,
        mode: str = "replay",
        *,
        scaler: Any = None,
        stateful: Sequence[Any] = (),
        batch_dim: int = 0,
        backward_hooks: bool | None = None,
        ddp: nn.Module | None = None,
        timeout: Any = None,
    ) -> None:
        compiled = has_compiled(model) if isinstance(model, nn.Module) else False
        model = unwrap_compiled(model) if isinstance(model, nn.Module) else model
        if _dd._is_ddp(model):
            ddp, model = model, unwrap_compiled(model.module)
        if ddp is not None and not _dd._is_ddp(ddp):
            raise NanWatchError(
                f"NanWatch(ddp=...): expected a DistributedDataParallel wrapper, got "
                f"{type(ddp).__name__}"
            )
        if not isinstance(model, nn.Module):
            raise NanWatchError(
                f"NanWatch(model): expected an nn.Module, got {type(model).__name__}"
            )
        if mode not in _MODES:
            raise NanWatchError(
                f"NanWatch(mode={mode!r}): unknown mode; valid modes: {', '.join(_MODES)}"
            )
        if compiled and mode == "eager":
            raise NanWatchError(
                "NanWatch(compiled_model, mode='eager'): eager mode hooks every module during "
                "the step, which a compiled graph does not run (and re-registering hooks each "
                "step forces recompiles); use mode='replay' (default): the healthy path stays "
                "compiled and a failing step is replayed eagerly"
            )
        self.model = model
        self._index()
        if not any(p.requires_grad for p in self._params):
            raise NanWatchError(
                f"NanWatch(model): {type(model).__name__} has no trainable parameters, so there "
                "are no gradients to watch; hint: pass the module that holds the parameters "
                "(or check requires_grad)"
            )
        self.compiled = compiled  # replays run with torch.compiler.set_stance("force_eager")
        self.ddp = ddp
        self.timeout = timeout
        self._dist = _dd.check_launch("NanWatch")
        self.mode = mode
        self.scaler = scaler
        self.stateful = check_stateful(stateful, NanWatchError)
        self.batch_dim = batch_dim
        # full backward hooks: on for replays, off during the user's own step in eager mode
        # (they cost ~0.5x a step); None picks that per mode
        self.backward_hooks = backward_hooks if backward_hooks is not None else mode == "replay"
        self.steps = 0
        self.skipped_steps = 0
        self.last_status = "none"
        # whether a .grad may hold NaN/Inf left from before the next step: unknown before the
        # first step, false after a healthy one; only then are the gradients looked at before
        # a step (one fused check), so a non-finite .grad the step merely accumulates into is
        # reported as stale, not as produced by it
        self._grads_unchecked = True

    def _index(self) -> None:
        """List the model's parameters (frozen ones too: one unfrozen later is read from then
        on; a frozen one has no gradient to read) and forget what was learned from the old
        list; done again when a parameter, buffer or module was registered since."""
        self._structure = structure_version()
        self._named = [(clean_name(n), p) for n, p in self.model.named_parameters()]
        self._params = [p for _, p in self._named]
        self._all_buffers = [(clean_name(n), b) for n, b in self.model.named_buffers()]
        self._steady_buffers = self._all_buffers  # not seen changing (versions kept per step)
        self._mutated_buffers: list[Tensor] | None = None  # None: snapshot all (next step)
        self._eager_rec: Recorder | None = None

    def __repr__(self) -> str:
        return (
            f"NanWatch({type(self.model).__name__}, mode={self.mode!r}, steps={self.steps}, "
            f"skipped={self.skipped_steps})"
        )

    # -- public ---------------------------------------------------------------------------
    def run(
        self,
        step_fn: Callable[..., Any],
        /,
        *args: Any,
        context: Mapping[str, Tensor] | None = None,
        **kwargs: Any,
    ) -> Any:
        """Run one step (forward + backward) under the watch; return ``step_fn``'s result.

        Raises:
            NonFiniteError: the loss or a gradient is NaN/Inf; ``.report`` localizes it.
            NanWatchError: bad usage (no loss returned, non-scalar loss, bad context).
        """
        if not callable(step_fn):
            raise NanWatchError(_not_callable(step_fn))
        st = StepState(step_fn, args, kwargs, self._check_context(context), self.steps)
        if structure_version() != self._structure:  # a module/parameter added or replaced
            self._index()
        self.steps += 1
        if self._grads_unchecked:  # after a step that did not end healthy (or the first one)
            st.stale = nonfinite_grads(self._named, limit=None)
        self._grads_unchecked = True  # until this step ends healthy
        if self.mode == "eager":
            return self._run_eager(st)
        st.rng = RngState()
        st.bufs = self._snapshot_buffers(st)
        st.versions = [p._version for p in self._params]
        if self.scaler is not None or self.stateful:
            st.saved = ObjectStates(self.scaler, self.stateful)
        st.result = self._call(st)
        st.loss = find_loss(st.result)
        grads = [p.grad for p in self._params if p.grad is not None]
        # healthy check: |loss| and the float32 L2 norm over every gradient, one host read. The
        # L2 norm is NaN/Inf when any element is, but can also overflow on huge finite
        # gradients, so a non-finite norm is confirmed element-wise (failure path only).
        lm = st.loss.detach().reshape(()).abs().float()
        gm = grads_norm_all(grads, lm.device)
        if self._dist.distributed:
            self._learn_buffers(st)
            return self._run_dist(st, lm, gm)
        flags = torch.stack([lm, gm]).isfinite().tolist()  # the one host sync of the step
        if flags[0] and not flags[1] and not nonfinite_grads(self._named):
            flags[1] = True  # the L2 norm overflowed on finite gradients: not a fault
        self._learn_buffers(st)
        if self._ending(loss_ok=flags[0], grads_ok=flags[1]) != "nonfinite":
            return st.result
        raise NonFiniteError(Localizer(self).localize(st))

    def _ending(self, *, loss_ok: bool, grads_ok: bool) -> str:
        """The step's status: ``"ok"``, ``"scaler_overflow"`` (a finite loss with non-finite
        gradients under an enabled GradScaler: the scaler skips the step) or ``"nonfinite"``."""
        if loss_ok and grads_ok:
            status = "ok"
        elif loss_ok and self._scaler_enabled():
            self.skipped_steps += 1
            status = "scaler_overflow"
        else:
            status = "nonfinite"
        self.last_status = status
        self._grads_unchecked = status != "ok"
        return status

    # -- torch.distributed ----------------------------------------------------------------
    def _call(self, st: StepState) -> Any:
        """``st.call()``; under torch.distributed a failure is noted in the store (for the other
        ranks' messages) and a failed collective is turned into a message naming the rank that
        died, hung or raised."""
        if not self._dist.distributed:
            return st.call()
        step = st.index
        try:
            return st.call()
        except Exception as exc:
            if _dd.is_comm_failure(exc):
                raise _dd.diagnose_peers(
                    f"nanwatch/{step}/step", f"NanWatch step {step}: a collective in step_fn", exc
                ) from exc
            _dd.note_failure(
                f"nanwatch/{step}",
                f"{type(exc).__name__}: {exc} (in step_fn, NanWatch step {step})",
            )
            raise

    def _local(self):
        """No DDP collectives while replaying: ``ddp.no_sync()`` when a wrapper is known."""
        return self.ddp.no_sync() if self.ddp is not None else contextlib.nullcontext()

    def _run_dist(self, st: StepState, lm: Tensor, gm: Tensor) -> Any:
        """Healthy path under torch.distributed: one all_reduce of every rank's two flags."""
        step = st.index
        tag = f"nanwatch/{step}"
        bad = (~torch.stack([lm, gm]).isfinite()).float()  # (2,) [loss bad, grads bad]
        flags = _dd.combine_flags(bad, tag=tag, what=f"NanWatch step {step} flag all_reduce",
                                  timeout=self.timeout)  # fmt: skip  # (W, 2), the one host sync
        if not bool(flags.any()):
            self._ending(loss_ok=True, grads_ok=True)
            return st.result
        # failure path: confirm a non-finite L2 norm element-wise, agree again (second collective)
        mine = flags[self._dist.rank].tolist()
        if mine[1] and not mine[0] and not nonfinite_grads(self._named):
            mine[1] = 0.0  # the L2 norm overflowed on finite gradients: not a fault
        flags = _dd.combine_flags(torch.tensor(mine), tag=tag + "/confirm", timeout=self.timeout)
        loss_bad = flags[:, 0] > 0
        ending = self._ending(
            loss_ok=not bool(loss_bad.any()), grads_ok=not bool(flags[:, 1].gt(0).any())
        )
        if ending != "nonfinite":
            return st.result
        loc = Localizer(self)
        try:
            with self._local():
                report = loc.localize(st)
        except NonFiniteError as exc:  # the replay itself raised: still take part in the gather
            report = exc.report
        clean = loc.replay_clean and not bool(loss_bad[self._dist.rank])
        raise NonFiniteError(self._agree(report, clean, loss_bad.tolist(), step))

    def _agree(self, report: NonFiniteReport, clean: bool, loss_bad: list[bool], step: int):
        """Gather every rank's local report; all ranks raise the one of the rank at fault."""
        me = self._dist.rank
        got = _dd.all_gather_objects(
            (clean, report), tag=f"nanwatch/{step}/reports",
            what=f"NanWatch step {step} report gather", timeout=self.timeout,
        )  # fmt: skip
        origins = [r for r, (c, _) in enumerate(got) if not c]
        reproduced = [r for r in origins if got[r][1].replayable]
        pick = (reproduced or origins or [me])[0]
        chosen = got[pick][1]
        chosen.rank = pick if origins else None
        chosen.fault_ranks = origins
        chosen.observed_on = me
        cleans = [r for r, (c, _) in enumerate(got) if c]
        if cleans:
            chosen.notes.append(
                f"rank(s) {cleans} replayed their own shard without a non-finite value: their "
                "non-finite gradients came in through DDP's all-reduce"
            )
        if not origins:
            chosen.notes.append(
                "no rank reproduced the fault in its local replay (non-deterministic step, or a "
                "fault in the all-reduce itself); ranks with a non-finite loss: "
                f"{[r for r, b in enumerate(loss_bad) if b]}"
            )
        if len(origins) > 1:
            chosen.notes.append(
                "other ranks at fault: "
                + "; ".join(f"rank {r}: {got[r][1].headline()}" for r in origins if r != pick)
            )
        return chosen

    # -- context / state ------------------------------------------------------------------
    def _check_context(self, context: Mapping[str, Tensor] | None) -> dict[str, Tensor]:
        if context is None:
            return {}
        if not isinstance(context, Mapping):
            raise NanWatchError(
                f"NanWatch.run(context=...): expected a dict, got {type(context).__name__}"
            )
        bad = sorted(set(context) - set(_CONTEXT_KEYS))
        if bad:
            raise NanWatchError(
                f"NanWatch.run(context=...): unknown key(s) {bad}; valid keys: "
                f"{', '.join(_CONTEXT_KEYS)}"
            )
        ctx = dict(context)
        for key in ("padding_mask", "valid_mask"):
            m = ctx.get(key)
            if m is not None and (
                not isinstance(m, Tensor) or m.dtype != torch.bool or m.dim() != 2
            ):
                raise NanWatchError(
                    f"NanWatch.run(context={{'{key}': ...}}): expected a bool tensor [B, T], got "
                    f"{summarize(m) if isinstance(m, Tensor) else type(m).__name__}"
                )
        return ctx

    def _scaler_enabled(self) -> bool:
        s = self.scaler
        return s is not None and bool(getattr(s, "is_enabled", lambda: True)())

    def _buffers(self) -> list[Tensor]:
        return [b for _, b in self._all_buffers]

    def _snapshot_buffers(self, st: StepState) -> list[tuple[Tensor, int, Tensor]]:
        """Copies of the buffers the step may change: all of them on the first step, then
        those seen changing; the others' versions are kept, to learn one that starts to."""
        if self._mutated_buffers is None:
            bufs = self._buffers()
        else:
            bufs = self._mutated_buffers
            st.buf_versions = [b._version for _, b in self._steady_buffers]
        return [(b, b._version, b.clone()) for b in bufs]

    def _learn_buffers(self, st: StepState) -> None:
        """Learn which buffers steps change: from the first step's copies, then each buffer
        that starts to change later (an EMA after warm-up, a counter) joins them; the step
        where it first changed had no copy of it (``st.unsaved``)."""
        if self._mutated_buffers is None:  # (the first step, or the first after a re-index)
            changed = _changed_buffers(st.bufs)
        elif st.buf_versions is not None and any(
            b._version != v for (_, b), v in zip(self._steady_buffers, st.buf_versions)
        ):
            changed = {id(b) for b in self._mutated_buffers}
            for (name, b), v in zip(self._steady_buffers, st.buf_versions, strict=True):
                if b._version != v:
                    changed.add(id(b))
                    st.unsaved.append(name)
        else:
            return
        self._mutated_buffers = [b for _, b in self._all_buffers if id(b) in changed]
        self._steady_buffers = [(n, b) for n, b in self._all_buffers if id(b) not in changed]

    # -- eager ----------------------------------------------------------------------------
    def _run_eager(self, st: StepState) -> Any:
        bwd = self.backward_hooks
        if self._eager_rec is None:  # kept across steps: its hook closures are built once
            self._eager_rec = Recorder(self.model, keep_refs=False, backward=bwd, params=bwd)
        rec = self._eager_rec
        rec.reset()
        try:
            with HookSet() as hooks, quiet_hooks():
                rec.install(hooks)
                result = self._call(st)
        finally:
            rec.release()  # no activation stays referenced between steps
        loss = find_loss(result)
        grads = [p.grad for p in self._params if p.grad is not None]
        lm = loss.detach().reshape(()).abs().float()
        head = torch.stack([lm, grads_norm_all(grads, lm.device)])
        ev = rec.stacked()
        dev = head.device
        allv = head if ev is None else torch.cat([head, ev.to(dev).reshape(-1)])
        vals = allv.tolist()  # the one host read of the step
        loss_v, grad_v = vals[0], vals[1]
        if math.isfinite(loss_v) and not math.isfinite(grad_v) and not nonfinite_grads(self._named):
            grad_v = 0.0  # the L2 norm overflowed on finite gradients: not a fault
        if self._dist.distributed:  # every rank's two flags, one all_reduce
            bad = torch.tensor([not math.isfinite(loss_v), not math.isfinite(grad_v)])
            flags = _dd.combine_flags(bad, tag=f"nanwatch/{st.index}", timeout=self.timeout)
            loss_v = math.nan if bool(flags[:, 0].any()) else loss_v
            grad_v = math.nan if bool(flags[:, 1].any()) else grad_v
        ok = self._ending(loss_ok=math.isfinite(loss_v), grads_ok=math.isfinite(grad_v))
        if ok != "nonfinite":
            return result
        pairs = [vals[2 + 2 * i : 4 + 2 * i] for i in range(len(rec.events))]
        found = rec.analyze(pairs)
        bad_grads = nonfinite_grads(self._named, limit=None)
        stale = [n for n in st.stale if n in set(bad_grads)]
        if not bwd and not found["fwd"] and math.isfinite(vals[0]):
            fresh = [n for n in bad_grads if n not in set(stale)]  # stale ones: not this step's
            found["bwd"] = rec.backward_from_grads(fresh)
        report = report_from(found, loss, st.index, mode="eager")
        report.nonfinite_grads = bad_grads[:20]
        if found["fwd"] or not math.isfinite(vals[0]):
            # step_fn does no optimizer step, so the parameters hold what they held before it
            producer = found["fwd"][0][0].module if found["fwd"] else None
            inputs = nonfinite_inputs(st.args, st.kwargs)
            apply_param_origin(report, nonfinite_params(self._named), producer, inputs=inputs)
            held = _nonfinite_buffers_of(producer)
            if held:
                pname = found["fwd"][0][0].name
                held = [f"{pname}.{n}" if pname else n for n in held]
                report.notes.append(
                    f"module {pname!r} holds NaN/Inf in buffer(s) "
                    f"{', '.join(map(repr, held[:5]))} after the step (eager mode keeps no "
                    "pre-step copy: read before the step, e.g. BatchNorm running statistics in "
                    "eval mode, they are the origin; mode='replay' tells)"
                )
            if report.nonfinite_params:
                report.notes.append(
                    "eager mode reads the parameters after the step: 'before this step' assumes "
                    "step_fn runs no optimizer.step() (one inside it may have written them)"
                )
            if not found["fwd"] and report.origin == "step" and any(b[2] for b in inputs):
                # nothing in the model made the NaN and the data held NaN: named by the first
                # module that received it (no op pass in eager mode)
                apply_input_origin(report, inputs, rec.first_nonfinite_input(pairs))
        only_stale = not found["fwd"] and not found["bwd"] and math.isfinite(vals[0])
        grads = {n: p.grad for n, p in self._named}
        apply_stale_origin(report, stale, grads, explained=only_stale and bool(stale))
        report.notes.append(
            "eager mode: module-level attribution only (no op, no tensor summaries); use "
            "mode='replay' on a replayable step for the op"
        )
        if found["bwd"] and not bwd and report.origin == "step":
            report.notes.append(
                "backward attribution from the parameter gradients after the step: the module "
                "called last in forward whose own parameter gradient is non-finite (no backward "
                "hooks in eager mode; NanWatch(..., backward_hooks=True) adds them)"
            )
        if self._dist.distributed:  # local producers (forward or parameter-gradient hooks)
            clean = (
                not found["fwd"]
                and not found["bwd"]
                and math.isfinite(vals[0])
                and report.origin != "stale_grad"
            )
            report = self._agree(report, clean, flags[:, 0].gt(0).tolist(), st.index)
        raise NonFiniteError(report)


def _nonfinite_buffers_of(module: nn.Module | None) -> list[str]:
    """Names of ``module``'s own buffers holding NaN/Inf (eager failure path only)."""
    if module is None:
        return []
    return [
        n
        for n, b in module.named_buffers(recurse=False)
        if (b.is_floating_point() or b.is_complex()) and not bool(torch.isfinite(b).all())
    ]


def _changed_buffers(bufs: list[tuple[Tensor, int, Tensor]]) -> set[int]:
    """Ids of the buffers a step changed, from ``(buffer, version before, copy before)``: by
    version counter, and for the others by value: some kernels write a buffer without moving
    its version (``native_batch_norm`` updates BatchNorm's running statistics so), which a
    version check alone would miss. Done once (first step, or after a re-index); later steps
    copy the buffers found here."""
    changed = {id(b) for b, v, _ in bufs if b._version != v}
    rest = [(b, c) for b, _, c in bufs if id(b) not in changed]
    if rest:
        flags = []
        for b, c in rest:
            try:
                flags.append((b.shape != c.shape) or bool(torch.ne(b, c).any()))
            except Exception:  # not comparable element-wise (sparse, a subclass): copy it
                flags.append(True)
        changed |= {id(b) for (b, _), f in zip(rest, flags, strict=True) if f}
    return changed


def _not_callable(step_fn: Any) -> str:
    """The message for ``watch.run(x)`` with ``x`` not a function."""
    got = type(step_fn).__name__
    if isinstance(step_fn, Tensor):
        shown = summarize(step_fn)
        hint = (
            "pass the step function itself, not its result: watch.run(step, x, y), not "
            "watch.run(step(x, y))"
        )
    else:
        shown = repr(step_fn)
        shown = shown if len(shown) <= 60 else shown[:57] + "..."
        hint = (
            "watch.run(step, *args) calls step(*args), which runs forward + backward and "
            "returns the loss; pass the function first, then its arguments"
        )
    return (
        f"NanWatch.run(step_fn): expected a callable (the step function), got {got} "
        f"({shown}); hint: {hint}"
    )
