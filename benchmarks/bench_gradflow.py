"""GradFlow overhead: ``record()`` after backward, as a ratio to a bare training step.

Same models as bench_nanwatch (4-layer ``nn.TransformerEncoder`` at (B8, T200, D256) and
(B4, T50, D64)); the step is forward + MSE + backward. Also measured: ``record(optimizer=Adam)``
(update/weight ratios) and a naive per-parameter ``p.grad.norm().item()`` loop.

Run: ``python benchmarks/bench_gradflow.py [--repeats 15]``
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch import nn

from diagnostics import GradFlow


def make(B, T, D, device):
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(D, nhead=4, dim_feedforward=4 * D, batch_first=True)
    model = nn.TransformerEncoder(layer, num_layers=4, enable_nested_tensor=False).to(device)
    x, y = torch.randn(B, T, D, device=device), torch.randn(B, T, D, device=device)
    return model, x, y


def bench(B, T, D, repeats, device):
    model, x, y = make(B, T, D, device)
    gf = GradFlow(model)
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    for p in model.parameters():  # Adam state present, as in training
        opt.state[p]["exp_avg_sq"] = torch.rand_like(p)

    def bare():
        model.zero_grad(set_to_none=True)
        (model(x) - y).pow(2).mean().backward()

    def with_record():
        bare()
        gf.record()

    def with_record_opt():
        bare()
        gf.record(optimizer=opt)

    def naive():
        bare()
        {n: p.grad.norm().item() for n, p in model.named_parameters() if p.grad is not None}

    variants = {
        "bare": bare,
        "record": with_record,
        "record+optimizer": with_record_opt,
        "naive .item() loop": naive,
    }
    wall = {k: [] for k in variants}
    cpu = {k: [] for k in variants}
    for fn in variants.values():
        fn()
    for _ in range(repeats):
        for k, fn in variants.items():
            if device == "cuda":
                torch.cuda.synchronize()
            t0, c0 = time.perf_counter(), time.process_time()
            fn()
            if device == "cuda":
                torch.cuda.synchronize()
            wall[k].append(time.perf_counter() - t0)
            cpu[k].append(time.process_time() - c0)
    w = {k: statistics.median(v) for k, v in wall.items()}
    c = {k: statistics.median(v) for k, v in cpu.items()}
    bare()
    own = []
    for _ in range(100):
        t0 = time.process_time()
        gf.record()
        own.append(time.process_time() - t0)
    own_s = statistics.median(own)
    print(f"\n== GradFlow, TransformerEncoder 4 layers, B={B} T={T} D={D}, device={device} ==")
    print(
        f"bare step: {w['bare'] * 1e3:.1f} ms wall, {c['bare'] * 1e3:.1f} ms CPU "
        f"(median of {repeats}); ratios: wall / CPU"
    )
    print(f"  record() own work: {own_s * 1e6:.0f} us CPU -> {1 + own_s / c['bare']:.4f}x")
    for k in list(variants)[1:]:
        print(f"  {k:<20} {w[k] / w['bare']:.3f}x / {c[k] / c['bare']:.3f}x")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    for B, T, D in ((8, 200, 256), (4, 50, 64)):
        bench(B, T, D, a.repeats, a.device)


if __name__ == "__main__":
    main()
