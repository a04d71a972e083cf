"""NanWatch overhead: ratios against a bare training step, measured in one process.

Model: a 4-layer ``nn.TransformerEncoder`` (batch_first, dropout 0.1) at (B8, T200, D256) and
(B4, T50, D64); the step is forward + MSE loss + backward (no optimizer step). Beside the
healthy NanWatch path (replay and eager modes) it measures ``torch.autograd.detect_anomaly``,
naive per-module ``isfinite().all().item()`` forward hooks, and the localization of a failing
step (the replay and op passes). Peak memory (CPU: from the profiler's allocation events; CUDA:
``max_memory_allocated``) of the healthy path is compared with the bare step. On CUDA it also
counts host syncs per step (``torch.cuda.set_sync_debug_mode``).

A compiled variant (``torch.compile(backend="aot_eager")`` on CPU, ``inductor`` on CUDA) measures
the healthy path on a compiled model against the compiled bare step, beside the eager pair, in
one run. Figures go to ``docs/results/nanwatch.json``.

Run: ``python -m benchmarks.bench_nanwatch [--repeats 15] [--device cpu|cuda] [--no-compiled]``
"""

from __future__ import annotations

import statistics
import time

import torch
from torch import nn

from benchmarks._results import device_parser, parse_device_args, write_results
from benchmarks._timing import sync, time_variants
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


def bench(B, T, D, repeats, device) -> dict:
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
    tl = time_variants({"bare": bare_failing, "localize": failing}, max(3, repeats // 2), device)
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

    # why the healthy check is an L2 norm: the fused inf-norm over the same gradients
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    check = {}
    for name, kw in (("l2", {}), ("inf", {"ord": float("inf")})):
        ts = []
        for _ in range(20):
            sync(device)
            t0 = time.perf_counter()
            torch._foreach_norm(grads, **kw)
            sync(device)
            ts.append(time.perf_counter() - t0)
        check[name] = statistics.median(ts) * 1e6

    mem = {}
    for name, fn in (("bare", bare_nz), ("nanwatch", watched_nz)) * 2:  # second round counts
        model.zero_grad(set_to_none=True)
        mem[name] = peak_bytes(fn, device)
    k = 1 if device == "cpu" else 0  # CPU time on CPU (steadier on a shared machine), else wall
    out = {
        "bare_ms": t["bare"][k] * 1e3,
        "ratio": {n: t[n][k] / t["bare"][k] for n in t if n != "bare"},
        "ratio_wall": {n: t[n][0] / t["bare"][0] for n in t if n != "bare"},
        "own_work_us": own_s * 1e6,
        "own_work_ratio": 1 + own_s / t["bare"][1],
        "failing": {
            "step_plus_localize": tl["localize"][k] / tl["bare"][k],
            "localize_only": tl["localize"][k] / tl["bare"][k] - 1,
            "module": rep.module,
            "op": rep.op,
        },
        "peak_memory_ratio": mem["nanwatch"] / max(mem["bare"], 1),
        "grad_check_us": {**check, "inf_over_l2": check["inf"] / check["l2"]},
    }
    if device == "cuda":
        out["host_syncs_per_step"] = {
            "bare": count_syncs(bare),
            "nanwatch": count_syncs(watched),
            "nanwatch_eager": count_syncs(watched_eager),
            "naive_hooks": count_syncs(naive),
        }
    return out


def bench_compiled(B, T, D, repeats, device) -> dict:
    """Healthy path on a compiled model vs the compiled bare step, beside the eager pair."""
    backend = "inductor" if device == "cuda" else "aot_eager"
    model, step, x, y = make(B, T, D, device)
    cmodel = torch.compile(model, backend=backend)

    def cstep(x, y):
        loss = (cmodel(x) - y).pow(2).mean()
        loss.backward()
        return loss

    watch, cwatch = NanWatch(model), NanWatch(cmodel)

    def run(fn, w=None):
        def f():
            model.zero_grad(set_to_none=True)
            w.run(fn, x, y) if w is not None else fn(x, y)

        return f

    t = time_variants(
        {
            "bare": run(step),
            "nanwatch": run(step, watch),
            "compiled_bare": run(cstep),
            "compiled_nanwatch": run(cstep, cwatch),
        },
        repeats,
        device,
    )
    k = 1 if device == "cpu" else 0
    return {
        "backend": backend,
        "compiled_bare_ms": t["compiled_bare"][k] * 1e3,
        "compiled_ratio": t["compiled_nanwatch"][k] / t["compiled_bare"][k],
        "eager_ratio": t["nanwatch"][k] / t["bare"][k],
    }


def _print(key: str, r: dict, device: str) -> None:
    print(f"\n== TransformerEncoder 4 layers, {key}, device={device} ==")
    print(f"bare step: {r['bare_ms']:.1f} ms; ratios ({'CPU time' if device == 'cpu' else 'wall'})")
    for n, v in r["ratio"].items():
        print(f"  {n:<16} {v:.3f}x  (wall {r['ratio_wall'][n]:.3f}x)")
    print(f"  nanwatch own work: {r['own_work_us']:.0f} us -> {r['own_work_ratio']:.4f}x")
    f = r["failing"]
    print(
        f"  failing step: step + localize {f['step_plus_localize']:.2f}x, localize alone "
        f"{f['localize_only']:.2f}x -> {f['module']!r} {f['op']}"
    )
    print(f"  peak memory nanwatch / bare: {r['peak_memory_ratio']:.3f}x")
    g = r["grad_check_us"]
    print(
        f"  grad check: L2 {g['l2']:.0f} us, inf-norm {g['inf']:.0f} us ({g['inf_over_l2']:.1f}x)"
    )
    if "compiled" in r:
        c = r["compiled"]
        print(
            f"  compiled ({c['backend']}): nanwatch {c['compiled_ratio']:.3f}x the compiled step; "
            f"eager pair in the same run {c['eager_ratio']:.3f}x"
        )
    if "host_syncs_per_step" in r:
        print(f"  host syncs per step: {r['host_syncs_per_step']}")


def main() -> None:
    ap = device_parser("python -m benchmarks.bench_nanwatch", __doc__, repeats=15)
    ap.add_argument("--no-compiled", action="store_true", help="skip the compiled-model variant")
    a = parse_device_args(ap)
    figures = {}
    for B, T, D in ((8, 200, 256), (4, 50, 64)):
        key = f"B{B}_T{T}_D{D}"
        figures[key] = bench(B, T, D, a.repeats, a.device)
        if not a.no_compiled:
            figures[key]["compiled"] = bench_compiled(B, T, D, max(5, a.repeats // 2), a.device)
        _print(key, figures[key], a.device)
    if not a.no_write:
        path = write_results(
            "nanwatch", figures, command="python -m benchmarks.bench_nanwatch", device=a.device
        )
        print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
