"""The runner: calls the target's forward and replaces a site's value through scoped hooks.

A *site* is where the condition is replaced:

* a dotted module path (``"noise_encoder"``, ``"blocks.0.film"``): the module's output is
  replaced through a forward hook. When the module returns a tuple, a list or a dict, name the
  element: ``"encoder[0]"``, ``"lstm[1][0]"`` (``h_n`` of ``(output, (h_n, c_n))``),
  ``"encoder[last_hidden_state]"``.
* ``"arg:NAME"``: the keyword argument ``NAME`` of the root model's ``forward`` is replaced
  through a forward pre-hook (positional calls are bound by name too); ``"arg:cond[text]"``
  names an element of a dict/tuple argument.

The **batch axis** of a site's value is found once per site (:meth:`Runner.detect_layout`): the
axis whose size is the batch's (the compared output's leading dim); when several axes have that
size (``h_n`` of a 2-layer GRU on a batch of 2), the one that doubles when the batch is tiled
twice. The hooks hand the replacement functions the value with the batch moved to dim 0 and
move it back, so every ablation permutes, averages and compares examples, never time steps or
layers.

Every hook lives in a :class:`~diagnostics._hooks.HookSet`, so it is removed even when the
forward raises.
"""

from __future__ import annotations

import contextlib
import copy
import difflib
import inspect
import itertools
import random
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from diagnostics._ablation._types import AblationError, AblationTarget
from diagnostics._hooks import HookSet, tensors_in

__all__ = [
    "Captured",
    "Layout",
    "Runner",
    "Site",
    "derangement",
    "describe",
    "first_dim",
    "forked_rng",
    "parse_site",
    "seed_of",
]


class _Abort(Exception):
    """Raised inside a capture hook to stop a forward once the site value is known."""


_KEY = r"-?\d+|[A-Za-z_]\w*|'[^'\]]*'|" + r'"[^"\]]*"'  # [0], [-1], [name], ['a b']
_SITE_RE = re.compile(rf"^(arg:)?([A-Za-z_][\w.]*|\w+(?:\.\w+)*)((?:\[(?:{_KEY})\])*)$")
_KEY_RE = re.compile(rf"\[({_KEY})\]")


@dataclass(frozen=True)
class Site:
    """A parsed site: ``kind`` is ``"module"`` or ``"arg"``; ``keys`` pick an element of a
    tuple/list/dict value, outermost first (``lstm[1][0]`` -> ``(1, 0)``)."""

    text: str
    kind: str
    path: str
    keys: tuple[int | str, ...] = ()

    @property
    def index(self) -> int | str | None:
        """The first element key (``enc[1]`` -> 1), or None."""
        return self.keys[0] if self.keys else None


def parse_site(text: str) -> Site:
    """``"enc.proj"``, ``"enc[0]"``, ``"lstm[1][0]"``, ``"arg:cond"`` or ``"arg:cond[text]"``
    -> :class:`Site`.

    Example:
        >>> parse_site("enc[1]").index
        1
        >>> parse_site("arg:cond[text]").keys
        ('text',)
    """
    m = _SITE_RE.match(text.strip())
    if not m:
        raise AblationError(
            f"bad site {text!r}: expected a dotted module path (e.g. 'encoder.proj', "
            "'encoder[0]' for an element of a tuple or dict output) or 'arg:NAME'",
            site=text,
        )
    kind = "arg" if m.group(1) else "module"
    keys = tuple(
        int(k) if re.fullmatch(r"-?\d+", k) else k.strip("'\"") for k in _KEY_RE.findall(m.group(3))
    )
    return Site(text.strip(), kind, m.group(2), keys)


def _keys_text(keys: tuple[int | str, ...]) -> str:
    """``(1, "a b")`` -> ``[1]['a b']`` (a key that is not a name is quoted)."""
    return "".join(
        f"[{k}]" if isinstance(k, int) or re.fullmatch(r"[A-Za-z_]\w*", k) else f"[{k!r}]"
        for k in keys
    )


def _dict_key(obj: Mapping, k: int | str) -> Any:
    """The key of ``obj`` that ``k`` names (``[0]`` may name an int or the string ``"0"``)."""
    if k in obj:
        return k
    if isinstance(k, int) and str(k) in obj:
        return str(k)
    return _MISSING


_MISSING = object()


def _parts(obj: Any) -> str:
    """The elements of a tuple/list/dict in words: ``[0] tensor[...], [1] tuple``."""
    items = obj.items() if isinstance(obj, Mapping) else enumerate(obj)
    return ", ".join(f"{_keys_text((k,))} {describe(v)}" for k, v in items)


def _pick(site: Site, obj: Any, what: str) -> Tensor:
    """The tensor that ``site.keys`` name inside ``obj`` (a module's output or an argument's
    value, ``what`` in words); an AblationError naming the site and the way out otherwise."""
    cur = obj
    for depth, k in enumerate(site.keys):
        here = what + (f" element {_keys_text(site.keys[:depth])}" if depth else "")
        rest = _keys_text(site.keys[depth:])
        if isinstance(cur, Tensor):
            raise AblationError(
                f"site {site.text!r}: {here} is a single Tensor, not a tuple, list or dict; "
                f"drop the {rest}",
                site=site.text,
            )
        if isinstance(cur, Mapping):
            key = _dict_key(cur, k)
            if key is _MISSING:
                raise AblationError(
                    f"site {site.text!r}: {here} is a {type(cur).__name__} without the key "
                    f"{k!r} (its keys: {', '.join(map(str, cur)) or 'none'})",
                    site=site.text,
                )
            cur = cur[key]
        elif isinstance(cur, (tuple, list)):
            if not isinstance(k, int) or not -len(cur) <= k < len(cur):
                raise AblationError(
                    f"site {site.text!r}: {here} is a {type(cur).__name__} of {len(cur)} "
                    f"element{'s' * (len(cur) != 1)} ({_parts(cur)}); there is no [{k}]",
                    site=site.text,
                )
            cur = cur[k]
        else:
            raise AblationError(
                f"site {site.text!r}: {here} is {describe(cur)}, not a tuple, list or dict; "
                f"drop the {rest}",
                site=site.text,
            )
    if isinstance(cur, Tensor):
        return cur
    here = what + (f" element {_keys_text(site.keys)}" if site.keys else "")
    if isinstance(cur, (tuple, list, Mapping)) and len(cur):
        first = next(iter(cur)) if isinstance(cur, Mapping) else 0
        eg = f"{site.text}{_keys_text((first,))}"
        if isinstance(cur, (tuple, list)) and what == "the module's output" and not site.keys:
            # the wording of the first version (scripts match on it)
            raise AblationError(
                f"site {site.text!r} returns a {type(cur).__name__} ({_parts(cur)}); "
                f"say which element, e.g. {eg!r}",
                site=site.text,
            )
        raise AblationError(
            f"site {site.text!r}: {here} is {type(cur).__name__}, not a Tensor "
            f"({_parts(cur)}); say which element, e.g. {eg!r}",
            site=site.text,
        )
    hint = (
        "ablate a submodule that returns a tensor, or an 'arg:' site"
        if site.kind == "module"
        else "nothing to ablate"
    )
    raise AblationError(
        f"site {site.text!r}: {here} is {describe(cur)}, not a Tensor ({hint})", site=site.text
    )


def _put(obj: Any, keys: tuple[int | str, ...], new: Any) -> Any:
    """A copy of ``obj`` with the element that ``keys`` name replaced by ``new`` (the
    containers on the way are copied, never changed in place: the batch is reused)."""
    if not keys:
        return new
    k, rest = keys[0], keys[1:]
    if isinstance(obj, Mapping):
        key = _dict_key(obj, k)
        out = copy.copy(obj)
        out[key] = _put(obj[key], rest, new)
        return out
    if isinstance(obj, tuple) and hasattr(obj, "_fields"):  # namedtuple
        return obj._replace(**{obj._fields[k]: _put(obj[k], rest, new)})
    items = list(obj)
    items[k] = _put(obj[k], rest, new)
    return items if isinstance(obj, list) else tuple(items)


@dataclass(frozen=True)
class Layout:
    """Where a site's examples are: the batch axis of its value, and of each tensor input of a
    module site (``None``: that input has no axis of the batch's size; it is not compared
    between examples). ``note``: said in the report when the batch is not on dim 0, or could
    not be told."""

    value: int
    inputs: tuple[int | None, ...] = ()
    note: str | None = None


@contextlib.contextmanager
def forked_rng(devices: list[int], seed: int) -> Iterator[None]:
    """Run the block with torch's (CPU and ``devices``), NumPy's and Python's global RNGs
    seeded from ``seed``, and put every one of them back after: a forward that draws from any
    of them draws the same on every call and leaves the caller's state as it was."""
    py, npy = random.getstate(), np.random.get_state()
    try:
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(seed)
            random.seed(seed)
            np.random.seed(seed % 2**32)
            yield
    finally:
        random.setstate(py)
        np.random.set_state(npy)


def seed_of(*keys: int) -> int:
    """A deterministic 63-bit seed from integer keys."""
    return int(np.random.SeedSequence([int(k) for k in keys]).generate_state(2, np.uint64)[0] >> 1)


def tree_map(fn: Callable[[Tensor], Any], obj: Any) -> Any:
    """Apply ``fn`` to every tensor in a nested dict/list/tuple/namedtuple."""
    if isinstance(obj, Tensor):
        return fn(obj)
    if isinstance(obj, Mapping):
        return {k: tree_map(fn, v) for k, v in obj.items()}
    if isinstance(obj, tuple) and hasattr(obj, "_fields"):  # namedtuple
        return type(obj)(*(tree_map(fn, v) for v in obj))
    if isinstance(obj, (list, tuple)):
        return type(obj)(tree_map(fn, v) for v in obj)
    return obj


def _leaves(obj: Any, trail: tuple = ()) -> Iterator[tuple[str, Tensor]]:
    """``(path, tensor)`` of every tensor in a nested batch (``cond``, ``[1]``, ``c[text]``)."""
    if isinstance(obj, Tensor):
        head, rest = (trail[0], trail[1:]) if trail and isinstance(trail[0], str) else ("", trail)
        yield f"{head}{_keys_text(rest)}" or "the batch", obj
    elif isinstance(obj, Mapping):
        for k, v in obj.items():
            yield from _leaves(v, (*trail, k))
    elif isinstance(obj, (list, tuple)):
        for k, v in enumerate(obj):
            yield from _leaves(v, (*trail, k))


def first_dim(obj: Any) -> int | None:
    """Leading dim of the first tensor leaf (the batch size), or None."""
    found: list[int] = []

    def visit(t: Tensor) -> Tensor:
        if not found and t.dim() > 0:
            found.append(t.shape[0])
        return t

    tree_map(visit, obj)
    return found[0] if found else None


def tile(batch: Any, n: int, b: int, vary: bool = False) -> Any:
    """Repeat every tensor leaf with leading dim ``b`` ``n`` times along dim 0; ``vary``: copy
    ``k`` of a floating leaf is scaled by ``1 + k / 2`` (the first copy keeps the values)."""

    def rep(t: Tensor) -> Tensor:
        if t.dim() == 0 or t.shape[0] != b:
            return t
        if vary and (t.is_floating_point() or t.is_complex()):
            return torch.cat([t * (1 + k / 2) if k else t for k in range(n)], 0)
        return torch.cat([t] * n, 0)

    return tree_map(rep, batch)


def describe(x: Any) -> str:
    """A tensor as torchdx's one-line summary (``tensor[2, 3] f32 cpu ...``), else the type
    name."""
    if isinstance(x, Tensor):
        from diagnostics._summary import summarize

        return summarize(x)
    return type(x).__name__


def derangement(b: int, gen: torch.Generator) -> Tensor:
    """A permutation of range(b) with no fixed point: a random cycle. ``b`` must be >= 2: the
    only permutation of one element is the identity, which would shuffle nothing."""
    if b < 2:
        raise ValueError(f"derangement({b}): a batch of {b} example(s) cannot be deranged")
    order = torch.randperm(b, generator=gen)
    perm = torch.empty(b, dtype=torch.long)
    perm[order] = order.roll(-1)
    return perm


class Runner:
    """Calls the target's forward (seeded) and installs site hooks in a scoped HookSet."""

    def __init__(self, target: AblationTarget, device: torch.device | None) -> None:
        self.target = target
        self.model = target.model
        self.device = device
        self.modules = dict(self.model.named_modules())
        self.fork_devices = _cuda_devices(self.model, device)
        self.layouts: dict[str, Layout] = {}  # site text -> where its examples are
        self.mutated: list[str] = []  # batch entries the forward changed in place

    # -- forward
    def to_device(self, batch: Any) -> Any:
        if self.device is None:
            return batch
        return tree_map(lambda t: t.to(self.device), batch)

    def call(self, batch: Any) -> Any:
        t = self.target
        if t.forward is not None:
            return t.forward(self.model, batch)
        if isinstance(batch, Mapping):
            return self.model(**batch)
        if isinstance(batch, (tuple, list)):
            return self.model(*batch)
        return self.model(batch)

    def call_seeded(self, batch: Any, seed: int) -> Tensor:
        """The compared output on ``batch`` with the global RNGs (torch, NumPy, Python) forked
        and seeded."""
        # the forward gets a copy of the batch's tensors: a model that changes its inputs in
        # place (``cond.mul_(2)``) would otherwise change the caller's batch, and every later
        # variant would see another input
        fresh = tree_map(lambda t: t.clone(), batch)
        with forked_rng(self.fork_devices, seed):
            out = self.call(fresh)
        for path, t in _leaves(fresh):
            if t._version and path not in self.mutated:
                self.mutated.append(path)
        if not isinstance(out, Tensor) or out.dim() == 0:
            what, eg = describe(out), ""
            if isinstance(out, (tuple, list, Mapping)) and len(out):
                what = f"{type(out).__name__} ({_parts(out)})"
                first = next(iter(out)) if isinstance(out, Mapping) else 0
                eg = f", e.g. forward=lambda m, b: m(**b)[{first!r}]"
            raise AblationError(
                f"the target's forward returned {what}; the compared output must be a "
                f"Tensor [B, ...] (give AblationTarget.forward to pick it{eg})"
            )
        return out

    def call_replaced(
        self, site: Site, batch: Any, seed: int, fn: Callable[[Tensor], Any]
    ) -> Tensor:
        """The compared output with ``fn(value) -> replacement`` installed at ``site``."""
        with self.replaced(site, fn) as fired:
            out = self.call_seeded(batch, seed)
        if not fired[0]:
            raise AblationError(f"site {site.text!r} never ran during the forward", site=site.text)
        return out

    # -- sites
    def check_site(self, site: Site) -> None:
        """Raise an AblationError naming the nearest paths when ``site`` does not exist (or is
        a container module that is never called)."""
        name = type(self.model).__name__
        params = inspect.signature(self.model.forward).parameters
        if site.kind == "module":
            mod = self.modules.get(site.path)
            if isinstance(mod, (nn.ModuleList, nn.ModuleDict)):
                kids = [f"{site.path}.{k}" for k, _ in mod.named_children()]
                keyed = f"{site.path}.{site.keys[0]}" if site.keys else None
                hint = (
                    f"did you mean {keyed!r}? ([k] names an element of a module's output, "
                    "'.k' a submodule)"
                    if keyed in self.modules
                    else f"ablate one of its modules ({', '.join(kids[:5]) or 'it has none'})"
                )
                raise AblationError(
                    f"site {site.text!r}: {site.path!r} is a {type(mod).__name__}, a container "
                    f"that is never called, so it has no output to replace; {hint}",
                    site=site.text,
                )
            if mod is not None:
                return
            names = [n for n in self.modules if n]
            tensors = dict(self.model.named_parameters()) | dict(self.model.named_buffers())
            if site.path in tensors:
                owner = site.path.rpartition(".")[0]
                kind = "parameter" if site.path in dict(self.model.named_parameters()) else "buffer"
                raise AblationError(
                    f"unknown site {site.text!r}: that is a {kind} of "
                    f"{repr(owner) if owner else name}, not a module; a site is a module whose "
                    f"output is replaced: try {owner or 'arg:NAME'!r}",
                    site=site.text,
                )
            near = difflib.get_close_matches(site.path, names, n=5, cutoff=0.4)
            if not near:  # fall back to paths sharing the last component
                last = site.path.rsplit(".", 1)[-1]
                near = [n for n in names if last in n][:5]
            hint = f"nearest: {', '.join(near)}" if near else f"some paths: {', '.join(names[:5])}"
            arg = (
                f"; {site.path!r} is an argument of {name}.forward: use 'arg:{site.path}'"
                if site.path in params
                else " (use 'arg:NAME' for a forward argument)"
            )
            raise AblationError(
                f"unknown site {site.text!r}: {name} has no module at that path; {hint}{arg}",
                site=site.text,
            )
        has_var_kw = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
        if site.path not in params and not has_var_kw:
            args = [n for n, p in params.items() if p.kind is not inspect.Parameter.VAR_POSITIONAL]
            near = difflib.get_close_matches(site.path, args, n=3, cutoff=0.4)
            also = f"; nearest: {', '.join(near)}" if near else ""
            mod = (
                f"; {site.path!r} is a module: use {site.path!r}"
                if site.path in self.modules
                else ""
            )
            inner = self._nested_arg(site.path)
            inner = f"; the batches hold it inside an argument: use {inner!r}" if inner else ""
            raise AblationError(
                f"site {site.text!r}: {name}.forward has no argument {site.path!r} "
                f"(its arguments: {', '.join(params) or 'none'}){also}{mod}{inner}",
                site=site.text,
            )

    def _nested_arg(self, key: str) -> str | None:
        """``arg:batch[cond]`` when the first batch passes ``key`` inside a dict argument of the
        root forward (the spelling of an element site), else None."""
        if self.target.forward is not None:
            return None
        try:
            first = next(iter(self.target.batches))
            sig = inspect.signature(self.model.forward)
            if isinstance(first, Mapping):
                bound = sig.bind_partial(**first)
            elif isinstance(first, (tuple, list)):
                bound = sig.bind_partial(*first)
            else:
                bound = sig.bind_partial(first)
        except Exception:  # an unusual batch: no hint
            return None

        def find(obj: Any, trail: tuple) -> tuple | None:
            if isinstance(obj, Mapping):
                if key in obj:
                    return (*trail, key)
                items = list(obj.items())
            elif isinstance(obj, (tuple, list)):
                items = list(enumerate(obj))
            else:
                return None
            for k, v in items:
                got = find(v, (*trail, k))
                if got is not None:
                    return got
            return None

        for name, value in bound.arguments.items():
            path = find(value, ())
            if path is not None:
                return f"arg:{name}{_keys_text(path)}"
        return None

    @contextlib.contextmanager
    def replaced(
        self, site: Site, fn: Callable[[Tensor], Any], *, lenient: bool = False
    ) -> Iterator[list[int]]:
        """Install ``fn(value) -> replacement`` at ``site`` for the ``with`` block; yields a
        one-element fire counter. The hook is removed on exit, also when the block raises.
        ``fn`` sees the value with its batch on dim 0 (see :meth:`detect_layout`).
        ``lenient``: an ``arg:`` site that a call leaves out or passes as None is left alone
        (a sampler's unconditional calls)."""
        fired = [0]
        layout = self.layouts.get(site.text)
        if layout is not None and layout.value != 0:
            fn = _batch_first(site, fn, layout.value)
        with HookSet() as hooks:
            if site.kind == "module":
                hooks.add(
                    self.modules[site.path].register_forward_hook(_output_hook(site, fn, fired)),
                    "fwd",
                )
            else:
                sig = inspect.signature(self.model.forward)
                hook = _arg_hook(site, fn, fired, sig, lenient)
                hooks.add(self.model.register_forward_pre_hook(hook, with_kwargs=True), "pre")
            yield fired

    def capture(
        self, site: Site, batch: Any, seed: int, *, abort: bool = True, inputs: bool = False
    ) -> Captured:
        """The site's value on ``batch`` (batch on dim 0): at its first call (the forward stops
        there when ``abort``) or at every call of the forward; with ``inputs``, a module site's
        tensor inputs at each captured call too (those with a batch axis, batch on dim 0)."""
        got: list[Tensor] = []
        seen: list[list[Tensor]] = []
        layout = self.layouts.get(site.text)

        def look(mod: nn.Module, args: tuple) -> None:
            ts = [t.detach().clone() for t in tensors_in(args) if t.dim() > 0]
            if layout is not None:
                axes = list(layout.inputs) + [None] * max(0, len(ts) - len(layout.inputs))
                ts = [t.movedim(a, 0) for t, a in zip(ts, axes) if a is not None and t.dim() > a]
            seen.append(ts)

        def grab(v: Tensor) -> Tensor:
            got.append(v.detach().clone())  # a later in-place op must not change it
            if abort:
                raise _Abort
            return v

        with HookSet() as hooks, self.replaced(site, grab) as fired:
            if inputs and site.kind == "module":
                hooks.add(self.modules[site.path].register_forward_pre_hook(look), "pre")
            try:
                self.call_seeded(batch, seed)
            except _Abort:
                pass
        if not got:
            raise AblationError(
                f"site {site.text!r} never ran during the target's forward (fired {fired[0]} "
                "times); is it on the path the forward takes?",
                site=site.text,
            )
        return Captured(got, seen[: len(got)] if inputs and site.kind == "module" else None)

    # -- where the examples are
    def _probe(self, site: Site, batch: Any, seed: int) -> tuple[Tensor, list[Tensor], Tensor]:
        """One whole forward: the site's first value and its tensor inputs as they are (no
        layout), and the compared output."""
        got: list[Tensor] = []
        seen: list[list[Tensor]] = []
        saved = self.layouts.pop(site.text, None)
        try:
            with HookSet() as hooks:
                if site.kind == "module":
                    hooks.add(
                        self.modules[site.path].register_forward_pre_hook(
                            lambda m, a: seen.append(
                                [t.clone() for t in tensors_in(a) if t.dim() > 0]
                            )
                        ),
                        "pre",
                    )
                with self.replaced(site, lambda v: got.append(v.detach().clone()) or v):
                    out = self.call_seeded(batch, seed)
        finally:
            if saved is not None:
                self.layouts[site.text] = saved
        if not got:
            raise AblationError(
                f"site {site.text!r} never ran during the target's forward; is it on the path "
                "the forward takes?",
                site=site.text,
            )
        return got[0], [t.detach() for t in (seen[0] if seen else [])], out

    def detect_layout(self, site: Site, batch: Any, seed: int) -> Layout:
        """Find (and keep, for every later hook at ``site``) the batch axis of the site's value
        and of a module site's tensor inputs.

        The batch size ``B`` is the compared output's leading dim. The batch axis is an axis of
        size ``B`` that doubles when the batch is tiled twice (a GRU's ``h_n [layers, B, H]``
        with ``layers == B``: dim 1; a feature axis that happens to have ``B`` entries does not
        grow). A value with no axis of size ``B``, or none that grows with the batch (shared by
        the batch, or with the batch folded into another axis), holds no per-example condition:
        refused. When the model does not take a tiled batch, the only axis of size ``B`` is
        taken (the first, with a note, when there are several)."""
        value, ins, out = self._probe(site, batch, seed)
        b = int(out.shape[0])
        cands = [d for d, n in enumerate(value.shape) if n == b]
        refuse = (
            "the ablations replace the condition of each example, so the site must hold one "
            "per example (a value shared by the whole batch, a module called once per "
            "example, or a value that folds the batch into another axis cannot be shuffled "
            "between examples); ablate a site with a batch axis"
        )
        if not cands:
            raise AblationError(
                f"site {site.text!r}: its value {describe(value)} has no axis of the "
                f"batch's size {b} (the output's leading dim): {refuse}",
                site=site.text,
            )
        doubled = self._doubled(site, batch, seed, b, value, ins)
        note = None
        if doubled is not None:
            hit = [d for d in cands if d in doubled[0]]
            if not hit:
                raise AblationError(
                    f"site {site.text!r}: its value {describe(value)} has the batch's size {b} "
                    f"on dim {', '.join(map(str, cands))} but does not grow with the batch (with "
                    f"the batch tiled twice it is {list(doubled[2])}): {refuse}",
                    site=site.text,
                )
            ax = hit[0]
        else:
            ax = cands[0]
            if len(cands) > 1:
                note = (
                    f"the batch axis of the site's value {list(value.shape)} is ambiguous "
                    f"(dims {', '.join(map(str, cands))} have the batch's size {b}, and the model "
                    f"does not take a tiled batch to tell them apart): dim {ax} is taken"
                )
        if note is None and ax != 0:
            note = (
                f"the site's value {list(value.shape)} holds the batch on dim {ax}: the "
                "ablations act along it"
            )
        in_axes: list[int | None] = []
        for j, t in enumerate(ins):
            c = [d for d, n in enumerate(t.shape) if n == b]
            if doubled is not None:
                c = [d for d in c if j < len(doubled[1]) and d in doubled[1][j]]
            in_axes.append(c[0] if len(c) == 1 else None)
        layout = Layout(ax, tuple(in_axes), note)
        self.layouts[site.text] = layout
        return layout

    def _doubled(
        self, site: Site, batch: Any, seed: int, b: int, value: Tensor, ins: list[Tensor]
    ) -> tuple[list[int], list[list[int]], tuple[int, ...]] | None:
        """The axes of the value and of each input that double when the batch is tiled twice,
        and the value's shape then (``None`` when the model does not take the tiled batch)."""
        try:
            v2, ins2, out2 = self._probe(site, tile(batch, 2, b), seed)
        except Exception:  # the model may not take a batch of another size
            return None
        if out2.shape[0] != 2 * b:
            return None

        def grew(a: Tensor, a2: Tensor) -> list[int]:
            if a.dim() != a2.dim():
                return []
            diff = [d for d in range(a.dim()) if a2.shape[d] != a.shape[d]]
            return diff if len(diff) == 1 and a2.shape[diff[0]] == 2 * a.shape[diff[0]] else []

        return grew(value, v2), [grew(t, t2) for t, t2 in zip(ins, ins2)], tuple(v2.shape)


@dataclass
class Captured:
    """A site's values on one batch, one per call of the forward (only the first when the
    capture stopped there), and a module site's tensor inputs per call (``None``: an ``arg:``
    site, or not asked); every one with its batch on dim 0."""

    values: list[Tensor]
    inputs: list[list[Tensor]] | None


def _cuda_devices(model: nn.Module, device: torch.device | None) -> list[int]:
    """The CUDA devices whose RNG a forward may draw from: ``device`` and wherever the model's
    parameters and buffers live (a model moved to the GPU before the run, without
    ``device=``, draws its dropout masks from that GPU's generator)."""
    found: set[int] = set()
    if device is not None and device.type == "cuda":
        found.add(device.index if device.index is not None else torch.cuda.current_device())
    for t in itertools.chain(model.parameters(), model.buffers()):
        if t.device.type == "cuda":
            found.add(t.device.index if t.device.index is not None else 0)
    return sorted(found)


def _batch_first(site: Site, fn: Callable[[Tensor], Any], ax: int) -> Callable[[Tensor], Any]:
    """``fn`` on the value with its batch axis ``ax`` moved to dim 0; the replacement is moved
    back (contiguous: the model may ``view`` it)."""

    def wrapped(v: Tensor) -> Any:
        if v.dim() <= ax:
            raise AblationError(
                f"site {site.text!r}: its value {describe(v)} has no dim {ax}, the batch axis "
                "found on the first batch",
                site=site.text,
            )
        u = v.movedim(ax, 0)
        r = fn(u)
        if r is u:
            return v
        return r.movedim(0, ax).contiguous() if isinstance(r, Tensor) else r

    return wrapped


def _output_hook(site: Site, fn: Callable[[Tensor], Any], fired: list[int]) -> Callable[..., Any]:
    def fwd_hook(mod: nn.Module, args: Any, output: Any) -> Any:
        fired[0] += 1
        value = _pick(site, output, "the module's output")
        new = fn(value)
        return None if new is value else _put(output, site.keys, new)

    return fwd_hook


def _arg_hook(
    site: Site,
    fn: Callable[[Tensor], Any],
    fired: list[int],
    sig: inspect.Signature,
    lenient: bool = False,
) -> Callable[..., Any]:
    def pre_hook(mod: nn.Module, args: tuple, kwargs: dict) -> Any:
        fired[0] += 1
        try:
            bound = sig.bind(*args, **kwargs)
        except TypeError as e:
            raise AblationError(
                f"site {site.text!r}: cannot bind forward's arguments: {e}"
            ) from None
        arguments = bound.arguments
        container = arguments
        if site.path not in arguments:
            var_kw = [
                n for n, p in sig.parameters.items() if p.kind is inspect.Parameter.VAR_KEYWORD
            ]
            if var_kw and site.path in arguments.get(var_kw[0], {}):
                container = arguments[var_kw[0]]
            elif lenient:
                return None
            else:
                raise AblationError(
                    f"site {site.text!r}: {type(mod).__name__}.forward was called without "
                    f"{site.path!r} (passed: {', '.join(arguments) or 'nothing'}); the model "
                    "does not use that argument in this run",
                    site=site.text,
                )
        whole = container[site.path]
        if whole is None and lenient:
            return None
        value = _pick(site, whole, f"argument {site.path!r}")
        new = fn(value)
        if new is value:
            return None
        container[site.path] = _put(whole, site.keys, new)
        return bound.args, bound.kwargs

    return pre_hook
