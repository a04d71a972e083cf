"""NanWatch overhead: ratios against a bare training step, measured in one process.

Model: a 4-layer ``nn.TransformerEncoder`` (batch_first, dropout 0.1) at (B8, T200, D256) and
(B4, T50, D64); the step is forward + MSE loss + backward (no optimizer step). Beside the
healthy NanWatch path (replay and eager modes) it measures ``torch.autograd.detect_anomaly``,
naive per-module ``isfinite().all().item()`` forward hooks, and the localization of a failing
step (the replay and op passes). Peak memory (CPU: from the profiler's allocation events; CUDA:
``max_memory_allocated``) of the healthy path is compared with the bare step. On CUDA it also
counts host syncs per step (``torch.cuda.set_sync_debug_mode``).

Run: ``python benchmarks/bench_nanwatch.py [--repeats 15] [--device cpu|cuda]``
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch import nn

from diagnostics import NanWatch, NonFiniteError


def make(B: int, T: int, D: int, device: str):
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(D, nhead=4, dim_feedforward=4 * D, batch_first=True)
    model = nn.TransformerEncoder(layer, num_layers=4, enable_nested_tensor=False).to(device)
    x = torch.randn(B, T, D, device=device)
    y = torch.randn(B, T, D, device=device)

    def step(x, y):
        loss = (model(x) - y).pow(2).mean()
        loss.backward()
        return loss

    return model, step, x, y


def naive_hooks(model):
    def hook(mod, inp, out):
        if isinstance(out, torch.Tensor) and not torch.isfinite(out).all().item():
            raise FloatingPointError(type(mod).__name__)

    return [m.register_forward_hook(hook) for m in model.modules()]


def sync(device):
    if device == "cuda":
        torch.cuda.synchronize()


def time_variants(variants, repeats, device):
    """Interleaved repeats; median (wall seconds, process CPU seconds) per variant.

    CPU time is the steadier figure on a shared machine (other processes do not inflate it);
    on CUDA only the wall time means anything.
    """
    wall = {k: [] for k in variants}
    cpu = {k: [] for k in variants}
    for fn in variants.values():  # warm-up
        fn()
    for _ in range(repeats):
        for k, fn in variants.items():
            sync(device)
            t0, c0 = time.perf_counter(), time.process_time()
            fn()
            sync(device)
            wall[k].append(time.perf_counter() - t0)
            cpu[k].append(time.process_time() - c0)
    return {k: (statistics.median(wall[k]), statistics.median(cpu[k])) for k in variants}


def cpu_peak(fn) -> int:
    """Peak of live CPU tensor bytes allocated during fn (profiler allocation events)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    evs = sorted(prof.events(), key=lambda e: e.time_range.start)
    live = peak = 0
    for e in evs:  # self allocations/frees of every op, in time order
        live += e.self_cpu_memory_usage
        peak = max(peak, live)
    return peak


def peak_bytes(fn, device) -> int:
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        fn()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - base
    return cpu_peak(fn)


def count_syncs(fn) -> int:
    import warnings

    torch.cuda.set_sync_debug_mode("warn")
    try:
        with warnings.catch_warnings(record=True) as w:
            warnings.simplefilter("always")
            fn()
    finally:
        torch.cuda.set_sync_debug_mode(0)
    return sum("synchroniz" in str(x.message) for x in w)


def bench(B, T, D, repeats, device):
    model, step, x, y = make(B, T, D, device)
    watch = NanWatch(model)
    eager = NanWatch(model, mode="eager")

    def bare():
        model.zero_grad(set_to_none=True)
        step(x, y)

    def watched():
        model.zero_grad(set_to_none=True)
        watch.run(step, x, y)

    def watched_eager():
        model.zero_grad(set_to_none=True)
        eager.run(step, x, y)

    def anomaly():
        model.zero_grad(set_to_none=True)
        with torch.autograd.detect_anomaly(check_nan=True):
            step(x, y)

    def naive():
        model.zero_grad(set_to_none=True)
        hs = naive_hooks(model)
        try:
            step(x, y)
        finally:
            for h in hs:
                h.remove()

    xbad = x.clone()
    xbad[0, 3, 5] = 3e38  # finite, but the first attention projection overflows

    def failing():
        model.zero_grad(set_to_none=True)
        try:
            watch.run(step, xbad, y)
        except NonFiniteError as e:
            return e.report
        raise AssertionError("expected a NonFiniteError")

    def bare_failing():  # the same failing step without the watch
        model.zero_grad(set_to_none=True)
        step(xbad, y)

    import warnings

    warnings.filterwarnings("ignore", message="Anomaly Detection has been enabled")
    t = time_variants(
        {
            "bare": bare,
            "nanwatch": watched,
            "nanwatch_eager": watched_eager,
            "detect_anomaly": anomaly,
            "naive_hooks": naive,
        },
        repeats,
        device,
    )
    tl = time_variants({"bare": bare_failing, "localize": failing}, max(3, repeats // 3), device)
    rep = failing()

    def bare_nz():  # grads zeroed outside the measured region
        step(x, y)

    def watched_nz():
        watch.run(step, x, y)

    # the watch's own work, isolated: run() around a step that only returns the loss (grads
    # already present), many repeats; far less noisy than a difference of two step timings
    model.zero_grad(set_to_none=True)
    loss0 = step(x, y)
    own = []
    for _ in range(200):
        t0 = time.process_time()
        watch.run(lambda: loss0)
        own.append(time.process_time() - t0)
    own_s = statistics.median(own)

    mem = {}
    for name, fn in (("bare", bare_nz), ("nanwatch", watched_nz)) * 2:  # second round counts
        model.zero_grad(set_to_none=True)
        mem[name] = peak_bytes(fn, device)
    mem_bare, mem_watch = mem["bare"], mem["nanwatch"]
    print(f"\n== TransformerEncoder 4 layers, B={B} T={T} D={D}, device={device} ==")
    print(
        f"bare step: {t['bare'][0] * 1e3:.1f} ms wall, {t['bare'][1] * 1e3:.1f} ms CPU "
        f"(median of {repeats}); ratios: wall / CPU"
    )
    for k in ("nanwatch", "nanwatch_eager", "detect_anomaly", "naive_hooks"):
        print(f"  {k:<16} {t[k][0] / t['bare'][0]:.3f}x / {t[k][1] / t['bare'][1]:.3f}x")
    print(
        f"  nanwatch own work per step: {own_s * 1e6:.0f} us CPU -> "
        f"{1 + own_s / t['bare'][1]:.4f}x the bare step's CPU time"
    )
    lw = tl["localize"][0] / tl["bare"][0]
    lc = tl["localize"][1] / tl["bare"][1]
    print(
        f"  failing step under NanWatch (step + replay + op pass) {lw:.2f}x / {lc:.2f}x; "
        f"replay + op pass alone {lw - 1:.2f}x / {lc - 1:.2f}x -> {rep.module!r} {rep.op}"
    )
    print(
        f"  peak memory: bare {mem_bare / 2**20:.2f} MiB, nanwatch {mem_watch / 2**20:.2f} MiB "
        f"-> {mem_watch / max(mem_bare, 1):.3f}x"
    )
    if device == "cuda":
        print(
            f"  host syncs/step: bare {count_syncs(bare)}, nanwatch {count_syncs(watched)}, "
            f"eager {count_syncs(watched_eager)}, naive hooks {count_syncs(naive)}"
        )


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
