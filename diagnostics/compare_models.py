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
import importlib
import sys
from collections.abc import Callable
from typing import Any

from diagnostics._compare import CompareError, ModelComparison, compare_models

__all__ = ["ModelComparison", "compare_models", "main"]


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        print(f"compare_models: {message}", file=sys.stderr)
        raise SystemExit(2)


def _factory(spec: str) -> Callable[[str], Any]:
    where, _, name = spec.rpartition(":")
    if not where or not name:
        raise CompareError(f"compare_models: --factory {spec!r}: expected MODULE:FUNCTION")
    try:
        module = importlib.import_module(where)
    except Exception as e:
        raise CompareError(
            f"compare_models: --factory {spec!r}: importing {where!r} failed: {type(e).__name__}"
        ) from None
    fn = getattr(module, name, None)
    if not callable(fn):
        raise CompareError(
            f"compare_models: --factory {spec!r}: {where!r} has no callable {name!r}"
        )
    return fn


def main(argv: list[str] | None = None) -> int:
    """CLI entry point; returns the exit status."""
    p = _Parser(
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
