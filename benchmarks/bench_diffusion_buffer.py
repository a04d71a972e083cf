"""Diffusion buffer: per-frame online inference cost on CPU and its real-time ratio.

Baseline measured in the same process: the frame hop (hop / sample_rate), i.e. real time.
Also the contract overhead on the streaming path (contracts full vs off). Median of repeats.
Run: ``python benchmarks/bench_diffusion_buffer.py [--buffer-size 16] [--frames 60]``.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

import contracts
from models.diffusion_buffer import DiffusionBuffer, DiffusionBufferConfig


def ms_per_frame(model: DiffusionBuffer, frames: int, repeats: int) -> float:
    f = model.cfg.n_freqs
    g = torch.Generator().manual_seed(0)
    y = torch.randn(1, f, frames, dtype=torch.cfloat, generator=g) * 0.3
    runs = []
    for _ in range(repeats):
        st = model.stream(1, torch.Generator().manual_seed(0))
        st.push(y[..., 0])  # warm-up frame, not timed
        t0 = time.perf_counter()
        for i in range(1, frames):
            st.push(y[..., i])
        runs.append(1e3 * (time.perf_counter() - t0) / (frames - 1))
    return statistics.median(runs)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--buffer-size", type=int, default=16)
    p.add_argument("--frames", type=int, default=60)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    model = DiffusionBuffer(DiffusionBufferConfig(buffer_size=a.buffer_size)).eval()
    cfg = model.cfg
    hop_ms = 1e3 * cfg.hop / cfg.sample_rate
    n_params = sum(p.numel() for p in model.parameters())
    print(f"diffusion buffer: n_fft={cfg.n_fft} hop={cfg.hop} B={cfg.buffer_size} "
          f"window={model.window} frames, {n_params:,} parameters, {a.threads} thread(s)")  # fmt: skip
    with contracts.mode("full"):
        full = ms_per_frame(model, a.frames, a.repeats)
    with contracts.mode("off"):
        off = ms_per_frame(model, a.frames, a.repeats)
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


if __name__ == "__main__":
    main()
