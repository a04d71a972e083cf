"""Localization of a failing step: replay it with hooks, pick the producer, name its op.

Replay 1 runs the step again (same RNG, buffers, fresh gradients) with forward hooks on every
module and tensor hooks on every parameter; replay 2, only for a backward fault, adds full
backward hooks. The producing module's call is then re-run alone under the op finder.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.modules.module as _torch_module
from torch import Tensor, nn
from torch.utils._pytree import (
    keystr,
    tree_flatten,
    tree_flatten_with_path,
    tree_map,
    tree_unflatten,
)

from .._hooks import HookSet
from .._summary import summarize
from ._compiled import clean_name, eager_replay, is_compile_wrapper
from ._numerics import (
    RngState,
    dense,
    find_loss,
    grads_l2,
    kind_of,
    pick,
    quiet_hooks,
    rank,
    tensors_of,
)
from ._opfinder import OpFinder
from ._recorder import Call, Recorder, changed_since_recorded
from ._sidestate import ModuleAttrs, ObjectStates
from ._source import recording_node_stacks, source_of
from ._state import StepState
from ._types import NonFiniteError, NonFiniteReport

if TYPE_CHECKING:
    from ._watch import NanWatch

__all__ = [
    "Localizer",
    "apply_input_origin",
    "apply_param_origin",
    "apply_stale_origin",
    "nonfinite_inputs",
    "nonfinite_params",
    "report_from",
]

_MAX_OP_CANDIDATES = 8
_MAX_SNAPSHOTS = 2  # extra replays that copy a producer's inputs written in place
_NO_FINDINGS: dict[str, Any] = {"fwd": [], "bwd": [], "headroom": [], "root_input": 0.0}


def report_from(found: dict[str, Any], loss: Tensor, step: int, mode: str) -> NonFiniteReport:
    """The report of the first producer candidate in ``found`` (a recorder's analysis)."""
    lv = float(loss.detach().float())
    phase, cands = pick(found, lv)
    names = list(
        dict.fromkeys(c[0].name if c[1] != "grad_output" else "<loss code>" for c in cands)
    )
    if cands:
        call, detail, _a, b = cands[0]
        module = None if detail == "grad_output" else call.name
        mtype = None if module is None else type(call.module).__name__
        kind = kind_of(math.isnan(b), not math.isnan(b))
    else:
        module, mtype, detail = None, None, ""
        kind = kind_of(math.isnan(lv), math.isinf(lv))
    rep = NonFiniteReport(
        module=module,
        module_type=mtype,
        phase=phase,
        kind=kind,
        loss=summarize(loss),
        candidates=names,
        headroom=found["headroom"],
        rank=rank(),
        step=step,
        mode=mode,
    )
    if detail and detail != "grad_output":
        rep.notes.append(f"first non-finite gradient: parameter {detail!r}")
    if phase == "forward" and cands and math.isfinite(lv) and mode == "replay":
        rep.notes.append(
            "the loss is finite: the forward masked this value later (torch.where, "
            "masked_fill, indexing), and backward brought it into the gradients (the masked "
            "branch's zero gradient times the op's derivative there: 0 * NaN = NaN); make the "
            "masked-out inputs safe before the op (torch.where(h > 0, h, 1).sqrt())"
        )
    elif phase == "forward" and cands and math.isfinite(lv):
        rep.notes.append(
            "the loss is finite: this value was either masked later in the forward "
            "(torch.where, masked_fill, indexing) and brought into the gradients by backward, "
            "or never reached them (computed under no_grad or detached: the fault is then in "
            "backward); mode='replay' tells the two apart"
        )
    if mode == "eager" and phase == "forward" and cands and math.isinf(cands[0][2]):
        rep.notes.append(
            f"module {cands[0][0].name!r} made NaN of an input that already held Inf, made "
            "before it by code outside every module that completed earlier (its parent's own "
            "code, the step function, the data); mode='replay' looks for the op that made it"
        )
    if not math.isfinite(found.get("root_input", 0.0)):
        rep.notes.append(
            "the model's own inputs already held NaN/Inf (max|x| = "
            f"{found['root_input']}): check the data before suspecting the model"
        )
    return rep


def nonfinite_grads(named: list[tuple[str, Tensor]], limit: int | None = 20) -> list[str]:
    """Names of the parameters whose gradient holds NaN/Inf (first ``limit``; one host read).

    Per-gradient float32 L2 norms (fused); a non-finite norm is confirmed element-wise, since
    the norm of huge finite values overflows too.
    """
    have = [(n, p.grad) for n, p in named if p.grad is not None]
    if not have:
        return []
    norms = grads_l2([g for _, g in have]).tolist()
    bad = [
        n
        for (n, g), v in zip(have, norms, strict=True)
        # NaN norm: a NaN element (squares cannot cancel); +Inf: an Inf element or an overflow
        if math.isnan(v) or (math.isinf(v) and not bool(torch.isfinite(dense(g)).all()))
    ]
    return bad if limit is None else bad[:limit]


BadParam = tuple[str, Tensor, int, int, int]  # (name, parameter, NaN count, Inf count, numel)


def nonfinite_params(named: list[tuple[str, Tensor]]) -> list[BadParam]:
    """The parameters holding NaN/Inf (failure path only: one fused norm, then element-wise
    counts of the few whose norm is non-finite)."""
    return _nonfinite([(n, p, p) for n, p in named])


def _nonfinite(items: list[tuple[str, Tensor, Tensor]]) -> list[BadParam]:
    """``(name, tensor, values)``: those whose ``values`` hold NaN/Inf, as :data:`BadParam`
    with the tensor itself (the values may be a copy: a buffer's pre-step value)."""
    have = [
        (n, t, v.detach())
        for n, t, v in items
        if (v.is_floating_point() or v.is_complex()) and v.numel() and not v.is_sparse
    ]
    if not have:
        return []
    norms = grads_l2([v for _, _, v in have]).tolist()
    bad = []
    for (n, t, v), norm in zip(have, norms, strict=True):
        if math.isfinite(norm):
            continue
        nan, inf = int(torch.isnan(v).sum()), int(torch.isinf(v).sum())
        if nan or inf:  # (an overflowing norm of finite values is not)
            bad.append((n, t, nan, inf, v.numel()))
    return bad


def nonfinite_inputs(args: tuple[Any, ...], kwargs: dict[str, Any]) -> list[BadParam]:
    """The tensors among the step function's arguments holding NaN/Inf (the data), named
    ``args[0]``, ``kwargs['x']``, ``args[0]['image']``, ``args[0].x`` (a dataclass batch)
    (failure path only)."""
    items: list[tuple[str, Tensor, Tensor]] = []
    _named_tensors(args, "args", items, 0)
    _named_tensors(kwargs, "kwargs", items, 0)
    return _nonfinite(items)


def _named_tensors(obj: Any, name: str, out: list[tuple[str, Tensor, Tensor]], depth: int) -> None:
    if isinstance(obj, Tensor):
        out.append((name, obj, obj))
        return
    if isinstance(obj, (int, float, bool, str, bytes, type(None))) or depth > 4:
        return
    leaves, _ = tree_flatten_with_path(obj)
    if not (len(leaves) == 1 and leaves[0][1] is obj):  # a pytree node: its leaves, by path
        for path, leaf in leaves:
            _named_tensors(leaf, name + keystr(path), out, depth + 1)
    elif dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        for f in dataclasses.fields(obj):
            _named_tensors(getattr(obj, f.name, None), f"{name}.{f.name}", out, depth + 1)
    elif isinstance(obj, Mapping):
        for k, v in obj.items():
            _named_tensors(v, f"{name}[{k!r}]", out, depth + 1)
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            _named_tensors(v, f"{name}[{i}]", out, depth + 1)


_ORIGIN_NOTES = {
    "parameter": "the parameter(s) held non-finite values before this step (a previous "
    "optimizer step, a bad checkpoint or initialization, an in-place write): every step that "
    "uses them fails; the module/op named is where the value was first used",
    "buffer": "the buffer(s) held non-finite values before this step (written by an earlier "
    "step: a BatchNorm's running statistics keep the NaN of one bad batch for good; a bad "
    "checkpoint): every step that uses them fails; reset or reload them. The module/op named "
    "is where the value was first used",
    "input": "the step's input held non-finite values before any op of this step ran: check "
    "the data (or the code that built the batch); the module/op named is where the value was "
    "first used",
}


def apply_param_origin(
    rep: NonFiniteReport,
    bad: list[BadParam],
    module: nn.Module | None,
    res: dict[str, Any] | None = None,
    *,
    buffers: list[BadParam] | None = None,
    inputs: list[BadParam] | None = None,
) -> None:
    """Name the parameters (buffers, step inputs) that held NaN/Inf before the step. The value
    was not produced by the step (``origin`` ``"parameter"``, ``"buffer"`` or ``"input"``;
    module/op are where it was first used) when the op pass found an op reading one of them
    (``res["param"]``), or, with no producing op found (or no op pass: eager mode), when the
    producing module holds one of them itself (a parameter; a buffer holding NaN)."""
    buffers, inputs = buffers or [], inputs or []
    if not (bad or buffers or inputs):
        return
    rep.nonfinite_params = [(n, nan, inf, numel) for n, _, nan, inf, numel in bad]
    rep.nonfinite_buffers = [(n, nan, inf, numel) for n, _, nan, inf, numel in buffers]
    rep.nonfinite_inputs = [(n, nan, inf, numel) for n, _, nan, inf, numel in inputs]
    kinds = {"parameter": bad, "buffer": buffers, "input": inputs}
    used = res.get("param") if res is not None else None
    origin = next((k for k, lst in kinds.items() if any(b[0] == used for b in lst)), None)
    produced = res is not None and bool(res.get("op")) and used is None
    if origin is None and not produced and module is not None:
        ids = {id(p) for _, p, *_ in bad}
        nan_bufs = {id(b) for _, b, nan, *_ in buffers if nan}
        if any(id(p) in ids for p in module.parameters(recurse=False)):
            origin = "parameter"
        elif any(id(b) in nan_bufs for b in module.buffers(recurse=False)):
            origin = "buffer"
    if origin is not None:
        rep.origin = origin
        src = kinds[origin]
        rep.kind = kind_of(any(b[2] for b in src), any(b[3] for b in src))
        if origin == "input":  # said in the headline now
            rep.notes = [n for n in rep.notes if not n.startswith("the model's own inputs")]
        rep.notes.append(_ORIGIN_NOTES[origin])
    if bad and origin != "parameter":
        rep.notes.append(
            f"parameter(s) {', '.join(repr(b[0]) for b in bad[:5])} held non-finite values "
            "before this step, but the first producer found does not use them"
        )
    nan_bufs_named = [b[0] for b in buffers if b[2]]  # an Inf-only buffer is usually a mask
    if nan_bufs_named and origin != "buffer":
        rep.notes.append(
            f"buffer(s) {', '.join(map(repr, nan_bufs_named[:5]))} held NaN before this step, "
            "but the first producer found does not use them"
        )
    if inputs and origin != "input":
        rep.notes.append(
            f"the step's input(s) {', '.join(repr(b[0]) for b in inputs[:5])} held NaN/Inf "
            "before the step (see 'non-finite step inputs')"
        )


def apply_input_origin(rep: NonFiniteReport, inputs: list[BadParam], user: Any) -> None:
    """Eager mode: the step's input held NaN and no module produced one: the data is the
    origin, named with the first module that received it (``user``, a recorder call)."""
    rep.origin = "input"
    rep.kind = kind_of(any(b[2] for b in inputs), any(b[3] for b in inputs))
    rep.notes = [
        n
        for n in rep.notes
        if not n.startswith(("the model's own inputs already", "the step's input(s)"))
    ]
    rep.notes.append(
        _ORIGIN_NOTES["input"] + " (eager mode cannot tell this from a module that cleans its "
        "NaN input, nan_to_num, and makes a new NaN: mode='replay' can)"
    )
    if user is not None:
        rep.module, rep.module_type = user.name, type(user.module).__name__


def apply_stale_origin(
    rep: NonFiniteReport, stale: list[str], grads: dict[str, Tensor | None], explained: bool
) -> None:
    """Name the gradients that were non-finite before this step's backward (``stale``; ``grads``
    maps names to what the step left); when they explain every non-finite gradient
    (``explained``), they are the report's origin."""
    if not stale:
        return
    rep.stale_grads = list(stale)
    if explained:
        gs = [dense(g) for g in (grads.get(n) for n in stale) if g is not None]
        nan = any(bool(torch.isnan(g).any()) for g in gs)
        rep.origin, rep.phase = "stale_grad", "backward"
        rep.module = rep.module_type = rep.op = None
        rep.kind = kind_of(nan, not nan or any(bool(torch.isinf(g).any()) for g in gs))
        rep.candidates = []
    else:
        rep.notes.append(
            f"the .grad of {', '.join(map(repr, stale[:5]))} was already non-finite before "
            "this step's backward (stale: .grad accumulates; call optimizer.zero_grad())"
        )


class Localizer:
    """Replays one failing step of ``watch`` and builds its report."""

    def __init__(self, watch: NanWatch) -> None:
        self.w = watch
        self.replay_clean = False  # the (last) replay had a finite loss and finite gradients
        self.rec: Recorder | None = None  # the replay's recorder (calls per module)
        self.post_grads: dict[str, Tensor | None] = {}
        self.stale: list[str] = []  # gradients non-finite before the step and after it
        self.only_stale = False  # ... and no other gradient is non-finite
        self.bad_params: list[BadParam] = []
        self.bad_buffers: list[BadParam] = []
        self.bad_inputs: list[BadParam] = []
        self._param_ptrs: dict[int, str] = {}
        self._snapshots = 0
        self._notes: list[str] = []  # from the extra replays of the op-level refinement
        # buffers the step rebound to a new tensor (``self.ema = 0.9 * self.ema + ...``, not in
        # place): (owner module, key, pre-step tensor, post-step tensor)
        self._rebound: list[tuple[nn.Module, str, Tensor, Tensor]] = []

    def localize(self, st: StepState) -> NonFiniteReport:
        """Replay ``st`` and return its report; the user's post-step state is put back."""
        w = self.w
        assert st.loss is not None and st.rng is not None, "localize() needs a run step"
        post_rng = RngState()
        post_grads = [p.grad for p in w._params]
        self.post_grads = {n: g for (n, _), g in zip(w._named, post_grads, strict=True)}
        post_bufs = [(b, b.clone()) for b in w._buffers()]
        self._rebound = _rebound_buffers(w.model, w._all_buffers)
        post_objs = ObjectStates(w.scaler, w.stateful) if st.saved is not None else None
        post_attrs = ModuleAttrs(w.model)
        orig_loss = st.loss.detach().clone()
        all_bad = nonfinite_grads(w._named, limit=None)
        nonfinite = all_bad[:20]
        self.stale = [n for n in st.stale if n in set(all_bad)]
        self.only_stale = bool(self.stale) and set(all_bad) <= set(self.stale)
        # parameters are the step's own inputs: a replayable step does not change them, so what
        # they hold now is what they held before it
        self.bad_params = nonfinite_params(w._named)
        # buffers as they were before the step (the copies of those it changed), and the data
        self.bad_buffers = _nonfinite(_pre_step_buffers(w._all_buffers, st, self._rebound))
        self.bad_inputs = nonfinite_inputs(st.args, st.kwargs)
        self._param_ptrs = {}
        for n, p, *_ in self.bad_params + self.bad_buffers + self.bad_inputs:
            ptr = _storage_ptr(p)
            if ptr is not None:
                self._param_ptrs.setdefault(ptr, n)
        changed = [n for (n, p), v in zip(w._named, st.versions, strict=False) if p._version != v]
        rep: NonFiniteReport | None = None
        try:
            if changed:
                rep = report_from(_NO_FINDINGS, st.loss, st.index, "replay")
                rep.replayable = False
                rep.notes.append(
                    f"step_fn modified parameters in place ({', '.join(changed[:5])}); an "
                    "optimizer.step() inside step_fn makes the step impossible to replay; move it "
                    "after watch.run(...), or use NanWatch(model, mode='eager') (module level only, "
                    "and it reads the parameters after the step, so it cannot tell values the "
                    "optimizer step wrote into them from values they held before it)"
                )
            else:
                with eager_replay():  # compiled code runs as its original Python code here
                    rep = self._replay(st, orig_loss)
                if w.compiled:
                    rep.notes.insert(
                        0,
                        "replay was eager: the compiled model was re-run without compilation "
                        "(torch.compiler.set_stance('force_eager')) on its original modules; "
                        "module, op and line refer to that eager code",
                    )
            rep.nonfinite_grads = nonfinite
            return rep
        except NonFiniteError as exc:  # the replay raised: its report gets the notes below
            rep = exc.report
            raise
        finally:
            # the user's post-step state, put back whatever happened in the replays
            for p, g in zip(w._params, post_grads, strict=False):
                p.grad = g
            with torch.no_grad():
                for b, v in post_bufs:
                    b.copy_(v)
            for mod, key, _, post in self._rebound:  # the step's own new tensors, untouched
                mod._buffers[key] = post
            post_rng.restore()
            if post_objs is not None:
                post_objs.restore()
            notes = post_attrs.restore_and_describe()
            if rep is not None:
                rep.notes += notes

    def _reset_to_pre_step(self, st: StepState) -> None:
        for p in self.w._params:
            p.grad = None
        with torch.no_grad():
            for b, _, v in st.bufs:
                b.copy_(v)
        for mod, key, pre, _ in self._rebound:  # a replay rebinds them again, from pre
            mod._buffers[key] = pre
        if st.saved is not None:
            st.saved.restore()
        assert st.rng is not None
        st.rng.restore()

    def _replay(self, st: StepState, orig_loss: Tensor) -> NonFiniteReport:
        w = self.w
        notes: list[str] = []
        # replay 1: forward hooks + parameter-gradient hooks (cheap); replay 2, only for a
        # backward fault: full backward hooks on every module as well
        plan = [False, True] if w.backward_hooks else [False]
        for i, backward in enumerate(plan):
            self._reset_to_pre_step(st)
            rec = self.rec = Recorder(
                w.model, keep_refs=True, backward=backward, mutable=w._mutated_buffers
            )
            try:
                with HookSet() as hooks, quiet_hooks():
                    rec.install(hooks)
                    result = st.call()
            except Exception as exc:
                if backward:
                    notes.append(
                        f"replay with full backward hooks failed ({type(exc).__name__}: "
                        f"{str(exc)[:120]}); backward attribution by parameter gradients only"
                    )
                    break
                rep = NonFiniteReport(module=None, phase="forward", step=st.index, rank=rank())
                rep.replayable = False
                rep.loss = summarize(orig_loss)
                rep.notes = [*notes, f"the replay raised {type(exc).__name__}: {exc}"]
                raise NonFiniteError(rep) from exc
            loss = find_loss(result).detach()
            ev = rec.stacked()
            values = ev.tolist() if ev is not None else []
            # the gradients this replay left, kept: a failing replay 2 must not leave the
            # analysis of replay 1 with the cleared gradients of its own start
            found, kept = rec.analyze(values), (rec, loss, [p.grad for p in w._params])
            if math.isfinite(float(loss.float())) and found["fwd"]:
                found["fwd"] = self._reaching_grads(found["fwd"], notes)
            if found["fwd"] or not math.isfinite(float(loss.float())) or i == len(plan) - 1:
                break
            for p in w._params:
                p.grad = None
        rec, loss, grads = kept
        self.rec = rec
        for p, g in zip(w._params, grads, strict=True):
            p.grad = g
        rep = report_from(found, loss, st.index, mode="replay")
        rep.notes += notes
        same = torch.equal(loss, orig_loss) or (
            bool(torch.isnan(loss).all()) and bool(torch.isnan(orig_loss).all())
        )
        replay_grads_bad = bool(nonfinite_grads(w._named))
        self.replay_clean = math.isfinite(float(loss.float())) and not replay_grads_bad
        stale = self.stale
        if self.only_stale and self.replay_clean and same:
            # the step computed finite gradients (the replay, from grad=None, shows it); they
            # were added to gradients that were already non-finite
            rep.loss = summarize(orig_loss)
            apply_stale_origin(rep, stale, self.post_grads, explained=True)
            self.replay_clean = False  # this rank's own .grad was at fault (under DDP)
            return rep
        if self.replay_clean and self.w.compiled:
            rep.replayable = False
            rep.module = rep.module_type = None
            rep.candidates = []
            ol = float(orig_loss.float())
            rep.loss = summarize(orig_loss)  # what the compiled step made, not the replay's
            if not math.isfinite(ol):
                rep.kind = kind_of(math.isnan(ol), math.isinf(ol))
            rep.notes.append(
                f"not reproduced eagerly: the compiled step gave loss "
                f"{float(orig_loss.float())!r} and non-finite values, the eager replay of the same "
                f"step (same inputs, RNG, buffers) gave loss {float(loss.float())!r} and finite "
                "gradients: the compiled numerics differ from eager (fused kernels, "
                "lower-precision or reordered intermediates, compiled RNG); not pointing at a "
                "module. Compare with torch.compile(..., backend='aot_eager') or run eagerly"
            )
            return rep
        if st.unsaved:
            rep.notes.append(
                f"buffer(s) {', '.join(st.unsaved[:5])} changed for the first time in this step, "
                "so no copy of their pre-step values was kept: the replay started from their "
                "post-step values (they are copied from the next step on)"
            )
        if not same or self.replay_clean:
            rep.replayable = False
            ol = float(orig_loss.float())
            if self.replay_clean:  # nothing to show from the replay: describe the step itself
                rep.loss = summarize(orig_loss)
                if not math.isfinite(ol):
                    rep.kind, rep.phase = kind_of(math.isnan(ol), math.isinf(ol)), "forward"
            rep.notes.append(
                f"not replayable: the replay gave loss {float(loss.float())!r} and "
                f"{'non-finite' if replay_grads_bad else 'finite'} gradients where the step gave "
                f"loss {ol!r} and non-finite values; the step is "
                "non-deterministic (data, RNG outside torch, state kept between calls). A "
                "torch.Generator or random.Random the step draws from can be passed as "
                "NanWatch(..., stateful=[gen]); otherwise use NanWatch(model, mode='eager')"
            )
            if self.replay_clean and math.isfinite(ol):
                rep.notes.append(
                    "or a gradient was non-finite before the step began: .grad accumulates "
                    "(a missed zero_grad(), an earlier micro-batch), and the replay starts from "
                    "grad=None; check the gradients before calling watch.run"
                )
        self._refine(rep, found, float(loss.float()), st)
        apply_stale_origin(rep, stale, self.post_grads, explained=False)
        return rep

    @staticmethod
    def _reaching_grads(cands: list[Any], notes: list[str]) -> list[Any]:
        """With a finite loss the fault is in the gradients: a forward producer explains it only
        if its non-finite output is part of the autograd graph. One computed under no_grad or
        detached (a metric, a logged value, a target) cannot reach a gradient: it is set
        aside (noted) so that backward is looked at."""
        kept, dropped = [], []
        for c in cands:
            outs = [t for t in tensors_of(c[0].outputs) if t.is_floating_point() or t.is_complex()]
            bad = [t for t in outs if not bool(torch.isfinite(t.detach()).all())]
            (kept if not bad or any(t.requires_grad for t in bad) else dropped).append(c)
        names = list(dict.fromkeys(repr(c[0].name) for c in dropped))
        if dropped and not any(n.startswith(f"module(s) {names[0]} made") for n in notes):
            notes.append(
                f"module(s) {', '.join(names[:5])} made NaN/Inf in forward outside autograd "
                "(under no_grad, or detached): it cannot reach a gradient, so it is not the "
                "cause of the non-finite gradients (the loss is finite)"
            )
        return kept

    # -- op-level refinement --------------------------------------------------------------
    def _refine(
        self, rep: NonFiniteReport, found: dict[str, Any], loss_value: float, st: StepState
    ) -> None:
        _, cands = pick(found, loss_value)
        real = [] if cands and cands[0][1] == "grad_output" else cands
        earlier = None
        if real and rep.phase == "forward" and math.isinf(real[0][2]):
            earlier = self._before_inf_input(rep, real[0][0], st, loss_value)
            if earlier == "step":  # the whole-step pass found it, outside the model
                return
        if not real:  # produced outside every module: one op-level pass over the whole step
            res, finder, track = self._whole_step_pass(st, loss_value)
            self._apply_whole_step(rep, res, finder, track, st)
            return
        if isinstance(earlier, tuple):
            self._finish(rep, *earlier, st)
            return
        seen: set[str] = set()
        chosen: tuple[Call, str, dict[str, Any] | None] | None = None
        tried = 0
        for call, detail, _, _ in real:
            if call.name in seen or tried >= _MAX_OP_CANDIDATES:
                continue
            seen.add(call.name)
            tried += 1
            c, res = self._op_pass_calls(call, detail, rep.phase, st)
            if res is None or not res.get("constants"):
                chosen = (c, detail, res)
                break
            rep.notes.append(
                f"module {call.name!r} only writes constant -inf/NaN ({res['constants'][:2]}): "
                "treated as a mask, not as the producer"
            )
        if chosen is None:
            chosen = (real[0][0], real[0][1], None)
        self._finish(rep, *chosen, st)

    def _finish(
        self,
        rep: NonFiniteReport,
        call: Call,
        detail: str,
        res: dict[str, Any] | None,
        st: StepState,
    ) -> None:
        """Fill the report from the chosen producer call and its op pass."""
        rep.module, rep.module_type = call.name, type(call.module).__name__
        n_calls = self.rec.ncalls.get(id(call.module), 1) if self.rec is not None else 1
        if n_calls > 1:
            rep.call_index, rep.call_count = call.index, n_calls
            if not (res and res.get("op")) and rep.phase == "backward" and detail:
                rep.call_index = None
                rep.notes.append(
                    f"module {call.name!r} was called {n_calls} times in the step and its "
                    f"parameter gradient {detail!r} sums all calls; no single call's backward "
                    "reproduced the value alone"
                )
        if rep.candidates and rep.candidates[0] != call.name:
            if call.name in rep.candidates:
                rep.candidates.remove(call.name)
            rep.candidates.insert(0, call.name)
        _apply_op(rep, res)
        if rep.source is None and call.site is not None:
            rep.source = source_of(call.site)  # no op named: the line that called the module
        _describe(rep, call, detail, st.ctx, self.w.batch_dim, self._batch_size())
        apply_param_origin(
            rep, self.bad_params, call.module, res, buffers=self.bad_buffers, inputs=self.bad_inputs
        )
        rep.notes += self._notes

    def _before_inf_input(
        self, rep: NonFiniteReport, call: Call, st: StepState, loss_value: float
    ) -> tuple[Call, str, dict[str, Any] | None] | str | None:
        """The first forward producer made NaN of an *Inf* input: the Inf was made before it,
        and not by a module that completed earlier (that one would come first). So it was made
        by the code of a module still running when ``call`` began (the innermost one whose own
        inputs were finite), or outside the model. An op there that made it from finite values
        is the earlier producer (an overflow in the parent's code); an Inf that no op made
        (a ``-inf`` mask constant) leaves ``call`` as the producer, as the producer rule says.

        Returns ``(call, "", op pass result)`` of the earlier producer; ``"step"`` when the
        whole-step pass found it outside every module (the report is filled); None to keep
        ``call``."""
        anc = call.parent
        while anc is not None and not (anc.in_max is not None and math.isfinite(anc.in_max)):
            anc = anc.parent
        if anc is not None:
            c, res = self._op_pass_calls(anc, "", "forward", st)
            if res and res.get("op") and res.get("from_finite"):
                owner = f"module {c.name!r}'s" if c.name else "the root model's"
                self._notes.append(
                    f"module {call.name!r} completed first with a non-finite output, but only "
                    f"turned into NaN an Inf made earlier by {owner} own code (op {res['op']})"
                )
                return c, "", res
            return None
        res, finder, track = self._whole_step_pass(st, loss_value)
        if res and res.get("op") and res.get("from_finite") and res.get("module") is None:
            self._notes.append(
                f"module {call.name!r} completed first with a non-finite output, but only "
                f"turned into NaN an Inf made earlier by the step function's code (op {res['op']})"
            )
            rep.candidates = [c for c in rep.candidates if c != "<loss code>"]
            self._apply_whole_step(rep, res, finder, track, st)
            return "step"
        return None

    def _whole_step_pass(
        self, st: StepState, loss_value: float
    ) -> tuple[dict[str, Any] | None, OpFinder, _ModuleStack]:
        """One more replay of the whole step under the op finder, with the running module
        tracked. With a finite loss the fault is in backward: backward ops are checked, and
        the first forward op making NaN/Inf is kept in case the forward masked it."""
        self._reset_to_pre_step(st)
        finite = math.isfinite(loss_value)
        track = _ModuleStack(self.w.model)
        finder = OpFinder(
            backward_only=finite, record_forward=finite, params=self._param_ptrs, where=track.where
        )
        try:
            with HookSet() as hooks, recording_node_stacks(), finder:
                track.install(hooks)
                st.call()
        except Exception as exc:  # the analysis so far stands
            self._notes.append(
                f"the op pass over the whole step raised {type(exc).__name__}: {str(exc)[:120]}"
            )
            return None, finder, track
        return _found(finder), finder, track

    def _apply_whole_step(
        self,
        rep: NonFiniteReport,
        res: dict[str, Any] | None,
        finder: OpFinder,
        track: _ModuleStack,
        st: StepState,
    ) -> None:
        """The report of a value produced outside every module (or brought in by a parameter,
        buffer or step input): module None unless the op reading such a source ran in one."""
        rep.module = rep.module_type = None
        if res and res.get("op"):
            rep.phase = res["phase"]
        _apply_op(rep, res)
        if finder.constant_ops:
            rep.notes.append(f"mask-like constant ops skipped: {finder.constant_ops[:3]}")
        apply_param_origin(
            rep, self.bad_params, None, res, buffers=self.bad_buffers, inputs=self.bad_inputs
        )
        used = res.get("module") if res else None
        if used is not None:  # the op ran in a module (its input held NaN it then cleaned)
            rep.module, rep.module_type = used, type(track.mods[used]).__name__
            if rep.origin == "step" and rep.phase == "forward" and self.rec is not None:
                call = _call_with_bad_output(self.rec.calls_of.get(id(track.mods[used]), []))
                if call is not None:
                    _describe(rep, call, "", st.ctx, self.w.batch_dim, self._batch_size())
        if rep.origin == "input":
            name = res.get("param") if res else None
            t = next((b[1] for b in self.bad_inputs if b[0] == name), None)
            if t is not None:
                _bad_items(rep, t, st.ctx, self.w.batch_dim, self._batch_size())
        rep.notes += self._notes

    def _op_pass_calls(
        self, call: Call, detail: str, phase: str, st: StepState
    ) -> tuple[Call, dict[str, Any] | None]:
        """The op pass of a candidate. A parameter gradient of a module called several times
        (a shared module) sums all its calls, so each of them is tried, latest first, until
        one reproduces the value; any other candidate names its own call."""
        calls = [call]
        if phase == "backward" and detail and self.rec is not None:
            every = self.rec.calls_of.get(id(call.module), [])
            if len(every) > 1:
                calls = list(reversed(every))[:_MAX_OP_CANDIDATES]
        first: tuple[Call, dict[str, Any] | None] | None = None
        for c in calls:
            if changed_since_recorded(c) and not c.snapped and self._snapshots < _MAX_SNAPSHOTS:
                self._snapshot(st, c)
            res = _op_pass(c, phase, self._param_ptrs)
            if first is None:
                first = (c, res)
            if res is not None and (res.get("op") or res.get("leftover") or res.get("masked")):
                return c, res
        assert first is not None
        return first

    def _snapshot(self, st: StepState, call: Call) -> None:
        """One more replay of the step that copies ``call``'s inputs where the recorder saw
        them (before the module ran) and its outputs where it saw them, because the module or
        the rest of the step wrote into them in place afterwards (their summaries and the op
        pass need the values the module saw). Failure path only; the copies are of this one
        module call."""
        self._snapshots += 1
        self._reset_to_pre_step(st)
        order: list[int] = []
        count = [0]

        def pre(mod: nn.Module, args: Any, kwargs: Any) -> None:
            count[0] += 1
            order.append(count[0])
            if count[0] == call.index:
                call.snap_args, call.snap_kwargs = _copy(args), _copy(kwargs)

        def post(mod: nn.Module, args: Any, kwargs: Any, output: Any) -> None:
            k = order.pop() if order else None
            if k == call.index:
                call.snap_outputs = _copy(output)

        try:
            with HookSet() as hooks:
                hooks.add(
                    call.module.register_forward_pre_hook(pre, with_kwargs=True, prepend=True)
                )
                hooks.add(call.module.register_forward_hook(post, with_kwargs=True))
                st.call()
        except Exception as exc:  # the summaries fall back to the values written in place
            call.snap_args = call.snap_kwargs = call.snap_outputs = None
            self._notes.append(
                f"could not copy the inputs of {call.name!r} (written in place) in an extra "
                f"replay: {type(exc).__name__}: {str(exc)[:120]}"
            )
            return
        call.snapped = call.snap_args is not None and call.snap_outputs is not None

    def _batch_size(self) -> int | None:
        """The batch size: the batch axis of the model's first input with one."""
        if self.rec is None:
            return None
        calls = self.rec.calls_of.get(id(self.w.model)) or []
        if not calls:
            return None
        bd = self.w.batch_dim
        for t in tensors_of((calls[0].args, calls[0].kwargs)):
            if t.dim() > bd:
                return int(t.shape[bd])
        return None


class _ModuleStack:
    """Which module is running (forward), for the whole-step op pass: pre/post hooks on every
    module keep a stack of their names (failure path only, removed with the pass's HookSet)."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.names: list[str] = []
        self.mods: dict[str, nn.Module] = {}

    def install(self, hooks: HookSet) -> None:
        for name, mod in self.model.named_modules():
            if is_compile_wrapper(mod):
                continue
            name = clean_name(name)
            self.mods[name] = mod
            hooks.add(mod.register_forward_pre_hook(self._pre(name), prepend=True))
            hooks.add(mod.register_forward_hook(self._post(name), always_call=True))

    def _pre(self, name: str):
        def hook(mod: nn.Module, args: Any) -> None:
            self.names.append(name)

        return hook

    def _post(self, name: str):
        def hook(mod: nn.Module, args: Any, output: Any) -> None:
            for i in range(len(self.names) - 1, -1, -1):
                if self.names[i] == name:
                    del self.names[i:]
                    return

        return hook

    def where(self) -> str | None:
        return self.names[-1] if self.names else None


def _call_with_bad_output(calls: list[Call]) -> Call | None:
    """The first of a module's recorded calls whose output holds NaN/Inf."""
    for c in calls:
        if any(
            (t.is_floating_point() or t.is_complex()) and not bool(torch.isfinite(t).all())
            for t in tensors_of(c.outputs)
        ):
            return c
    return None


def _storage_ptr(t: Tensor) -> int | None:
    try:
        return t.untyped_storage().data_ptr()
    except Exception:  # sparse, nested, tensor subclasses without a plain storage
        return None


def _pre_step_buffers(
    buffers: list[tuple[str, Tensor]],
    st: StepState,
    rebound: list[tuple[nn.Module, str, Tensor, Tensor]],
) -> list[tuple[str, Tensor, Tensor]]:
    """``(name, buffer, its value before the step)``: the step's copy for a buffer it changed,
    the buffer itself otherwise (a rebound buffer's pre-step tensor is untouched)."""
    copies = {id(b): v for b, _, v in st.bufs}
    unsaved = set(st.unsaved)  # first changed in this step, no copy: its pre-step value is lost
    return [(n, b, copies.get(id(b), b)) for n, b in buffers if n not in unsaved]


def _rebound_buffers(
    model: nn.Module, pre: list[tuple[str, Tensor]]
) -> list[tuple[nn.Module, str, Tensor, Tensor]]:
    """Buffers that the step rebound to a new tensor (an assignment such as ``self.ema =
    0.9 * self.ema + ...``, not an in-place write): ``pre`` lists the buffers the step started
    with. Their pre-step tensors are untouched by the rebinding, so a replay starts from them;
    the post-step tensors are put back at the end (failure path only)."""
    before = dict(pre)
    out = []
    for mname, mod in model.named_modules(remove_duplicate=False):
        for key, cur in mod._buffers.items():
            old = before.get(clean_name(f"{mname}.{key}" if mname else key))
            if old is not None and cur is not None and cur is not old:
                out.append((mod, key, old, cur))
    return out


def _apply_op(rep: NonFiniteReport, res: dict[str, Any] | None) -> None:
    """Copy an op pass's finding into the report."""
    if not res:
        return
    if res.get("op"):
        rep.op = res["op"]
        rep.kind = res["kind"]
        rep.op_inputs, rep.op_outputs = res["inputs"], res["outputs"]
        rep.source = res["source"]
        if res.get("uninit"):
            rep.uninitialized = res["uninit"]
            rep.notes.append(_uninit_note(res["uninit"], f"op {res['op']} read it"))
    elif res.get("masked"):
        m = res["masked"]
        rep.masked_forward = {"op": m["op"], "source": m["source"]}
        rep.kind = m["kind"]
        rep.op_inputs, rep.op_outputs = m["inputs"], m["outputs"]
        rep.source = m["source"]
        rep.notes.append(
            f"op {m['op']} made NaN/Inf in forward that the forward then masked "
            "(torch.where, masked_fill, indexing), so the loss stayed finite; but backward "
            "multiplies the masked branch's zero gradient by the op's derivative there "
            "(0 * NaN = NaN, 0 * inf = NaN). Make the masked-out inputs safe before the op: "
            "torch.where(h > 0, h, 1).sqrt(), not torch.where(h > 0, h.sqrt(), 0)"
        )
    elif res.get("leftover"):
        rep.uninitialized = res["leftover"]
        rep.source = res["leftover"].get("source")
        rep.notes.append(_uninit_note(res["leftover"], "it was never (fully) written"))
    elif res.get("unknown"):
        rep.notes.append(res["unknown"])
    if res.get("mismatch"):
        rep.notes.append(res["mismatch"])


def _uninit_note(alloc: dict[str, Any], how: str) -> str:
    src = alloc.get("source") or {}
    at = f" at {src.get('file')}:{src.get('line')}" if src else ""
    return (
        f"the non-finite values come from uninitialised memory allocated by {alloc['op']}{at}: "
        f"{how} before every element was written. empty()/new_empty()/empty_like() leave "
        "memory as it was; use zeros()/full() or write every element"
    )


def _copy(obj: Any) -> Any:
    """``obj`` with every tensor replaced by a detached copy."""
    return tree_map(lambda x: x.detach().clone() if isinstance(x, Tensor) else x, obj)


def _stand_ins(orig: Any, snap: Any) -> Any:
    """Fresh copies of the snapshot ``snap`` of ``orig`` with ``orig``'s autograd standing: a
    tensor that required grad requires it again, a non-leaf is a non-leaf (so an in-place write
    into it is allowed as it was in the step)."""
    leaves_o, _ = tree_flatten(orig)
    leaves_s, spec = tree_flatten(snap)
    out = []
    for o, x in zip(leaves_o, leaves_s, strict=False):
        if isinstance(x, Tensor):
            x = x.clone()
            if (
                isinstance(o, Tensor)
                and o.requires_grad
                and (x.is_floating_point() or x.is_complex())
            ):
                x.requires_grad_(True)
                if not o.is_leaf:
                    with torch.enable_grad():
                        x = x.clone()
        out.append(x)
    return tree_unflatten(out, spec)


def _call_as_recorded(module: nn.Module, args: Any, kwargs: Any) -> Any:
    """Call ``module`` from the point where the recorder took its inputs: the recorder's
    pre-hook is the module's first, so the module's own pre-hooks (a user's included) run here
    once, as in a normal call; global forward pre-hooks (``register_module_forward_pre_hook``)
    had already run before it, so they are left out of this call (not of its submodules')."""
    glob = _torch_module._global_forward_pre_hooks
    if not glob:
        return module(*args, **kwargs)
    saved = dict(glob)

    def restore(*_: Any) -> None:
        if not glob:
            glob.update(saved)  # the call's own hook list is already taken

    handle = module.register_forward_pre_hook(restore, prepend=True)
    glob.clear()
    try:
        return module(*args, **kwargs)
    finally:
        handle.remove()
        if not glob:
            glob.update(saved)


def _same_values(a: Any, b: Any) -> bool:
    """Bit-identical tensors in two outputs (NaN equals NaN)."""
    ta, tb = tensors_of(a), tensors_of(b)
    if len(ta) != len(tb):
        return False
    for x, y in zip(ta, tb, strict=True):
        if x.shape != y.shape or x.dtype != y.dtype:
            return False
        x, y = x.detach(), y.detach()
        if x.is_floating_point() or x.is_complex():
            nx, ny = x.isnan(), y.isnan()
            if not torch.equal(nx, ny) or not torch.equal(
                x.masked_fill(nx, 0), y.masked_fill(ny, 0)
            ):
                return False
        elif not torch.equal(x, y):
            return False
    return True


def _autocast(call: Call) -> contextlib.ExitStack:
    """The autocast regions the module ran in during the step (``torch.autocast`` blocks of the
    step function), entered again for its op pass."""
    stack = contextlib.ExitStack()
    for device, dtype in call.autocast:
        stack.enter_context(torch.autocast(device, dtype=dtype))
    return stack


def _op_pass(call: Call, phase: str, params: dict[int, str] | None = None) -> dict[str, Any] | None:
    """Re-run one module call under the op finder (forward, or its backward), in the grad mode
    and autocast regions it ran in."""
    if call.args is None or call.rng is None:
        return None
    saved = RngState()
    mismatch = None
    bufs_now = [(b, b.detach().clone()) for b, _ in call.buffers or ()]
    try:
        call.rng.restore()
        with torch.no_grad():  # buffers the step writes in place, as they were at the call
            for b, v in call.buffers or ():
                b.copy_(v)
        if call.snapped:  # inputs written in place after the recorder saw them: the copies
            args, kwargs = (
                _stand_ins(call.args, call.snap_args),
                _stand_ins(call.kwargs, call.snap_kwargs),
            )
        else:
            args, kwargs = call.args, call.kwargs
        if phase == "forward":
            finder = OpFinder(stop=_op_pass.__code__, site=call.site, params=params)
            with torch.set_grad_enabled(call.grad_enabled), _autocast(call), finder:
                out = _call_as_recorded(call.module, args, kwargs)
            ref = call.snap_outputs if call.snapped else call.outputs
            if (call.snapped or not changed_since_recorded(call)) and not _same_values(out, ref):
                mismatch = (
                    f"the op pass re-ran module {call.name!r} alone and got other values than "
                    "the step's call (state kept between calls, or a non-deterministic kernel); "
                    "the op named may not be the step's"
                )
        else:
            gout = call.grad_output
            if gout is None:
                return {"unknown": "backward op unknown: no grad_output was captured"}
            leaves: list[Tensor] = []
            fwd_args = []
            with torch.enable_grad():
                for a in args:
                    if isinstance(a, Tensor) and a.requires_grad:
                        leaf = a.detach().requires_grad_(True)
                        leaves.append(leaf)
                        # a non-leaf input stays one: an in-place write into it is allowed
                        fwd_args.append(leaf if a.is_leaf else leaf.clone())
                    else:
                        fwd_args.append(a)
            # the forward re-run is watched too: a NaN/Inf it makes and masks (torch.where)
            # reaches the gradient, with no backward op producing it from finite values
            finder = OpFinder(
                backward_only=True,
                record_forward=True,
                stop=_op_pass.__code__,
                site=call.site,
                params=params,
            )
            with finder:
                with torch.enable_grad(), recording_node_stacks(), _autocast(call):
                    out = _call_as_recorded(call.module, tuple(fwd_args), kwargs)
                outs = list(tensors_of(out))
                pairs = [
                    (o, g)
                    for o, g in zip(outs, gout, strict=False)
                    if g is not None and o.requires_grad
                ]
                wrt = leaves + [p for p in call.module.parameters() if p.requires_grad]
                if pairs and wrt:
                    torch.autograd.grad(
                        [o for o, _ in pairs], wrt, [g for _, g in pairs], allow_unused=True
                    )
    except Exception as exc:
        return {"unknown": f"op pass failed: {type(exc).__name__}: {str(exc)[:120]}"}
    finally:
        saved.restore()
        with torch.no_grad():
            for b, v in bufs_now:
                b.copy_(v)
    res = _found(finder)
    if res is None:
        if finder.constant_ops:
            return {"constants": finder.constant_ops}
        res = {
            "unknown": "the op pass over the module alone did not reproduce the value "
            "(the value depends on other calls, or on state the module keeps)"
        }
    if mismatch is not None:
        res = {**res, "mismatch": mismatch}
    return res


def _found(finder: Any) -> dict | None:
    """What an op pass found: the producing op, else uninitialised memory left unwritten
    (``leftover``), else a NaN masked in forward that reached the gradient (``masked``)."""
    res = finder.result()
    if res is not None:
        return res
    left = finder.leftover()
    if left is not None:
        return {"leftover": left}
    if finder.fwd_found is not None:
        return {"masked": finder.fwd_found}
    return None


def _describe(
    rep: NonFiniteReport,
    call: Call,
    detail: str,
    ctx: dict[str, Tensor],
    batch_dim: int,
    batch_size: int | None = None,
) -> None:
    """Summaries, bad batch items, padding and t of the producer.

    Bad items are read off activations only (a forward output, a gradient w.r.t. a module
    input): a parameter's gradient has no batch axis (it sums over the batch)."""
    if rep.phase == "forward":
        if call.snapped:  # written in place after the recorder saw them: the copies
            ins = list(tensors_of((call.snap_args, call.snap_kwargs)))
            outs = list(tensors_of(call.snap_outputs))
        else:
            ins = list(tensors_of((call.args, call.kwargs)))
            outs = list(tensors_of(call.outputs))
        acts = outs
    else:
        ins = [g for g in (call.grad_output or ()) if isinstance(g, Tensor)]
        outs = [g for g in (call.grad_input or ()) if isinstance(g, Tensor)]
        acts = list(outs)  # gradients w.r.t. activations
        if detail:
            p = dict(call.module.named_parameters()).get(detail.rsplit(".", 1)[-1])
            if p is not None and p.grad is not None:
                outs = [*outs, p.grad]
    rep.inputs = [summarize(t) for t in ins[:8]]
    rep.outputs = [summarize(t) for t in outs[:8]]
    params = {id(p) for p in call.module.parameters()}
    bad = next(
        (
            t
            for t in acts
            if (t.is_floating_point() or t.is_complex())
            and not t.is_sparse
            and id(t) not in params
            and not bool(torch.isfinite(t).all())
        ),
        None,
    )
    if bad is not None:
        _bad_items(rep, bad, ctx, batch_dim, batch_size)


def _bad_items(
    rep: NonFiniteReport,
    bad: Tensor,
    ctx: dict[str, Tensor],
    batch_dim: int,
    batch_size: int | None,
) -> None:
    """``bad_items`` (and ``bad_t``, ``in_padding_only``) of a non-finite activation ``bad``."""
    mask = ctx.get("padding_mask")
    valid = ~mask if mask is not None else ctx.get("valid_mask")
    t = ctx.get("t")
    B = valid.shape[0] if valid is not None else (t.shape[0] if t is not None else batch_size)
    nf = ~torch.isfinite(bad)
    b_ax = batch_dim if bad.dim() > batch_dim else None
    if B is not None and (b_ax is None or bad.shape[b_ax] != B):
        b_ax = next((i for i, s in enumerate(bad.shape) if s == B), None)
    if b_ax is None:
        return
    per_item = nf.movedim(b_ax, 0).reshape(bad.shape[b_ax], -1).any(1)  # (B,)
    rep.bad_items = per_item.nonzero().flatten().tolist()
    if t is not None and t.numel() == bad.shape[b_ax]:
        tv = t.detach().reshape(-1).float().tolist()
        rep.bad_t = {i: tv[i] for i in rep.bad_items}
    if valid is not None and bad.shape[b_ax] == valid.shape[0]:
        T = valid.shape[1]
        t_ax = next((i for i, s in enumerate(bad.shape) if s == T and i != b_ax), None)
        if t_ax is not None:
            bt = nf.movedim((b_ax, t_ax), (0, 1)).reshape(bad.shape[b_ax], T, -1).any(2)  # (B, T)
            rep.in_padding_only = not bool((bt & valid.to(bt.device)).any())
