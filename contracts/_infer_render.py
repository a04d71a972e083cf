"""Rendering for contract inference: an importable module of ``contracts.attach`` calls, and
Markdown tables in the layout of ``python -m contracts.docs``.

Example:
    >>> src = render_python(inference, target="models/x.py:make")
    >>> "def attach_all()" in src
    True
"""

from __future__ import annotations

import datetime as _dt
import json
import textwrap

from ._infer_types import ContractProposal, Inference, SlotProposal

__all__ = ["render_markdown", "render_python"]


def _q(s: object) -> str:
    return json.dumps(s) if isinstance(s, str) else repr(s)


def _cell(s: str) -> str:
    return s.replace("|", "\\|")


def _attachable_ins(c: ContractProposal) -> list[SlotProposal]:
    return [s for s in c.inputs if s.tensor and s.attachable and s.name.isidentifier()]


def _returns_src(c: ContractProposal) -> str | None:
    outs = [s for s in c.outputs if s.key is not None or s.name == "return"]
    if c.return_kind == "single" and outs and outs[0].tensor and outs[0].attachable:
        return outs[0].annotation()
    ind = " " * 20
    if c.return_kind == "tuple" and outs and all(s.attachable for s in outs):
        if not any(s.tensor for s in outs):
            return None
        return "tuple[\n" + "".join(f"{ind}{s.annotation()},\n" for s in outs) + ind[4:] + "]"
    if c.return_kind == "dict":
        items = [s for s in outs if s.tensor and s.attachable]
        if items:
            body = "".join(f"{ind}{_q(s.key)}: {s.annotation()},\n" for s in items)
            return "{\n" + body + ind[4:] + "}"
    return None


def render_python(inf: Inference, *, target: str = "", command: str = "") -> str:
    """Source of a module whose ``attach_all()`` attaches every inferred contract."""
    used_dtypes: set[str] = set()
    constraints: set[str] = set()
    blocks: list[str] = []
    for c in inf.contracts:
        ins = _attachable_ins(c)
        ret = _returns_src(c)
        if not c.attachable or (not ins and ret is None):
            continue
        if "<locals>" in c.qualname:
            blocks.append(
                f"        # {c.qualname}: defined inside a function, cannot be imported; skipped"
            )
            continue
        for s in ins + [s for s in c.outputs if s.tensor]:
            used_dtypes.add(s.dtype_cls)
            if s.constraint:
                constraints.add(s.constraint.split("(")[0])
        lines = [f"        # {', '.join(c.paths[:4])}{' …' if len(c.paths) > 4 else ''}"]
        lines.append("        handles.append(")
        lines.append("            contracts.attach(")
        lines.append(f"                _cls({_q(c.module)}, {_q(c.qualname)}),")
        lines.append('                "forward",')
        if c.bound:
            items = ", ".join(f"{_q(k)}: {_q(v)}" for k, v in sorted(c.bound.items()))
            lines.append(f"                dims={{{items}}},")
        for s in ins:
            if s.observed:
                lines.append(f"                # {s.name}: observed {s.observed}")
            lines.append(f"                {s.name}={s.annotation()},")
        if ret is not None:
            lines.append(f"                returns={ret},")
        lines.append("            )")
        lines.append("        )")
        blocks.append("\n".join(lines))
    jt = sorted(used_dtypes)
    today = _dt.date.today().isoformat()
    dims = ", ".join(f"{k} {v}" for k, v in inf.dims.items()) or "none"
    about = (
        f"Written by `{command or 'python -m contracts.infer'}` on {today} from "
        f"{target or 'a target'}: {inf.n_batches} batches, {inf.hooked} modules hooked. "
        f"Dims that varied (sizes per batch): {dims}."
    )
    head = [
        '"""Tensor contracts inferred from a running model; review them before relying on them.',
        "",
        *textwrap.wrap(about, 96, break_long_words=False, break_on_hyphens=False),
    ]
    if inf.warnings:
        head += ["", "Warnings:"]
        for w in inf.warnings:
            head += textwrap.wrap(w, 96, initial_indent="- ", subsequent_indent="  ")
    head += [
        "",
        "Example:",
        "    >>> handles = attach_all()",
        "    >>> for h in handles:",
        "    ...     h.remove()",
        '"""',
        "",
        "import importlib",
    ]
    if constraints:
        head.append("from typing import Annotated")
    head.append("")
    if jt:
        head.append(f"from jaxtyping import {', '.join(jt)}")
    head.append("from torch import Tensor")
    head.append("")
    head.append("import contracts")
    if constraints:
        head.append(f"from contracts import {', '.join(sorted(constraints))}")
    body = [
        "",
        "",
        "def _cls(module: str, qualname: str) -> type:",
        "    obj = importlib.import_module(module)",
        '    for part in qualname.split("."):',
        "        obj = getattr(obj, part)",
        "    return obj",
        "",
        "",
        "def attach_all() -> list:",
        '    """Attach every inferred contract; returns the handles (``.remove()`` undoes one)."""',
        "    handles: list = []",
        "    try:",
    ]
    body += blocks
    if not any("contracts.attach(" in b for b in blocks):
        body.append("        pass")
    body += [
        "    except BaseException:",
        "        for h in handles:",
        "            h.remove()",
        "        raise",
        "    return handles",
        "",
    ]
    return "\n".join(head + body)


def _in_cells(s: SlotProposal) -> list[str]:
    opt = " (optional)" if s.optional else ""
    if not s.tensor:
        return [f"{s.name}{opt}", s.shape_words(), s.pytype, "-"]
    return [f"{s.name}{opt}", s.shape_words(), s.dtype_words, s.constraint_words or "any"]


def _out_name(s: SlotProposal) -> str:
    return s.name


def render_markdown(inf: Inference, *, target: str = "") -> str:
    """Markdown contract tables (the layout of ``python -m contracts.docs``)."""
    out = [
        "# Inferred tensor contracts",
        "",
        f"Proposed by `python -m contracts.infer` from {f'`{target}`' if target else 'a target'} "
        f"on {inf.n_batches} batches ({inf.hooked} modules hooked); review before relying on "
        "them. Dims whose sizes co-varied across the batches share one name across arguments "
        "and modules; fixed sizes are literals or bound from the model. Float ranges are "
        "observed (Notes), not imposed.",
        "",
        "## Dims",
        "",
        "| Dim | Sizes per batch | First seen |",
        "|---|---|---|",
    ]
    for name, sizes in inf.dims.items():
        s = ", ".join("-" if x is None else str(x) for x in sizes)
        out.append(f"| `{name}` | {s} | {_cell(inf.dim_where.get(name, ''))} |")
    if not inf.dims:
        out.append("| (none varied) | | |")
    if inf.warnings:
        out += ["", "## Warnings", ""]
        out += [f"- {_cell(w)}" for w in inf.warnings]
    groups: dict[str, list[ContractProposal]] = {}
    for c in inf.contracts:
        groups.setdefault(c.module.split("._")[0], []).append(c)
    for mod in sorted(groups):
        out += ["", f"## `{mod}`"]
        for c in sorted(groups[mod], key=lambda c: c.qualname):
            out += ["", f"### {c.qualname}", ""]
            out.append(f"Called at: {', '.join(f'`{p}`' for p in c.paths[:6])}"
                       + (f" and {len(c.paths) - 6} more" if len(c.paths) > 6 else "") + ".")  # fmt: skip
            out.append("")
            out.append(
                "| Method | Input | Shape | Dtype | Range | Output | Shape | Dtype | Range | Notes |"
            )
            out.append("|---|---|---|---|---|---|---|---|---|---|")
            ins, outs = c.inputs, c.outputs
            for i in range(max(len(ins), len(outs), 1)):
                cells = ["`forward`" if i == 0 else ""]
                cells += _in_cells(ins[i]) if i < len(ins) else ["", "", "", ""]
                if i < len(outs):
                    o = outs[i]
                    cells += [
                        _out_name(o),
                        o.shape_words(),
                        o.dtype_words if o.tensor else o.pytype,
                        (o.constraint_words or "any") if o.tensor else "-",
                    ]
                else:
                    cells += ["", "", "", ""]
                notes = []
                for s in ([ins[i]] if i < len(ins) else []) + ([outs[i]] if i < len(outs) else []):
                    if s.observed:
                        notes.append(f"{s.name}: observed {s.observed}")
                    if s.note:
                        notes.append(f"{s.name}: {s.note}")
                cells.append("; ".join(notes))
                out.append("| " + " | ".join(_cell(x) for x in cells) + " |")
            if c.bound:
                out.append("")
                out.append(
                    "Dims bound from the model: "
                    + ", ".join(f"`{k}` = `{v}`" for k, v in sorted(c.bound.items()))
                    + "."
                )
            for n in c.notes:
                out.append("")
                out.append(f"Note: {n}.")
    return "\n".join(out).rstrip() + "\n"
