"""Diffusion buffer: per-frame online inference cost on CPU and its real-time ratio.

Baseline measured in the same process: the frame hop (hop / sample_rate), i.e. real time.
Also the contract overhead on the streaming path (contracts full vs off): the two modes'
streaming passes interleaved, in a new shuffled order each repeat, medians of the repeats.
Run: ``python -m benchmarks.bench_diffusion_buffer [--buffer-size 16] [--frames 60]``
(writes docs/results/diffusion_buffer.json).
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time

import torch

import contracts
from models.diffusion_buffer import DiffusionBuffer, DiffusionBufferConfig


def ms_per_frame(model: DiffusionBuffer, frames: int) -> float:
    """Wall ms per frame of one streaming pass (its first frame a warm-up, not timed)."""
    f = model.cfg.n_freqs
    g = torch.Generator().manual_seed(0)
    y = torch.randn(1, f, frames, dtype=torch.cfloat, generator=g) * 0.3
    st = model.stream(1, torch.Generator().manual_seed(0))
    st.push(y[..., 0])
    t0 = time.perf_counter()
    for i in range(1, frames):
        st.push(y[..., i])
    return 1e3 * (time.perf_counter() - t0) / (frames - 1)


def interleaved(model: DiffusionBuffer, frames: int, repeats: int) -> dict[str, float]:
    """Median ms per frame under contracts ``full`` and ``off``, the passes interleaved in a
    new shuffled order each repeat (so neither mode always runs first)."""
    runs: dict[str, list[float]] = {"full": [], "off": []}
    order = list(runs)
    shuffle = random.Random(0).shuffle
    for _ in range(repeats):
        shuffle(order)
        for mode in order:
            with contracts.mode(mode):
                runs[mode].append(ms_per_frame(model, frames))
    return {k: statistics.median(v) for k, v in runs.items()}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.bench_diffusion_buffer", description=__doc__
    )
    p.add_argument("--buffer-size", type=int, default=16)
    p.add_argument("--frames", type=int, default=60)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--no-write", action="store_true", help="print only (no results file)")
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    model = DiffusionBuffer(DiffusionBufferConfig(buffer_size=a.buffer_size)).eval()
    cfg = model.cfg
    hop_ms = 1e3 * cfg.hop / cfg.sample_rate
    n_params = sum(p.numel() for p in model.parameters())
    print(f"diffusion buffer: n_fft={cfg.n_fft} hop={cfg.hop} B={cfg.buffer_size} "
          f"window={model.window} frames, {n_params:,} parameters, {a.threads} thread(s)")  # fmt: skip
    ms = interleaved(model, a.frames, a.repeats)
    full, off = ms["full"], ms["off"]
    latency_ms = cfg.buffer_size * hop_ms
    print(
        f"real time per frame (hop): {hop_ms:.2f} ms; algorithmic latency B*hop = "
        f"{latency_ms:.0f} ms (+ n_fft window {1e3 * cfg.n_fft / cfg.sample_rate:.0f} ms)"
    )
    for name, ms in (("contracts full", full), ("contracts off", off)):
        print(
            f"{name:>15}: {ms:.2f} ms/frame, real-time factor {ms / hop_ms:.2f} "
            f"({'faster' if ms < hop_ms else 'slower'} than real time)"
        )
    print(f"contract overhead on the streaming path: {full / off:.3f}x")
    figures = {
        "setup": {
            "n_fft": cfg.n_fft,
            "hop": cfg.hop,
            "buffer_size": cfg.buffer_size,
            "window_frames": model.window,
            "parameters": n_params,
            "threads": a.threads,
            "frames": a.frames,
            "repeats": a.repeats,
        },
        "hop_ms": round(hop_ms, 3),
        "latency_ms": round(latency_ms, 1),
        "ms_per_frame": {"contracts_full": round(full, 2), "contracts_off": round(off, 2)},
        "real_time_factor": {
            "contracts_full": round(full / hop_ms, 3),
            "contracts_off": round(off / hop_ms, 3),
        },
        "contract_overhead": round(full / off, 4),
    }
    if not a.no_write:
        from benchmarks._results import write_results

        cmd = "python -m benchmarks.bench_diffusion_buffer " + " ".join(
            sys.argv[1:] if argv is None else argv
        )
        print(f"wrote {write_results('diffusion_buffer', figures, command=cmd.strip())}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
