"""Contract inference: ``python -m contracts.infer --target MODULE:FACTORY``.

Runs a model on sample batches with hooks on its modules and proposes tensor contracts: a dtype
and a shape in named dims for every tensor in every hooked module's inputs and outputs, with the
dims that co-vary across batches unified into one name across arguments and modules, fixed
sizes as literals or bound to module attributes, ``Range``/``Mask``/``Finite`` value
constraints, and the observed float ranges reported. Writes an importable module of
``contracts.attach`` calls (``--out``) and Markdown tables (``--markdown``).

The factory takes no arguments and returns ``contracts.InferTarget(model, batches,
forward=None)`` with at least two batches that differ in batch size and lengths.

Example:
    $ python -m contracts.infer --target my_project.debug:make_target --out my_contracts.py
    $ python -c "import my_contracts; my_contracts.attach_all()"

    >>> from contracts.infer import infer
    >>> result = infer(InferTarget(model, [batch_a, batch_b]))
    >>> print(result.markdown())
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ._infer_record import InferError, InferTarget, record, validate_target
from ._infer_render import render_markdown, render_python
from ._infer_types import ContractProposal, Inference, SlotProposal
from ._infer_unify import unify
from .cli import ArgumentParser, fail

__all__ = [
    "ContractProposal",
    "InferError",
    "InferResult",
    "InferTarget",
    "SlotProposal",
    "infer",
    "load_target",
    "main",
]


PROG = "python -m contracts.infer"


@dataclass
class InferResult:
    """The outcome of :func:`infer`: proposals plus the two renderings.

    Attributes:
        inference: contracts, dims (sizes per batch) and warnings.
        target: how the target was named (for the generated headers).
        seconds: wall time of the recording pass (hooks and statistics, all batches).
    """

    inference: Inference
    target: str = ""
    seconds: float = 0.0

    @property
    def contracts(self) -> list[ContractProposal]:
        return self.inference.contracts

    @property
    def warnings(self) -> list[str]:
        return self.inference.warnings

    @property
    def dims(self) -> dict[str, list[int | None]]:
        return self.inference.dims

    def python(self, command: str = "") -> str:
        """Source of a module defining ``attach_all()``."""
        return render_python(self.inference, target=self.target, command=command)

    def markdown(self) -> str:
        """Markdown contract tables."""
        return render_markdown(self.inference, target=self.target)

    def contract_for(self, cls: type) -> ContractProposal:
        """The proposal for one class (KeyError naming the classes there are)."""
        for c in self.inference.contracts:
            if c.cls is cls:
                return c
        names = ", ".join(c.qualname for c in self.inference.contracts)
        raise KeyError(f"no contract inferred for {cls.__qualname__}; inferred: {names}")


def infer(
    target: InferTarget,
    *,
    modules: Sequence[str] | None = None,
    progress: bool = False,
    name: str = "",
) -> InferResult:
    """Run ``target`` with hooks and propose contracts.

    Args:
        target: the model and its sample batches.
        modules: glob patterns on dotted module paths or class names (default: every module).
        progress: show a progress bar over the batches.
        name: how to call the target in the generated headers.

    Returns:
        An :class:`InferResult`; ``.python()`` and ``.markdown()`` render it.

    Raises:
        InferError: a bad target, no batches, or a model that raises (naming the batch and the
            innermost module).

    Example:
        >>> res = infer(InferTarget(nn.Linear(4, 3), [torch.randn(2, 4), torch.randn(5, 4)]))
        >>> res.contract_for(nn.Linear).inputs[0].dims
        ['B', 'F_in']
    """
    target = validate_target(target, "infer()")
    bar = None
    if progress:
        from tqdm import tqdm

        def bar(items: Sequence[Any]) -> Any:
            # off when stderr is not a terminal; cleared when done, so an error stays one line
            return tqdm(
                items, desc="contracts.infer", unit="batch", file=sys.stderr, leave=False,
                disable=None,
            )  # fmt: skip

    t0 = time.perf_counter()
    rec = record(target, modules=modules, progress=bar)
    seconds = time.perf_counter() - t0
    return InferResult(unify(rec), target=name, seconds=seconds)


def load_target(spec: str) -> InferTarget:
    """``MODULE:FACTORY`` or ``path/to/file.py:FACTORY`` -> the factory's InferTarget.

    A file under the current directory is imported under its dotted name when its folders are
    packages (so the generated module can import the classes it defines).

    Raises:
        InferError: the module, the factory or its result is wrong.
    """
    if ":" not in spec:
        raise InferError(f"--target {spec!r}: expected MODULE:FACTORY or path/to/file.py:FACTORY")
    where, name = spec.rsplit(":", 1)
    try:
        if where.endswith(".py") or "/" in where or os.sep in where:
            module = _import_file(spec, Path(where))
        else:
            module = importlib.import_module(where)
    except InferError:
        raise
    except Exception as e:
        raise InferError(
            f"--target {spec!r}: importing {where!r} failed: {type(e).__name__}: {e}"
        ) from None
    factory = getattr(module, name, None)
    if not callable(factory):
        options = sorted(k for k, v in vars(module).items() if callable(v) and k[:1] != "_")
        raise InferError(
            f"--target {spec!r}: {where!r} has no callable {name!r} "
            f"(callables there: {', '.join(options[:8]) or 'none'})"
        )
    try:
        obj = factory()
    except Exception as e:
        raise InferError(f"--target {spec!r}: the factory raised {type(e).__name__}: {e}") from None
    return validate_target(obj, f"--target {spec!r}: the factory")


def _import_file(spec: str, path: Path) -> Any:
    if not path.is_file():
        raise InferError(f"--target {spec!r}: file {str(path)!r} not found")
    full = path.resolve()
    cwd = Path.cwd().resolve()
    if full.is_relative_to(cwd):
        rel = full.relative_to(cwd).with_suffix("")
        pkg_ok = all((cwd.joinpath(*rel.parts[:i]) / "__init__.py").is_file()
                     for i in range(1, len(rel.parts)))  # fmt: skip
        if pkg_ok and all(p.isidentifier() for p in rel.parts):
            if str(cwd) not in sys.path:
                sys.path.insert(0, str(cwd))
            return importlib.import_module(".".join(rel.parts))
    mod_name = f"_torchdx_infer_{path.stem}"
    mspec = importlib.util.spec_from_file_location(mod_name, full)
    assert mspec is not None and mspec.loader is not None, f"cannot load {full}"
    module = importlib.util.module_from_spec(mspec)
    sys.modules[mod_name] = module
    sys.path.insert(0, str(full.parent))
    try:
        mspec.loader.exec_module(module)
    finally:
        sys.path.pop(0)
    return module


def _parser() -> argparse.ArgumentParser:
    p = ArgumentParser(
        prog=PROG,
        description=(
            "Propose tensor contracts from a running model.\n\n"
            "The factory (no arguments) returns contracts.InferTarget(model, batches,\n"
            "forward=None). The model runs on every batch with hooks on its modules; every\n"
            "tensor in their inputs and outputs gets a dtype, a shape in named dims and a value\n"
            "constraint:\n"
            "  - sizes that co-vary across the batches share one name across arguments and\n"
            "    modules (B everywhere, T for features, mask and encoder output);\n"
            "  - fixed sizes are bound to a module attribute holding them (dims=) or literals;\n"
            "  - Range(0, 'V-1') for integer indices under a vocabulary/steps attribute,\n"
            "    Range(0, 'T') for lengths, Mask() for boolean masks with a True in every row,\n"
            "    Finite() for floats (observed ranges are reported, not imposed).\n"
            "Give at least two batches that differ in batch size and in every length."
        ),
        epilog=(
            "Exit status: 0 when the contracts were written (warnings included); 2 for a bad\n"
            "target, no batches, or a model that raised, with one line on stderr."
        ),
    )
    p.add_argument(
        "--target",
        required=True,
        metavar="MODULE:FACTORY",
        help="a factory returning contracts.InferTarget: 'package.module:make' or "
        "'path/to/file.py:make'",
    )
    p.add_argument(
        "--modules",
        nargs="+",
        metavar="GLOB",
        help="hook only modules whose dotted path or class name matches one of these glob "
        "patterns ('' is the root; e.g. 'encoder*' 'Decoder'); default: every module",
    )
    p.add_argument(
        "--out",
        metavar="FILE.py",
        help="write an importable module whose attach_all() attaches the contracts and returns "
        "the handles (default: print it to stdout when --markdown is not given)",
    )
    p.add_argument("--markdown", metavar="FILE.md", help="write Markdown contract tables")
    p.add_argument("--quiet", action="store_true", help="no progress bar, no warnings on stderr")
    return p


def main(argv: list[str] | None = None) -> int:
    """CLI entry point; returns the exit status."""
    args = _parser().parse_args(argv)
    try:
        target = load_target(args.target)
        res = infer(target, modules=args.modules, progress=not args.quiet, name=args.target)
    except InferError as e:
        return fail(PROG, str(e))
    cmd = "python -m contracts.infer " + " ".join(argv if argv is not None else sys.argv[1:])
    try:
        if args.out:
            Path(args.out).write_text(res.python(command=cmd))
        if args.markdown:
            Path(args.markdown).write_text(res.markdown())
    except OSError as e:
        return fail(PROG, f"cannot write the output: {e}")
    if not args.out and not args.markdown:
        sys.stdout.write(res.python(command=cmd))
    if not args.quiet:
        for w in res.warnings:
            print(f"contracts.infer: warning: {w}", file=sys.stderr)
        n = sum(1 for c in res.contracts)
        print(
            f"contracts.infer: {n} contracts from {res.inference.n_batches} batches, dims "
            f"{', '.join(res.dims) or 'none'}"
            + (f"; wrote {args.out}" if args.out else "")
            + (f"; wrote {args.markdown}" if args.markdown else ""),
            file=sys.stderr,
        )
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
