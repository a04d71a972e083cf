"""One rank of the zoo's DDP fault: ``python -m benchmarks.fault_zoo.faults._ddp_worker RANK
WORLD INIT_FILE OUT_DIR SEEDING`` (gloo on CPU, FileStore rendezvous: no ports).

``SEEDING`` is ``same`` (the fault: every rank seeds its dropout RNG identically, so every rank
drops the same examples) or ``per_rank`` (healthy: ``seed + rank``). Rank 0 writes
``OUT_DIR/report.json`` with ``CFGDropoutMonitor.report_ranks()``'s flags and message.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def main(rank: int, world: int, init: str, out: str, seeding: str) -> None:
    import torch
    import torch.distributed as dist
    import torch.nn.functional as F
    from torch.nn.parallel import DistributedDataParallel as DDP

    import diagnostics
    from benchmarks.fault_zoo.faults.conditioning import CFGNet

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init}", rank=rank, world_size=world)
    try:
        torch.manual_seed(0)  # same initial weights on every rank (DDP broadcasts them anyway)
        model = CFGNet()
        ddp = DDP(model)
        opt = torch.optim.SGD(ddp.parameters(), lr=0.01)
        torch.manual_seed(0 if seeding == "same" else 1000 + rank)  # data + dropout RNG
        with diagnostics.CFGDropoutMonitor(model, p=0.2, mask_arg="drop_cond") as mon:
            for _ in range(20):
                x, c = torch.randn(8, 16), torch.randn(8, 8)
                drop = torch.rand(8) < 0.2
                loss = F.mse_loss(ddp(x, c, drop_cond=drop), torch.zeros(8))
                opt.zero_grad()
                loss.backward()
                opt.step()
                mon.step()
            rep = mon.report_ranks(timeout=60)
        if rank == 0:
            Path(out, "report.json").write_text(
                json.dumps({"flags": rep.flags, "message": str(rep)})
            )
        # gloo: a rank whose DDP reducer is torn down while its peer has already left can hang
        # in the destructor; free the DDP wrapper while both ranks are still here
        del ddp, opt
        dist.barrier()
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    r, w, init, out, seeding = sys.argv[1:6]
    main(int(r), int(w), init, out, seeding)
