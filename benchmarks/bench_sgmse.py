"""SGMSE+ reference model: enhancement quality on held-out synthetic mixtures, and speed.

Measures, in one process:
- SI-SDR improvement (enhanced - noisy) over ``--n`` held-out mixtures, mean +- 95% CI, for the
  shipped conditioned model (CFG p=0.2, guidance w=1) and the unconditional baseline;
- the paired difference cond - uncond (mean +- 95% CI), overall and per noise type;
- PESQ (wide band) of noisy / cond / uncond;
- seconds to enhance one 2 s clip with N=30 and one corrector step (median of repeats).

Every figure goes to ``docs/results/sgmse.json`` (``write_results``), which docs/SGMSE.md quotes
through ``<!-- fig sgmse:... -->`` markers; the shipped checkpoints' own metadata (steps, training
seconds, final loss) is copied beside them. The clips are enhanced in chunks of ``--chunk``
(one sampler call, so one noise generator seeded with 0, per chunk): another chunking draws
other sampler noise and gives (slightly) other figures.

Usage: python -m benchmarks.bench_sgmse [--n 54] [--N 30] [--threads 2] [--split heldout]
(about 9 minutes at the defaults on two CPU cores)
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time

import torch

from models.audio import make_mixtures, pesq_score, si_sdr
from models.sgmse import enhance, enhance_batch, load_pretrained


def _mci(xs: list[float]) -> dict[str, float]:
    m, h = ci95(xs)
    return {"mean": round(m, 4), "ci95": round(h, 4), "n": len(xs)}


def ci95(xs: list[float]) -> tuple[float, float]:
    m = statistics.fmean(xs)
    h = 1.96 * statistics.stdev(xs) / math.sqrt(len(xs)) if len(xs) > 1 else float("nan")
    return m, h


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.bench_sgmse", description=__doc__)
    p.add_argument("--n", type=int, default=54)
    p.add_argument("--N", type=int, default=30)
    p.add_argument("--split", default="heldout")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--chunk", type=int, default=18)
    p.add_argument("--guidance", type=float, default=1.0)
    p.add_argument("--timing-repeats", type=int, default=3)
    p.add_argument("--no-write", action="store_true", help="print only (no results file)")
    args = p.parse_args(argv)
    if args.n < 2 or args.N < 1 or args.chunk < 1 or args.threads < 1:
        print("error: --n must be >= 2 and --N, --chunk, --threads >= 1", file=sys.stderr)
        return 2
    t_start = time.perf_counter()
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
    per_type = {}
    for nt in sorted({m.noise_type for m in mixes}):
        idx = [i for i, m in enumerate(mixes) if m.noise_type == nt]
        c = statistics.fmean(imp["cond"][i] for i in idx)
        u = statistics.fmean(imp["uncond"][i] for i in idx)
        print(f"  {nt:8s} n={len(idx):2d}  {c:+6.2f} | {u:+6.2f} | {c - u:+6.2f}")
        per_type[nt] = {"n": len(idx), "cond": round(c, 4), "uncond": round(u, 4),
                        "cond_minus_uncond": round(c - u, 4)}  # fmt: skip
    # speed: one 2 s clip, N=30, one corrector step (60 network calls)
    mix2 = make_mixtures("heldout", 1, seed=1, seconds=2.0)[0]
    seconds = {}
    for name, model in models.items():
        ref = mix2.noise_ref if name == "cond" else None
        times = []
        for _ in range(args.timing_repeats):
            t0 = time.perf_counter()
            enhance(model, mix2.noisy, ref, N=30, corrector_steps=1)
            times.append(time.perf_counter() - t0)
        seconds[name] = round(statistics.median(times), 3)
        print(f"enhance 2 s clip [{name}], N=30, 1 corrector, {args.threads} threads: "
              f"median {statistics.median(times):.2f} s over {len(times)}")  # fmt: skip
    figures = {
        "setup": {
            "n": args.n,
            "N": args.N,
            "split": args.split,
            "guidance": args.guidance,
            "chunk": args.chunk,
            "corrector_steps": 1,
            "weights": "ema",
        },
        "noisy_si_sdr": _mci(base.tolist()),
        "si_sdr_improvement": {k: _mci(v) for k, v in imp.items()},
        "cond_minus_uncond": _mci(diff),
        "pesq_wb": {k: _mci(v) for k, v in pesq.items()},
        "per_noise_type": per_type,
        "enhance_2s_clip_seconds": seconds,
        "checkpoints": {
            k: {
                "step": m.checkpoint.get("step"),
                "train_seconds": round(float(m.checkpoint.get("train_seconds") or 0), 1),
                "final_loss": round(float(m.checkpoint.get("final_loss") or float("nan")), 4),
            }
            for k, m in models.items()
        },
        "wall_seconds": round(time.perf_counter() - t_start, 1),
    }
    if not args.no_write:
        from benchmarks._results import write_results

        cmd = "python -m benchmarks.bench_sgmse " + " ".join(sys.argv[1:] if argv is None else argv)
        print(f"wrote {write_results('sgmse', figures, command=cmd.strip())}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
