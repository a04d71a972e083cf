"""Localization of a failing step: replay it with hooks, pick the producer, name its op.

Replay 1 runs the step again (same RNG, buffers, fresh gradients) with forward hooks on every
module and tensor hooks on every parameter; replay 2, only for a backward fault, adds full
backward hooks. The producing module's call is then re-run alone under the op finder.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from .._hooks import HookSet, tensors_in
from .._summary import summarize
from ._compiled import eager_replay
from ._numerics import RngState, dense, find_loss, grads_l2, kind_of, pick, quiet_hooks, rank
from ._opfinder import OpFinder
from ._recorder import Call, Recorder
from ._sidestate import ModuleAttrs, ObjectStates
from ._source import recording_node_stacks
from ._state import StepState
from ._types import NonFiniteError, NonFiniteReport

if TYPE_CHECKING:
    from ._watch import NanWatch

__all__ = ["Localizer", "report_from"]

_MAX_OP_CANDIDATES = 8
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


class Localizer:
    """Replays one failing step of ``watch`` and builds its report."""

    def __init__(self, watch: NanWatch) -> None:
        self.w = watch
        self.replay_clean = False  # the (last) replay had a finite loss and finite gradients

    def localize(self, st: StepState) -> NonFiniteReport:
        """Replay ``st`` and return its report; the user's post-step state is put back."""
        w = self.w
        assert st.loss is not None and st.rng is not None, "localize() needs a run step"
        post_rng = RngState()
        post_grads = [p.grad for p in w._params]
        post_bufs = [(b, b.clone()) for b in w._buffers()]
        post_objs = ObjectStates(w.scaler, w.stateful) if st.saved is not None else None
        post_attrs = ModuleAttrs(w.model)
        orig_loss = st.loss.detach().clone()
        nonfinite = nonfinite_grads(w._named)
        changed = [n for (n, p), v in zip(w._named, st.versions, strict=False) if p._version != v]
        rep: NonFiniteReport | None = None
        try:
            if changed:
                rep = report_from(_NO_FINDINGS, st.loss, st.index, "replay")
                rep.replayable = False
                rep.notes.append(
                    f"step_fn modified parameters in place ({', '.join(changed[:5])}); an "
                    "optimizer.step() inside step_fn makes the step impossible to replay; move it "
                    "after watch.run(...) or use NanWatch(model, mode='eager')"
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
            rec = Recorder(w.model, keep_refs=True, backward=backward)
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
            found, kept = rec.analyze(values), (rec, loss)
            if found["fwd"] or not math.isfinite(float(loss.float())) or i == len(plan) - 1:
                break
            for p in w._params:
                p.grad = None
        rec, loss = kept
        rep = report_from(found, loss, st.index, mode="replay")
        rep.notes += notes
        same = torch.equal(loss, orig_loss) or (
            bool(torch.isnan(loss).all()) and bool(torch.isnan(orig_loss).all())
        )
        replay_grads_bad = bool(nonfinite_grads(w._named))
        self.replay_clean = math.isfinite(float(loss.float())) and not replay_grads_bad
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
                "non-deterministic (data, RNG outside torch, state kept between calls). Use "
                "NanWatch(model, mode='eager') for such steps"
            )
            if self.replay_clean and math.isfinite(ol):
                rep.notes.append(
                    "or a gradient was non-finite before the step began: .grad accumulates "
                    "(a missed zero_grad(), an earlier micro-batch), and the replay starts from "
                    "grad=None; check the gradients before calling watch.run"
                )
        self._refine(rep, found, float(loss.float()), st)
        return rep

    # -- op-level refinement --------------------------------------------------------------
    def _refine(
        self, rep: NonFiniteReport, found: dict[str, Any], loss_value: float, st: StepState
    ) -> None:
        _, cands = pick(found, loss_value)
        real = [] if cands and cands[0][1] == "grad_output" else cands
        if not real:  # produced outside every module: one op-level pass over the whole step
            self._reset_to_pre_step(st)
            finder = OpFinder()
            with recording_node_stacks(), finder:
                st.call()
            if finder.found:
                rep.op = finder.found["op"]
                rep.phase = finder.found["phase"]
                rep.kind = finder.found["kind"]
                rep.op_inputs = finder.found["inputs"]
                rep.op_outputs = finder.found["outputs"]
                rep.source = finder.found["source"]
            if finder.constant_ops:
                rep.notes.append(f"mask-like constant ops skipped: {finder.constant_ops[:3]}")
            return
        seen: set[str] = set()
        chosen = None
        tried = 0
        for call, detail, _, _ in real:
            if call.name in seen or tried >= _MAX_OP_CANDIDATES:
                continue
            seen.add(call.name)
            tried += 1
            res = _op_pass(call, rep.phase)
            if res is None or res.get("op") or res.get("unknown"):
                chosen = (call, detail, res)
                break
            rep.notes.append(
                f"module {call.name!r} only writes constant -inf/NaN ({res['constants'][:2]}): "
                "treated as a mask, not as the producer"
            )
        if chosen is None:
            call, detail, res = real[0][0], real[0][1], None
        else:
            call, detail, res = chosen
        rep.module, rep.module_type = call.name, type(call.module).__name__
        if rep.candidates and rep.candidates[0] != call.name:
            if call.name in rep.candidates:
                rep.candidates.remove(call.name)
            rep.candidates.insert(0, call.name)
        if res and res.get("op"):
            rep.op = res["op"]
            rep.kind = res["kind"]
            rep.op_inputs, rep.op_outputs = res["inputs"], res["outputs"]
            rep.source = res["source"]
        elif res and res.get("unknown"):
            rep.notes.append(res["unknown"])
        _describe(rep, call, detail, st.ctx, self.w.batch_dim)


def _op_pass(call: Call, phase: str) -> dict[str, Any] | None:
    """Re-run one module call under the op finder (forward, or its backward)."""
    if call.args is None or call.rng is None:
        return None
    saved = RngState()
    try:
        call.rng.restore()
        if phase == "forward":
            finder = OpFinder()
            with torch.set_grad_enabled(call.grad_enabled), finder:
                call.module(*call.args, **call.kwargs)
        else:
            gout = call.grad_output
            if gout is None:
                return {"unknown": "backward op unknown: no grad_output was captured"}
            args = tuple(
                a.detach().requires_grad_(a.requires_grad) if isinstance(a, Tensor) else a
                for a in call.args
            )
            with torch.enable_grad(), recording_node_stacks():
                out = call.module(*args, **call.kwargs)
            outs = list(tensors_in(out))
            pairs = [
                (o, g)
                for o, g in zip(outs, gout, strict=False)
                if g is not None and o.requires_grad
            ]
            wrt = [a for a in args if isinstance(a, Tensor) and a.requires_grad]
            wrt += [p for p in call.module.parameters() if p.requires_grad]
            finder = OpFinder(backward_only=True)
            if pairs and wrt:
                with finder:
                    torch.autograd.grad(
                        [o for o, _ in pairs], wrt, [g for _, g in pairs], allow_unused=True
                    )
    except Exception as exc:
        return {"unknown": f"op pass failed: {type(exc).__name__}: {str(exc)[:120]}"}
    finally:
        saved.restore()
    if finder.found:
        return finder.found
    if finder.constant_ops:
        return {"constants": finder.constant_ops}
    return {
        "unknown": "the op pass over the module alone did not reproduce the value "
        "(inputs modified in place, or the value depends on other calls)"
    }


def _describe(
    rep: NonFiniteReport, call: Call, detail: str, ctx: dict[str, Tensor], batch_dim: int
) -> None:
    """Summaries, bad batch items, padding and t of the producer."""
    if rep.phase == "forward":
        ins = list(tensors_in((call.args, call.kwargs)))
        outs = list(tensors_in(call.outputs))
    else:
        ins = [g for g in (call.grad_output or ()) if isinstance(g, Tensor)]
        outs = [g for g in (call.grad_input or ()) if isinstance(g, Tensor)]
        if detail:
            p = dict(call.module.named_parameters()).get(detail.rsplit(".", 1)[-1])
            if p is not None and p.grad is not None:
                outs = [*outs, p.grad]
    rep.inputs = [summarize(t) for t in ins[:8]]
    rep.outputs = [summarize(t) for t in outs[:8]]
    bad = next(
        (
            t
            for t in outs
            if (t.is_floating_point() or t.is_complex()) and not bool(torch.isfinite(t).all())
        ),
        None,
    )
    if bad is None:
        return
    mask = ctx.get("padding_mask")
    valid = ~mask if mask is not None else ctx.get("valid_mask")
    t = ctx.get("t")
    B = valid.shape[0] if valid is not None else (t.shape[0] if t is not None else None)
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
