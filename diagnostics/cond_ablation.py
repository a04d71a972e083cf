"""``python -m diagnostics.cond_ablation``: does the model use its condition?

With no arguments it runs the embedded default (the reference noise-conditioned SGMSE+, its
shipped checkpoint, on held-out synthetic mixtures): all ablations at the noise encoder's output
and at the ``noise_ref`` argument, effect curves over 8 diffusion times, the cond-vs-uncond
score difference, a short guidance-scale sweep and the embedding analysis.

    python -m diagnostics.cond_ablation
    python -m diagnostics.cond_ablation --target mypkg.targets:make_target --site encoder.proj
    python -m diagnostics.cond_ablation --target path/to/file.py:FACTORY --site arg:cond \\
        --ablations zero,shuffle --out runs/x --seed 1

``FACTORY`` is called with no arguments (under ``torch.manual_seed(--seed)``) and returns a
``diagnostics.AblationTarget``. Writes ``report.json``, ``report.md``, PNG figures and TensorBoard
logs under ``--out`` (default ``runs/cond_ablation/<time>/``) and prints a verdict table.

Under ``torchrun --nproc_per_node=N -m diagnostics.cond_ablation ...`` the process group is
initialised from the environment (gloo, or nccl with ``--device cuda``), the ablation passes
are split across the ranks, and rank 0 alone writes the report and the TensorBoard logs (equal
to the single-process report for the same seed, to float tolerance).

Exit status: 0 when the run completed (whatever it found); 2 for bad arguments or input, with one
line on stderr naming what was wrong (the report of the sites completed before is still written).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from contracts.cli import ArgumentParser, TargetSpecError, fail, pick_threads, unwritable
from contracts.cli import load_target as load_spec
from diagnostics._ablation._types import TargetLoadError

__all__ = ["TargetLoadError", "load_target", "main"]

_PROG = "python -m diagnostics.cond_ablation"


def _parser() -> argparse.ArgumentParser:
    p = ArgumentParser(
        prog=_PROG,
        description="""Does the model use the content of its condition?

At each site (a module's output, or a forward argument) the condition is replaced and the
relative output change ||f(c) - f(a)|| / ||f(c)|| is measured per example, on the same inputs
and noise, with a paired bootstrap 95% CI:
  floor    the site's own value through the same hook path (round-off, the model's randomness)
  channel  zero / random / null / mean (off-distribution): does replacing the condition at all
           change the output?
  content  shuffle (another example's real condition, in-distribution): is the content used?
Verdict per site (and per label):
  used          content above the floor, CI low >= --min-effect
  weak          content above the floor, CI high < --min-effect
  constant      channel above the floor, content not (a fixed bias; e.g. a collapsed encoder)
  ignored       nothing above the floor
  inconclusive  fewer than 6 examples, identical conditions, a missing test (no shuffle; or
                shuffle alone, nothing above the floor), or CIs too wide to decide
With a sampler (the default target has one): quality-level metric deltas of the null and
shuffle ablations and a guidance-scale sweep paired against scale 0.
With no arguments: the embedded default (the shipped noise-conditioned SGMSE+ on held-out
synthetic noisy speech), with effect curves over diffusion time and an embedding analysis.""",
        epilog="""Outputs under --out: report.json (schema 2), report.md, PNG figures, TensorBoard
logs, timing.json. Exit status: 0 when the run completed (whatever it found); 2 for bad
arguments or input, with one line on stderr (completed sites are still written).

Examples:
  %(prog)s
  %(prog)s --target diagnostics.ablation_example:healthy_target
  %(prog)s --target mypkg.targets:make_target --site encoder.proj --min-effect 0.02
  torchrun --nproc_per_node=2 -m diagnostics.cond_ablation""",
    )
    p.add_argument(
        "--target",
        metavar="MODULE:FACTORY",
        help="MODULE:FACTORY or path/to/file.py:FACTORY returning a "
        "diagnostics.AblationTarget (default: the embedded SGMSE+ target)",
    )
    p.add_argument(
        "--site",
        action="append",
        metavar="SITE",
        help="dotted module path whose output is replaced ('enc[0]', 'lstm[1][0]', "
        "'enc[hidden]' for an element of a tuple/dict output) or arg:NAME for a forward "
        "argument ('arg:cond[text]' for an element of a dict/tuple argument); repeatable",
    )
    p.add_argument(
        "--ablations",
        default="zero,mean,random,shuffle,null",
        help="comma-separated subset of zero,mean,random,shuffle,null",
    )
    p.add_argument("--out", help="output folder (default runs/cond_ablation/<time>/)")
    p.add_argument(
        "--tensorboard", metavar="DIR", help="TensorBoard log folder (default OUT/tensorboard)"
    )
    p.add_argument(
        "--min-effect",
        type=_min_effect,
        default=None,
        metavar="X",
        help="content effect (CI low) at or above which a site is 'used' "
        "(default 0.05: 5%% of the output norm)",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of everything random (default 0)")
    p.add_argument("--device", default=None, help="torch device for the model, e.g. cpu, cuda")
    p.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch CPU threads (default: torch's, or 1 when the machine's load "
        "average exceeds its cores: oversubscribed OpenMP threads spin)",
    )
    p.add_argument("--no-umap", action="store_true", help="skip the UMAP projection")
    p.add_argument(
        "--no-guidance",
        action="store_true",
        help="skip the sampler: no guidance-scale sweep, no quality-level deltas",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    return p


def _min_effect(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"{text!r} must be a finite number >= 0 (e.g. 0.05)")
    return value


def load_target(spec: str | None, seed: int = 0) -> Any:
    """Build the target: the embedded default when ``spec`` is None, else ``MODULE:FACTORY`` or
    ``path/file.py:FACTORY`` called with no arguments under ``torch.manual_seed(seed)``.

    Raises:
        TargetLoadError: the module, the factory or its result is wrong.
    """
    import torch

    from diagnostics._ablation._types import AblationError, AblationTarget

    if spec is None:
        from diagnostics._ablation._default_target import default_target

        torch.manual_seed(seed)
        try:
            return default_target()
        except AblationError as e:
            raise TargetLoadError(str(e)) from None
    try:
        return load_spec(spec, AblationTarget, seed=seed)
    except TargetSpecError as e:
        raise TargetLoadError(str(e)) from None


def _init_distributed(device: str | None) -> tuple[int, int]:
    """Under torchrun (WORLD_SIZE > 1): initialise the process group; (rank, world size)."""
    import torch

    from diagnostics._distributed import check_launch, default_timeout

    ws = int(os.environ.get("WORLD_SIZE", "1") or 1)
    dist = torch.distributed
    if ws > 1 and dist.is_available() and not dist.is_initialized():
        cuda = device is not None and str(device).startswith("cuda")
        if cuda:
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group("nccl" if cuda else "gloo", timeout=default_timeout())
    info = check_launch("cond_ablation")
    return info.rank, info.world_size


def _check_args(args: argparse.Namespace) -> str | None:
    """What is wrong with the flags before anything runs (None: nothing), in one line."""
    if not 0 <= args.seed < 2**63:
        return f"--seed {args.seed}: must be in [0, 2**63)"
    if args.threads is not None and args.threads < 1:
        return f"--threads {args.threads}: must be >= 1"
    if args.device is not None:
        import torch

        try:
            dev = torch.device(args.device)
        except (RuntimeError, ValueError):
            return f"--device {args.device!r}: not a torch device (e.g. cpu, cuda, cuda:1)"
        if dev.type == "cuda" and not torch.cuda.is_available():
            return f"--device {args.device!r}: this torch has no CUDA device"
    for flag, value in (("--out", args.out), ("--tensorboard", args.tensorboard)):
        problem = None if value is None else unwritable(flag, value)
        if problem is not None:
            return problem
    return None


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; returns the exit status (0 done, 2 bad input)."""
    try:
        args = _parser().parse_args(argv)
    except SystemExit as e:  # --help (0) or a bad argument (2, its line already written)
        return int(e.code or 0)
    t_start = time.perf_counter()
    bad_arg = _check_args(args)
    if bad_arg:
        return fail("cond_ablation", bad_arg)
    from diagnostics._distributed import DistributedError

    try:
        rank, world = _init_distributed(args.device)
    except DistributedError as e:
        return fail("cond_ablation", str(e))
    if rank != 0:
        args.quiet = True
    ablations = [a.strip() for a in args.ablations.split(",") if a.strip()]

    from diagnostics._ablation import ABLATIONS, AblationError, run_ablation, write_report
    from diagnostics._ablation._writers import render_table

    bad = [a for a in ablations if a not in ABLATIONS]
    if bad or not ablations:
        return fail(
            "cond_ablation",
            f"--ablations {args.ablations!r}: unknown {', '.join(bad) or '(empty)'}; choose "
            f"from {','.join(ABLATIONS)}",
        )
    twice = sorted({a for a in ablations if ablations.count(a) > 1})
    if twice:
        return fail("cond_ablation", f"--ablations {args.ablations!r}: {', '.join(twice)} twice")
    threads = pick_threads(args.threads)
    out = (
        Path(args.out) if args.out else Path("runs/cond_ablation") / time.strftime("%Y%m%d-%H%M%S")
    )
    try:
        target = load_target(args.target, args.seed)
    except TargetLoadError as e:
        return fail("cond_ablation", str(e))
    t_loaded = time.perf_counter()

    report, err = None, None
    try:
        report = run_ablation(
            target,
            sites=args.site,
            ablations=ablations,
            seed=args.seed,
            device=args.device,
            umap=not args.no_umap,
            guidance=not args.no_guidance,
            quality=not args.no_guidance,
            progress=not args.quiet,
            **({} if args.min_effect is None else {"min_effect": args.min_effect}),
        )
    except AblationError as e:
        err, report = e, e.report
    t_run = time.perf_counter()
    if rank != 0:  # rank 0 writes the one report (its data holds every rank's examples)
        return 2 if err is not None else 0
    if report is not None:
        write_report(report, out, tensorboard=args.tensorboard)
        timing = {
            "load_s": round(t_loaded - t_start, 2),
            "ablation_s": round(t_run - t_loaded, 2),
            "write_s": round(time.perf_counter() - t_run, 2),
            "threads": threads,
            "world_size": world,
            **{k: round(v, 2) for k, v in report.timing.items()},
        }
        # kept out of report.json so that the same seed gives the same report
        (out / "timing.json").write_text(json.dumps(timing, indent=2) + "\n")
        print(render_table(report, details=True))
        print(f"\nreport: {out / 'report.md'} (json, figures, TensorBoard beside it)")
        print(
            f"time: load {timing['load_s']} s, ablation {timing['ablation_s']} s, write "
            f"{timing['write_s']} s; torch threads {threads}"
        )
    if err is not None:
        line = str(err).splitlines()[0] if str(err) else type(err).__name__
        sys.stderr.write(f"cond_ablation: error: {line}\n")
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
