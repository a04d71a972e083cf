"""GradFlow overhead: ``record()`` after backward, as a ratio to a bare training step.

Same models as bench_nanwatch (4-layer ``nn.TransformerEncoder`` at (B8, T200, D256) and
(B4, T50, D64)); the step is forward + MSE + backward. Also measured: ``record(optimizer=Adam)``
(update/weight ratios) and a naive per-parameter ``p.grad.norm().item()`` loop.

Ratios are of process CPU time on CPU (steadier on a shared machine) and wall time on CUDA, over
repeats in a shuffled order (the small model 6x as many);
``record()``'s own work is also timed alone (200 repeats, hot caches) and right after each
backward (what a training loop pays, caches cold), beside the naive loop timed the same ways. Figures go to
``docs/results/gradflow.json``.

Run: ``python -m benchmarks.bench_gradflow [--repeats 15]``
"""

from __future__ import annotations

import statistics
import time

import torch
from torch import nn

from benchmarks._results import device_parser, parse_device_args, write_results
from benchmarks._timing import sync, time_variants
from diagnostics import GradFlow


def make(B, T, D, device):
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(D, nhead=4, dim_feedforward=4 * D, batch_first=True)
    model = nn.TransformerEncoder(layer, num_layers=4, enable_nested_tensor=False).to(device)
    x, y = torch.randn(B, T, D, device=device), torch.randn(B, T, D, device=device)
    return model, x, y


def bench(B, T, D, repeats, device) -> dict:
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

    def naive_read():
        return {n: p.grad.norm().item() for n, p in model.named_parameters() if p.grad is not None}

    def naive():
        bare()
        naive_read()

    variants = {
        "bare": bare,
        "record": with_record,
        "record+optimizer": with_record_opt,
        "naive .item() loop": naive,
    }
    t = time_variants(variants, repeats, device)
    w = {k: v[0] for k, v in t.items()}
    c = {k: v[1] for k, v in t.items()}

    def norms_only():  # the floor of any per-parameter report: the fused norms, read once
        return torch.stack(torch._foreach_norm([p.grad for p in model.parameters()])).tolist()

    m = c if device == "cpu" else w  # CPU: process time; CUDA: wall time, synchronized

    def timed(f) -> float:
        sync(device)
        t0 = time.process_time() if device == "cpu" else time.perf_counter()
        f()
        sync(device)
        return (time.process_time() if device == "cpu" else time.perf_counter()) - t0

    in_situ: dict[str, list[float]] = {"record": [], "naive": [], "norms_only": []}
    for _ in range(max(repeats, 20)):  # the cost a user pays: right after backward, caches cold
        for k, f in (("record", gf.record), ("naive", naive_read), ("norms_only", norms_only)):
            bare()
            in_situ[k].append(timed(f))
    situ = {k: statistics.median(v) for k, v in in_situ.items()}
    bare()
    own_s = statistics.median(timed(gf.record) for _ in range(200))
    naive_s = statistics.median(timed(naive_read) for _ in range(200))
    out = {
        "bare_ms": m["bare"] * 1e3,
        "ratio": {
            "record": m["record"] / m["bare"],
            "record_optimizer": m["record+optimizer"] / m["bare"],
            "naive_item_loop": m["naive .item() loop"] / m["bare"],
        },
        "own_work_us": own_s * 1e6,
        "own_work_ratio": 1 + own_s / m["bare"],
        "naive_own_work_us": naive_s * 1e6,
        "naive_own_work_ratio": 1 + naive_s / m["bare"],
        "in_situ_us": {k: v * 1e6 for k, v in situ.items()},
        "in_situ_ratio": {k: 1 + v / m["bare"] for k, v in situ.items()},
    }
    print(f"\n== GradFlow, TransformerEncoder 4 layers, B={B} T={T} D={D}, device={device} ==")
    print(f"bare step: {out['bare_ms']:.1f} ms; ratios ({'CPU' if device == 'cpu' else 'wall'})")
    print(f"  record() own work: {own_s * 1e6:.0f} us -> {out['own_work_ratio']:.4f}x")
    print(f"  naive loop own work: {naive_s * 1e6:.0f} us -> {out['naive_own_work_ratio']:.4f}x")
    for k in ("record", "naive", "norms_only"):
        print(
            f"  {k} right after backward: {out['in_situ_us'][k]:.0f} us -> "
            f"{out['in_situ_ratio'][k]:.4f}x"
        )
    for k, v in out["ratio"].items():
        print(f"  {k:<20} {v:.3f}x")
    return out


def main() -> None:
    ap = device_parser("python -m benchmarks.bench_gradflow", __doc__, repeats=15)
    a = parse_device_args(ap)
    # the small step is ~60x shorter: 6x the repeats for the same confidence in its ratios
    figures = {
        f"B{B}_T{T}_D{D}": bench(B, T, D, reps, a.device)
        for B, T, D, reps in ((8, 200, 256, a.repeats), (4, 50, 64, 6 * a.repeats))
    }
    if not a.no_write:
        path = write_results(
            "gradflow", figures, command="python -m benchmarks.bench_gradflow", device=a.device
        )
        print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
