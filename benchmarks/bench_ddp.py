"""Diagnostics under torch.distributed: NanWatch's healthy path and the sharded ablation.

1. NanWatch healthy path under DDP (2 ranks, gloo, CPU): a bare DDP step (forward + MSE +
   backward with DDP's gradient all-reduce) vs the same step under ``watch.run``; interleaved
   repeats, medians on rank 0. The watch adds its finiteness check and ONE all_reduce of a
   ``(world, 2)`` float tensor; that collective is also timed alone.
2. Sharded ablation: ``python -m diagnostics.cond_ablation`` (1 process) vs
   ``torchrun --standalone --nproc_per_node=2 -m diagnostics.cond_ablation`` on the same target and
   seed; the ablation phase time from ``timing.json`` and the whole wall time, and the largest
   difference between any two numbers of the two ``report.json`` files.

Figures go to ``docs/results/ddp.json``.

Run: ``python -m benchmarks.bench_ddp [--repeats 30] [--skip-ablation] [--target SPEC]``
(default ablation target: the embedded SGMSE+ default, without UMAP and guidance sweep).
With CUDA and >= 2 GPUs, ``--device cuda`` runs part 1 with NCCL.
"""

from __future__ import annotations

import datetime
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from benchmarks._results import load_results, write_results
from contracts.cli import ArgumentParser

ROOT = Path(__file__).resolve().parents[1]


def make(B: int, T: int, D: int, device: str):
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(D, nhead=4, dim_feedforward=4 * D, batch_first=True)
    return nn.TransformerEncoder(layer, num_layers=4, enable_nested_tensor=False).to(device)


def _time_shape(B: int, T: int, D: int, dev: str, rank: int, repeats: int) -> dict:
    from diagnostics import NanWatch
    from diagnostics._distributed import combine_flags

    ddp = nn.parallel.DistributedDataParallel(make(B, T, D, dev))
    g = torch.Generator().manual_seed(rank)
    x = torch.randn(B, T, D, generator=g).to(dev)
    y = torch.randn(B, T, D, generator=g).to(dev)

    def step(x, y):
        loss = (ddp(x) - y).pow(2).mean()
        loss.backward()
        return loss

    watch = NanWatch(ddp, timeout=60)
    variants = {
        "bare": lambda: step(x, y),
        "nanwatch": lambda: watch.run(step, x, y),
        "flag_allreduce": lambda: combine_flags(torch.zeros(2, device=dev), tag="bench"),
    }
    times = {k: [] for k in variants}
    for fn in variants.values():
        ddp.zero_grad(set_to_none=True)
        fn()
    for _ in range(repeats):
        for k, fn in variants.items():
            ddp.zero_grad(set_to_none=True)
            dist.barrier()
            if dev.startswith("cuda"):
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            fn()
            if dev.startswith("cuda"):
                torch.cuda.synchronize()
            times[k].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


def _worker(rank: int, world: int, init: str, shapes, repeats: int, device: str, out: str):
    torch.set_num_threads(1)
    backend = "nccl" if device == "cuda" else "gloo"
    if device == "cuda":
        torch.cuda.set_device(rank)
    dist.init_process_group(
        backend, init_method=f"file://{init}", rank=rank, world_size=world,
        timeout=datetime.timedelta(seconds=120),
    )  # fmt: skip
    dev = f"cuda:{rank}" if device == "cuda" else "cpu"
    results = {f"B{B} T{T} D{D}": _time_shape(B, T, D, dev, rank, repeats) for B, T, D in shapes}
    if rank == 0:
        Path(out).write_text(json.dumps(results))
    dist.barrier()
    dist.destroy_process_group()


def bench_nanwatch(repeats: int, device: str) -> dict:
    shapes = [(4, 50, 64), (8, 100, 128)]
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "res.json")
        mp.start_processes(
            _worker,
            args=(2, os.path.join(tmp, "store"), shapes, repeats, device, out),
            nprocs=2,
            start_method="spawn",
            join=True,
        )
        res = json.loads(Path(out).read_text())
    print(f"NanWatch healthy path under DDP (2 ranks, {'nccl' if device == 'cuda' else 'gloo'}, "
          f"{device}), medians of {repeats} interleaved repeats on rank 0")  # fmt: skip
    print(
        f"{'shape':<18}{'bare DDP step':>15}{'under NanWatch':>16}{'ratio':>8}{'flag all_reduce':>17}"
    )
    figures = {}
    for shape, r in res.items():
        print(
            f"{shape:<18}{r['bare'] * 1e3:>12.2f} ms{r['nanwatch'] * 1e3:>13.2f} ms"
            f"{r['nanwatch'] / r['bare']:>7.3f}x{r['flag_allreduce'] * 1e6:>13.0f} us"
        )
        figures[shape.replace(" ", "_")] = {
            "bare_ms": r["bare"] * 1e3,
            "nanwatch_ms": r["nanwatch"] * 1e3,
            "ratio": r["nanwatch"] / r["bare"],
            "flag_allreduce_ms": r["flag_allreduce"] * 1e3,
        }
    return {"repeats": repeats, "backend": "nccl" if device == "cuda" else "gloo", **figures}


def _numbers(a, b, path=""):
    """(max abs diff, max rel diff, count) over matching numbers of two JSON trees."""
    if isinstance(a, dict):
        parts = [_numbers(a[k], b[k], f"{path}.{k}") for k in a if k in b]
    elif isinstance(a, list):
        parts = [_numbers(x, y, f"{path}[{i}]") for i, (x, y) in enumerate(zip(a, b))]
    elif isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool):
        if isinstance(a, float) and math.isnan(a) and math.isnan(b):
            return (0.0, 0.0, 1)
        d = abs(a - b)
        return (d, d / max(abs(a), abs(b), 1e-12), 1)
    else:
        return (0.0, 0.0, 0)
    return (
        max((p[0] for p in parts), default=0.0),
        max((p[1] for p in parts), default=0.0),
        sum(p[2] for p in parts),
    )


def bench_ablation(target: str | None) -> dict:
    args = ["--no-umap", "--no-guidance", "--quiet", "--threads", "1", "--seed", "0"]
    if target:
        args += ["--target", target]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    runs = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, pre in (
            ("1 process", [sys.executable, "-m", "diagnostics.cond_ablation"]),
            ("2 ranks", [sys.executable, "-m", "torch.distributed.run", "--standalone",
                         "--nproc_per_node=2", "-m", "diagnostics.cond_ablation"]),
        ):  # fmt: skip
            out = Path(tmp) / name.replace(" ", "_")
            t0 = time.perf_counter()
            subprocess.run([*pre, *args, "--out", str(out)], env=env, cwd=ROOT, check=True,
                           capture_output=True, timeout=1800)  # fmt: skip
            wall = time.perf_counter() - t0
            runs[name] = (wall, json.loads((out / "timing.json").read_text()),
                          (out / "report.json").read_text())  # fmt: skip
    (w1, t1, r1), (w2, t2, r2) = runs["1 process"], runs["2 ranks"]
    sites1 = sum(v for k, v in t1.items() if k.startswith("site:"))
    sites2 = sum(v for k, v in t2.items() if k.startswith("site:"))
    dabs, drel, n = _numbers(json.loads(r1), json.loads(r2))
    print(f"\nsharded ablation ({target or 'embedded default'}), 1 process vs 2 ranks (gloo, CPU)")
    print(f"  site passes : {sites1:7.2f} s vs {sites2:7.2f} s  -> speed-up {sites1 / sites2:.2f}x")
    print(f"  ablation    : {t1['ablation_s']:7.2f} s vs {t2['ablation_s']:7.2f} s  -> "
          f"{t1['ablation_s'] / t2['ablation_s']:.2f}x")  # fmt: skip
    print(f"  whole CLI   : {w1:7.2f} s vs {w2:7.2f} s  -> {w1 / w2:.2f}x (incl. start-up)")
    print(f"  report.json : {'bit-identical' if r1 == r2 else 'differs'}; largest difference "
          f"over {n} numbers: abs {dabs:.3g}, rel {drel:.3g}")  # fmt: skip
    return {
        "target": target or "embedded default",
        "site_passes_s": {"one_process": sites1, "two_ranks": sites2, "speedup": sites1 / sites2},
        "ablation_s": {
            "one_process": t1["ablation_s"],
            "two_ranks": t2["ablation_s"],
            "speedup": t1["ablation_s"] / t2["ablation_s"],
        },
        "cli_s": {"one_process": w1, "two_ranks": w2, "speedup": w1 / w2},
        "report": {
            "bit_identical": r1 == r2,
            "numbers": n,
            "max_abs_diff": dabs,
            "max_rel_diff": drel,
        },
    }


def main() -> None:
    ap = ArgumentParser(prog="python -m benchmarks.bench_ddp", description=__doc__)
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--skip-ablation", action="store_true")
    ap.add_argument("--skip-nanwatch", action="store_true")
    ap.add_argument("--target", default=None)
    ap.add_argument("--no-write", action="store_true", help="print only; no results file")
    a = ap.parse_args()
    if a.device == "cuda" and torch.cuda.device_count() < 2:
        print("--device cuda needs 2 GPUs; running on CPU")
        a.device = "cpu"
    try:  # a partial run keeps the other part's figures
        figures = load_results("ddp")["figures"]
    except (OSError, KeyError, ValueError):
        figures = {}
    if not a.skip_nanwatch:
        figures["nanwatch"] = bench_nanwatch(a.repeats, a.device)
    if not a.skip_ablation:
        figures["ablation"] = bench_ablation(a.target)
    if not a.no_write:
        path = write_results("ddp", figures, command="python -m benchmarks.bench_ddp")
        print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
