"""GradFlow: where does the gradient go? Per-parameter and per-module norms in one fused pass.

``GradFlow(model).record()`` after ``backward()`` computes every parameter's gradient L2 norm with
``torch._foreach_norm`` (one kernel per device/dtype group) and reads them with one host sync.
Module norms are aggregated on the host (``sqrt(sum of squared parameter norms)`` over the
module's subtree). ``report.share("noise_encoder")`` answers seed 002's question: which fraction
of the squared gradient norm reaches that submodule (0.0 when its output was detached).

Under DDP (``GradFlow(ddp_model)``) a communication hook wrapping the all-reduce records each
parameter's *local* (pre-reduction) gradient norm; ``record()`` reports them beside the reduced
norms it reads from ``.grad`` (see ``docs/DDP.md``).
"""

from __future__ import annotations

import difflib
import math
import operator
import statistics
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from operator import attrgetter
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from contracts import TorchdxError

from . import _distributed as _dd
from ._monitor_grads import update_directions
from ._structure import structure_version

__all__ = ["GradFlow", "GradFlowError", "GradFlowReport"]

_GRAD = attrgetter("grad")
_IS_SPARSE = attrgetter("is_sparse")
_REQUIRES_GRAD = attrgetter("requires_grad")
_ORIG = "_orig_mod"  # the attribute torch.compile's wrapper keeps the original module under


def _unwrap(model: Any) -> tuple[Any, Any]:
    """``(the user's module, the DDP wrapper or None)`` behind ``torch.compile``,
    ``DistributedDataParallel`` and ``DataParallel`` wrappers, in any nesting."""
    ddp = None
    while True:
        if _dd._is_ddp(model):
            ddp, model = model, model.module
        elif isinstance(model, nn.DataParallel):
            model = model.module
        elif isinstance(getattr(model, _ORIG, None), nn.Module) and _ORIG in model._modules:
            model = model._modules[_ORIG]
        else:
            return model, ddp


def _clean(name: str) -> str:
    """A parameter or module path without the ``_orig_mod`` segments of compiled submodules
    (``enc._orig_mod.0.weight`` -> ``enc.0.weight``): the names of the user's model."""
    return name if _ORIG not in name else ".".join(p for p in name.split(".") if p != _ORIG)


class GradFlowError(TorchdxError, ValueError):
    """GradFlow was misused (no parameters, unknown prefix, bad option)."""

    __module__ = "diagnostics"


def _frozen_modules(model: nn.Module) -> list[str]:
    """The largest submodules whose own layers hold weights and are all frozen.

    A module counts when it owns a weight-bearing layer (linear, convolution, attention, norm
    ...: any parameter-holding module other than an embedding table) and none of its parameters
    requires a gradient. Only the outermost such module is named.
    """
    frozen: list[str] = []
    for name, mod in model.named_modules():
        if not name or any(name.startswith(f + ".") for f in frozen):
            continue
        params = list(mod.parameters())
        if not params or any(p.requires_grad for p in params):
            continue
        layers = [
            m
            for m in mod.modules()
            if any(True for _ in m.parameters(recurse=False)) and not isinstance(m, nn.Embedding)
        ]
        if layers:
            frozen.append(name)
    return [
        f"{_clean(n)} ({sum(p.numel() for p in model.get_submodule(n).parameters()):,} parameters)"
        for n in frozen
    ]


@dataclass
class GradFlowReport:
    """Gradient norms of one step.

    Attributes:
        step: index of the record (0-based).
        total_norm: L2 norm over all gradients (unscaled when a GradScaler was given).
        param_norms: ``{parameter name: L2 norm of its gradient}`` (params with a gradient).
        module_norms: ``{module path: L2 norm over its subtree}``; ``""`` is the root.
        unused: trainable parameters whose ``.grad`` is None (no gradient reached them).
            A parameter frozen since GradFlow was built is frozen, not read, even when it
            still holds a stale ``.grad``.
        zero: parameters whose gradient is all zeros.
        nonfinite: parameters whose gradient norm is NaN/Inf.
        frozen: modules whose weights are all frozen (``requires_grad=False``) while the rest
            of the model trains, as ``"path (N parameters)"``: a fine-tuning recipe's intent, or
            a ``requires_grad_(False)`` left over by mistake (no gradient will ever reach them).
            A module whose only parameters are ``nn.Embedding`` tables (often frozen on
            purpose) is not listed; a table held as a plain ``nn.Parameter`` is. Buffers are
            not parameters and never listed.
        exploding / vanishing: the total norm is > ``factor`` x / < 1/``factor`` x the median of
            the history window (exploding also when non-finite).
        exploding_modules / vanishing_modules: the same test per module against its own history.
        update_ratios: ``{parameter: estimated |update| / |weight|}`` when an optimizer was given
            (``lr * |g / (sqrt(v_hat) + eps)|`` when the optimizer keeps Adam's ``exp_avg_sq``,
            ``v_hat`` bias-corrected as Adam does; the exact next step of RMSprop, Adagrad and
            SGD with momentum or weight decay; ``lr * |g|`` otherwise: plain SGD, Adam before
            its first step, optimizers it does not know), of the unscaled gradients under a
            GradScaler; else None.
        scale: the GradScaler scale the norms were divided by (None without a scaler).
        overflow: non-finite gradients under an enabled GradScaler (the scaler skips the step).
        rank: torch.distributed rank (None outside it).
        local_param_norms / local_module_norms / local_total_norm: under DDP, the same norms of
            this rank's own gradients *before* DDP's all-reduce (captured by a comm hook); the
            plain fields hold the reduced (averaged) gradients every rank steps with. None
            without DDP.
        rank_total_norms: ``record(gather=True)``: every rank's local total norm, by rank.
        ddp_unused: ``record(output=...)``: trainable parameters the output does not depend on
            on this rank, named as DDP names them: the ones that need
            ``find_unused_parameters=True``.
    """

    step: int
    total_norm: float
    param_norms: dict[str, float]
    module_norms: dict[str, float]
    unused: list[str] = field(default_factory=list)
    zero: list[str] = field(default_factory=list)
    nonfinite: list[str] = field(default_factory=list)
    frozen: list[str] = field(default_factory=list)
    exploding: bool = False
    vanishing: bool = False
    update_ratios: dict[str, float] | None = None
    scale: float | None = None
    overflow: bool = False
    rank: int | None = None
    local_param_norms: dict[str, float] | None = None
    local_module_norms: dict[str, float] | None = None
    local_total_norm: float | None = None
    rank_total_norms: list[float] | None = None
    ddp_unused: list[str] | None = None

    def share(self, prefix: str) -> float:
        """Fraction of the squared gradient norm held by the submodule (or parameter) ``prefix``.

        Shares of disjoint submodules add up to at most 1; ``share("")`` is 1 (0 when there is
        no gradient at all).

        Example:
            >>> rep.share("noise_encoder")  # 0.0: no gradient reaches the noise encoder
        """
        total = self.total_norm**2
        if prefix == "":
            return 1.0 if total > 0 else 0.0
        if prefix in self.module_norms and not self._tied:
            sub = self.module_norms[prefix] ** 2
        else:  # by parameter: frozen ones count 0, a tied one under each of its names
            known = self._known or dict.fromkeys(self._all_names)
            under = [k for k in known if k == prefix or k.startswith(prefix + ".")]
            if not under:
                paths = {k.rsplit(".", 1)[0] for k in known if "." in k} | set(known)
                near = difflib.get_close_matches(prefix, sorted(paths), n=3)
                tops = sorted({k.split(".")[0] for k in known})
                raise GradFlowError(
                    f"GradFlowReport.share(prefix={prefix!r}): no parameter of the model is under "
                    "that prefix; "
                    + (f"did you mean {', '.join(map(repr, near))}? " if near else "")
                    + f"top-level names: {', '.join(tops[:12])}"
                )
            names = {known[k] or "" for k in under} - {""}
            sub = sum(self.param_norms.get(n, 0.0) ** 2 for n in names)
        if total == 0 or not math.isfinite(total):
            return 0.0 if total == 0 else math.nan
        return sub / total

    _all_names: list[str] = field(default_factory=list, repr=False)
    # every name a parameter is known by -> the name its norm is under (None: frozen); and
    # whether some parameter is tied (known by a name its norm is not under)
    _known: dict[str, str | None] | None = field(default=None, repr=False)
    _tied: bool = field(default=False, repr=False)
    # (module norms now, the history rows, factor, module names): the module flags are computed
    # on first read; most training loops read only the total's flags
    _module_history: tuple | None = field(default=None, repr=False)
    _module_flags: tuple[list[str], list[str]] | None = field(default=None, repr=False)

    @property
    def exploding_modules(self) -> list[str]:
        """Modules whose norm is > ``factor`` x the median of their own history window."""
        return self._flags_by_module()[0]

    @property
    def vanishing_modules(self) -> list[str]:
        """Modules whose norm is < 1/``factor`` x the median of their own history window."""
        return self._flags_by_module()[1]

    def _flags_by_module(self) -> tuple[list[str], list[str]]:
        if self._module_flags is None:
            up: list[str] = []
            down: list[str] = []
            if self._module_history is not None:
                now, rows, factor, names = self._module_history
                med = np.median(np.array(rows), axis=0)
                for name, v, m in zip(names, now, med.tolist(), strict=True):
                    if m > 0 and v > factor * m:
                        up.append(name)
                    elif m > 0 and v < m / factor:
                        down.append(name)
            self._module_flags = (up, down)
        return self._module_flags

    def __str__(self) -> str:
        lines = [f"GradFlow step {self.step}: total |g| = {self.total_norm:.4g}"]
        flags = [n for n, f in (("EXPLODING", self.exploding), ("VANISHING", self.vanishing)) if f]
        if self.overflow:
            flags.append("SCALER OVERFLOW (step will be skipped)")
        if flags:
            lines[0] += "  " + " ".join(flags)
        if self.local_total_norm is not None:
            lines.append(
                f"  rank {self.rank}: local (pre-all-reduce) |g| = {self.local_total_norm:.4g}"
            )
        if self.rank_total_norms is not None:
            lines.append(
                "  local |g| by rank: " + ", ".join(f"{v:.4g}" for v in self.rank_total_norms)
            )
        depth1 = {k: v for k, v in self.module_norms.items() if k and "." not in k}
        for k, v in depth1.items():
            lines.append(f"  {k:<30} |g|={v:.4g}  share={self.share(k):.3f}")
        for title, names in (
            ("unused (grad is None)", self.unused),
            ("zero gradient", self.zero),
            ("non-finite gradient", self.nonfinite),
            ("frozen (requires_grad=False)", self.frozen),
            ("exploding modules", self.exploding_modules),
            ("vanishing modules", self.vanishing_modules),
            ("unused on this rank (DDP needs find_unused_parameters=True)", self.ddp_unused),
        ):
            if names:
                lines.append(f"  {title}: {', '.join(names[:10])}" + (" ..." * (len(names) > 10)))
        return "\n".join(lines)


class GradFlow:
    """Record gradient flow after ``backward()``.

    Args:
        model: the model whose parameters are inspected.
        window: how many past records form the history for exploding/vanishing flags.
        factor: a norm more than ``factor`` x (less than 1/``factor`` x) the history median is
            exploding (vanishing). Flags need at least 3 records of history.
        local: for a ``DistributedDataParallel`` model: register a comm hook that records the
            local (pre-reduction) gradient norms (default True). Create the GradFlow before the
            first backward; DDP allows one comm hook, so pass your own as ``comm_hook``.
        comm_hook: ``(state, hook)`` of your own DDP comm hook; GradFlow's hook records the
            local norms and then calls it (default: DDP's plain all-reduce).

    Example:
        >>> gf = GradFlow(model)
        >>> loss.backward()
        >>> rep = gf.record(optimizer=opt)
        >>> rep.unused, rep.share("noise_encoder")
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        window: int = 50,
        factor: float = 10.0,
        local: bool = True,
        comm_hook: tuple[Any, Any] | None = None,
    ) -> None:
        model, self.ddp = _unwrap(model)  # names of the user's model, not module./_orig_mod.
        if not isinstance(model, nn.Module):
            raise GradFlowError(
                f"GradFlow(model): expected an nn.Module, got {type(model).__name__}"
            )
        if not any(p.requires_grad for p in model.parameters()):
            raise GradFlowError(
                f"GradFlow(model): {type(model).__name__} has no trainable parameters; hint: pass "
                "the module that owns the parameters (or check requires_grad)"
            )
        if window < 3 or factor <= 1:
            raise GradFlowError(
                f"GradFlow(window={window}, factor={factor}): need window >= 3 and factor > 1"
            )
        self.model = model
        self.window = window
        self.factor = factor
        self.steps = 0
        self.history: deque[float] = deque(maxlen=window)  # total norms
        self._local: dict[int, Tensor] = {}  # id(param) -> local grad norm (comm hook)
        self._index()
        if self.ddp is not None and local:
            self._register_hook(comm_hook)

    def _signature(self) -> list[tuple[str, int, bool]]:
        """What the index depends on: every parameter name (each name of a tied one), the
        parameter's identity and whether it trains."""
        return [
            (n, id(p), p.requires_grad)
            for n, p in self.model.named_parameters(remove_duplicate=False)
        ]

    def _refresh(self) -> None:
        """Something registered a parameter, buffer or module somewhere in the process: index
        again only when this model's parameters changed (a loss module built each step, a
        compiled graph, another model must not cost a full index nor restart the history)."""
        self._structure = structure_version()
        if self._signature() != self._sig:
            self._index()

    def _index(self) -> None:
        """Index the model's trainable parameters: names, module subtrees, the norms' plan.
        Done again when a parameter or module of this model was registered since (a new head),
        or a parameter was frozen or unfrozen; the module-norm history restarts then only when
        the list of modules changed (its rows follow that list)."""
        model = self.model
        self._structure = structure_version()
        self._sig = self._signature()
        # the frozen ones: one unfrozen since is read from the next record on
        self._frozen_params = [p for p in model.parameters() if not p.requires_grad]
        self._named = [(_clean(n), p) for n, p in model.named_parameters() if p.requires_grad]
        self._frozen = _frozen_modules(model)
        # every name a parameter is known by (frozen ones, and each name of a tied one) ->
        # the name its norm is reported under (None: frozen, no norm)
        first = {id(p): n for n, p in self._named}
        self._known = {
            _clean(n): first.get(id(p)) for n, p in model.named_parameters(remove_duplicate=False)
        }
        self._tied = any(c is not None and c != n for n, c in self._known.items())
        names = [n for n, _ in self._named]
        # module path -> indices of its parameters (whole subtree); "" is the root
        mods: dict[str, list[int]] = {"": list(range(len(names)))}
        for i, n in enumerate(names):
            parts = n.split(".")[:-1]
            for d in range(1, len(parts) + 1):
                mods.setdefault(".".join(parts[:d]), []).append(i)
        old_mods = getattr(self, "_mod_names", None)
        self._mod_names = list(mods)
        # module squared norm = its own parameters' squares + its child modules' sums, summed
        # deepest module first: one pass of plain floats (numpy's per-call cost, paid cold after
        # every backward, was most of record()'s own time on small models)
        row = {m: r for r, m in enumerate(self._mod_names)}
        own: dict[str, list[int]] = {m: [] for m in mods}
        kids: dict[str, list[int]] = {m: [] for m in mods}
        for i, n in enumerate(names):
            own[n.rpartition(".")[0]].append(i)
        for m in mods:
            if m:
                kids[m.rpartition(".")[0]].append(row[m])
        deepest_first = sorted(mods, key=lambda m: -(m.count(".") + 1 if m else 0))
        self._mod_plan = [(row[m], _getter(own[m]), _getter(kids[m])) for m in deepest_first]
        if old_mods != self._mod_names:  # finite steps; rows follow the module list
            self._mod_hist: deque[list[float]] = deque(maxlen=self.window)
        self._pos = {id(p): i for i, (_, p) in enumerate(self._named)}
        self._params = [p for _, p in self._named]
        self._all_names = [n for n, _ in self._named]  # shared by every report (read-only)
        self._all_idx = list(range(len(self._named)))
        # one device and one float dtype (gradients share their parameter's): the norms need no
        # grouping; float32-accumulated unless float64
        kinds = {(p.device, p.dtype) for _, p in self._named}
        dt = next(iter(kinds))[1] if len(kinds) == 1 else None
        self._uniform = dt in (torch.float32, torch.float64, torch.float16, torch.bfloat16)

    def _register_hook(self, comm_hook: tuple[Any, Any] | None) -> None:
        from torch.distributed.algorithms.ddp_comm_hooks import default_hooks

        state, inner = comm_hook if comm_hook is not None else (None, default_hooks.allreduce_hook)
        local = self._local

        def hook(st, bucket):  # no annotations: DDP checks them against dist.GradBucket
            grads, params = bucket.gradients(), bucket.parameters()
            if grads:
                norms = torch._foreach_norm(grads)  # before the all-reduce: this rank's own
                for p, n in zip(params, norms, strict=True):
                    local[id(p)] = n
            return inner(st, bucket)

        try:
            self.ddp.register_comm_hook(state, hook)
        except Exception as exc:
            raise GradFlowError(
                f"GradFlow(ddp_model): could not register the comm hook that records local "
                f"gradient norms ({type(exc).__name__}: {exc}); hint: create GradFlow before the "
                "first backward; if the model already has a comm hook, pass it as "
                "GradFlow(ddp_model, comm_hook=(state, hook)) instead; or local=False"
            ) from exc

    def __repr__(self) -> str:
        return (
            f"GradFlow({type(self.model).__name__}, params={len(self._named)}, steps={self.steps})"
        )

    def record(
        self,
        optimizer: Any = None,
        scaler: Any = None,
        *,
        output: Any = None,
        gather: bool = False,
    ) -> GradFlowReport:
        """Read the gradients now on the model (after ``backward()``, before ``step()``).

        Args:
            optimizer: when given, per-parameter update/weight ratios are estimated from its
                ``lr`` and state (Adam's ``exp_avg_sq``, momentum buffers, RMSprop's and
                Adagrad's accumulators); read only.
            scaler: a ``torch.amp.GradScaler``; norms and ratios are of the gradients divided
                by its scale unless they were already unscaled (``scaler.unscale_(optimizer)``;
                without ``optimizer``: unscaled for any optimizer of the scaler).
            output: the model's output of this step: fills ``ddp_unused`` (parameters it does
                not depend on, as DDP's ``find_unused_parameters`` would find them).
            gather: under torch.distributed, every rank's local total norm into
                ``rank_total_norms`` (one small all_reduce; call on every rank).

        Returns:
            A :class:`GradFlowReport`; gradients are only read, never modified.
        """
        if structure_version() != self._structure:
            self._refresh()  # a module added or replaced (checked against this model)
        # C-speed passes (map/attrgetter, no Python bytecode per parameter): the gradients, and
        # whether one is missing or sparse (the AttributeError of a None) or a parameter was
        # frozen (its stale .grad must not be read as a gradient) or unfrozen since the index
        grads = list(map(_GRAD, self._params))
        try:
            common = not any(map(_IS_SPARSE, grads))  # every gradient present and dense
        except AttributeError:
            common = False
        if not all(map(_REQUIRES_GRAD, self._params)) or any(
            map(_REQUIRES_GRAD, self._frozen_params)
        ):
            self._index()
            grads = list(map(_GRAD, self._params))
            common = all(g is not None and not g.is_sparse for g in grads)
        sparse = False
        if common:
            names, have, unused = self._all_names, self._all_idx, []
        else:
            names, have, unused, present = [], [], [], []
            for i, ((n, _), g) in enumerate(zip(self._named, grads, strict=True)):
                if g is None:
                    unused.append(n)
                    continue
                have.append(i)
                if g.is_sparse:
                    sparse, g = True, g.coalesce().values()
                present.append(g)
                names.append(n)
            grads = present
        # float32 on the first grad's device
        norms = _fused_norms(grads, uniform=self._uniform and not sparse)
        dev = norms.device
        extra: list[Tensor] = []
        scale_t = None
        if scaler is not None and _scaled(scaler, optimizer):
            scale_t = scaler._scale if isinstance(getattr(scaler, "_scale", None), Tensor) else None
            if scale_t is None:
                scale_t = torch.tensor(float(scaler.get_scale()))
            scale_t = scale_t.float().reshape(1).to(dev)
            extra.append(scale_t)
        ratio_idx = None
        if optimizer is not None and grads:
            ratio_idx, rt = _update_ratios(optimizer, self._named, have, grads, dev, scale_t)
            extra.append(rt)
        local_idx: list[int] = []
        if self._local:
            local_idx = [self._pos[k] for k in self._local if k in self._pos]
            extra.append(torch.stack([self._local[id(self._named[i][1])] for i in local_idx])
                         .float().to(dev))  # fmt: skip
            self._local.clear()
        vals = torch.cat([norms, *extra]).tolist() if extra else norms.tolist()  # one sync
        pn = vals[: len(grads)]
        rest = vals[len(grads) :]
        local_vals = rest[len(rest) - len(local_idx) :] if local_idx else []
        rest = rest[: len(rest) - len(local_idx)]
        scale = None
        if scale_t is not None:
            scale, rest = rest[0], rest[1:]
            if scale and math.isfinite(scale):
                pn = [v / scale for v in pn]
        all_finite = math.isfinite(sum(pn))  # one pass; NaN/Inf anywhere makes the sum so
        bad = [] if all_finite else [k for k, v in enumerate(pn) if not math.isfinite(v)]
        if bad:  # float32 sums of squares overflow past ~1.8e19: redo those in float64
            redo = torch.stack(
                [torch.linalg.vector_norm(grads[k], dtype=torch.float64).cpu() for k in bad]
            )
            for k, v in zip(bad, redo.tolist(), strict=True):
                pn[k] = v / scale if scale and math.isfinite(scale) else v
        if len(have) == len(self._named):  # every parameter has a gradient (the common case)
            sq = list(map(operator.mul, pn, pn))
        else:
            sq = [0.0] * len(self._named)
            for i, v in zip(have, pn, strict=True):
                sq[i] = v * v
        mod_norms = self._module_norms(sq)
        nonfinite = (
            []
            if all_finite
            else [n for n, v in zip(names, pn, strict=True) if not math.isfinite(v)]
        )
        total = mod_norms[0]
        rep = GradFlowReport(
            step=self.steps,
            total_norm=total,
            param_norms=dict(zip(names, pn, strict=True)),
            module_norms=dict(zip(self._mod_names, mod_norms, strict=True)),
            unused=unused,
            zero=[n for n, v in zip(names, pn, strict=True) if v == 0.0] if 0.0 in pn else [],
            nonfinite=nonfinite,
            frozen=list(self._frozen),
            scale=scale,
            overflow=bool(nonfinite) and scaler is not None and bool(scaler.is_enabled()),
            _all_names=self._all_names,
            _known=self._known,
            _tied=self._tied,
        )
        if ratio_idx is not None:
            rep.update_ratios = {self._named[i][0]: r for i, r in zip(ratio_idx, rest, strict=True)}
        dist = torch.distributed
        rep.rank = dist.get_rank() if dist.is_available() and dist.is_initialized() else None
        if local_idx:
            if scale and math.isfinite(scale):
                local_vals = [v / scale for v in local_vals]
            ln = [0.0] * len(self._named)
            for i, v in zip(local_idx, local_vals, strict=True):
                ln[i] = v
            lmod = self._module_norms([v * v for v in ln])
            rep.local_param_norms = {self._named[i][0]: ln[i] for i in sorted(local_idx)}
            rep.local_module_norms = dict(zip(self._mod_names, lmod, strict=True))
            rep.local_total_norm = lmod[0]
        if gather:
            mine = rep.local_total_norm if rep.local_total_norm is not None else total
            allv = _dd.combine_flags(torch.tensor([mine]), tag=f"gradflow/{self.steps}",
                                     what="GradFlow.record(gather=True)")  # fmt: skip
            rep.rank_total_norms = allv[:, 0].tolist()
        if output is not None:
            rep.ddp_unused = _dd.unused_parameters(self.ddp or self.model, output)
        self._flags(rep, total, mod_norms)
        self.steps += 1
        return rep

    def _module_norms(self, sq: list[float]) -> list[float]:
        """Per module (``_mod_names`` order): the L2 norm over its subtree, from the squared
        parameter norms ``sq``; NaN and inf carry through as in a sum."""
        acc = [0.0] * len(self._mod_names)
        for r, own, kids in self._mod_plan:
            acc[r] = sum(own(sq)) + sum(kids(acc))
        return [math.sqrt(v) if v >= 0 else v for v in acc]  # NaN stays NaN

    def _flags(self, rep: GradFlowReport, total: float, mod_norms: list[float]) -> None:
        hist = list(self.history)  # only finite totals are appended
        if not math.isfinite(total):
            rep.exploding = not rep.overflow
        elif len(hist) >= 3:
            med = statistics.median(hist)  # 0: no gradient yet (a warm-up): no ratio to test
            rep.exploding = med > 0 and total > self.factor * med
            rep.vanishing = med > 0 and total < med / self.factor
        if math.isfinite(total):
            if len(self._mod_hist) >= 3:  # the rows are never changed: a tuple is a snapshot
                rep._module_history = (
                    mod_norms,
                    tuple(self._mod_hist),
                    self.factor,
                    self._mod_names,
                )
            self.history.append(total)
            self._mod_hist.append(mod_norms)


def _getter(idx: list[int]) -> Callable[[list[float]], tuple[float, ...]]:
    """``lambda xs: tuple(xs[i] for i in idx)``, at C speed."""
    if len(idx) >= 2:
        return operator.itemgetter(*idx)
    if len(idx) == 1:
        one = operator.itemgetter(idx[0])
        return lambda xs: (one(xs),)
    return lambda xs: ()


def _fused_norms(grads: list[Tensor], uniform: bool = False) -> Tensor:
    """L2 norm per gradient (same order) as one float32 vector; one kernel per group.

    ``uniform``: the caller knows every gradient has one device and one real float dtype (the
    common case, checked once per model): no grouping. Half-precision gradients are accumulated
    in float32 (fp16 squares overflow past ``|g|`` ~ 256), also when the model was converted
    (``model.half()``) after the caller checked; a model moved since to float64 or onto several
    devices is grouped as below.
    """
    if not grads:
        return torch.zeros(0)
    if uniform:
        try:
            if grads[0].dtype == torch.float64:
                return torch.stack(torch._foreach_norm(grads)).float()
            return torch.stack(torch._foreach_norm(grads, 2, dtype=torch.float32))
        except RuntimeError:  # float64 among float32, or gradients on several devices
            pass
    groups: dict[tuple[torch.device, torch.dtype], list[int]] = {}
    for i, g in enumerate(grads):
        groups.setdefault((g.device, g.dtype), []).append(i)
    dev = grads[0].device
    parts, order = [], []
    for (_, gdt), idx in groups.items():
        gs = [grads[i] for i in idx]
        if gdt in (torch.float16, torch.bfloat16):
            # fp16 squares overflow past |g| ~ 256: accumulated (and returned) in float32
            v = torch.stack(torch._foreach_norm(gs, 2, dtype=torch.float32))
        else:
            v = torch.stack(torch._foreach_norm(gs)).float()
        parts.append(v.to(dev, non_blocking=True))
        order += idx
    if len(parts) == 1:  # the common case: already in parameter order
        return parts[0]
    flat = torch.cat(parts)
    inv = torch.empty(len(order), dtype=torch.long)
    inv[torch.tensor(order)] = torch.arange(len(order))
    return flat[inv.to(dev)]


def _scaled(scaler: Any, optimizer: Any) -> bool:
    """Whether the gradients still carry the scaler's scale: the optimizer's stage is READY
    (not unscaled, not stepped). Without an optimizer: no optimizer of this scaler has been
    unscaled (``scaler.unscale_(opt)``) or stepped since the last ``update()``."""
    if not scaler.is_enabled():
        return False
    states = getattr(scaler, "_per_optimizer_states", {})
    if optimizer is None:
        stages = [st.get("stage") for st in list(states.values())]
        return all(getattr(stage, "name", "READY") == "READY" for stage in stages)
    stage = states.get(id(optimizer), {}).get("stage")
    return getattr(stage, "name", "READY") == "READY"


def _update_ratios(
    optimizer: Any,
    named: list[tuple[str, Tensor]],
    have: list[int],
    grads: list[Tensor],
    dev: torch.device,
    scale: Tensor | None = None,
) -> tuple[list[int], Tensor]:
    """Estimated |update| / |weight| per parameter with a gradient (device vector).

    Fused: ``_foreach`` kernels over all parameters. The update is ``lr * d`` with ``d`` from
    :func:`update_directions` (Adam-like: ``g / (sqrt(v_hat) + eps)``, ``v_hat`` bias-corrected
    as Adam steps with it, the TrainingMonitor's reading too; RMSprop, Adagrad and SGD with
    momentum or weight decay: the step they are about to take), else ``d = g``. ``scale``: the
    GradScaler scale the gradients still carry (device tensor): they are unscaled first, as the
    optimizer will see them.
    """
    lr_of = {id(p): float(g.get("lr", 0.0)) for g in optimizer.param_groups for p in g["params"]}
    idx: list[int] = []
    lrs: list[float] = []
    params: list[Tensor] = []
    gs: list[Tensor] = []
    for i, g in zip(have, grads, strict=True):
        p = named[i][1]
        if id(p) not in lr_of or g.is_sparse:
            continue
        idx.append(i)
        lrs.append(lr_of[id(p)])
        params.append(p)
        gs.append(g)
    if not idx:
        return [], torch.zeros(0, device=dev)
    if scale is not None:  # new tensors: the user's gradients are not touched
        inv = (1.0 / scale).reshape(())
        try:
            gs = torch._foreach_mul(gs, inv.to(gs[0].device))
        except RuntimeError:  # gradients on several devices
            gs = [g * inv.to(g.device) for g in gs]
    u: list[Tensor | None] = [None] * len(idx)
    ks, ds = update_directions(optimizer, params, gs)
    for k, d in zip(ks, ds, strict=True):
        u[k] = d
    dirs = [gs[k] if d is None else d for k, d in enumerate(u)]
    # uniform: one fused kernel unless the dtypes or devices differ (grouped then)
    up = _fused_norms(dirs, uniform=True).to(dev) * torch.tensor(lrs, device=dev)
    w = _fused_norms([p.detach() for p in params], uniform=True).to(dev)
    return idx, up / w.clamp_min(1e-12)
