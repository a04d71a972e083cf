"""torch.distributed plumbing for the diagnostics: rank info, one-collective fault flags,
bounded waits, gathers, replica-divergence and unused-parameter checks.

Every collective here is issued with ``async_op=True`` and waited on with a timeout, so a rank
that died or hangs turns into a :class:`DistributedError` naming it instead of a process that
waits forever. Ranks leave short notes in the rendezvous store (``torchdx/...`` keys) when a step
raises on them; the survivors read those notes to say *which* rank failed and why.

Example:
    >>> from diagnostics import rank_info, check_launch
    >>> info = check_launch()            # raises when torchrun set RANK but no process group
    >>> info.rank, info.world_size       # (0, 1) outside torch.distributed
"""

from __future__ import annotations

import datetime as _dt
import os
import pickle
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from contracts import TorchdxError

__all__ = [
    "DistributedError",
    "RankInfo",
    "ReplicaReport",
    "all_gather_objects",
    "check_launch",
    "combine_flags",
    "default_timeout",
    "rank_info",
    "replica_divergence",
    "unused_parameters",
]

_ENV_TIMEOUT = "TORCHDX_DIST_TIMEOUT"  # seconds; bounds every torchdx collective
_DEFAULT_TIMEOUT_S = 300.0
_ENV_GRACE = "TORCHDX_DIST_GRACE"  # seconds survivors wait for each other after a failure
_GRACE_S = 5.0
_KEY = "torchdx"


class DistributedError(TorchdxError, RuntimeError):
    """A distributed run went wrong: bad launch, a rank died / hung / raised, mismatched sizes.

    Attributes:
        ranks: the ranks the message blames (empty when unknown).
    """

    __module__ = "diagnostics"

    def __init__(self, message: str, ranks: Iterable[int] = ()) -> None:
        super().__init__(message)
        self.ranks = sorted(set(ranks))


@dataclass(frozen=True)
class RankInfo:
    """Where this process stands in torch.distributed.

    Attributes:
        rank / world_size: from the process group (0 / 1 when none is initialized).
        local_rank: ``LOCAL_RANK`` from the environment (torchrun), else ``rank``.
        backend: ``"gloo"``, ``"nccl"``, ... or None.
        initialized: whether a default process group exists.
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str | None = None
    initialized: bool = False

    @property
    def distributed(self) -> bool:
        """True when there is more than one rank to talk to."""
        return self.initialized and self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _dist():
    d = torch.distributed
    return d if d.is_available() else None


def rank_info() -> RankInfo:
    """The :class:`RankInfo` of this process (cheap; no communication)."""
    d = _dist()
    if d is None or not d.is_initialized():
        return RankInfo()
    rank = d.get_rank()
    return RankInfo(
        rank=rank,
        world_size=d.get_world_size(),
        local_rank=int(os.environ.get("LOCAL_RANK", rank)),
        backend=str(d.get_backend()),
        initialized=True,
    )


def check_launch(where: str = "diagnostics") -> RankInfo:
    """Check that the launch environment and the process group agree; return :func:`rank_info`.

    Raises:
        DistributedError: ``WORLD_SIZE > 1`` in the environment (torchrun) but no process group
            is initialized; or the group's rank/world size differ from ``RANK``/``WORLD_SIZE``.
    """
    env_ws, env_rank = os.environ.get("WORLD_SIZE"), os.environ.get("RANK")
    info = rank_info()
    if env_ws is None:
        return info
    try:
        ws = int(env_ws)
        rk = int(env_rank) if env_rank is not None else None
    except ValueError:
        raise DistributedError(
            f"{where}: WORLD_SIZE={env_ws!r} / RANK={env_rank!r} in the environment are not "
            "integers; hint: launch with torchrun --nproc_per_node=N"
        ) from None
    if not info.initialized:
        if ws > 1:
            raise DistributedError(
                f"{where}: launched as rank {rk} of WORLD_SIZE={ws} (RANK/WORLD_SIZE are set, "
                "e.g. by torchrun) but torch.distributed's process group is not initialised; "
                "hint: call torch.distributed.init_process_group('gloo' or 'nccl') before "
                "creating the diagnostic, or launch with plain python for one process",
                [rk] if rk is not None else [],
            )
        return info
    if info.world_size != ws or (rk is not None and info.rank != rk):
        raise DistributedError(
            f"{where}: process group has rank {info.rank} of world size {info.world_size} but "
            f"the environment says RANK={env_rank} of WORLD_SIZE={ws}; every rank must join the "
            "same group with the world size it was launched with; hint: pass "
            "world_size=int(os.environ['WORLD_SIZE']) to init_process_group (or use env://)",
            [info.rank],
        )
    return info


def default_timeout() -> _dt.timedelta:
    """Bound on every torchdx collective: ``$TORCHDX_DIST_TIMEOUT`` seconds (default 300)."""
    raw = os.environ.get(_ENV_TIMEOUT)
    try:
        s = float(raw) if raw else _DEFAULT_TIMEOUT_S
    except ValueError:
        raise DistributedError(
            f"{_ENV_TIMEOUT}={raw!r}: expected a number of seconds, e.g. {_ENV_TIMEOUT}=120"
        ) from None
    return _dt.timedelta(seconds=s)


def _as_timeout(timeout: float | _dt.timedelta | None) -> _dt.timedelta:
    if timeout is None:
        return default_timeout()
    return timeout if isinstance(timeout, _dt.timedelta) else _dt.timedelta(seconds=timeout)


def _comm_device() -> torch.device:
    d = _dist()
    if d is not None and d.is_initialized() and "nccl" in str(d.get_backend()):
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def _grace() -> float:
    try:
        g = float(os.environ.get(_ENV_GRACE, _GRACE_S))
    except ValueError:
        g = _GRACE_S
    return min(g, default_timeout().total_seconds())


# ----------------------------------------------------------------------------- store notes
def _store():
    try:
        from torch.distributed import distributed_c10d as c10d

        return c10d._get_default_store()
    except Exception:
        return None


def note_failure(tag: str, text: str) -> None:
    """Leave ``text`` in the rendezvous store as this rank's failure at ``tag`` (best effort)."""
    info, store = rank_info(), _store()
    if store is None or not info.distributed:
        return
    try:
        store.set(f"{_KEY}/fail/{tag}/{info.rank}", text[:500])
        store.set(f"{_KEY}/fail/last/{info.rank}", f"[{tag}] {text[:500]}")
    except Exception:
        pass


def diagnose_peers(tag: str, what: str, exc: BaseException | None = None) -> DistributedError:
    """After a failed/timed-out collective at ``tag``: which ranks died, hung or raised.

    Survivors check in under ``torchdx/alive/<tag>/<rank>`` and wait up to a few seconds for the
    others; a rank that left a failure note is named with it, one that never checks in is
    reported as dead or stuck.
    """
    info, store = rank_info(), _store()
    cause = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}" if exc else "no cause"
    head = f"{what} failed on rank {info.rank} of {info.world_size} ({cause})"
    if store is None or not info.distributed:
        return DistributedError(head)
    try:
        store.set(f"{_KEY}/alive/{tag}/{info.rank}", "1")
        others = [r for r in range(info.world_size) if r != info.rank]
        grace = _grace()
        deadline = time.monotonic() + grace
        alive: set[int] = set()
        failed: dict[int, str] = {}
        while True:
            for r in others:
                if r not in alive and store.check([f"{_KEY}/alive/{tag}/{r}"]):
                    alive.add(r)
                if r not in failed and store.check([f"{_KEY}/fail/last/{r}"]):
                    failed[r] = store.get(f"{_KEY}/fail/last/{r}").decode(errors="replace")
            if len(alive | set(failed)) == len(others) or time.monotonic() > deadline:
                break
            time.sleep(0.05)
    except Exception as e:  # the store itself is gone: with tcp:// init rank 0 hosts it
        return DistributedError(
            f"{head}; the rendezvous store is unreachable too ({type(e).__name__}), so the "
            "rank that hosts it (rank 0 with tcp:// init, the torchrun agent otherwise) is "
            "probably gone",
            [0],
        )
    lines, blamed = [head], []
    for r in others:
        if r in failed:
            lines.append(f"  rank {r} raised: {failed[r]}")
            blamed.append(r)
        elif r not in alive:
            lines.append(
                f"  rank {r} did not reach this point within {grace:.3g} s: it died or is "
                "stuck (see its log)"
            )
            blamed.append(r)
        else:
            lines.append(f"  rank {r} saw the same failure")
    if not blamed:
        lines.append("  hint: every rank is alive; a collective timed out (raise the timeout)")
    return DistributedError("\n".join(lines), blamed)


# ----------------------------------------------------------------------------- collectives
def _wait(work: Any, timeout: _dt.timedelta, tag: str, what: str) -> None:
    try:
        ok = work.wait(timeout=timeout)
    except Exception as exc:
        raise diagnose_peers(tag, what, exc) from exc
    if ok is False:
        raise diagnose_peers(tag, what, TimeoutError(f"no answer within {timeout}"))


def combine_flags(
    local: Tensor,
    *,
    tag: str,
    what: str = "torchdx flag all_reduce",
    timeout: float | _dt.timedelta | None = None,
) -> Tensor:
    """Every rank's small flag vector, with ONE all_reduce; returns ``(world_size, K)`` on host.

    Each rank writes its ``K`` values into its own row of a zero ``(world_size, K)`` tensor and
    the rows are summed, so after the call every rank holds every rank's flags. Outside
    torch.distributed it returns ``local[None]``. ``local`` should be small (a few floats).

    Raises:
        DistributedError: the collective failed or timed out; names the rank(s) to blame.
    """
    info = rank_info()
    flat = local.detach().reshape(-1).float()
    if not info.distributed:
        return flat.cpu()[None]
    dev = _comm_device()
    buf = torch.zeros(info.world_size, flat.numel(), device=dev)  # (W, K)
    buf[info.rank] = flat.to(dev)
    work = torch.distributed.all_reduce(buf, async_op=True)
    _wait(work, _as_timeout(timeout), tag, what)
    return buf.cpu()


def all_gather_objects(
    obj: Any,
    *,
    tag: str,
    what: str = "torchdx gather",
    timeout: float | _dt.timedelta | None = None,
) -> list[Any]:
    """``[obj of rank 0, obj of rank 1, ...]`` on every rank (pickled; bounded waits)."""
    info = rank_info()
    if not info.distributed:
        return [obj]
    to = _as_timeout(timeout)
    dev = _comm_device()
    data = torch.frombuffer(bytearray(pickle.dumps(obj)), dtype=torch.uint8).to(dev)
    size = torch.zeros(info.world_size, dtype=torch.long, device=dev)
    size[info.rank] = data.numel()
    _wait(torch.distributed.all_reduce(size, async_op=True), to, tag + "/size", what)
    n = int(size.max())
    pad = torch.zeros(n, dtype=torch.uint8, device=dev)
    pad[: data.numel()] = data
    outs = [torch.empty(n, dtype=torch.uint8, device=dev) for _ in range(info.world_size)]
    _wait(torch.distributed.all_gather(outs, pad, async_op=True), to, tag, what)
    sizes = size.tolist()
    return [pickle.loads(o[: sizes[r]].cpu().numpy().tobytes()) for r, o in enumerate(outs)]


def is_comm_failure(exc: BaseException) -> bool:
    """Whether ``exc`` looks like a failed collective (a peer died, a timeout) rather than a bug
    in the step itself."""
    base = getattr(torch.distributed, "DistError", None)
    if base is not None and isinstance(exc, base):
        return True
    msg = str(exc)
    keys = ("Connection closed by peer", "Connection reset", "timed out", "Timed out", "gloo",
            "NCCL", "ProcessGroup", "Broken pipe")  # fmt: skip
    return isinstance(exc, RuntimeError) and any(k in msg for k in keys)


# ----------------------------------------------------------------------------- replica check
@dataclass
class ReplicaReport:
    """Parameters and buffers whose values differ across ranks.

    Attributes:
        params / buffers: names that differ (identical fingerprints on every rank otherwise).
        max_diff: ``{name: largest |fingerprint difference| across ranks}`` for those names.
        world_size: ranks compared.
    """

    params: list[str] = field(default_factory=list)
    buffers: list[str] = field(default_factory=list)
    max_diff: dict[str, float] = field(default_factory=dict)
    world_size: int = 1

    @property
    def diverged(self) -> list[str]:
        return self.params + self.buffers

    def __bool__(self) -> bool:  # truthy when something diverged
        return bool(self.diverged)

    def __str__(self) -> str:
        if not self.diverged:
            return f"replicas identical across {self.world_size} ranks"
        rows = [f"replicas DIVERGED across {self.world_size} ranks:"]
        for kind, names in (("parameters", self.params), ("buffers", self.buffers)):
            if names:
                rows.append(
                    f"  {kind}: " + ", ".join(f"{n} ({self.max_diff[n]:.3g})" for n in names)
                )
        rows.append(
            "  hint: BatchNorm running stats (use SyncBatchNorm or broadcast_buffers=True), a "
            "buffer filled from rank-dependent data, or a parameter updated outside DDP's "
            "all-reduce (no_sync, a skipped step on one rank)"
        )
        return "\n".join(rows)


def _fingerprint(tensors: list[Tensor], dev: torch.device) -> Tensor:
    """(N, 3) float64 per tensor: sum, sum of squares, position-weighted sum (order-sensitive)."""
    rows = []
    for t in tensors:
        x = t.detach().reshape(-1)
        if x.is_complex():
            x = torch.view_as_real(x).reshape(-1)
        x = x.to(dev, torch.float64)
        w = torch.linspace(1.0, 2.0, x.numel(), dtype=torch.float64, device=dev)
        rows.append(torch.stack([x.sum(), (x * x).sum(), (x * w).sum()]))
    if not rows:
        return torch.zeros(0, 3, dtype=torch.float64, device=dev)
    return torch.stack(rows)


def replica_divergence(
    model: nn.Module,
    *,
    atol: float = 0.0,
    buffers: bool = True,
    timeout: float | _dt.timedelta | None = None,
) -> ReplicaReport:
    """Compare every parameter and buffer of ``model`` across ranks (one all_gather).

    Call it on every rank at the same point (e.g. after ``optimizer.step()``). DDP keeps replicas
    bit-identical, so any difference is a bug: BatchNorm statistics without SyncBatchNorm and
    ``broadcast_buffers=False``, rank-dependent buffers, a skipped all-reduce.

    Args:
        model: the model (a DDP wrapper is unwrapped; names are those of ``model.module``).
        atol: fingerprints may differ by this much (0: bit-identical replicas expected).
        buffers: also compare buffers.

    Example:
        >>> rep = replica_divergence(ddp_model)
        >>> assert not rep, str(rep)
    """
    inner = getattr(model, "module", model) if _is_ddp(model) else model
    named_p = [(n, p) for n, p in inner.named_parameters()]
    named_b = [(n, b) for n, b in inner.named_buffers() if b is not None] if buffers else []
    info = rank_info()
    dev = _comm_device()
    fp = _fingerprint([t for _, t in named_p + named_b], dev)  # (N, 3)
    rep = ReplicaReport(world_size=info.world_size)
    if not info.distributed:
        return rep
    n = torch.tensor([fp.shape[0]], device=dev)
    counts = combine_flags(n.float(), tag="replicas/count", what="replica_divergence")
    if len(set(counts.reshape(-1).tolist())) != 1:
        raise DistributedError(
            f"replica_divergence: ranks hold different numbers of parameters+buffers "
            f"({[int(c) for c in counts.reshape(-1).tolist()]}); the models are not replicas"
        )
    outs = [torch.empty_like(fp) for _ in range(info.world_size)]
    _wait(
        torch.distributed.all_gather(outs, fp, async_op=True),
        _as_timeout(timeout),
        "replicas/gather",
        "replica_divergence all_gather",
    )
    allfp = torch.stack(outs).cpu()  # (W, N, 3)
    spread = (allfp.amax(0) - allfp.amin(0)).abs().amax(1)  # (N,)
    np_ = len(named_p)
    for i, (name, _) in enumerate(named_p + named_b):
        d = float(spread[i])
        if d > atol or d != d:
            (rep.params if i < np_ else rep.buffers).append(name)
            rep.max_diff[name] = d
    return rep


# ----------------------------------------------------------------------------- unused params
def _is_ddp(model: Any) -> bool:
    return isinstance(model, nn.parallel.DistributedDataParallel)


def unused_parameters(model: nn.Module, output: Any) -> list[str]:
    """Trainable parameters of ``model`` that ``output`` does not depend on.

    The same traversal DDP does with ``find_unused_parameters=True``: walk the autograd graph
    from every tensor in ``output`` and collect the parameters reached. The names are those of
    ``model.named_parameters()`` (for a DDP wrapper: of ``model.module``, which is how DDP's own
    error message names them); the result is exactly the set DDP would need
    ``find_unused_parameters=True`` for on this rank. Works after ``backward()`` too.

    Example:
        >>> out = ddp(x); unused_parameters(ddp, out)   # ['noise_encoder.proj.weight', ...]
    """
    from ._hooks import tensors_in

    inner = model.module if _is_ddp(model) else model
    reached: set[int] = set()
    seen: set[Any] = set()
    stack = [t.grad_fn for t in tensors_in(output) if isinstance(t, Tensor) and t.grad_fn]
    for t in tensors_in(output):
        if isinstance(t, Tensor) and t.requires_grad and t.grad_fn is None:
            reached.add(id(t))  # a parameter returned as is
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        var = getattr(node, "variable", None)
        if var is not None:
            reached.add(id(var))
        stack.extend(nxt for nxt, _ in node.next_functions if nxt is not None)
    return [n for n, p in inner.named_parameters() if p.requires_grad and id(p) not in reached]
