"""TrainingMonitor overhead: a full training step with ``mon.step`` (every=1) vs without.

For each reference model (default config; batch 8, Paraformer its config batch; Adam) one
process times a bare training step (forward, backward, optimizer step) and the same step with
``TrainingMonitor.step(step, loss=loss)`` between backward and the optimizer step, interleaved (alternating order, same
random draws) so machine load hits both alike; ``ratio`` is the ratio of the medians (wall
clock; ``cpu_ratio`` the same with process CPU time). Because a shared machine moves single step
times by more than the 3% being measured, the time spent inside ``mon.step`` is also timed in
each monitored step: ``in_situ_ratio = (median bare step + amortized median time in mon.step) /
median bare step``, the amortized time adding, for one step in ``ratio_every`` (10), the extra
cost of a step that computes Adam's update directions (timed on a monitor with
``ratio_every=1``). Histograms are off (``hist_every=0``); a histogram step is timed apart.
The monitors write to real ``SummaryWriter``s in a temporary folder. Target: <= 1.03.

Run: ``python -m benchmarks.bench_monitor [--repeats 9] [--models paraformer,sgmse,...]``
(writes docs/results/monitor.json).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable

import torch

import contracts

MODELS = ("paraformer", "sgmse", "diffusion_buffer", "audiosr")


def _paraformer() -> tuple[torch.nn.Module, Callable[[], torch.Tensor]]:
    from models.paraformer import Paraformer, ParaformerConfig, ToySeq2SeqDataset, collate_fn
    from models.paraformer._train import unpack_batch

    cfg = ParaformerConfig()
    ds = ToySeq2SeqDataset(cfg, num_samples=cfg.batch_size)
    f, t, _, _, fm, tm = unpack_batch(collate_fn([ds[i] for i in range(cfg.batch_size)]))
    model = Paraformer(cfg)
    return model, lambda: model(f, t, fm, tm)["loss"]


def _sgmse() -> tuple[torch.nn.Module, Callable[[], torch.Tensor]]:
    from models.audio import stft
    from models.sgmse import ScoreModel, ScoreModelConfig
    from models.sgmse._train import _batch, make_pool

    cfg = ScoreModelConfig()
    model = ScoreModel(cfg)
    pool = make_pool(8, 0, 1.0)
    gen = torch.Generator().manual_seed(0)
    clean, noisy, ref = _batch(pool, torch.arange(8), 63 * cfg.hop, gen)
    x0, y = stft(clean, cfg.stft), stft(noisy, cfg.stft)  # (B, F, 64)
    return model, lambda: model.loss(x0, y, ref)


def _diffusion_buffer() -> tuple[torch.nn.Module, Callable[[], torch.Tensor]]:
    from models.diffusion_buffer import DiffusionBuffer, DiffusionBufferConfig
    from models.diffusion_buffer.train import _tensors

    model = DiffusionBuffer(DiffusionBufferConfig(buffer_size=8))
    noisy, clean = _tensors(8, 0, 0.5, "train")
    return model, lambda: model(noisy, clean)


def _audiosr() -> tuple[torch.nn.Module, Callable[[], torch.Tensor]]:
    from models.audiosr import AudioSR, AudioSRConfig
    from models.audiosr.train import _waves

    model = AudioSR(AudioSRConfig(use_global_encoder=True))
    (wave,) = _waves(8, 0, 0.5, "train")
    return model, lambda: model(wave)


def measure(name: str, repeats: int) -> dict[str, float]:
    """Median seconds of a bare and a monitored step, their ratio, and a histogram step."""
    from diagnostics import TrainingMonitor

    torch.manual_seed(0)
    model, loss_fn = {"paraformer": _paraformer, "sgmse": _sgmse,
                      "diffusion_buffer": _diffusion_buffer, "audiosr": _audiosr}[name]()  # fmt: skip
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    own: dict[str, list[float]] = {"default": [], "ratio": [], "hist": []}
    with tempfile.TemporaryDirectory() as tmp:
        mons = {  # every=1; "ratio": Adam update ratios at every step; "hist": histograms too
            "default": TrainingMonitor(model, tmp + "/d", optimizer=opt, hist_every=0),
            "ratio": TrainingMonitor(model, tmp + "/r", optimizer=opt, hist_every=0, ratio_every=1),
            "hist": TrainingMonitor(model, tmp + "/h", optimizer=opt, hist_every=1),
        }

        def step(which: str | None, i: int) -> tuple[float, float]:
            torch.manual_seed(i)  # every variant draws the same random numbers: the same work
            t0, c0 = time.perf_counter(), time.process_time()
            loss = loss_fn()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if which is not None:
                m0 = time.perf_counter()
                mons[which].step(i, loss=loss)
                own[which].append(time.perf_counter() - m0)
            opt.step()
            return time.perf_counter() - t0, time.process_time() - c0

        for i in range(2):  # warm-up (allocator, writer threads, index caches, Adam state)
            for which in (None, *mons):
                step(which, i)
        for v in own.values():
            v.clear()  # own: time spent inside mon.step, measured in situ
        bare, moni, histo = [], [], []
        for i in range(repeats):
            if i % 2:  # alternate which variant runs first
                bare.append(step(None, i))
                moni.append(step("default", i))
            else:
                moni.append(step("default", i))
                bare.append(step(None, i))
            step("ratio", i)
            if i % 3 == 0:
                histo.append(step("hist", i))
        for mon in mons.values():
            mon.close()
    b, m, h = (statistics.median(t for t, _ in v) for v in (bare, moni, histo))
    bc, mc = (statistics.median(c for _, c in v) for v in (bare, moni))
    o, r, oh = (statistics.median(own[k]) for k in ("default", "ratio", "hist"))
    every = mons["default"].cfg.ratio_every
    amortized = o + (r - o) / every  # one step in ratio_every computes Adam's directions
    return {
        "step_ms": round(b * 1e3, 2),
        "monitor_step_ms": round(o * 1e3, 3),
        "monitor_ratio_step_ms": round(r * 1e3, 3),
        "monitor_histogram_step_ms": round(oh * 1e3, 3),
        "ratio_every": every,
        "in_situ_ratio": round((b + amortized) / b, 4),
        "in_situ_ratio_every_step_adam_ratios": round((b + r) / b, 4),
        "monitored_ms": round(m * 1e3, 2),
        "ratio": round(m / b, 4),
        "cpu_ratio": round(mc / bc, 4),
        "histogram_step_ms": round(h * 1e3, 2),
        "parameters": sum(p.numel() for p in model.parameters()),
        "groups": len(mons["default"].groups),
        "repeats": repeats,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.bench_monitor", description=__doc__)
    ap.add_argument("--repeats", type=int, default=9, help="interleaved pairs per model")
    ap.add_argument("--models", default=",".join(MODELS), help="comma-separated subset")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--no-write", action="store_true", help="print only")
    a = ap.parse_args(argv)
    names = [n for n in a.models.split(",") if n]
    bad = [n for n in names if n not in MODELS]
    if bad or a.repeats < 3:
        print(f"error: unknown --models {bad} (valid: {', '.join(MODELS)}) or --repeats < 3",
              file=sys.stderr)  # fmt: skip
        return 2
    torch.set_num_threads(a.threads)
    from tqdm import tqdm

    figures: dict[str, dict[str, float]] = {}
    with contracts.mode("off"):  # the monitor's cost, not the contracts'
        for n in tqdm(names, desc="bench_monitor"):
            figures[n] = measure(n, a.repeats)
            print(f"{n}: {figures[n]}", flush=True)
    figures_all = {
        "models": figures,
        "max_ratio": max(f["ratio"] for f in figures.values()),
        "max_in_situ_ratio": max(f["in_situ_ratio"] for f in figures.values()),
        "max_cpu_ratio": max(f["cpu_ratio"] for f in figures.values()),
        "target_ratio": 1.03,
    }
    if not a.no_write:
        from benchmarks._results import write_results

        cmd = "python -m benchmarks.bench_monitor " + " ".join(argv or sys.argv[1:])
        write_results("monitor", figures_all, command=cmd.strip())
    return 0


if __name__ == "__main__":
    sys.exit(main())
