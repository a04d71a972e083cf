"""Unification for contract inference: from recorded calls to proposed contracts.

Sizes are compared *across batches*: every axis of every tensor at every call site gets the
vector of its sizes in batch 0, 1, 2, ...; axes whose vectors vary and are equal are one dim
(``B`` everywhere, ``T`` shared by features, mask and the encoder output), whatever argument or
module they belong to. An axis whose size never varies is a fixed size: bound to a module
attribute that holds that value (``dims={"D": "self.cfg.d_model"}``) or written as a literal.

A contract is per class (``attach`` puts it on the class's ``forward``), so the calls of every
instance of a class are merged: two axes are one dim in the class contract when they carry the
same dim (or the same fixed size) at every call site of that class.

Example:
    >>> result = unify(record(target))
    >>> [c.qualname for c in result.contracts]
    ['Paraformer', 'Encoder', ...]
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

from torch import nn

from ._infer_attrs import INDEX_ATTRS, PRIORITY, attr_dim_name, attr_rank, index_hi, int_attrs
from ._infer_record import Call, Leaf, Recording, frozen_gc
from ._infer_types import JT_DTYPE, JT_KIND, ContractProposal, Inference, SlotProposal

__all__ = ["unify"]

VARYING_NAMES = ["T", "S", "N", "U", "K", "P", "Q", "R", "W"]
NOT_ATTACHABLE = {"returns", "dims"}  # keyword names of contracts.attach itself


# --------------------------------------------------------------------------------------------
# unification


@dataclass
class _Site:
    path: str
    k: int  # k-th call of this module in a batch
    calls: list[Call | None]  # per batch
    order: tuple[int, int]  # (first batch seen, call index there): call order

    @property
    def cls(self) -> type:
        return next(c for c in self.calls if c is not None).cls

    @property
    def module(self) -> nn.Module:
        return next(c for c in self.calls if c is not None).module


def _sites(rec: Recording) -> list[_Site]:
    nb = len(rec.calls)
    sites: dict[tuple[str, int], _Site] = {}
    for b, calls in enumerate(rec.calls):
        count: dict[str, int] = {}
        for i, c in enumerate(calls):
            k = count.get(c.path, 0)
            count[c.path] = k + 1
            s = sites.get((c.path, k))
            if s is None:
                s = sites[(c.path, k)] = _Site(c.path, k, [None] * nb, (b, i))
            s.calls[b] = c
    return sorted(sites.values(), key=lambda s: s.order)


def _tensor_leaves(call: Call) -> list[tuple[str, Leaf]]:
    return [(n, leaf) for n, leaf in list(call.inputs.items()) + list(call.outputs.items())
            if leaf.is_tensor]  # fmt: skip


def _fmt(x: float) -> str:
    if x is None or math.isnan(x):
        return "nan"
    if math.isinf(x):
        return "∞" if x > 0 else "-∞"
    if float(x).is_integer() and abs(x) < 1e15:
        return str(int(x))
    return f"{x:.3g}"


class _Unifier:
    def __init__(self, rec: Recording) -> None:
        self.rec = rec
        self.nb = len(rec.calls)
        self.sites = _sites(rec)
        self.attr_cache: dict[int, dict[str, int]] = {}
        self.warnings: list[str] = []
        # (site index, leaf name, axis) -> varying dim name
        self.label: dict[tuple[int, str, int], str] = {}
        self.dims: dict[str, list[int | None]] = {}
        self.dim_where: dict[str, str] = {}
        self.literals: list[str] = []  # positions of fixed sizes written as literals
        self._leaf_cache: dict[tuple, list[tuple[int, int, Leaf | None]]] = {}

    # ---- global dims: co-varying sizes across batches
    def global_dims(self) -> None:
        vectors: dict[tuple[int, str, int], tuple[int | None, ...]] = {}
        order: list[tuple[int, str, int]] = []
        for si, site in enumerate(self.sites):
            ranks: dict[str, set[int]] = {}
            for c in site.calls:
                if c is None:
                    continue
                for name, leaf in _tensor_leaves(c):
                    ranks.setdefault(name, set()).add(len(leaf.shape))
            for name, rs in ranks.items():
                if len(rs) != 1:
                    continue  # rank changes between batches at one site: no vector
                for a in range(next(iter(rs))):
                    vec = []
                    for c in site.calls:
                        leaf = None if c is None else (c.inputs.get(name) or c.outputs.get(name))
                        vec.append(leaf.shape[a] if leaf is not None and leaf.is_tensor else None)
                    vectors[(si, name, a)] = tuple(vec)
                    order.append((si, name, a))
        varying = {p: v for p, v in vectors.items() if len({x for x in v if x is not None}) > 1}
        full = {v for v in varying.values() if None not in v}
        cluster_of: dict[tuple[int, str, int], tuple] = {}
        for p, v in varying.items():
            if None in v:
                fits = [f for f in full if all(x is None or x == y for x, y in zip(v, f))]
                cluster_of[p] = fits[0] if len(fits) == 1 else v
            else:
                cluster_of[p] = v
        # B: the cluster on axis 0 of the most tensors
        axis0: dict[tuple, int] = {}
        first: dict[tuple, int] = {}
        for i, p in enumerate(order):
            if p in cluster_of:
                first.setdefault(cluster_of[p], i)
                if p[2] == 0:
                    axis0[cluster_of[p]] = axis0.get(cluster_of[p], 0) + 1
        names: dict[tuple, str] = {}
        if axis0:
            b = max(axis0, key=lambda c: (axis0[c], -first[c]))
            names[b] = "B"
        pool = iter(VARYING_NAMES + [f"T{i}" for i in range(1, 1000)])
        for c in sorted(first, key=first.get):
            if c not in names:
                names[c] = next(pool)
        for p, c in cluster_of.items():
            self.label[p] = names[c]
        for c, n in names.items():
            self.dims[n] = list(c)
            si, leaf, a = order[first[c]]
            site = self.sites[si]
            self.dim_where[n] = f"{site.path or '(root)'} {leaf} axis {a}"

    def site_label(self, si: int, name: str, axis: int, size: int) -> tuple[str, Any]:
        n = self.label.get((si, name, axis))
        return ("v", n) if n is not None else ("=", size)

    # ---- per class contracts
    def contracts(self) -> list[ContractProposal]:
        """One contract per class that defines the ``forward`` being run (a subclass that
        inherits ``forward`` shares its parent's contract: ``attach`` wraps one function)."""
        by_cls: dict[type, list[int]] = {}
        for si, s in enumerate(self.sites):
            by_cls.setdefault(_defining_class(s.cls), []).append(si)
        out = [self.contract(cls, sis) for cls, sis in by_cls.items()]
        for c in out:
            # a subclass whose own forward calls this one (super().forward(...)) would be
            # checked with inputs never observed: propose the contract, don't attach it
            callers = [
                o.cls.__qualname__
                for o in out
                if o.cls is not c.cls
                and issubclass(o.cls, c.cls)
                and "forward" in getattr(getattr(o.cls.forward, "__code__", None), "co_names", ())
            ]
            if callers:
                c.attachable = False
                c.notes.append(
                    f"not attached: {', '.join(callers)} calls {c.qualname}.forward from its own "
                    "forward (super().forward) with inputs that were not observed"
                )
        return out

    def _slot_leaves(self, sis: list[int], name: str) -> list[tuple[int, int, Leaf | None]]:
        key = (tuple(sis), name)
        hit = self._leaf_cache.get(key)
        if hit is not None:
            return hit
        out = self._leaf_cache[key] = []
        for si in sis:
            for b, c in enumerate(self.sites[si].calls):
                if c is None:
                    continue
                leaf = c.inputs.get(name) if not name.startswith("return") else c.outputs.get(name)
                out.append((si, b, leaf))
        return out

    def contract(self, cls: type, sis: list[int]) -> ContractProposal:
        calls = [c for si in sis for c in self.sites[si].calls if c is not None]
        paths = list(dict.fromkeys(self.sites[si].path or "(root)" for si in sis))
        notes: list[str] = []
        # --- which slots
        in_names: list[str] = []  # parameters, then tensors nested in tuples / dicts
        var_params: set[str] = set()
        nested_out: list[str] = []
        for c in calls:
            var_params |= c.var_params
            for n, leaf in c.inputs.items():
                if n not in in_names and (n in c.params or leaf.is_tensor):
                    in_names.append(n)
            for n, leaf in c.outputs.items():
                if leaf.is_tensor and n not in nested_out:
                    nested_out.append(n)
        kinds = {(c.out_kind, c.out_keys) for c in calls}
        if len(kinds) == 1:
            return_kind, keys = next(iter(kinds))
        else:
            return_kind, keys = "varies", ()
            notes.append("the return value's structure differs between calls: not checked")
        out_specs: list[tuple[str, Any]] = []
        if return_kind == "single":
            out_specs = [("return", None)]
        elif return_kind in ("tuple", "dict"):
            out_specs = [(f"return[{k!r}]", k) for k in keys]
        slots_in = [self.slot(sis, n, "in", n in var_params, None) for n in in_names]
        slots_out = [self.slot(sis, n, "out", False, k) for n, k in out_specs]
        if return_kind == "dict":
            slots_out = [s for s in slots_out if s.tensor]  # non-tensor entries: not checked
        covered = {n for n, _ in out_specs}
        for n in nested_out:  # tensors deeper in the return value: shown, not checked
            if n not in covered:
                slot = self.slot(sis, n, "out", False, None)
                slot.attachable = False
                slot.note = _join(slot.note, "nested: shown, not checked")
                slots_out.append(slot)
        for slot in slots_in:
            if "[" in slot.name and slot.attachable:
                slot.attachable = False
                slot.note = _join(slot.note, "inside a container: shown, not checked")
        self.share_variadics(sis, slots_in + slots_out)
        # --- dims within the class: group positions carrying the same label at every site
        positions: list[tuple[SlotProposal, int]] = []
        for s in slots_in + slots_out:
            if s.tensor and s.dims is not None:
                positions += [(s, a) for a in range(len(s.dims)) if not s.dims[a].startswith("*")]
        groups: list[dict[str, Any]] = []  # {"labels": {si: label}, "members": [...]}
        for s, a in positions:
            labels = self.position_labels(sis, s, a)
            if labels is None:
                s.dims[a] = "?"
                continue
            for g in groups:
                common = set(g["labels"]) & set(labels)
                if common and all(g["labels"][si] == labels[si] for si in common):
                    g["members"].append((s, a))
                    for si, lab in labels.items():
                        g["labels"].setdefault(si, lab)
                    break
            else:
                groups.append({"labels": dict(labels), "members": [(s, a)]})
        bound: dict[str, str] = {}
        used: set[str] = set()
        reserved = set(self.dims)  # global dim names: never reused for an attribute
        names_for: list[str | None] = [None] * len(groups)
        # 1) the same dim at every site
        for gi, g in enumerate(groups):
            labs = set(g["labels"].values())
            if len(labs) == 1 and next(iter(labs))[0] == "v":
                n = next(iter(labs))[1]
                if n not in used:
                    names_for[gi] = n
                    used.add(n)
        # 2) fixed sizes: an attribute, else a literal
        literal_notes: list[str] = []
        for gi, g in enumerate(groups):
            if names_for[gi] is not None:
                continue
            labs = g["labels"]
            if all(lab[0] == "=" for lab in labs.values()):
                values = {lab[1] for lab in labs.values()}
                attr = self.find_attr(labs)
                if attr is not None and not (values == {1}):
                    path, also = attr
                    n = next((k for k, v in bound.items() if v == path), None)
                    if n is None:
                        n = _fresh(attr_dim_name(path), used | reserved)
                        bound[n] = path
                        used.add(n)
                        if also:
                            notes.append(
                                f"`{n}` = `{path}`; also equal: {', '.join(f'`{x}`' for x in also)}"
                            )
                    names_for[gi] = n
                elif len(values) == 1:
                    names_for[gi] = str(next(iter(values)))
                    if values != {1}:
                        literal_notes += [
                            f"{cls.__qualname__}.forward {s.name} axis {a} = {names_for[gi]}"
                            for s, a in g["members"]
                        ]
        # 3) free names (sizes that differ between call sites in no fixed way)
        for gi, g in enumerate(groups):
            if names_for[gi] is not None:
                continue
            cands = [lab[1] for lab in g["labels"].values() if lab[0] == "v"]
            n = next((c for c in cands if c not in used), None) or _fresh(
                cands[0] if cands else "X", used | reserved
            )
            names_for[gi] = n
            used.add(n)
        for gi, g in enumerate(groups):
            for s, a in g["members"]:
                s.dims[a] = names_for[gi]
        self.literals.extend(literal_notes)
        # --- value constraints
        taken = used | reserved  # shared by every slot: two Range attributes get two names
        for s in slots_in + slots_out:
            if s.tensor:
                self.constrain(cls, sis, s, groups, names_for, bound, taken)
        for s in slots_in + slots_out:
            if s.tensor and "?" in s.dims:
                s.attachable = False
                s.note = _join(s.note, "rank changes between calls: not checked")
        return ContractProposal(cls, paths, slots_in, slots_out, return_kind, bound, notes)

    def share_variadics(self, sis: list[int], slots: list[SlotProposal]) -> None:
        """Variadic prefixes equal at every call (a dropout's input and output) share a name."""
        var = [s for s in slots if s.tensor and s.dims and s.dims[0].startswith("*")]
        groups: list[tuple[dict[tuple[int, int], tuple], list[SlotProposal]]] = []
        for s in var:
            n_trailing = len(s.dims) - 1
            pre = {
                (si, b): leaf.shape[: len(leaf.shape) - n_trailing]
                for si, b, leaf in self._slot_leaves(sis, s.name)
                if leaf is not None and leaf.is_tensor
            }
            for seen, members in groups:
                common = seen.keys() & pre.keys()
                if common and all(seen[k] == pre[k] for k in common):
                    members.append(s)
                    seen.update(pre)
                    break
            else:
                groups.append((dict(pre), [s]))
        for i, (_, members) in enumerate(groups):
            for s in members:
                s.dims[0] = "*batch" if i == 0 else f"*batch{i + 1}"

    def position_labels(self, sis: list[int], s: SlotProposal, a: int) -> dict | None:
        """The label of axis ``a`` of slot ``s`` at every site (None: not comparable)."""
        labels: dict[int, tuple[str, Any]] = {}
        n_trailing = len(s.dims) - (1 if s.dims and s.dims[0].startswith("*") else 0)
        variadic = s.dims and s.dims[0].startswith("*")
        for si, _b, leaf in self._slot_leaves(sis, s.name):
            if leaf is None or not leaf.is_tensor:
                continue
            axis = (len(leaf.shape) - n_trailing + (a - 1)) if variadic else a
            if axis >= len(leaf.shape):
                return None
            lab = self.site_label(si, s.name, axis, leaf.shape[axis])
            if labels.setdefault(si, lab) != lab:  # varies at one site without a vector
                return None
        return labels

    def find_attr(self, labels: dict[int, tuple[str, Any]]) -> tuple[str, list[str]] | None:
        """An attribute path holding the site's fixed size at every site (best first)."""
        common: set[str] | None = None
        for si, lab in labels.items():
            attrs = int_attrs(self.sites[si].module, self.attr_cache)
            here = {p for p, v in attrs.items() if v == lab[1]}
            common = here if common is None else common & here
            if not common:
                return None
        if not common:
            return None
        ranked = sorted(common, key=attr_rank)
        value = next(iter(labels.values()))[1]
        rank = attr_rank(ranked[0])
        if value <= 2 and (rank[0] or rank[1] == len(PRIORITY)):
            return None  # a tiny size matching an attribute of no dim-like name: coincidence
        return ranked[0], ranked[1:4]

    def slot(self, sis: list[int], name: str, role: str, var: bool, key: Any) -> SlotProposal:
        obs = self._slot_leaves(sis, name)
        leaves = [leaf for _, _, leaf in obs if leaf is not None]
        tensors = [leaf for leaf in leaves if leaf.is_tensor]
        others = {leaf.kind for leaf in leaves if not leaf.is_tensor}
        s = SlotProposal(name=name, role=role, tensor=bool(tensors), key=key)
        if var:
            s.attachable = False
            s.note = "*args/**kwargs: not checked"
        elif name in NOT_ATTACHABLE:
            s.attachable = False
            s.note = f"a parameter named {name!r} cannot be passed to contracts.attach"
        if not tensors:
            s.pytype = "/".join(sorted(others)) or "-"
            return s
        missing = len(leaves) < len(obs)
        s.optional = role == "in" and (missing or "NoneType" in others)
        if others - {"NoneType"}:
            s.attachable = False
            s.note = _join(s.note, f"sometimes a tensor, sometimes {'/'.join(sorted(others))}")
        ranks = {len(t.shape) for t in tensors}
        if len(ranks) == 1:
            s.dims = [""] * next(iter(ranks))
        else:
            s.dims = [f"*{_ident(name)}_batch"] + [""] * min(ranks)
        dts = {t.dtype for t in tensors}
        kinds = {t.kind for t in tensors}
        if len(dts) == 1:
            dt = next(iter(dts))
            s.dtype_cls = JT_DTYPE.get(dt, JT_KIND.get(next(iter(kinds)), "Shaped"))
            s.dtype_words = str(dt).replace("torch.", "")
        else:
            s.dtype_cls = JT_KIND.get(next(iter(kinds)), "Shaped") if len(kinds) == 1 else "Shaped"
            s.dtype_words = "/".join(sorted(str(d).replace("torch.", "") for d in dts))
        return s

    def constrain(
        self,
        cls: type,
        sis: list[int],
        s: SlotProposal,
        groups: list[dict],
        names_for: list[str | None],
        bound: dict[str, str],
        used: set[str],
    ) -> None:
        obs = [(si, b, leaf) for si, b, leaf in self._slot_leaves(sis, s.name)
               if leaf is not None and leaf.is_tensor]  # fmt: skip
        kind = {leaf.kind for _, _, leaf in obs}
        stats = [leaf for _, _, leaf in obs if leaf.lo is not None]
        if not stats:
            return
        lo = min(leaf.lo for leaf in stats)
        hi = max(leaf.hi for leaf in stats)
        if kind <= {"float", "complex"}:
            s.observed = f"[{_fmt(lo)}, {_fmt(hi)}]"
            if all(leaf.finite for leaf in stats) and len(stats) == len(obs):
                s.constraint, s.constraint_words = "Finite()", "finite"
            else:
                s.note = _join(s.note, "non-finite values observed")
            return
        if kind == {"bool"}:
            if s.dims and all(leaf.mask_ok for leaf in stats) and len(stats) == len(obs):
                s.constraint, s.constraint_words = "Mask()", "{0, 1}, ≥1 valid per row"
            return
        if kind != {"int"}:
            return
        s.observed = f"[{_fmt(lo)}, {_fmt(hi)}]"
        if lo < 0 or len(stats) != len(obs):
            return
        # lengths (a 1-d or scalar int tensor) whose largest value is a non-batch dim of the
        # same call in every call: padded batches, the longest row fills the padding
        for gi, g in enumerate(groups if len(s.dims) <= 1 else []):
            name = names_for[gi]
            if name in (None, "B") or not name.isidentifier() or name in bound:
                continue
            if all(self.group_size(g, si, b) == leaf.hi for si, b, leaf in obs):
                s.constraint = f'Range(0, "{name}")'
                s.constraint_words = f"[0, {name}]"
                return
        # a vocabulary / steps / length attribute above every observed value
        common: set[str] | None = None
        for si in sorted({si for si, _, _ in obs}):
            attrs = int_attrs(self.sites[si].module, self.attr_cache)
            here = {p for p in attrs if any(w in p.rsplit(".", 1)[-1].lower() for w in INDEX_ATTRS)}
            here = {p for p in here if index_hi(p, attrs[p]) >= hi}
            common = here if common is None else common & here
        if common:
            best = sorted(
                common,
                key=lambda p: (
                    min(i for i, w in enumerate(INDEX_ATTRS) if w in p.rsplit(".", 1)[-1].lower()),
                    attr_rank(p),
                ),
            )[0]
            n = next((k for k, v in bound.items() if v == best), None)
            if n is None:
                n = _fresh(attr_dim_name(best), used)
                bound[n] = best
                used.add(n)
                # (``used`` here already includes the global dim names)
            inclusive = best.rsplit(".", 1)[-1].lower().startswith("max_")
            hi_src = n if inclusive else f"{n}-1"
            s.constraint = f'Range(0, "{hi_src}")'
            s.constraint_words = f"[0, {hi_src}]"
            return

    def group_size(self, g: dict, si: int, b: int) -> int | None:
        for s, a in g["members"]:
            c = self.sites[si].calls[b]
            if c is None:
                return None
            leaf = c.inputs.get(s.name) if s.role == "in" else c.outputs.get(s.name)
            if leaf is not None and leaf.is_tensor and a < len(leaf.shape):
                variadic = s.dims and s.dims[0].startswith("*")
                axis = len(leaf.shape) - (len(s.dims) - 1) + (a - 1) if variadic else a
                return leaf.shape[axis]
        return None


def _defining_class(cls: type) -> type:
    """The class in ``cls``'s MRO whose ``__dict__`` defines ``forward``."""
    for k in cls.__mro__:
        if "forward" in k.__dict__:
            return k
    return cls


def _fresh(base: str, used: set[str]) -> str:
    if base not in used:
        return base
    i = 2
    while f"{base}{i}" in used:
        i += 1
    return f"{base}{i}"


def _ident(name: str) -> str:
    return re.sub(r"\W+", "_", name).strip("_") or "x"


def _join(a: str, b: str) -> str:
    return f"{a}; {b}" if a else b


def unify(rec: Recording) -> Inference:
    """Turn a :class:`Recording` into proposed contracts and warnings."""
    u = _Unifier(rec)
    with frozen_gc():
        u.global_dims()
        contracts = u.contracts()
    warns: list[str] = []
    if u.nb < 2:
        warns.append(
            "only one batch: no size could vary, so the batch and length dims could not be told "
            "apart from fixed sizes (every size became a literal or a model attribute); give at "
            "least two batches with different batch sizes and lengths"
        )
    elif not u.dims:
        warns.append(
            f"no size varied across the {u.nb} batches: batch and length dims could not be told "
            "apart from fixed sizes. Give batches with different batch sizes and lengths"
        )
    if rec.errors:
        warns.append(
            f"{len(rec.errors)} module call(s) or module(s) could not be observed and were left "
            f"out (first: {rec.errors[0]})"
        )
    if u.literals:
        shown = ", ".join(u.literals[:8])
        more = f" and {len(u.literals) - 8} more" if len(u.literals) > 8 else ""
        warns.append(
            f"sizes that never varied across the {u.nb} batch(es) and match no module attribute "
            f"became literals (vary them in the sample batches if they are dims): {shown}{more}"
        )
    return Inference(
        contracts,
        u.dims,
        u.dim_where,
        warns,
        u.nb,
        len(rec.hooked),
        seconds=rec.seconds,
        literals=list(u.literals),
    )
