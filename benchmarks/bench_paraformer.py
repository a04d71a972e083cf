"""Paraformer reference model: toy training time-to-accuracy.

Train on the toy data (default config, CPU) until held-out token accuracy >= 0.90 or 3 minutes;
print steps, seconds and accuracy. Then the run ``python -m models.paraformer.train --steps 300``
makes (its defaults), timed. (The contract cost of its training step is measured once, by
``python -m benchmarks.bench_contracts``.)

Usage: python -m benchmarks.bench_paraformer [--threads 1] [--cli-steps 300]
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
        **_run_figures(res),
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
    return _run_figures(res)


def _run_figures(res: dict[str, Any]) -> dict[str, Any]:
    """Steps, seconds and held-out accuracies of one ``fit`` result."""
    v = res["val"]
    return {
        "steps": res["steps"],
        "seconds": round(res["seconds"], 1),
        **{k: round(v[k], 4) for k in ("token_accuracy", "sequence_accuracy", "length_accuracy")},
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m benchmarks.bench_paraformer", description=__doc__.splitlines()[0]
    )
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--cli-steps", type=int, default=300, help="the CLI-equivalent run (0: skip)")
    ap.add_argument("--no-write", action="store_true", help="print only (no results file)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    figures: dict[str, Any] = {"train_to_accuracy": bench_training(args.threads)}
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
