"""The runner: calls the target's forward and replaces a site's value through scoped hooks.

A *site* is where the condition is replaced:

* a dotted module path (``"noise_encoder"``, ``"blocks.0.film"``): the module's output is
  replaced through a forward hook. When the module returns a tuple, name the element:
  ``"encoder[0]"``.
* ``"arg:NAME"``: the keyword argument ``NAME`` of the root model's ``forward`` is replaced
  through a forward pre-hook (positional calls are bound by name too).

Every hook lives in a :class:`~diagnostics._hooks.HookSet`, so it is removed even when the
forward raises.
"""

from __future__ import annotations

import contextlib
import difflib
import inspect
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
    "Runner",
    "Site",
    "derangement",
    "describe",
    "first_dim",
    "parse_site",
    "seed_of",
]


class _Abort(Exception):
    """Raised inside a capture hook to stop a forward once the site value is known."""


_SITE_RE = re.compile(r"^(arg:)?([A-Za-z_][\w.]*|\w+(?:\.\w+)*)(?:\[(\d+)\])?$")


@dataclass(frozen=True)
class Site:
    """A parsed site: ``kind`` is ``"module"`` or ``"arg"``; ``index`` picks a tuple element."""

    text: str
    kind: str
    path: str
    index: int | None


def parse_site(text: str) -> Site:
    """``"enc.proj"``, ``"enc[0]"`` or ``"arg:cond"`` -> :class:`Site`.

    Example:
        >>> parse_site("enc[1]").index
        1
    """
    m = _SITE_RE.match(text.strip())
    if not m:
        raise AblationError(
            f"bad site {text!r}: expected a dotted module path (e.g. 'encoder.proj', "
            "'encoder[0]' for a tuple output) or 'arg:NAME'",
            site=text,
        )
    kind = "arg" if m.group(1) else "module"
    if kind == "arg" and m.group(3) is not None:
        raise AblationError(f"bad site {text!r}: 'arg:NAME' takes no [index]", site=text)
    return Site(text.strip(), kind, m.group(2), int(m.group(3)) if m.group(3) else None)


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
        self.fork_devices: list[int] = []
        if device is not None and device.type == "cuda":
            self.fork_devices = [device.index if device.index is not None else 0]

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
        """The compared output on ``batch`` with the torch RNG forked and seeded."""
        with torch.random.fork_rng(devices=self.fork_devices):
            torch.manual_seed(seed)
            out = self.call(batch)
        if not isinstance(out, Tensor) or out.dim() == 0:
            raise AblationError(
                f"the target's forward returned {describe(out)}; the compared output must be a "
                "Tensor [B, ...] (give AblationTarget.forward to pick it)"
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
        """Raise an AblationError naming the nearest paths when ``site`` does not exist."""
        if site.kind == "module":
            if site.path not in self.modules:
                names = [n for n in self.modules if n]
                near = difflib.get_close_matches(site.path, names, n=5, cutoff=0.4)
                if not near:  # fall back to paths sharing the last component
                    last = site.path.rsplit(".", 1)[-1]
                    near = [n for n in names if last in n][:5]
                hint = (
                    f"nearest: {', '.join(near)}" if near else f"some paths: {', '.join(names[:5])}"
                )
                raise AblationError(
                    f"unknown site {site.text!r}: {type(self.model).__name__} has no module at "
                    f"that path; {hint} (use 'arg:NAME' for a forward argument)",
                    site=site.text,
                )
            return
        params = inspect.signature(self.model.forward).parameters
        has_var_kw = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
        if site.path not in params and not has_var_kw:
            raise AblationError(
                f"site {site.text!r}: {type(self.model).__name__}.forward has no argument "
                f"{site.path!r} (its arguments: {', '.join(params) or 'none'})",
                site=site.text,
            )

    @contextlib.contextmanager
    def replaced(
        self, site: Site, fn: Callable[[Tensor], Any], *, lenient: bool = False
    ) -> Iterator[list[int]]:
        """Install ``fn(value) -> replacement`` at ``site`` for the ``with`` block; yields a
        one-element fire counter. The hook is removed on exit, also when the block raises.
        ``lenient``: an ``arg:`` site that a call leaves out or passes as None is left alone
        (a sampler's unconditional calls)."""
        fired = [0]
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
        """The site's value on ``batch``: at its first call (the forward stops there when
        ``abort``) or at every call of the forward; with ``inputs``, a module site's tensor
        inputs at each captured call too."""
        got: list[Tensor] = []
        seen: list[list[Tensor]] = []

        def look(mod: nn.Module, args: tuple) -> None:
            seen.append([t.detach() for t in tensors_in(args) if t.dim() > 0])

        def grab(v: Tensor) -> Tensor:
            got.append(v.detach())
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


@dataclass
class Captured:
    """A site's values on one batch, one per call of the forward (only the first when the
    capture stopped there), and a module site's tensor inputs per call (``None``: an ``arg:``
    site, or not asked)."""

    values: list[Tensor]
    inputs: list[list[Tensor]] | None


def _output_hook(site: Site, fn: Callable[[Tensor], Any], fired: list[int]) -> Callable[..., Any]:
    def fwd_hook(mod: nn.Module, args: Any, output: Any) -> Any:
        fired[0] += 1
        if isinstance(output, Tensor):
            if site.index is not None:
                raise AblationError(
                    f"site {site.text!r}: the module returns a single Tensor, not a "
                    f"tuple; drop the [{site.index}]",
                    site=site.text,
                )
            new = fn(output)
            return None if new is output else new
        if isinstance(output, (tuple, list)):
            if site.index is None:
                parts = ", ".join(f"[{i}] {describe(o)}" for i, o in enumerate(output))
                raise AblationError(
                    f"site {site.text!r} returns a {type(output).__name__} ({parts}); "
                    f"say which element, e.g. '{site.path}[0]'",
                    site=site.text,
                )
            if site.index >= len(output) or not isinstance(output[site.index], Tensor):
                got = (
                    describe(output[site.index])
                    if site.index < len(output)
                    else f"only {len(output)} elements"
                )
                raise AblationError(
                    f"site {site.text!r}: element [{site.index}] of the output is not a "
                    f"Tensor ({got})",
                    site=site.text,
                )
            new = fn(output[site.index])
            if new is output[site.index]:
                return None
            out = list(output)
            out[site.index] = new
            return type(output)(out) if isinstance(output, list) else tuple(out)
        raise AblationError(
            f"site {site.text!r}: the module's output is {describe(output)}, not a Tensor "
            "(ablate a submodule that returns a tensor, or an 'arg:' site)",
            site=site.text,
        )

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
        value = container[site.path]
        if value is None and lenient:
            return None
        if not isinstance(value, Tensor):
            raise AblationError(
                f"site {site.text!r}: argument {site.path!r} is {describe(value)}, not a "
                "Tensor (nothing to ablate)",
                site=site.text,
            )
        new = fn(value)
        if new is value:
            return None
        container[site.path] = new
        return bound.args, bound.kwargs

    return pre_hook
