"""One rank of a ddp test (started by ``ddp_harness.launch``; gloo on CPU, FileStore init).

Usage: ``python ddp_worker.py SCENARIO RANK WORLD INIT_FILE OUT_DIR``; writes ``rank<R>.json``.
"""

from __future__ import annotations

import datetime
import json
import os
import sys
import time
import traceback
import warnings

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP


class Normalize(nn.Module):
    """x / |x| per row: 0/0 = NaN for an all-zero row (a forward producer without parameters)."""

    def forward(self, x):
        return x / x.pow(2).sum(-1, keepdim=True).sqrt()  # <ddp-producer>


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.normalize = Normalize()
        self.body = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 1))

    def forward(self, x):
        return self.body(self.normalize(x))


class WithSpare(nn.Module):
    def __init__(self, rank: int) -> None:
        super().__init__()
        self.enc = nn.Linear(4, 8)
        self.head = nn.Linear(8, 1)
        self.spare = nn.Linear(3, 3)  # never used: DDP needs find_unused_parameters=True
        self.register_buffer("calib", torch.full((4,), float(rank)))  # rank-dependent buffer

    def forward(self, x):
        return self.head(torch.tanh(self.enc(x + 0 * self.calib)))


def data(rank: int, step: int, zero_row: bool = False):
    g = torch.Generator().manual_seed(100 * step + rank)
    x = torch.randn(6, 4, generator=g)
    if zero_row:
        x[3] = 0.0
    return x, torch.randn(6, 1, generator=g)


def err(exc: BaseException) -> dict:
    return {
        "type": type(exc).__name__,
        "msg": str(exc),
        "ranks": getattr(exc, "ranks", None),
    }


def scenario_suite(rank: int, world: int) -> dict:
    from diagnostics import GradFlow, NanWatch, NonFiniteError
    from diagnostics._distributed import replica_divergence

    out: dict = {}
    # --- NanWatch: a NaN planted on rank 1 only, at step 2
    torch.manual_seed(0)
    ddp = DDP(Net())
    watch = NanWatch(ddp, timeout=20)

    def step(x, y):
        loss = (ddp(x) - y).pow(2).mean()
        loss.backward()
        return loss

    out["nan"] = {"raised_at": None}
    for s in range(4):
        ddp.zero_grad(set_to_none=True)
        x, y = data(rank, s, zero_row=(rank == 1 and s == 2))
        try:
            watch.run(step, x, y)
        except NonFiniteError as e:
            r = e.report
            out["nan"] = {
                "raised_at": s,
                "rank": r.rank,
                "fault_ranks": r.fault_ranks,
                "observed_on": r.observed_on,
                "module": r.module,
                "op": r.op,
                "phase": r.phase,
                "bad_items": r.bad_items,
                "source": r.source,
                "text": str(r),
            }
            break
    out["nan"]["statuses"] = watch.last_status

    # --- replica divergence: rank-dependent buffer, then a parameter changed on one rank
    torch.manual_seed(1)
    m = WithSpare(rank)
    ddp2 = DDP(m, broadcast_buffers=False, find_unused_parameters=True)
    gf = GradFlow(ddp2)
    x, y = data(rank, 7)
    o = ddp2(x)
    (o - y).pow(2).mean().backward()
    rep = gf.record(output=o, gather=True)
    out["gradflow"] = {
        "total": rep.total_norm,
        "module_norms": rep.module_norms,
        "local_total": rep.local_total_norm,
        "local_module_norms": rep.local_module_norms,
        "rank_total_norms": rep.rank_total_norms,
        "ddp_unused": rep.ddp_unused,
        "unused": rep.unused,
    }
    # reference: the same model without DDP on this rank's data = the local gradient
    torch.manual_seed(1)
    ref = WithSpare(rank)
    ref(x).sub(y).pow(2).mean().backward()
    out["gradflow"]["ref_local_total"] = float(
        torch.stack([p.grad.norm() for p in ref.parameters() if p.grad is not None]).norm()
    )
    div = replica_divergence(ddp2)
    out["div_buffer"] = {"params": div.params, "buffers": div.buffers, "text": str(div)}
    with torch.no_grad():
        if rank == 1:
            m.head.bias.add_(1e-3)
    div = replica_divergence(ddp2, buffers=False)
    out["div_param"] = {"params": div.params, "buffers": div.buffers}
    # negative control: broadcast_buffers=True makes the buffer identical after a forward
    torch.manual_seed(1)
    ddp3 = DDP(WithSpare(rank), broadcast_buffers=True, find_unused_parameters=True)
    ddp3(x).sum().backward()
    div = replica_divergence(ddp3)
    out["div_clean"] = {"params": div.params, "buffers": div.buffers}
    return out


class Toy(nn.Module):
    """A conditioned model with a CFG drop mask (True = condition dropped)."""

    def __init__(self) -> None:
        super().__init__()
        self.enc = nn.Linear(3, 4)
        self.out = nn.Linear(4 + 4, 1)

    def forward(self, x, cond=None, drop_cond=None):
        z = torch.zeros(x.shape[0], 4) if cond is None else self.enc(cond)
        if drop_cond is not None:
            z = z * (~drop_cond)[:, None]
        return self.out(torch.cat([x, z], -1))


def scenario_cfg(rank: int, world: int) -> dict:
    """CFG dropout monitors: identical seeding, a rank with a wrong rate, whole-batch drops."""
    from diagnostics import CFGDropoutMonitor

    out = {}

    def run(name, seed, p_true, whole_batch=False, steps=25, b=32):
        model = Toy().train()
        mon = CFGDropoutMonitor(model, p=0.2, mask_arg="drop_cond", cond_arg="cond").attach()
        g = torch.Generator().manual_seed(seed)
        for _ in range(steps):
            x, c = torch.randn(b, 4), torch.randn(b, 3)
            if whole_batch:  # one decision per step: condition the whole batch or none of it
                model(x, None if torch.rand(1, generator=g).item() < p_true else c)
            else:
                model(x, c, drop_cond=torch.rand(b, generator=g) < p_true)
            mon.step()
        mon.remove()
        rep = mon.report_ranks(timeout=20)
        out[name] = {
            "flags": rep.flags,
            "identical_steps": rep.identical_steps,
            "steps": rep.steps,
            "far_ranks": rep.far_ranks,
            "disagree_steps": rep.disagree_steps,
            "rates": [x.observed for x in rep.per_rank],
            "text": str(rep),
        }

    run("same_seed", 0, 0.2)
    run("rank_seed", 1000 + rank, 0.2)
    run("rank1_rate", 1000 + rank, 0.2 if rank == 0 else 0.03)
    run("whole_batch", 2000 + rank, 0.3, whole_batch=True)
    return out


def _step_model(rank):
    torch.manual_seed(0)
    ddp = DDP(Net())

    def step(x, y):
        loss = (ddp(x) - y).pow(2).mean()
        loss.backward()
        return loss

    return ddp, step


def scenario_die(rank: int, world: int) -> dict:
    """Rank 1's process dies in the middle of step 1 (before its backward)."""
    from diagnostics import NanWatch

    ddp, step = _step_model(rank)
    watch = NanWatch(ddp, timeout=20)

    def dying(x, y):
        if rank == 1 and watch.steps == 2:
            os._exit(3)
        return step(x, y)

    t0 = time.monotonic()
    try:
        for s in range(3):
            ddp.zero_grad()
            watch.run(dying, *data(rank, s))
    except Exception as e:
        return {"error": err(e), "seconds": time.monotonic() - t0}
    return {"error": None}


def scenario_raise(rank: int, world: int, write_first: dict | None = None) -> dict:
    """Rank 1's step raises a ValueError at step 1; the process lingers, then exits."""
    from diagnostics import NanWatch

    ddp, step = _step_model(rank)
    watch = NanWatch(ddp, timeout=20)

    def failing(x, y):
        if rank == 1 and watch.steps == 2:
            raise ValueError("bad batch on rank 1")
        return step(x, y)

    try:
        for s in range(3):
            ddp.zero_grad()
            watch.run(failing, *data(rank, s))
    except Exception as e:
        if rank == 1:
            if write_first is not None:
                _write(rank, {**write_first, "raise": {"error": err(e)}})
            time.sleep(1.0)  # stay alive a moment: rank 0 must still not wait forever
            os._exit(0)
        return {"error": err(e)}
    return {"error": None}


def scenario_all(rank: int, world: int) -> dict:
    """suite + cfg, then the raise scenario last (it breaks the group)."""
    out = {"suite": scenario_suite(rank, world), "cfg": scenario_cfg(rank, world)}
    out["raise"] = scenario_raise(rank, world, write_first=out)
    return out


def scenario_hang(rank: int, world: int) -> dict:
    """Rank 1 finishes its step outside NanWatch and then hangs: NanWatch's flag collective on
    rank 0 must time out and name rank 1."""
    from diagnostics import NanWatch

    ddp, step = _step_model(rank)
    watch = NanWatch(ddp, timeout=1)
    x, y = data(rank, 0)
    t0 = time.monotonic()
    if rank == 1:
        step(x, y)
        time.sleep(3)
        os._exit(0)
    try:
        watch.run(step, x, y)
    except Exception as e:
        return {"error": err(e), "seconds": time.monotonic() - t0}
    return {"error": None}


OUT_DIR = ""


def _write(rank: int, res: dict) -> None:
    with open(os.path.join(OUT_DIR, f"rank{rank}.json"), "w") as f:
        json.dump(res, f)


def main() -> None:
    global OUT_DIR
    scenario, rank, world, init, OUT_DIR = sys.argv[1:6]
    rank, world = int(rank), int(world)
    torch.set_num_threads(1)
    # torch 2.13 deprecates broadcast_buffers, but it is still the switch for rank-local buffers
    warnings.filterwarnings("ignore", message=".*broadcast_buffers", category=FutureWarning)
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank))
    dist.init_process_group(
        "gloo",
        init_method=f"file://{init}",
        rank=rank,
        world_size=world,
        timeout=datetime.timedelta(seconds=30),
    )
    try:
        res = globals()[f"scenario_{scenario}"](rank, world)
    except Exception as e:
        res = {"crash": err(e), "tb": traceback.format_exc()}
    _write(rank, res)
    sys.stdout.flush()
    os._exit(0)  # no destroy_process_group: a dead peer must not make the exit wait


def tiny_target():
    """An untrained stand-in CondDenoiser: 4 batches x 8 diffusion times, for the sharded test."""
    from tests.diagnostics import ablation_standin as S

    cfg = S.StandInConfig()
    tgt = S.make_target(S.fresh(cfg), n_batches=4, b=8)
    tgt.embedding_site = None
    return tgt


if __name__ == "__main__":
    main()
