"""Per-call cost of @contract, as ratios against a plain call and jaxtyping in one process.

Cases, on two [8, 16] tensors plus the return (fresh copies for every call, so no call can reuse
what an earlier one learnt about its tensors; the overhead figures subtract the plain call on the
same copies), timed interleaved (round-robin over the cases, median of rounds) so machine load hits all alike:
  plain call | contracts off | contracts shapes | contracts full (no value constraints) |
  contracts full with three constraints (Range + Mask + Range on the return) |
  jaxtyping.jaxtyped + beartype (the hand-written alternative)
plus the Paraformer training step with contracts full vs off (process CPU time, shuffled order:
``benchmarks._timing``; in each of five fresh processes the median of three blocks, the median
process reported with the spread across processes), and the Paraformer encoder compiled
(torch.compile, aot_eager, fullgraph) with contracts shapes/full vs off.

Writes docs/results/contracts.json.

Run: python -m benchmarks.bench_contracts [--rounds 15] [--calls 4000] [--processes 5] [--no-write]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Annotated, Any

import torch
from beartype import beartype
from jaxtyping import Bool, Float, jaxtyped
from torch import Tensor

import contracts
from benchmarks._results import write_results
from benchmarks._timing import time_variants
from contracts import Mask, Range, contract


def plain(a, b):
    return a


@contract
def checked(a: Float[Tensor, "B T"], b: Float[Tensor, "B T"]) -> Float[Tensor, "B T"]:
    return a


@contract
def checked_values(
    a: Annotated[Float[Tensor, "B T"], Range(-10, 10)],
    b: Annotated[Bool[Tensor, "B T"], Mask()],
) -> Annotated[Float[Tensor, "B T"], Range(-10, 10)]:
    return a


@jaxtyped(typechecker=beartype)
def jt(a: Float[Tensor, "B T"], b: Float[Tensor, "B T"]) -> Float[Tensor, "B T"]:
    return a


def _timer(fn: Callable, args: tuple, mode: str, n: int) -> Callable[[], float]:
    """µs per call of ``fn`` on fresh copies of ``args``: every call gets new tensors, just
    written (so in cache, as a model's activations are), and nothing learnt about one call's
    tensors can be reused by the next. The copies cost the same in every case; the plain case
    subtracts them."""
    clone = torch.Tensor.clone

    def run() -> float:
        with contracts.mode(mode):
            t0 = time.perf_counter()
            for _ in range(n):
                fn(*map(clone, args))
            return (time.perf_counter() - t0) / n * 1e6

    return run


def interleaved(cases: dict[str, Callable[[], float]], rounds: int) -> dict[str, float]:
    """Median of ``rounds`` round-robin timings of every case (one warm-up round first)."""
    for run in cases.values():
        run()
    got: dict[str, list[float]] = {k: [] for k in cases}
    for _ in range(rounds):
        for k, run in cases.items():
            got[k].append(run())
    return {k: statistics.median(v) for k, v in got.items()}


def per_call(rounds: int, n: int) -> dict[str, float]:
    """µs per call, copies of the arguments included (``plain`` is the copies and the call)."""
    torch.manual_seed(0)
    a, b = torch.randn(8, 16), torch.randn(8, 16)
    m = torch.rand(8, 16) > 0.2
    cases = {
        "plain": _timer(plain, (a, b), "full", n),
        "off": _timer(checked, (a, b), "off", n),
        "shapes": _timer(checked, (a, b), "shapes", n),
        "full_no_constraints": _timer(checked, (a, b), "full", n),
        "full_three_constraints": _timer(checked_values, (a, m), "full", n),
        "jaxtyping_beartype": _timer(jt, (a, b), "off", n),
    }
    return interleaved(cases, rounds)


def paraformer_setup() -> tuple[torch.nn.Module, Any, Callable[[], None]]:
    """The benchmarked Paraformer, one batch, and its training step (SGD with lr 0: the same
    step every time)."""
    from models.paraformer import Paraformer, ParaformerConfig, ToySeq2SeqDataset, collate_fn
    from models.paraformer._train import train_step

    cfg = ParaformerConfig()
    torch.manual_seed(0)
    ds = ToySeq2SeqDataset(cfg, num_samples=cfg.batch_size)
    batch = collate_fn([ds[i] for i in range(cfg.batch_size)])
    model = Paraformer(cfg)
    opt = torch.optim.SGD(model.parameters(), lr=0.0)

    def step() -> None:
        train_step(model, batch, opt)

    return model, batch, step


def paraformer_step(rounds: int, blocks: int = 3) -> dict[str, Any]:
    """Contracts full / shapes / off (and off again) on the Paraformer training step.

    ``blocks`` independent blocks of ``rounds`` shuffled rounds each: the figures are the
    median block's, and ``spread`` gives each ratio's lowest and highest block (this shared
    machine moves such ratios by about a percent from one block to the next).
    """
    _model, _batch, train = paraformer_setup()

    def step(mode: str) -> Callable[[], None]:
        def run() -> None:
            with contracts.mode(mode):
                train()

        return run

    variants = {"full": step("full"), "shapes": step("shapes"), "off": step("off")}
    variants["off_again"] = step("off")  # an A/A pair: the noise floor of the ratios
    runs = []
    for _ in range(blocks):
        t = time_variants(variants, rounds)
        runs.append(_vs_off({k: v[1] * 1e3 for k, v in t.items()}))  # process CPU ms
    runs.sort(key=lambda r: r["ratio_full_vs_off"])
    out: dict[str, Any] = dict(runs[len(runs) // 2])
    out["spread"] = {
        k: [min(r[k] for r in runs), max(r[k] for r in runs)] for k in out if k.startswith("ratio_")
    }
    out["blocks"] = blocks
    return out


def step_in_fresh_process(
    rounds: int, blocks: int = 3, module: str = "benchmarks.bench_contracts", *extra: str
) -> dict[str, Any]:
    """:func:`paraformer_step` run by ``python -m MODULE --step-only`` (plus ``extra``) in a
    fresh process, its JSON read back."""
    cmd = [sys.executable, "-m", module, "--step-only", "--step-rounds", str(rounds)]
    cmd += ["--blocks", str(blocks), *extra]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[2:])} failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def paraformer_step_processes(procs: int, rounds: int, blocks: int = 3) -> dict[str, Any]:
    """:func:`paraformer_step` in ``procs`` fresh processes, each its own baseline.

    The ratio moves by about half a percent from one process to the next (memory layout, which
    code lands in which cache lines), more than from block to block within one process; the
    figures are the median process's, ``per_process`` lists every process's ratio and
    ``spread`` each ratio's lowest and highest process.
    """
    runs = []
    for i in range(procs):
        runs.append(step_in_fresh_process(rounds, blocks))
        print(f"  process {i + 1}/{procs}: full {runs[-1]['ratio_full_vs_off']:.4f}x", flush=True)
    runs.sort(key=lambda r: r["ratio_full_vs_off"])
    out: dict[str, Any] = dict(runs[len(runs) // 2])
    ratios = [k for k in out if k.startswith("ratio_")]
    out["spread"] = {k: [min(r[k] for r in runs), max(r[k] for r in runs)] for k in ratios}
    out["per_process"] = [r["ratio_full_vs_off"] for r in runs]
    out["processes"] = procs
    return out


def compiled_encoder(rounds: int) -> dict[str, float]:
    """The Paraformer encoder compiled (aot_eager, fullgraph) with contracts vs without."""
    import torch._dynamo

    from models.paraformer import ParaformerConfig
    from models.paraformer._model import Encoder

    torch.manual_seed(0)
    enc = Encoder(ParaformerConfig.tiny()).eval()
    x = torch.rand(4, 50, enc.cfg.n_feats) * 2 - 1
    m = torch.ones(4, 50, dtype=torch.bool)
    torch._dynamo.reset()
    g = torch.compile(enc, backend="aot_eager", fullgraph=True)

    def run(mode: str) -> Callable[[], float]:
        def one() -> float:
            with contracts.mode(mode), torch.no_grad():
                t0 = time.perf_counter()
                for _ in range(20):
                    g(x, m)
                return (time.perf_counter() - t0) / 20 * 1e3

        return one

    return _vs_off(interleaved({k: run(k) for k in ("off", "shapes", "full")}, rounds))


def rounded(x: Any, digits: int = 4) -> Any:
    """``x`` with every float in it (through dicts and lists) rounded to ``digits``."""
    if isinstance(x, float):
        return round(x, digits)
    if isinstance(x, dict):
        return {k: rounded(v, digits) for k, v in x.items()}
    if isinstance(x, list):
        return [rounded(v, digits) for v in x]
    return x


def _vs_off(ms: dict[str, float]) -> dict[str, float]:
    """``ms_<mode>`` per mode and ``ratio_<mode>_vs_off`` for every other variant."""
    out = {f"ms_{k}": v for k, v in ms.items() if k != "off_again"}
    out.update({f"ratio_{k}_vs_off": v / ms["off"] for k, v in ms.items() if k != "off"})
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.bench_contracts",
        description="Measure the per-call cost of @contract against a plain call and "
        "jaxtyping+beartype (interleaved, one process), the Paraformer training step with "
        "contracts full vs off and the compiled encoder with contracts vs without; write "
        "docs/results/contracts.json.",
    )
    p.add_argument("--rounds", type=int, default=15, help="round-robin rounds (median taken)")
    p.add_argument("--calls", type=int, default=4000, help="calls per case per round")
    p.add_argument(
        "--step-rounds",
        type=int,
        default=100,
        help="rounds for the training step (and compiled encoder)",
    )
    p.add_argument(
        "--processes",
        type=int,
        default=5,
        help="fresh processes measuring the training step (the median process is reported)",
    )
    p.add_argument("--blocks", type=int, default=3, help="blocks of rounds in each process")
    p.add_argument(
        "--step-only",
        action="store_true",
        help="measure the training step in this process only and print it as JSON (what each "
        "of the --processes runs)",
    )
    p.add_argument("--no-write", action="store_true", help="print only, do not write results")
    args = p.parse_args(argv)
    if min(args.rounds, args.calls, args.step_rounds, args.processes, args.blocks) < 1:
        p.error("--rounds, --calls, --step-rounds, --processes and --blocks must be >= 1")
    torch.set_num_threads(1)
    if args.step_only:
        print(json.dumps(paraformer_step(args.step_rounds, args.blocks)))
        return 0
    us = per_call(args.rounds, args.calls)
    base = us["plain"]  # the argument copies and a plain call
    over = {k: v - base for k, v in us.items() if k != "plain"}
    jt = over["jaxtyping_beartype"]
    print(f"{'case':28s} {'µs/call':>9s} {'overhead µs':>12s} {'vs jaxtyping':>13s}")
    for k, v in us.items():
        o = v - base
        print(f"{k:28s} {v:9.2f} {o:12.2f} {o / jt:12.3f}x")
    step = paraformer_step_processes(args.processes, args.step_rounds, args.blocks)
    print(
        f"paraformer training step: full {step['ms_full']:.2f} ms, off {step['ms_off']:.2f} ms, "
        f"ratio {step['ratio_full_vs_off']:.3f}x (shapes {step['ratio_shapes_vs_off']:.3f}x, "
        f"off vs off {step['ratio_off_again_vs_off']:.3f}x); full over {step['processes']} "
        f"processes: {step['spread']['ratio_full_vs_off'][0]:.3f}-"
        f"{step['spread']['ratio_full_vs_off'][1]:.3f}x"
    )
    comp = compiled_encoder(args.step_rounds)
    print(
        f"compiled Paraformer encoder: off {comp['ms_off']:.3f} ms, shapes {comp['ms_shapes']:.3f}"
        f" ms ({comp['ratio_shapes_vs_off']:.3f}x), full {comp['ms_full']:.3f} ms "
        f"({comp['ratio_full_vs_off']:.3f}x)"
    )
    figures = {
        "per_call_us": {k: round(v, 3) for k, v in us.items()},  # with the argument copies
        "overhead_us": {k: round(v, 3) for k, v in over.items()},  # the checks alone
        "vs_jaxtyping": {k: round(v / jt, 3) for k, v in over.items()},  # overhead vs overhead
        "paraformer_step": rounded(step),
        "compiled_encoder": {k: round(v, 4) for k, v in comp.items()},
    }
    if not args.no_write:
        path = write_results("contracts", figures, command="python -m benchmarks.bench_contracts")
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
