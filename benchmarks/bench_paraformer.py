"""Paraformer reference model: toy training time-to-accuracy, and contract overhead.

1. Train on the toy data (default config, CPU) until held-out token accuracy >= 0.90 or
   3 minutes; print steps, seconds and accuracy. Then the run ``python -m models.paraformer.train
   --steps 300`` makes (its defaults), timed.
2. Contract cost per training step: full mode vs off (and shapes, and an off vs off pair for
   the noise floor), shuffled in one process, medians of process CPU time; target <= 1.10.

Usage: python -m benchmarks.bench_paraformer [--threads 1] [--skip-train] [--repeats 150]
(writes docs/results/paraformer.json, which docs/PARAFORMER.md quotes).
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

import torch

import contracts
from models.paraformer import ParaformerConfig, fit


def bench_training(threads: int) -> dict[str, Any]:
    cfg = ParaformerConfig()
    res = fit(
        cfg, steps=1500, eval_every=25, target_accuracy=0.90, time_budget_s=180, progress=False
    )
    v = res["val"]
    print(
        f"train-to-accuracy: {res['steps']} steps, {res['seconds']:.1f} s "
        f"(threads={threads}, contracts={contracts.get_mode()}), held-out token_accuracy="
        f"{v['token_accuracy']:.3f}, sequence_accuracy={v['sequence_accuracy']:.3f}, "
        f"length_accuracy={v['length_accuracy']:.3f}"
    )
    first = next((h for h in res["history"] if h["token_accuracy"] >= 0.9), None)
    when = f"yes at step {first['step']}, {first['seconds']:.1f} s" if first else "no"
    print(f"  reached 0.90: {when}")
    return {
        "steps": res["steps"],
        "seconds": round(res["seconds"], 1),
        "token_accuracy": round(v["token_accuracy"], 4),
        "sequence_accuracy": round(v["sequence_accuracy"], 4),
        "length_accuracy": round(v["length_accuracy"], 4),
        "reached_0.90_at_step": first["step"] if first else None,
        "reached_0.90_at_seconds": round(first["seconds"], 1) if first else None,
        "d_model": cfg.d_model,
        "batch_size": cfg.batch_size,
        "contracts": contracts.get_mode(),
    }


def bench_cli_run(steps: int) -> dict[str, Any]:
    """What ``python -m models.paraformer.train --steps N`` does (its defaults), timed."""
    res = fit(ParaformerConfig(), steps=steps, progress=False)
    v = res["val"]
    print(
        f"fit({steps} steps, CLI defaults): {res['seconds']:.1f} s, token_accuracy "
        f"{v['token_accuracy']:.3f}, sequence_accuracy {v['sequence_accuracy']:.3f}, "
        f"length_accuracy {v['length_accuracy']:.3f}"
    )
    return {
        "steps": res["steps"],
        "seconds": round(res["seconds"], 1),
        "token_accuracy": round(v["token_accuracy"], 4),
        "sequence_accuracy": round(v["sequence_accuracy"], 4),
        "length_accuracy": round(v["length_accuracy"], 4),
    }


def bench_overhead(repeats: int) -> dict[str, Any]:
    """Contracts full vs off on ``train_step``: the one measurement of ``bench_contracts``
    (process CPU time, shuffled order, with shapes mode and an A/A pair beside)."""
    from benchmarks.bench_contracts import paraformer_step

    cfg = ParaformerConfig()
    got = paraformer_step(repeats)
    print(
        f"contract overhead per train_step (B={cfg.batch_size}, D={cfg.d_model}): full "
        f"{got['ms_full']:.1f} ms vs off {got['ms_off']:.1f} ms -> ratio "
        f"{got['ratio_full_vs_off']:.3f} (shapes {got['ratio_shapes_vs_off']:.3f}; off vs off "
        f"{got['ratio_off_again_vs_off']:.3f}; target <= 1.10)"
    )
    return {
        "full_ms": round(got["ms_full"], 2),
        "off_ms": round(got["ms_off"], 2),
        "ratio": round(got["ratio_full_vs_off"], 4),
        "ratio_shapes": round(got["ratio_shapes_vs_off"], 4),
        "ratio_off_vs_off": round(got["ratio_off_again_vs_off"], 4),
        "batch_size": cfg.batch_size,
        "repeats": repeats,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m benchmarks.bench_paraformer", description=__doc__.splitlines()[0]
    )
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=150, help="rounds of the contract-cost pair")
    ap.add_argument("--skip-train", action="store_true")
    ap.add_argument("--cli-steps", type=int, default=300, help="the CLI-equivalent run (0: skip)")
    ap.add_argument("--no-write", action="store_true", help="print only (no results file)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    figures: dict[str, Any] = {"contract_overhead": bench_overhead(args.repeats)}
    if not args.skip_train:
        figures["train_to_accuracy"] = bench_training(args.threads)
        if args.cli_steps > 0:
            figures["cli_run"] = bench_cli_run(args.cli_steps)
    if not args.no_write:
        from benchmarks._results import write_results

        cmd = "python -m benchmarks.bench_paraformer " + " ".join(
            sys.argv[1:] if argv is None else argv
        )
        print(f"wrote {write_results('paraformer', figures, command=cmd.strip())}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
