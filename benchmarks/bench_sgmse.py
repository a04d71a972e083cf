"""SGMSE+ reference model: enhancement quality on held-out synthetic mixtures, and speed.

Measures, in one process:
- SI-SDR improvement (enhanced - noisy) over ``--n`` held-out mixtures, mean +- 95% CI, for the
  shipped conditioned model (CFG p=0.2, guidance w=1) and the unconditional baseline;
- the paired difference cond - uncond (mean +- 95% CI), overall and per noise type;
- PESQ (wide band) of noisy / cond / uncond;
- seconds to enhance one 2 s clip with N=30 and one corrector step (median of repeats).

Usage: python benchmarks/bench_sgmse.py [--n 54] [--N 30] [--threads 2] [--split heldout]
"""

from __future__ import annotations

import argparse
import math
import statistics
import time

import torch

from models.audio import make_mixtures, pesq_score, si_sdr
from models.sgmse import enhance, enhance_batch, load_pretrained


def ci95(xs: list[float]) -> tuple[float, float]:
    m = statistics.fmean(xs)
    h = 1.96 * statistics.stdev(xs) / math.sqrt(len(xs)) if len(xs) > 1 else float("nan")
    return m, h


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--n", type=int, default=54)
    p.add_argument("--N", type=int, default=30)
    p.add_argument("--split", default="heldout")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--chunk", type=int, default=18)
    p.add_argument("--guidance", type=float, default=1.0)
    p.add_argument("--timing-repeats", type=int, default=3)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    mixes = make_mixtures(args.split, args.n, seed=0)
    noisy = torch.stack([m.noisy for m in mixes])
    clean = torch.stack([m.clean for m in mixes])
    refs = torch.stack([m.noise_ref for m in mixes])
    base = si_sdr(noisy, clean)
    models = {"cond": load_pretrained("cond"), "uncond": load_pretrained("uncond")}
    est = {}
    for name, model in models.items():
        assert model.weights_used == "ema", name
        t0 = time.perf_counter()
        outs = []
        for i in range(0, args.n, args.chunk):
            ref = refs[i : i + args.chunk] if name == "cond" else None
            outs.append(
                enhance_batch(model, noisy[i : i + args.chunk], ref, N=args.N,
                              guidance_scale=args.guidance, seed=0)
            )  # fmt: skip
        est[name] = torch.cat(outs)
        print(f"[{name}] enhanced {args.n} clips in {time.perf_counter() - t0:.0f} s", flush=True)
    imp = {k: (si_sdr(v, clean) - base).tolist() for k, v in est.items()}
    print(f"\n## {args.split}: {args.n} mixtures, N={args.N}, 1 corrector step, w={args.guidance}")
    m, h = ci95(base.tolist())
    print(f"noisy SI-SDR: {m:.2f} +- {h:.2f} dB")
    for k in est:
        m, h = ci95(imp[k])
        print(f"SI-SDR improvement [{k}]: {m:+.2f} +- {h:.2f} dB")
    diff = [a - b for a, b in zip(imp["cond"], imp["uncond"], strict=True)]
    m, h = ci95(diff)
    print(f"cond - uncond (paired): {m:+.2f} +- {h:.2f} dB")
    pesq = {"noisy": [pesq_score(n, c) for n, c in zip(noisy, clean, strict=True)]}
    for k, v in est.items():
        pesq[k] = [pesq_score(e, c) for e, c in zip(v, clean, strict=True)]
    for k, v in pesq.items():
        m, h = ci95(v)
        print(f"PESQ-WB [{k}]: {m:.2f} +- {h:.2f}")
    print("\nper noise type: SI-SDRi cond | uncond | cond-uncond (dB)")
    for nt in sorted({m.noise_type for m in mixes}):
        idx = [i for i, m in enumerate(mixes) if m.noise_type == nt]
        c = statistics.fmean(imp["cond"][i] for i in idx)
        u = statistics.fmean(imp["uncond"][i] for i in idx)
        print(f"  {nt:8s} n={len(idx):2d}  {c:+6.2f} | {u:+6.2f} | {c - u:+6.2f}")
    # speed: one 2 s clip, N=30, one corrector step (60 network calls)
    mix2 = make_mixtures("heldout", 1, seed=1, seconds=2.0)[0]
    for name, model in models.items():
        ref = mix2.noise_ref if name == "cond" else None
        times = []
        for _ in range(args.timing_repeats):
            t0 = time.perf_counter()
            enhance(model, mix2.noisy, ref, N=30, corrector_steps=1)
            times.append(time.perf_counter() - t0)
        print(f"enhance 2 s clip [{name}], N=30, 1 corrector, {args.threads} threads: "
              f"median {statistics.median(times):.2f} s over {len(times)}")  # fmt: skip


if __name__ == "__main__":
    main()
