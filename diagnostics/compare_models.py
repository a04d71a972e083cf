"""``python -m diagnostics.compare_models``: measure two variants of a model in one run.

Prints parameter counts by submodule and their delta, the forward latency ratio, the peak
memory delta of one forward, and whether zeroing the added path changes the output. The
variants come from one factory (``--factory MODULE:FUNCTION``, ``FUNCTION(spec) ->
diagnostics._compare.Variant``); the default is the AudioSR global-encoder toggle.

Example:
    python -m diagnostics.compare_models --a default --b default,use_global_encoder=true
    python -m diagnostics.compare_models --a runs/audiosr/base.pt --b runs/audiosr/ge.pt
    python -m diagnostics.compare_models --factory mypkg.variants:make --a small --b small+film

Exit status: 0 when the comparison completed, 2 for bad arguments (one line on stderr).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import Any

from contracts.cli import ArgumentParser, TargetSpecError, import_factory
from diagnostics._compare import CompareError, ModelComparison, compare_models

__all__ = ["ModelComparison", "compare_models", "main"]


def _factory(spec: str) -> Callable[[str], Any]:
    try:
        return import_factory(spec, flag="--factory")
    except TargetSpecError as e:
        raise CompareError(f"compare_models: {e}") from None


def main(argv: list[str] | None = None) -> int:
    """CLI entry point; returns the exit status."""
    p = ArgumentParser(
        formatter_class=argparse.HelpFormatter,
        prog="python -m diagnostics.compare_models",
        description="Compare two variants of a model from one factory: parameters by "
        "submodule, forward latency, peak memory, and a zero-ablation of the added path. "
        "Default factory: AudioSR (specs: .pt checkpoint, .json config, or preset "
        "tiny|default with ,key=value overrides; the added path is the global context).",
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
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--seconds", type=float, default=1.0, help="audio length of the forward")
    p.add_argument("--repeats", type=int, default=7, help="timed repeats (median)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    try:
        factory = _factory(a.factory) if a.factory else None
        rep = compare_models(
            a.a, a.b, factory=factory, batch=a.batch, seconds=a.seconds, repeats=a.repeats, seed=a.seed,
            threads=a.threads,
        )  # fmt: skip
    except CompareError as e:
        print(str(e).replace("\n", " "), file=sys.stderr)
        return 2
    print(rep.to_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
