"""CFGDropoutMonitor: is classifier-free-guidance dropout really dropping the condition?

A forward pre-hook on the model reads, at every training forward, which examples had their
condition dropped, and records ``(dropped, total)`` per step. The observed rate is compared with
the configured ``p``; the monitor flags:

* ``never``: ``p > 0`` but not one condition was dropped (the dropout is not applied), in
  enough draws that zero drops has less than a 0.1% chance (``(1 - p) ** draws < 1e-3``);
  fewer draws are reported as too few to tell;
* ``disabled``: ``p == 0`` is configured (the null input is never trained, so guidance and the
  null ablation are meaningless);
* ``far``: ``p`` lies outside the 99.9% Wilson interval of the observed rate *and* the observed
  rate differs from ``p`` by more than ``rel_tol`` (default 25%) of ``p``;
* ``eval``: CFG dropout applied at evaluation. In eval mode (``model.training is False``) a
  forward called *without* a drop mask (``mask_arg`` not passed or ``None``, and the condition
  given) asks for the conditioned output; the monitor re-runs that forward once with the mask
  all False (every condition explicitly kept; ``torch.no_grad``, from the RNG state the forward
  started with, so a forward that draws noise draws the same; the RNG state and every buffer
  restored after; the model's own hooks bypassed, though hooks on its submodules see the re-run)
  and counts the examples whose output differs: the model dropped their condition on its own. An explicit mask or ``cond=None`` at evaluation (the unconditional pass of CFG
  sampling) is the caller's choice and never flagged. The first ``eval_checks`` such forwards
  are checked (one more forward each); the check needs ``mask_arg`` and is off with
  ``detect``. A model that draws from its own ``torch.Generator``, or keeps state in plain
  Python attributes, advances it in the re-run: pass ``eval_checks=0`` there. A train-mode flag takes precedence
  in ``flag``; the message names both.

How a drop is seen (first that applies): ``detect(args, kwargs) -> bool[B]``; the boolean
``mask_arg`` of ``forward`` (True = dropped); or ``cond_arg`` being ``None`` (whole batch dropped).
A wrapper whose forward is ``(*args, **kwargs)`` (``torch.compile``, DDP, DataParallel) is read
through the module it wraps; any other ``forward(..., **kwargs)`` must get the mask by keyword.
The hook only reads: outputs, gradients and RNG are untouched; it is removed on ``remove()`` or
when the ``with`` block exits, even on an exception.

Example:
    >>> with CFGDropoutMonitor(model, p=0.2, mask_arg="drop_cond") as mon:
    ...     for batch in loader:
    ...         train_step(model, batch)
    ...         mon.step()
    >>> print(mon.report())

Under torch.distributed (DDP) every rank runs its own monitor; ``mon.report_ranks()`` (called on
every rank at the same point) gathers the per-step drop masks and rates of all ranks and flags
identical masks on every rank (identically seeded dropout RNG), a rate far from ``p`` on any rank,
and steps where ranks disagree about whether the condition was used at all (a whole-batch drop on
some ranks only: the conditioning branch then gets no gradient there).
"""

from __future__ import annotations

import hashlib
import inspect
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from contracts import TorchdxError

__all__ = ["CFGDropoutError", "CFGDropoutMonitor", "CFGDropoutRanksReport", "CFGDropoutReport"]


class CFGDropoutError(TorchdxError, ValueError):
    """Bad configuration of a :class:`CFGDropoutMonitor`."""

    __module__ = "diagnostics"


@dataclass
class CFGDropoutReport:
    """Observed CFG dropout.

    Attributes:
        p: the configured dropout probability.
        steps: steps recorded.
        dropped, total: conditions dropped / seen over all steps.
        observed: ``dropped / total`` (nan when nothing was seen).
        ci: 99.9% Wilson interval of the observed rate.
        per_step: observed rate per step.
        flag: ``None`` when fine, else ``"never"``, ``"disabled"``, ``"far"`` or ``"eval"``.
        message: the flag in words.
        eval_dropped, eval_total: conditions the model dropped on its own in eval-mode
            forwards / examples checked there (see the module doc).
    """

    p: float
    steps: int
    dropped: int
    total: int
    observed: float
    ci: tuple[float, float]
    per_step: list[float]
    flag: str | None
    message: str
    eval_dropped: int = 0
    eval_total: int = 0

    @property
    def ok(self) -> bool:
        return self.flag is None

    def to_dict(self) -> dict[str, Any]:
        return {
            "p": self.p,
            "steps": self.steps,
            "dropped": self.dropped,
            "total": self.total,
            "observed": self.observed,
            "ci": list(self.ci),
            "flag": self.flag,
            "message": self.message,
            "eval_dropped": self.eval_dropped,
            "eval_total": self.eval_total,
        }

    def __str__(self) -> str:
        head = (
            f"CFG dropout: observed {self.observed:.3f} ({self.dropped}/{self.total} over "
            f"{self.steps} steps), configured p={self.p}"
        )
        return f"{head}; {'OK' if self.ok else 'FLAG ' + str(self.flag)}: {self.message}"


@dataclass
class CFGDropoutRanksReport:
    """CFG dropout across torch.distributed ranks (:meth:`CFGDropoutMonitor.report_ranks`).

    Attributes:
        world_size: ranks compared.
        per_rank: each rank's own :class:`CFGDropoutReport` (rank order).
        steps: steps compared (the common prefix of every rank's history).
        identical_steps: steps where every rank dropped exactly the same examples.
        identical: every compared step identical on every rank, and that had less than a 1e-3
            chance under independent per-rank dropout: the dropout RNG is seeded identically.
        chance: probability of ``identical_steps`` identical steps under independent dropout.
        far_ranks: ranks whose own rate is flagged ``far``/``never`` against ``p``.
        disagree_steps: steps where some ranks used the condition (kept it for >= 1 example)
            and others dropped it for the whole batch.
        flags: ``"identical"``, ``"far"``, ``"disagree"``, ``"steps"`` (ranks recorded
            different numbers of steps).
        message: the flags in words.
    """

    world_size: int
    per_rank: list[CFGDropoutReport]
    steps: int
    identical_steps: int
    identical: bool
    chance: float
    far_ranks: list[int]
    disagree_steps: list[int]
    flags: list[str]
    message: str

    @property
    def ok(self) -> bool:
        return not self.flags

    def __str__(self) -> str:
        rates = ", ".join(f"r{r}={x.observed:.3f}" for r, x in enumerate(self.per_rank))
        head = f"CFG dropout over {self.world_size} ranks, {self.steps} steps (rates {rates})"
        return f"{head}; {'OK' if self.ok else 'FLAGS ' + ','.join(self.flags)}: {self.message}"


def _forward_signature(model: nn.Module) -> tuple[inspect.Signature, nn.Module]:
    """The signature the caller's arguments follow, and whose forward it is: a wrapper whose
    forward is only ``(*args, **kwargs)`` (``torch.compile``'s module, DDP, DataParallel)
    passes them on to the module it wraps, so that module's signature binds them."""
    owner = model
    for _ in range(8):
        sig = inspect.signature(owner.forward)
        params = list(sig.parameters.values())
        if params and all(q.kind in (q.VAR_POSITIONAL, q.VAR_KEYWORD) for q in params):
            inner = getattr(owner, "_orig_mod", None)  # torch.compile
            if not isinstance(inner, nn.Module):
                inner = getattr(owner, "module", None)  # DDP, DataParallel
            if isinstance(inner, nn.Module):
                owner = inner
                continue
        break
    return sig, owner


def _wilson(k: int, n: int, z: float = 3.29) -> tuple[float, float]:
    """Wilson score interval for k successes in n draws (z=3.29: 99.9%)."""
    if n == 0:
        return (0.0, 1.0)
    q = k / n
    den = 1 + z * z / n
    centre = (q + z * z / (2 * n)) / den
    half = z * math.sqrt(q * (1 - q) / n + z * z / (4 * n * n)) / den
    return (max(0.0, centre - half), min(1.0, centre + half))


class CFGDropoutMonitor:
    """Record the observed fraction of dropped conditions per training step.

    Args:
        model: the conditioned model (the hook sits on its ``forward``).
        p: the configured CFG dropout probability.
        mask_arg: name of ``forward``'s boolean drop mask ``[B]`` (True = dropped).
        cond_arg: name of ``forward``'s condition argument; ``None`` passed there counts as the
            whole batch dropped (used when no mask is passed).
        detect: ``detect(args, kwargs) -> bool Tensor [B]``; overrides the two above.
        rel_tol: relative tolerance of the ``far`` flag.
        train_only: count only forwards in training mode (skip validation/sampling).
        eval_checks: eval-mode forwards (without a drop mask) re-run with every condition kept
            to see drops the model makes on its own at evaluation (flag ``eval``; needs
            ``mask_arg``; 0: off).

    Example:
        >>> mon = CFGDropoutMonitor(model, p=0.2).attach()
        >>> ...  # training steps, mon.step() after each
        >>> mon.remove(); mon.report().flag
    """

    def __init__(
        self,
        model: nn.Module,
        p: float,
        *,
        mask_arg: str | None = "drop_cond",
        cond_arg: str | None = None,
        detect: Callable[[tuple, dict], Tensor] | None = None,
        rel_tol: float = 0.25,
        train_only: bool = True,
        eval_checks: int = 8,
    ) -> None:
        if not 0.0 <= p <= 1.0:
            raise CFGDropoutError(f"CFGDropoutMonitor: p={p} is not a probability in [0, 1]")
        if detect is None and mask_arg is None and cond_arg is None:
            raise CFGDropoutError(
                "CFGDropoutMonitor: give mask_arg, cond_arg or detect (how to see a drop)"
            )
        self.model = model
        self.p = float(p)
        self.mask_arg, self.cond_arg, self.detect = mask_arg, cond_arg, detect
        self.rel_tol = rel_tol
        self.train_only = train_only
        self._sig, owner = _forward_signature(model)
        # a forward(..., **kwargs) takes the mask by keyword without naming it
        self._varkw = next(
            (n for n, q in self._sig.parameters.items() if q.kind is q.VAR_KEYWORD), None
        )
        for name in (mask_arg, cond_arg):
            if (
                detect is None
                and name is not None
                and name not in self._sig.parameters
                and self._varkw is None
            ):
                raise CFGDropoutError(
                    f"CFGDropoutMonitor: {type(owner).__name__}.forward has no argument {name!r} "
                    f"(its arguments: {', '.join(self._sig.parameters)})"
                )
        self._handle: Any = None
        self._eval_handle: Any = None
        # the eval check passes an all-False mask_arg: without one (or with detect) it never runs
        can_check = detect is None and mask_arg is not None
        self.eval_checks = max(0, int(eval_checks)) if can_check else 0
        self._eval_left = self.eval_checks
        self._busy = False  # inside the monitor's own re-run
        self.eval_dropped = 0
        self.eval_total = 0
        self.eval_note = ""
        self._rng: tuple[Tensor, list[Tensor] | None] | None = None  # RNG before the forward
        self._cur = [0, 0]  # dropped, total in the current step
        self._calls_in_step = 0
        self._masks: list[Tensor] = []  # drop masks of the current step
        self.history: list[tuple[int, int]] = []
        self.mask_digests: list[str] = []  # per step: digest of the step's drop mask

    def __repr__(self) -> str:
        state = "attached" if self._handle is not None else "detached"
        return f"CFGDropoutMonitor(p={self.p}, {state}, {len(self.history)} steps)"

    # -- arguments by name (a named parameter, or a keyword caught by **kwargs)
    def _get(self, arguments: dict[str, Any], name: str | None) -> Any:
        if name is None:
            return None
        if name in self._sig.parameters:
            return arguments.get(name)
        return arguments.get(self._varkw, {}).get(name) if self._varkw else None

    def _set(self, arguments: dict[str, Any], name: str, value: Any) -> None:
        if name in self._sig.parameters or self._varkw is None:
            arguments[name] = value
        else:
            arguments[self._varkw] = {**arguments.get(self._varkw, {}), name: value}

    # -- hook
    def _observe(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        if self._busy:
            return None
        if not module.training and self._eval_left > 0:  # the eval check replays this draw
            cuda = torch.cuda.is_available() and torch.cuda.is_initialized()
            self._rng = (torch.get_rng_state(), torch.cuda.get_rng_state_all() if cuda else None)
        if self.train_only and not module.training:
            return None
        if self.detect is not None:
            try:
                mask = self.detect(args, kwargs)
            except Exception as e:
                raise CFGDropoutError(
                    f"CFGDropoutMonitor: detect(args, kwargs) raised {type(e).__name__}: {e} "
                    f"(on a forward with {len(args)} positional argument(s) and keywords "
                    f"{sorted(kwargs)})"
                ) from e
        else:
            try:
                bound = self._sig.bind(*args, **kwargs).arguments
            except TypeError:
                return None
            mask = self._get(bound, self.mask_arg)
            if mask is None:
                b = next(
                    (
                        a.shape[0]
                        for a in (*args, *kwargs.values())
                        if isinstance(a, Tensor) and a.dim() > 0
                    ),
                    None,
                )
                if b is None:
                    return None
                dropped_all = self.cond_arg is not None and self._get(bound, self.cond_arg) is None
                mask = torch.full((b,), dropped_all)
        mask = torch.as_tensor(mask).detach()
        self._masks.append(mask.reshape(-1).bool().cpu())
        self._cur[0] += int(mask.sum())
        self._cur[1] += int(mask.numel())
        self._calls_in_step += 1
        return None

    def _eval_check(self, module: nn.Module, args: tuple, kwargs: dict, output: Any) -> None:
        """Eval mode, no drop mask passed: re-run with every condition kept and compare."""
        if module.training or self._busy or self._eval_left <= 0 or self.mask_arg is None:
            return None
        if self.detect is not None or not isinstance(output, Tensor) or output.dim() == 0:
            return None
        try:
            bound = self._sig.bind(*args, **kwargs)
        except TypeError:
            return None
        if self._get(bound.arguments, self.mask_arg) is not None:
            return None  # an explicit mask: the caller chose what to drop
        if self.cond_arg is not None and self._get(bound.arguments, self.cond_arg) is None:
            return None  # the unconditional pass
        b = output.shape[0]
        keep = torch.zeros(b, dtype=torch.bool, device=output.device)
        self._set(bound.arguments, self.mask_arg, keep)
        self._eval_left -= 1
        cpu_state, cuda_states = self._rng if self._rng is not None else (None, None)
        self._rng = None
        devices = list(range(len(cuda_states))) if cuda_states is not None else []
        self._busy = True
        buffers = [(buf, buf.detach().clone()) for buf in module.buffers()]
        try:
            with torch.no_grad(), torch.random.fork_rng(devices=devices):
                if cpu_state is not None:  # the same random draws as the forward it checks
                    torch.set_rng_state(cpu_state)
                if cuda_states is not None:
                    torch.cuda.set_rng_state_all(cuda_states)
                kept = module.forward(*bound.args, **bound.kwargs)
        except Exception as e:  # the forward does not take an all-False mask: stop checking
            self._eval_left = 0
            self.eval_note = f"eval check off: the re-run raised {type(e).__name__}: {e}"
            return None
        finally:
            self._busy = False
            with torch.no_grad():  # a buffer the re-run wrote (a counter, a cache) as found
                for buf, saved in buffers:
                    buf.copy_(saved)
        if not isinstance(kept, Tensor) or kept.shape != output.shape:
            return None
        out = output.detach().reshape(b, -1).double()  # (B, D)
        ref = kept.detach().reshape(b, -1).double()  # (B, D)
        diff = (out - ref).norm(dim=1)  # (B,)
        dropped = diff > 1e-5 * ref.norm(dim=1) + 1e-12
        self.eval_dropped += int(dropped.sum())
        self.eval_total += b
        return None

    def attach(self) -> CFGDropoutMonitor:
        """Install the hooks (idempotent); returns self."""
        if self._handle is None:
            self._handle = self.model.register_forward_pre_hook(self._observe, with_kwargs=True)
        if self._eval_handle is None and self.eval_checks > 0:
            self._eval_handle = self.model.register_forward_hook(self._eval_check, with_kwargs=True)
        return self

    def remove(self) -> None:
        """Remove the hooks and close the current step."""
        for name in ("_handle", "_eval_handle"):
            h = getattr(self, name)
            if h is not None:
                h.remove()
                setattr(self, name, None)
        self.step()

    def __enter__(self) -> CFGDropoutMonitor:
        return self.attach()

    def __exit__(self, *exc: object) -> None:
        self.remove()

    def step(self) -> None:
        """Close the current training step (its forwards are aggregated into one record)."""
        if self._cur[1] > 0:
            self.history.append((self._cur[0], self._cur[1]))
            bits = torch.cat(self._masks).to(torch.uint8).numpy().tobytes()
            self.mask_digests.append(hashlib.blake2b(bits, digest_size=12).hexdigest())
        self._masks = []
        self._cur = [0, 0]
        self._calls_in_step = 0

    # -- verdict
    def report(self) -> CFGDropoutReport:
        """Observed rate, its 99.9% interval, and the flag (see the module doc)."""
        hist = [*self.history, *([tuple(self._cur)] if self._cur[1] else [])]
        dropped = sum(d for d, _ in hist)
        total = sum(n for _, n in hist)
        observed = dropped / total if total else float("nan")
        lo, hi = _wilson(dropped, total)
        flag, msg = None, "observed rate consistent with p"
        if total == 0:
            msg = "no training forward observed (is the model in train mode? was step() called?)"
        elif self.p == 0.0:
            flag = "disabled"
            msg = (
                "configured p=0: CFG dropout is disabled, the null/unconditional input is never "
                "trained (guidance and the null ablation are meaningless)"
            )
            if dropped:
                msg += f"; yet {dropped} conditions were dropped"
        elif dropped == 0 and (1.0 - self.p) ** total >= 1e-3:
            # zero drops are likely by chance at this p and this few draws: nothing to flag
            need = math.ceil(math.log(1e-3) / math.log(1.0 - self.p))
            msg = (
                f"no condition dropped yet in {total} draws with configured p={self.p}, which "
                f"happens by chance {(1.0 - self.p) ** total:.0%} of the time: too few draws to "
                f"tell (zero drops is flagged from {need} draws on)"
            )
        elif dropped == 0:
            flag = "never"
            msg = (
                f"no condition dropped in {total} draws over {len(hist)} steps with configured "
                f"p={self.p} (expected ~{self.p * total:.0f}): CFG dropout is not applied"
            )
        elif not lo <= self.p <= hi and abs(observed - self.p) > self.rel_tol * self.p:
            flag = "far"
            msg = (
                f"observed {observed:.3f} (99.9% interval [{lo:.3f}, {hi:.3f}]) is far from "
                f"configured p={self.p}"
            )
        e_drop, e_tot = getattr(self, "eval_dropped", 0), getattr(self, "eval_total", 0)
        if e_drop:
            eval_msg = (
                f"CFG dropout applied at evaluation: {type(self.model).__name__}.forward dropped "
                f"the condition of {e_drop} of {e_tot} examples in eval mode (model.training is "
                "False) although no drop mask was passed; apply the dropout only when "
                "self.training"
            )
            if flag is None:
                flag, msg = "eval", eval_msg
            else:
                msg = f"{msg}; {eval_msg}"
        return CFGDropoutReport(
            p=self.p,
            steps=len(hist),
            dropped=dropped,
            total=total,
            observed=observed,
            ci=(lo, hi),
            per_step=[d / n for d, n in hist],
            flag=flag,
            message=msg,
            eval_dropped=e_drop,
            eval_total=e_tot,
        )

    # -- torch.distributed
    def report_ranks(self, timeout: float | None = None) -> CFGDropoutRanksReport:
        """Gather every rank's record and compare them (call on every rank; one gather).

        Outside torch.distributed it compares this process with itself (world size 1, nothing
        can be identical or disagree).

        Example:
            >>> rep = mon.report_ranks()      # on every rank, e.g. at the end of an epoch
            >>> if rep.flags and dist.get_rank() == 0: print(rep)
        """
        from ._distributed import all_gather_objects

        if self._cur[1]:
            self.step()
        mine = {"history": self.history, "digests": self.mask_digests, "p": self.p}
        got = all_gather_objects(
            mine, tag=f"cfgmon/{len(self.history)}", what="CFGDropoutMonitor.report_ranks",
            timeout=timeout,
        )  # fmt: skip
        per_rank = []
        for g in got:
            other = CFGDropoutMonitor.__new__(CFGDropoutMonitor)
            other.p, other.rel_tol = self.p, self.rel_tol
            other.history, other._cur = list(g["history"]), [0, 0]
            per_rank.append(CFGDropoutMonitor.report(other))
        W = len(got)
        S = min(len(g["history"]) for g in got)
        flags, msgs = [], []
        if len({len(g["history"]) for g in got}) > 1:
            flags.append("steps")
            msgs.append(
                f"ranks recorded different numbers of steps {[len(g['history']) for g in got]}; "
                f"compared the first {S}"
            )
        same = [s for s in range(S) if len({g["digests"][s] for g in got}) == 1]
        # chance that W independent masks agree at every identical step
        logc = 0.0
        for s in same:
            _, n = got[0]["history"][s]
            q = self.p
            agree = q * q + (1 - q) * (1 - q)
            logc += (W - 1) * n * math.log(agree) if 0 < q < 1 else 0.0
        chance = math.exp(logc)
        identical = W > 1 and S > 0 and len(same) == S and chance < 1e-3
        if identical:
            flags.append("identical")
            msgs.append(
                f"every rank dropped exactly the same examples at all {S} steps (chance "
                f"{chance:.2g} under independent dropout): the dropout RNG is seeded identically "
                "on every rank, so the ranks' drops are copies; seed it with the rank "
                "(torch.Generator().manual_seed(seed + rank))"
            )
        far = [r for r, x in enumerate(per_rank) if x.flag in ("far", "never")]
        if far:
            flags.append("far")
            msgs.append(
                "rate far from p on rank(s) "
                + ", ".join(f"{r} ({per_rank[r].observed:.3f})" for r in far)
                + f" (configured p={self.p})"
            )
        disagree = []
        for s in range(S):
            used = {g["history"][s][0] < g["history"][s][1] for g in got}
            if len(used) > 1:
                disagree.append(s)
        if disagree:
            flags.append("disagree")
            msgs.append(
                f"ranks disagree about whether the condition was used at {len(disagree)} step(s) "
                f"(first {disagree[:5]}): some dropped it for the whole batch while others kept "
                "it, so the conditioning branch gets no gradient on those ranks (DDP then needs "
                "find_unused_parameters=True, and the encoder's gradient is averaged with zeros)"
            )
        return CFGDropoutRanksReport(
            world_size=W,
            per_rank=per_rank,
            steps=S,
            identical_steps=len(same),
            identical=identical,
            chance=chance,
            far_ranks=far,
            disagree_steps=disagree,
            flags=flags,
            message="; ".join(msgs) or "ranks drop independently at rate ~p",
        )
