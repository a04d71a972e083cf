"""Conditioning ablation: batched variants vs one forward per variant, streaming memory, and
the default run's wall time.

    python benchmarks/bench_cond_ablation.py            # stand-in + SGMSE+ batching ratios
    python benchmarks/bench_cond_ablation.py --default  # also time the full default run

Prints ratios against a baseline measured in the same process (median of repeats). The machine
may be shared: the load average is printed beside each figure.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import sys
import time

import torch

from diagnostics import ablation_example as S
from diagnostics import run_ablation

KW = dict(seed=0, embeddings=False, guidance=False, umap=False, n_boot=200)


def _median_time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _load() -> str:
    return f"load avg {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores"


def bench_batching(name: str, target, sites, repeats: int) -> None:
    seq = _median_time(
        lambda: run_ablation(target, sites=sites, batch_variants=False, **KW), repeats
    )
    bat = _median_time(
        lambda: run_ablation(target, sites=sites, batch_variants=True, **KW), repeats
    )
    print(
        f"{name}: one forward per variant {seq:.2f} s, batched {bat:.2f} s -> speed-up "
        f"{seq / bat:.2f}x  ({_load()})"
    )


def bench_memory() -> None:
    model = S.trained(0.2)

    def peak_after(n_batches: int) -> float:
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        run_ablation(S.make_target(model, n_batches=n_batches, b=64), sites=["cond_encoder"], **KW)
        return (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024

    small = peak_after(2)
    large = peak_after(32)
    print(
        f"streaming: peak RSS growth {small:.1f} MiB for 2 batches, {large:.1f} MiB more for 32 "
        "batches (per-example numbers only are kept)"
    )


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--default", action="store_true", help="also time the full default run")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    torch.set_num_threads(
        1 if os.getloadavg()[0] > (os.cpu_count() or 1) else torch.get_num_threads()
    )
    print(f"torch threads {torch.get_num_threads()}, {_load()}")

    bench_batching(
        "stand-in (2 sites, 4 batches x 8 times x 6 variants)",
        S.make_target(S.trained(0.2)),
        None,
        args.repeats,
    )
    try:
        from diagnostics._ablation._default_target import default_target

        tgt = default_target(n_mixtures=6, n_embed=6)
        bench_batching(
            "SGMSE+ (noise_encoder, 1 batch of 6 x 8 times x 6 variants)",
            tgt,
            ["noise_encoder"],
            args.repeats,
        )
    except Exception as e:
        print(f"SGMSE+: skipped ({type(e).__name__}: {e})")
    bench_memory()
    if args.default:
        import subprocess

        t0 = time.perf_counter()
        subprocess.run(
            [
                sys.executable,
                "-m",
                "diagnostics.cond_ablation",
                "--quiet",
                "--out",
                "runs/cond_ablation/bench",
            ],
            check=True,
            stdout=subprocess.DEVNULL,
        )
        print(
            f"default run (python -m diagnostics.cond_ablation, whole process): "
            f"{time.perf_counter() - t0:.1f} s ({_load()})"
        )


if __name__ == "__main__":
    main()
