"""Contract tables generated from the code: ``python -m contracts.docs``.

Writes Markdown tables in the shape of a hand-written tensor-contract document (method, input,
shape, dtype, range, output, shape, dtype, range, notes), one table per class or module, from the
contracts registered by importing the given modules. ``--check`` exits 1 when the committed file
is stale, so the docs can never drift from the code.

Example:
    $ python -m contracts.docs                 # writes docs/CONTRACTS.md
    $ python -m contracts.docs --check         # exit 1 if docs/CONTRACTS.md is stale
"""

from __future__ import annotations

import difflib
import sys
from pathlib import Path
from typing import Any

from .cli import ArgumentParser

__all__ = ["main", "render"]

HEADER = (
    "# Tensor contracts\n\n"
    "Generated from the code by `python -m contracts.docs`; do not edit by hand "
    "(`make test` fails when this file is stale).\n\n"
    "Notation: dims are named in the shapes (`B` batch, `T` time/frames, `F` features, `D` hidden, "
    "`V` vocabulary, …); a dim bound from the model is listed under its table. Masks are True for "
    "valid positions. Ranges are closed and imply finite values.\n"
)

GUIDE = """
## How contracts are checked

- **Layout.** `contracts/_plan.py` parses annotations once into a torch-free `Plan` (what the
  strategies and these tables read); `_check.py` is the checker, `_explain.py` holds every word
  of a failure, `_decorator.py` joins them, `_compiled.py` is the checker written for
  `torch.compile`, `_inline.py` is `contracts.check`. Tensors in messages are described by
  `contracts.summarize`, the project's one formatter (also `diagnostics.summarize`).
- **Fast path.** A call whose argument shapes, dtypes and classes were seen before (with the
  same dims bound from `self`) reuses the bindings of the first walk; a new signature is walked
  in full, so a failure raises exactly the error the walk raises. For the common call (the
  arguments passed positionally, tensors as plain tensors) each contract gets a wrapper
  generated for it, with the signature test and the CPU value checks written
  out; anything else, and any doubt, goes to the general wrapper before the function runs.
  Contracts with f-string dims, beartype-checked hints or ranges on returned Python numbers
  always walk (ranges on Python-number arguments are checked on every call).
- **Value checks** run on every call in `full` mode. On the CPU: one `aminmax` for a float or
  integer range (a single element is read); for a mask one Python read of a small 2-D mask (at
  most `_LIST_MASK` elements, where a list read beats a torch reduction's dispatch), one
  `any`/`all` along the axis for mid-sized ones and a `uint8` row count for large ones; the
  broadcast axes of large tensors (stride 0, as in an expanded attention mask) are checked
  once. Elsewhere the reductions of a call are fused into one host read per device. What a
  check learns is remembered per tensor (same object, same version counter: any in-place
  write, also through a view, makes it new): a range remembers the tensor's extrema, which
  decide every other range on it (alphas returned as `Probability()` and taken as
  `Range(0, None)` are reduced once; expression bounds like `Range(0, "V-1")` are evaluated
  first); a mask remembers its verdict, and a view of a checked mask that reads the same rows
  (an attention mask expanded from a padding mask) is not read again. A mask handed down a
  stack of layers is thus checked once per step; a check whose tensors never come back stops
  looking them up for a while, so fresh activations pay no lookup, but what it reduces is still
  remembered (a layer's return is the next layer's input: one reduction per activation). Writes
  that bypass the version counter (`.data`, NumPy or DLPack views) are not seen.
- **Inputs the module's parameters do not match.** When the function of a contracted
  `nn.Module` method raises a torch error that speaks of a dtype or a device, the wrapper names
  the first tensor argument whose device or precision differs from the module's parameters
  (`contracts.DtypeError` / `contracts.DeviceError`, both `InputError`s, torch's error kept as
  the cause) with the cast that fixes it; an outer contracted call names its own argument. It
  runs in the wrapper's `except` branch: a call that succeeds pays nothing.
- **Empty tensors.** By default every axis must be non-empty. `@contract(allow_empty=True)`
  accepts zero-size axes (an empty batch), but a `Mask()` with rows and an empty checked axis
  (`[B, 0]`) is refused in every mode that checks shapes: each of its rows has no valid
  position, the case that makes a softmax return NaN. A mask with no rows (`[0, T]`) passes.
- **Lists and dicts of tensors.** `list[X]`, `tuple[X, ...]` and `Sequence[X]` of a
  jaxtyping `X` (with `Annotated` constraints on `X` or on the list) check every element, and
  the elements' dims bind with the call's, as jaxtyping means them: `list[Float[Tensor, "B C
  T"]]` needs one `B`, `C` and `T` for all (write `"B C _"` for skips of several lengths).
  `dict[K, X]` and `Mapping[K, X]` check every value so (and every key against `K`). A
  failing element is named `xs[3]` or `feats['mel']`; as a return annotation they are checked
  the same way. Such calls always take the reference walk (no signature cache), in eager and
  under `torch.compile` alike. A `NamedTuple` or dataclass is checked as its class only (as
  beartype does): its fields' annotations are not.
- **Intermediate values.** `contracts.check(value, annotation, *, name=None)` returns `value`;
  inside a contracted call (found by walking up to the wrapper's frame, so calls that never use
  it pay nothing) its dims must agree with that call's bindings (and a dim it binds is
  seen by later checks and by the return check); outside one it binds fresh, or into
  `bindings=` (a dict updated in place). Mode `off` makes it free.
- **Compiled code.** Under `torch.compile` (also `fullgraph=True`, static or `dynamic=True`)
  the same contract is traced into the graph: shape relations become `torch._check` (with
  static sizes a violation fails while tracing; with symbolic sizes it becomes a guard, and a
  violating call is traced again and fails then), value constraints become one
  `torch._assert_async` per tensor (a device-side assert, no host read), and nothing breaks the
  graph. The messages carry the eager words (function, argument, axis, expected); the actual
  size is left out because sizes are symbols while tracing. Where torch lets the exception
  through (`fullgraph=False`: Dynamo falls back to eager for the frame) it is the eager
  `ContractError`, whatever the call history (a size that the call's own sizes already break
  fails the trace, also when a recompilation made it symbolic); with `fullgraph=True` a shape violation reaches the caller as Dynamo's error
  (`Unsupported` / `TorchRuntimeError`) carrying those words, and a value violation as the
  `RuntimeError` of the device assert. Mode `off` compiles to nothing and `shapes` adds no op
  to the graph (guards only). `*#name` broadcast variadics and f-string dims are checked in
  eager only.
- **jaxtyping's syntax.** Every documented shape form: `3`, `name`, `_`, `_name`, `...`,
  `*name`, `*_`, `#name` (size 1 broadcasts and binds nothing), `*#name` (axes that broadcast
  with those seen before), `doc=4` (a documentation name for a fixed size), expressions
  (`T-1`, `2*C`; a safe subset: dims, numbers, `self.attr`, `+ - * / // %`, `len min max`),
  and f-strings over the call's arguments (`"{size}"`, `"{self.n}+3"`; braces hold a name or an
  attribute path). Every dtype class (`Shaped`, `Bool`, `Num`, `Inexact`, `Float*`,
  `BFloat16`, `Complex*`, `Integer`, `UInt*`, `Int*`, `Real`) means what it means to
  jaxtyping. `tests/contracts/test_jaxtyping_conformance.py` runs each form through
  jaxtyping + beartype and `contract` and asserts they agree. Refused, with the reason: `?name`
  (PyTree-path dims: tensors have no PyTree path) and arbitrary Python inside braces.
- **Nothing unchecked without a word.** An annotation that cannot be resolved (NameError), a
  hint beartype cannot check, `Annotated` metadata that is not a constraint, or annotations
  given for a callable whose signature cannot be read (a builtin, through `attach`: checked
  only when passed by keyword) raises `contracts.ContractWarning` at decoration, naming
  function and argument; the suite makes it an error for `models`.
- **Arguments.** Positional-only parameters are read from the call's positions only (a
  keyword of the same name belongs to `**kwargs`); an argument left to its default is checked
  as passed, and a message says so (`w (its default): …`). `dims=` values must be sizes (an
  int, or a whole float): `None` (an attribute not set yet) is refused, not left unbound. A
  `Range` on a Python number may read dims bound by later arguments. Sparse (COO and
  compressed), quantized and MKL-DNN tensors get their values checked (a sparse tensor's
  stored values and its unstored zeros); a nested tensor is refused where a shape is
  annotated (its components have no one shape).
- **Property tests.** Every contract gets one: generated from its annotations by the pytest
  plugin, or, for the contracts marked `generate=False` (inputs strategies cannot derive:
  lists of tensors, value relations between arguments, models as arguments), hand-written in
  `tests/contracts/test_generate_false.py`, which also fails when one is missing.
"""


def _dtype(slot: Any) -> str:
    spec = slot.tensor
    if spec is None:
        if slot.plain_tensor:
            return "any"
        return getattr(slot.pyhint, "__name__", str(slot.pyhint).replace("typing.", ""))
    return {
        "Float": "float",
        "Int": "int",
        "Integer": "int",
        "Bool": "bool",
        "Complex": "complex",
        "Shaped": "any",
    }.get(spec.category, spec.category.lower())


def _shape(slot: Any) -> str:
    if slot.tensor is None:
        if slot.plain_tensor:
            return "tensor"
        return "scalar" if slot.pyhint in (int, float, bool, complex) else "-"
    if slot.each is not None:  # a list/tuple of tensors, dims shared
        return f"{getattr(slot.each, '__name__', 'sequence')} of {slot.tensor.shape_words()}"
    return slot.tensor.shape_words()


def _range(slot: Any) -> str:
    spec = slot.tensor
    if spec is None:
        return slot.pyrange.describe() if slot.pyrange is not None else "-"
    parts = [c.describe() for c in spec.constraints]
    return "; ".join(parts) if parts else "any"


def _cell(s: str) -> str:
    return s.replace("|", "\\|")


def _plan_rows(plan: Any) -> list[str]:
    method = plan.qualname.split(".")[-1]
    ins = [s for s in plan.params if not (plan.has_self and s.position == 0)]
    outs = plan.returns
    names = list(plan.outputs) if plan.outputs else []
    rows = []
    for i in range(max(len(ins), len(outs), 1)):
        cells = [f"`{method}`" if i == 0 else ""]
        if i < len(ins):
            s = ins[i]
            opt = " (optional)" if s.optional else ""
            cells += [f"{s.name}{opt}", _shape(s), _dtype(s), _range(s)]
        else:
            cells += ["", "", "", ""]
        if i < len(outs):
            s = outs[i]
            name = names[i] if i < len(names) else s.name
            cells += [name, _shape(s), _dtype(s), _range(s)]
        else:
            cells += ["", "", "", ""]
        note_keys = []
        if i < len(ins):
            note_keys.append(ins[i].name)
        if i < len(outs):
            note_keys.append(names[i] if i < len(names) else outs[i].name)
        cells.append("; ".join(plan.notes[k] for k in note_keys if k in plan.notes))
        rows.append("| " + " | ".join(_cell(c) for c in cells) + " |")
    return rows


def render(modules: list[str]) -> str:
    """Import ``modules`` (recursively) and render their contracts as Markdown."""
    from ._registry import all_plans, import_tree

    errors = []
    for m in modules:
        errors += import_tree(m)
    if errors:
        raise ImportError("; ".join(errors))
    groups: dict[tuple[str, str], list[Any]] = {}
    for plan in all_plans(tuple(modules)):
        owner = plan.owner_qualname or "(functions)"
        public_mod = plan.module.split("._")[0]
        groups.setdefault((public_mod, owner), []).append(plan)
    out = [HEADER, GUIDE]
    last_mod = None
    for (mod, owner), plans in sorted(groups.items()):
        if mod != last_mod:
            out.append(f"\n## `{mod}`")
            last_mod = mod
        out.append(f"\n### {owner}\n")
        out.append(
            "| Method | Input | Shape | Dtype | Range | Output | Shape | Dtype | Range | Notes |"
        )
        out.append("|---|---|---|---|---|---|---|---|---|---|")
        bound: dict[str, str] = {}
        for plan in sorted(plans, key=lambda p: p.qualname):
            out.extend(_plan_rows(plan))
            for name, e in plan.self_dims:
                bound[name] = e.source
        if bound:
            out.append("")
            out.append(
                "Dims bound from the model: "
                + ", ".join(f"`{k}` = `{v}`" for k, v in sorted(bound.items()))
                + "."
            )
    return "\n".join(out).rstrip() + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(
        prog="python -m contracts.docs",
        description="Write Markdown tensor-contract tables generated from the code's @contract "
        "annotations (shapes, dtypes, ranges, masks), or check that the committed ones are "
        "current.",
    )
    parser.add_argument(
        "--modules",
        nargs="+",
        default=["models"],
        help="modules or packages to import and document (default: models)",
    )
    parser.add_argument(
        "--out", default="docs/CONTRACTS.md", help="output file (default: docs/CONTRACTS.md)"
    )
    parser.add_argument(
        "--check",
        action="store_true",
        help="do not write; exit 1 if --out differs from what the code says",
    )
    args = parser.parse_args(argv)
    try:
        text = render(args.modules)
    except ImportError as e:
        print(f"contracts.docs: cannot import {e}", file=sys.stderr)
        return 2
    out = Path(args.out)
    if args.check:
        old = out.read_text() if out.exists() else ""
        if old != text:
            diff = "".join(
                list(
                    difflib.unified_diff(
                        old.splitlines(True), text.splitlines(True), str(out), "generated"
                    )
                )[:40]
            )
            print(
                f"{out} is stale: run `python -m contracts.docs` and commit it\n{diff}",
                file=sys.stderr,
            )
            return 1
        print(f"{out} is current ({text.count(chr(10))} lines)")
        return 0
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    print(f"wrote {out} ({text.count(chr(10))} lines)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
