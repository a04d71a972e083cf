"""Conditioning ablation: the default run's wall time, batched vs one forward per variant, the
floor's cost, and streaming memory. Writes ``docs/results/cond_ablation.json``.

    python -m benchmarks.bench_cond_ablation            # all figures (~3 min on 2 cores)
    python -m benchmarks.bench_cond_ablation --no-demo  # skip the default run

Ratios are measured in one process with the baseline and the candidate interleaved (median of
repeats). The machine may be shared: the load average is recorded beside the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from benchmarks._results import load_results, write_results
from benchmarks._timing import time_variants
from diagnostics import ablation_example as S
from diagnostics import run_ablation

_CMD = "python -m benchmarks.bench_cond_ablation"
KW = dict(seed=0, embeddings=False, guidance=False, quality=False, umap=False, n_boot=200)


def _load() -> float:
    return round(os.getloadavg()[0], 2)


def _interleaved(fns: dict[str, Callable[[], Any]], repeats: int) -> dict[str, float]:
    """Median wall seconds of each function: one warm-up call each, then ``repeats`` rounds in
    a new shuffled order (``benchmarks._timing``, the one timing loop)."""
    return {k: wall for k, (wall, _cpu) in time_variants(fns, repeats).items()}


def bench_batching(target: Any, sites: list[str] | None, repeats: int) -> dict[str, float]:
    t = _interleaved(
        {
            "sequential_s": lambda: run_ablation(target, sites=sites, batch_variants=False, **KW),
            "batched_s": lambda: run_ablation(target, sites=sites, batch_variants=True, **KW),
        },
        repeats,
    )
    return {**{k: round(v, 3) for k, v in t.items()},
            "speedup": round(t["sequential_s"] / t["batched_s"], 2)}  # fmt: skip


def bench_floor(target: Any, repeats: int) -> dict[str, float]:
    """The floor is one more variant: its cost is the marginal cost of one variant's forward,
    measured as (zero+random) - (zero) with one forward per variant, against the whole pass."""
    abl = ["zero", "mean", "random", "shuffle", "null"]
    t = _interleaved(
        {
            "one": lambda: run_ablation(target, ablations=["zero"], batch_variants=False, **KW),
            "two": lambda: run_ablation(
                target, ablations=["zero", "random"], batch_variants=False, **KW
            ),
            "all": lambda: run_ablation(target, ablations=abl, batch_variants=False, **KW),
        },
        repeats,
    )
    marginal = max(t["two"] - t["one"], 0.0)
    return {
        "variant_s": round(marginal, 4),
        "all_ablations_s": round(t["all"], 3),
        "share_of_pass": round(marginal / t["all"], 3),
        # intact + 5 ablations + the floor + the interaction view of the shuffle (shuffle twice)
        "forwards_per_item": len(abl) + 2 + ("shuffle" in abl),
    }


_MEMORY_CHILD = """
import resource, sys, torch
from torch import nn
from diagnostics import AblationTarget, run_ablation

torch.set_num_threads(1)
n_batches, width = int(sys.argv[1]), int(sys.argv[2])
if sys.argv[3:] == ["keep-heap"]:  # the engine without returning the free heap per item
    import diagnostics._ablation._site as site

    site.trim_heap = lambda: None


class Examples(torch.utils.data.Dataset):  # generated from the index: nothing held in memory
    def __len__(self):
        return 64 * n_batches

    def __getitem__(self, i):
        g = torch.Generator().manual_seed(i)
        return {"x": torch.randn(16, generator=g), "cond": torch.randn(16, generator=g)}


class Wide(nn.Module):  # a large output per example: keeping outputs would show at once
    def __init__(self):
        super().__init__()
        self.enc = nn.Linear(16, 16)
        self.out = nn.Linear(16, width)

    def forward(self, x, cond):
        return self.out(x + self.enc(cond))


torch.manual_seed(0)
loader = torch.utils.data.DataLoader(Examples(), batch_size=64)
tgt = AblationTarget(model=Wide().eval(), batches=loader, sites=["enc"])
run_ablation(tgt, seed=0, embeddings=False, n_boot=200, batch_variants=False)
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
"""


def bench_memory(width: int = 16384) -> dict[str, Any]:
    """Peak RSS of a fresh process running the ablation over a DataLoader of 4 vs 64 batches
    of 64 examples whose outputs are ``width`` floats (64 KiB each at 16384): streamed, the
    peak does not grow with the examples; kept, 64 batches x 7 variants would add ~1.8 GiB."""

    def peak(n: int, *extra: str) -> float:
        out = subprocess.run(
            [sys.executable, "-c", _MEMORY_CHILD, str(n), str(width), *extra],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
        return float(out.strip().splitlines()[-1])

    p4, p64, keep64 = peak(4), peak(64), peak(64, "keep-heap")
    return {
        "output_floats_per_example": width,
        "peak_rss_4_batches_mib": round(p4, 1),
        "peak_rss_64_batches_mib": round(p64, 1),
        "growth_mib": round(p64 - p4, 1),
        "peak_rss_64_batches_heap_kept_mib": round(keep64, 1),
        "growth_heap_kept_mib": round(keep64 - p4, 1),
        "outputs_if_kept_mib": round(64 * 64 * 7 * width * 4 / 2**20, 1),
    }


def _key(site: str) -> str:
    return site.replace(":", "_").replace(".", "_")


def _demo_figures(data: dict[str, Any]) -> dict[str, Any]:
    """The default run's verdicts and numbers (quoted in docs/COND_ABLATION.md)."""
    sites: dict[str, Any] = {}
    for s in data["sites"]:
        q = {
            a: {m: d for m, d in r.get("metrics", {}).items()}
            for a, r in s["ablations"].items()
            if r.get("metrics")
        }
        sites[_key(s["site"])] = {
            "site": s["site"],
            "verdict": s["verdict"],
            "reason": s["reason"],
            "floor": s["floor"]["effect"],
            "channel": s["channel"],
            "content": s["content"],
            "by_label": {k: v["verdict"] for k, v in s["by_label"].items()},
            "quality": q,
        }
    sw = data["guidance_sweep"] or {}
    return {
        "n_examples": data["n_examples"],
        "min_effect": data["min_effect"],
        "sites": sites,
        "sweep": {
            m: {
                f"w{sc:g}": {
                    "mean": v["mean"][k],
                    "delta": v["delta"][k],
                    "delta_ci95": v["delta_ci95"][k],
                    "failures": v["failures"][k],
                }
                for k, sc in enumerate(sw.get("scales", []))
            }
            for m, v in sw.get("metrics", {}).items()
        },
        "unprocessed": {m: u["mean"] for m, u in (sw.get("unprocessed") or {}).items()},
    }


def bench_demo() -> dict[str, Any]:
    """``python -m diagnostics.cond_ablation`` (= make demo), whole process, after set-up: wall
    seconds, and the process's CPU seconds (what an idle machine's wall time is bounded by)."""
    with tempfile.TemporaryDirectory() as out:
        load = _load()
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        t0 = time.perf_counter()
        subprocess.run(
            [sys.executable, "-m", "diagnostics.cond_ablation", "--quiet", "--out", out],
            check=True,
            stdout=subprocess.DEVNULL,
        )
        seconds = time.perf_counter() - t0
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
        timing = json.loads((Path(out) / "timing.json").read_text())
        report = json.loads((Path(out) / "report.json").read_text())
    return {
        "seconds": round(seconds, 1),
        "cpu_seconds": round(cpu, 1),
        "load_before": load,
        "load_after": _load(),
        "timing": timing,
        "report": _demo_figures(report),
    }


def main() -> None:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.bench_cond_ablation")
    ap.add_argument("--no-demo", action="store_true", help="skip timing the default run")
    ap.add_argument(
        "--demo-only",
        action="store_true",
        help="time the default run only; keep the other figures of docs/results/cond_ablation.json",
    )
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    torch.set_num_threads(1 if os.getloadavg()[0] > (os.cpu_count() or 1) else 2)
    figures: dict[str, Any] = {"threads": torch.get_num_threads(), "load_start": _load()}
    if args.demo_only:
        figures = load_results("cond_ablation")["figures"]
        figures["demo"] = bench_demo()
        print("default run:", {k: v for k, v in figures["demo"].items() if k != "report"})
        print(f"wrote {write_results('cond_ablation', figures, command=_CMD + ' --demo-only')}")
        return
    standin = S.make_target(S.trained(0.2))
    figures["batching_standin"] = bench_batching(standin, None, args.repeats)
    print("stand-in batching:", figures["batching_standin"])
    from diagnostics._ablation._default_target import default_target

    sgmse = default_target(n_mixtures=6, n_embed=6)
    figures["batching_sgmse"] = bench_batching(sgmse, ["noise_encoder"], args.repeats)
    print("SGMSE+ batching:", figures["batching_sgmse"])
    figures["floor_sgmse"] = bench_floor(replace(sgmse, sites=["noise_encoder"]), args.repeats)
    print("floor cost:", figures["floor_sgmse"])
    figures["memory"] = bench_memory()
    print("streaming memory:", figures["memory"])
    if not args.no_demo:
        figures["demo"] = bench_demo()
        print("default run:", {k: v for k, v in figures["demo"].items() if k != "report"})
    figures["load_end"] = _load()
    path = write_results("cond_ablation", figures, command=_CMD)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
