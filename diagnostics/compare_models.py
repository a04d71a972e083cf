"""``python -m diagnostics.compare_models``: measure two variants of a model in one run.

Prints parameter counts by submodule and their delta, the forward latency ratio, the peak
memory delta of one forward, and whether zeroing the added path changes the output. The
variants come from one factory (``--factory MODULE:FUNCTION``, ``FUNCTION(spec) ->
diagnostics._compare.Variant``); the default is the AudioSR global-encoder toggle.

Example:
    python -m diagnostics.compare_models --a default --b default,use_global_encoder=true
    python -m diagnostics.compare_models --a runs/audiosr/base.pt --b runs/audiosr/ge.pt
    python -m diagnostics.compare_models --factory mypkg.variants:make --a small --b small+film

Peak memory is read where each model lives: the CUDA allocator's peak for a model on a GPU,
the profiler's CPU allocation events for a model on the CPU (whether or not the machine has a
GPU). The models are built and run under ``torch.manual_seed(--seed)`` in a fork of the RNG, so
the caller's RNG state is unchanged; they are put in eval mode for the measurement.

Exit status: 0 when the comparison completed, 2 for bad arguments or a factory, input or
forward of the variants that raises (one line on stderr).
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

from contracts.cli import ArgumentParser, TargetSpecError, fail, import_factory
from diagnostics._compare import CompareError, ModelComparison, compare_models

__all__ = ["ModelComparison", "compare_models", "main"]


def _factory(spec: str) -> Callable[[str], Any]:
    try:
        return import_factory(spec, flag="--factory")
    except TargetSpecError as e:
        raise CompareError(f"compare_models: {e}") from None


_EPILOG = """\
output: a text report on stdout (parameters by submodule and their delta, the latency ratio
  B/A, the peak memory delta, the zero-ablation of the added path per variant).

exit status: 0 when the comparison completed; 2 for bad arguments, or a factory, inputs() or
  forward() that raises (one line on stderr).

examples:
  %(prog)s --a default --b default,use_global_encoder=true
  %(prog)s --a runs/audiosr/base.pt --b runs/audiosr/ge.pt --batch 4 --seconds 2
  %(prog)s --factory mypkg.variants:make --a small --b small+film"""


def main(argv: list[str] | None = None) -> int:
    """CLI entry point; returns the exit status."""
    import textwrap

    p = ArgumentParser(
        prog="python -m diagnostics.compare_models",
        description=textwrap.fill(
            "Compare two variants of a model from one factory: parameters by submodule, "
            "forward latency, peak memory, and a zero-ablation of the added path. Default "
            "factory: AudioSR (specs: .pt checkpoint, .json config, or preset tiny|default "
            "with ,key=value overrides; the added path is the global context).",
            79,
        ),
        epilog=_EPILOG,
    )
    p.add_argument(
        "--factory",
        default=None,
        metavar="MODULE:FUNCTION",
        help="FUNCTION(spec) -> diagnostics._compare.Variant (default: the AudioSR variants)",
    )
    p.add_argument(
        "--a",
        default="default",
        help="baseline: .pt checkpoint, .json config, or "
        "preset (tiny|default) with ,key=value overrides (default: %(default)s)",
    )
    p.add_argument("--b", default="default,use_global_encoder=true",
                   help="candidate, same forms (default: %(default)s)")  # fmt: skip
    p.add_argument(
        "--batch", type=int, default=1, help="examples per forward (default: %(default)s)"
    )
    p.add_argument(
        "--seconds",
        type=float,
        default=1.0,
        help="audio length of the forward in seconds (default: %(default)s)",
    )
    p.add_argument(
        "--repeats",
        type=int,
        default=7,
        help="timed forwards per variant, interleaved; the median is reported "
        "(default: %(default)s)",
    )
    p.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch CPU threads during the measurement (default: %(default)s)",
    )
    p.add_argument(
        "--seed",
        type=int,
        default=0,
        help="seed of the models' initialization and the inputs (default: %(default)s)",
    )
    a = p.parse_args(argv)
    try:
        factory = _factory(a.factory) if a.factory else None
        rep = compare_models(
            a.a, a.b, factory=factory, batch=a.batch, seconds=a.seconds, repeats=a.repeats, seed=a.seed,
            threads=a.threads,
        )  # fmt: skip
    except CompareError as e:
        msg = str(e).removeprefix("compare_models: ")
        for name in ("repeats", "batch", "threads", "seconds"):  # name the flag as typed
            if msg.startswith(f"{name}="):
                msg = f"--{name} {msg[len(name) + 1 :]}"
        return fail(p, msg)
    print(rep.to_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
