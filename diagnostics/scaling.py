"""``python -m diagnostics.scaling``: cost versus input size, measured.

With no ``--target`` it runs the embedded default (the seeds' claims): the Paraformer encoder
over sequence length ``T`` and the AudioSR-style global encoder over ``duration`` (seconds) and
``batch``. With ``--target MODULE:FACTORY`` (or ``path/to/file.py:FACTORY``) the factory returns
a ``diagnostics.ScalingTarget``; ``--axis`` picks one of its axes (default: all of them).

    python -m diagnostics.scaling
    python -m diagnostics.scaling --target mypkg.targets:make --axis T --sizes 500,1000,2000,4000
    python -m diagnostics.scaling --axis T --sizes 256,512,1024 --backward --memory-budget 24GiB

Per size: median wall time over ``--repeats`` after warm-up (no hooks on the timed call), peak
memory (CPU: torch.profiler allocation events; CUDA: the caching allocator's peak), both per
module too; log-log exponents with bootstrap CIs over the upper half of the sizes; super-linear
growth flagged with the module responsible; the largest size within ``--memory-budget``.
Writes ``report.json``, ``report.md``, ``scaling.png`` and ``tensorboard/`` under ``--out``.

The model is left as found: its device, gradients, buffers (batch-norm statistics a
training-mode forward updates) and the global RNG state (dropout draws) are restored.

Exit status: 0 when the run completed (whatever it found); 2 for bad arguments or input (sizes
not increasing, fewer than 3 sizes, an unknown axis, a bad budget, a bad target, an ``--out``
that cannot be written), with one line on stderr; 130 when interrupted (Ctrl-C: the runs
completed so far are written).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any

from contracts import TorchdxError
from contracts.cli import ArgumentParser, TargetSpecError, pick_threads, unwritable
from contracts.cli import load_target as load_spec

__all__ = ["load_target", "main"]

_PROG = "python -m diagnostics.scaling"


def _parser() -> argparse.ArgumentParser:
    p = ArgumentParser(
        formatter_class=argparse.HelpFormatter,
        prog=_PROG,
        description="How do time and peak memory grow with input size, and which module grows "
        "fastest? For each size: the median wall time over repeats (forward under no_grad, or "
        "forward + backward with --backward) and the peak memory (CPU: torch.profiler "
        "allocation/free events; CUDA: torch.cuda.max_memory_allocated), in total and per "
        "module. Fits log-log exponents with 95% bootstrap CIs over the upper half of the "
        "sizes, flags super-linear growth naming the module responsible, and extrapolates the "
        "largest size that fits --memory-budget. With no --target: the Paraformer encoder over "
        "T and the AudioSR-style global encoder over duration (s) and batch.",
        epilog="Outputs under --out: report.json ({axis, sizes, total: {seconds, peak_bytes, "
        "exponent: {time, memory}}, modules, max_size_within_budget, findings}; several runs: "
        "one folder each plus a combined report.json), report.md, scaling.png, tensorboard/. "
        "Exit status: 0 when the run completed; 2 for bad arguments or input, with one line on "
        "stderr; 130 when interrupted (the runs completed so far are written). "
        "Examples: %(prog)s | %(prog)s --axis T --sizes 256,512,1024,2048 | "
        "%(prog)s --target mypkg.targets:make --axis T --device cuda --memory-budget 24GiB",
    )
    p.add_argument(
        "--target",
        metavar="MODULE:FACTORY",
        help="MODULE:FACTORY or path/to/file.py:FACTORY returning a diagnostics.ScalingTarget "
        "(default: the embedded Paraformer encoder + global encoder runs)",
    )
    p.add_argument("--axis", help="the axis to sweep (default: every axis of the target)")
    p.add_argument(
        "--sizes",
        help="comma-separated increasing sizes, at least 3, e.g. 100,200,400,800 (default: the "
        "target's own sizes for the axis)",
    )
    p.add_argument("--backward", action="store_true", help="time forward + backward")
    p.add_argument("--device", default="cpu", help="cpu or cuda[:N] (default cpu)")
    p.add_argument(
        "--memory-budget",
        metavar="BYTES",
        help="memory for the largest-size extrapolation, e.g. 24GiB, 512MiB (default: the "
        "device's total memory)",
    )
    p.add_argument("--out", help="output folder (default runs/scaling/<time>/)")
    p.add_argument("--repeats", type=int, default=7, help="timed calls per size (default 7)")
    p.add_argument("--warmup", type=int, default=1, help="untimed calls per size (default 1)")
    p.add_argument(
        "--memory-repeats", type=int, default=1, help="profiled calls per size (default 1)"
    )
    p.add_argument("--seed", type=int, default=0, help="seed handed to make_batch (default 0)")
    p.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch CPU threads (default: torch's, or 1 when the load average exceeds the "
        "cores: oversubscribed OpenMP threads spin and wreck timings)",
    )
    p.add_argument("--no-png", action="store_true", help="skip the log-log PNG")
    p.add_argument("--no-tensorboard", action="store_true", help="skip TensorBoard output")
    p.add_argument(
        "--update-docs",
        action="store_true",
        help="rewrite the generated scaling blocks of docs/CLAIMS.md and docs/PARAFORMER.md "
        "from this run (default target only)",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


class TargetLoadError(TorchdxError, ValueError):
    """The --target spec could not produce a ScalingTarget (message is the stderr line)."""


def load_target(spec: str) -> Any:
    """``MODULE:FACTORY`` or ``path/file.py:FACTORY`` called with no arguments.

    Raises:
        TargetLoadError: the module, the factory or its result is wrong.
    """
    from diagnostics._scaling import ScalingTarget

    try:
        return load_spec(spec, ScalingTarget)
    except TargetSpecError as e:
        raise TargetLoadError(str(e)) from None


def _device_memory(device: str) -> tuple[int | None, str]:
    import torch

    if device.startswith("cuda") and torch.cuda.is_available():
        idx = torch.device(device).index or 0
        return torch.cuda.get_device_properties(idx).total_memory, "CUDA device total memory"
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"), "physical RAM"
    except (ValueError, OSError, AttributeError):
        return None, "unknown"


def _fail(message: str) -> int:
    sys.stderr.write(f"scaling: error: {message.splitlines()[0]}\n")
    return 2


def _plan(args: argparse.Namespace) -> list[tuple[Any, str, list[int]]]:
    """(target, axis, sizes) per run; raises ScalingError / TargetLoadError for bad input."""
    from diagnostics._scaling import ScalingError, parse_sizes
    from diagnostics._scaling._default import DEFAULT_RUNS

    sizes = parse_sizes(args.sizes) if args.sizes is not None else None
    runs: list[tuple[Any, str]] = []
    if args.target is None:
        axes = [a for _, a in DEFAULT_RUNS]
        if args.axis is not None and args.axis not in axes:
            raise ScalingError(
                f"--axis {args.axis!r}: the default target has axes {', '.join(axes)}"
            )
        made: dict[Any, Any] = {}
        for factory, axis in DEFAULT_RUNS:
            if args.axis in (None, axis):
                if factory not in made:
                    made[factory] = factory()
                runs.append((made[factory], axis))
    else:
        target = load_target(args.target)
        if args.axis is not None and args.axis not in target.axes:
            raise ScalingError(
                f"--axis {args.axis!r}: target {target.name!r} has axes {', '.join(target.axes)}"
            )
        runs = [(target, a) for a in target.axes if args.axis in (None, a)]
    plan = []
    for target, axis in runs:
        s = sizes if sizes is not None else target.sizes.get(axis)
        if s is None:
            raise ScalingError(
                f"axis {axis!r}: no sizes; pass --sizes (e.g. 100,200,400,800) or set "
                "ScalingTarget.sizes"
            )
        from diagnostics._scaling._types import check_sizes

        plan.append((target, axis, check_sizes(s, f"sizes of axis {axis!r}")))
    return plan


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; returns the exit status (0 done, 2 bad input)."""
    args = _parser().parse_args(argv)
    t0 = time.perf_counter()
    from diagnostics._scaling import ScalingConfig, ScalingError, parse_bytes

    out = Path(args.out) if args.out else Path("runs/scaling") / time.strftime("%Y%m%d-%H%M%S")
    try:
        for flag, value, least in (
            ("--repeats", args.repeats, 3),
            ("--warmup", args.warmup, 0),
            ("--memory-repeats", args.memory_repeats, 1),
            ("--threads", args.threads, 1),
        ):
            if value is not None and value < least:
                what = " repeats for a median and a bootstrap CI" if flag == "--repeats" else ""
                raise ScalingError(f"{flag}={value}: need >= {least}{what}")
        budget, source = (
            (parse_bytes(args.memory_budget), "--memory-budget")
            if args.memory_budget is not None
            else _device_memory(args.device)
        )
        cfg = ScalingConfig(
            repeats=args.repeats,
            warmup=args.warmup,
            backward=args.backward,
            device=args.device,
            memory_budget=budget,
            memory_repeats=args.memory_repeats,
            seed=args.seed,
            progress=not args.quiet,
        )
        if args.update_docs and args.target is not None:
            raise ScalingError("--update-docs: only for the default target (no --target)")
        plan = _plan(args)
        _check_out(out)  # before the measurements, not after them
    except (ScalingError, TargetLoadError) as e:
        return _fail(str(e))
    threads = pick_threads(args.threads)

    from diagnostics._scaling._analyze import analyze
    from diagnostics._scaling._measure import measure
    from diagnostics._scaling._write import write_reports

    reports = []
    err: Exception | None = None
    interrupted = False
    for target, axis, sizes in plan:
        try:
            sweep = measure(target, axis, sizes, cfg)
        except ScalingError as e:
            err = e
            break
        except KeyboardInterrupt:
            interrupted = True
            break
        reports.append(
            analyze(
                sweep,
                budget=budget,
                budget_source=source,
                n_boot=cfg.n_boot,
                seed=cfg.seed,
                min_share=cfg.min_share,
            )
        )
        for f in reports[-1]["findings"]:
            print(f"[{target.name} / {axis}] {f['message']}")
    if reports:  # what was measured is written even when a later run failed
        try:
            write_reports(reports, out, png=not args.no_png, tensorboard=not args.no_tensorboard)
        except OSError as e:
            return _fail(f"cannot write the report under --out {str(out)!r}: {e}")
        print(f"\nreport: {out / 'report.md'} (json, PNG, TensorBoard beside it)")
        if args.update_docs and err is None and not interrupted:
            from diagnostics._scaling._docs import update_docs

            root = Path(__file__).resolve().parents[1]
            for path in update_docs(reports, root):
                print(f"updated the generated block in {path}")
        print(f"time: {time.perf_counter() - t0:.1f} s; torch threads {threads}")
    if interrupted:
        done = f"; wrote the {len(reports)} run(s) completed to {out}" if reports else ""
        sys.stderr.write(
            f"scaling: interrupted (Ctrl-C) after {len(reports)} of {len(plan)} run(s){done}\n"
        )
        return 130
    if err is not None:
        return _fail(str(err))
    return 0


def _check_out(out: Path) -> None:
    """Raise ScalingError when ``out`` cannot become a writable folder (checked up front)."""
    from diagnostics._scaling import ScalingError

    problem = unwritable("--out", out)
    if problem is not None:
        raise ScalingError(problem)


if __name__ == "__main__":
    raise SystemExit(main())
