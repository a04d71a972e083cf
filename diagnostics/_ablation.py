"""Conditioning ablations: does a model actually use its condition?

A *site* is where the condition is replaced:

* a dotted module path (``"noise_encoder"``, ``"blocks.0.film"``): the module's output is
  replaced through a forward hook. When the module returns a tuple, name the element:
  ``"encoder[0]"``.
* ``"arg:NAME"``: the keyword argument ``NAME`` of the root model's ``forward`` is replaced
  through a forward pre-hook (positional calls are bound by name too).

Ablations (each compared with the intact run on the same inputs and the same noise):

* ``zero``: all zeros.
* ``mean``: the site's per-dimension mean over the data (a first pass over the batches).
* ``random``: Gaussian with the data's per-dimension mean and std.
* ``shuffle``: the batch's conditions permuted (a derangement: every example gets another
  example's condition; the mismatched-reference test).
* ``null``: the model's own unconditional input, given by ``AblationTarget.null``.

The intact run and the ablated runs are batched together (the batch is tiled, the hook replaces
the copies) when the model is batch-independent; the engine checks that on the first batch and
falls back to one forward per variant otherwise. Batches are streamed: only per-example numbers
are kept, never activations.

Under torch.distributed (``torchrun --nproc_per_node=N -m diagnostics.cond_ablation``) the
ablation passes are sharded: rank ``r`` runs the items ``k % N == r`` (every item's noise and
replacements derive from the seed and the item's indices, not from the process), the per-example
effects are gathered, and every rank summarises the same matrices, so rank 0's report equals the
single-process one. The site-statistics pass, the embedding analysis and the guidance sweep run
unsharded (the last two on rank 0 only). See ``docs/DDP.md``.

Example:
    >>> target = AblationTarget(model=net, batches=[{"x": x, "cond": c}], sites=["arg:cond"])
    >>> report = run_ablation(target, seed=0)
    >>> report.sites[0]["verdict"]
    'used'
"""

from __future__ import annotations

import difflib
import inspect
import re
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from contracts import TorchdxError
from diagnostics._stats import (
    IGNORED_MAX,
    N_BOOT,
    USED_MIN,
    bootstrap_ci,
    example_effects,
    site_verdict,
    verdict_from_ci,
)

__all__ = ["ABLATIONS", "AblationError", "AblationReport", "AblationTarget", "run_ablation"]

ABLATIONS: tuple[str, ...] = ("zero", "mean", "random", "shuffle", "null")
_MAX_EMBEDDINGS = 4096  # embeddings kept for the embedding analysis (bounded memory)


class AblationError(TorchdxError, ValueError):
    """Bad input to an ablation run (unknown site, non-tensor output, empty batches, ...).

    Attributes:
        site: the site being run when the error happened (or ``None``).
        report: an :class:`AblationReport` with the sites completed before the error (or
            ``None`` when nothing completed).
    """

    __module__ = "diagnostics"

    def __init__(self, message: str, *, site: str | None = None) -> None:
        super().__init__(message)
        self.site = site
        self.report: AblationReport | None = None


@dataclass
class AblationTarget:
    """What an ablation runs on; ``--target`` factories return one.

    Attributes:
        model: the model (its ``forward`` is what the ablation observes).
        batches: list of inputs: a dict (called as ``model(**batch)``), a tuple/list
            (``model(*batch)``), or anything ``forward`` understands. For a diffusion target,
            the clean-data batches that ``at_time`` turns into model inputs.
        forward: optional ``forward(model, batch) -> Tensor [B, ...]``; the compared output.
        sites: default sites (module paths or ``arg:NAME``) when the caller names none.
        labels: optional labels per batch item: one sequence of ``B`` labels per batch (or one
            flat list over all examples); used to colour and score the embeddings.
        null: the model's own unconditional input for the ``null`` ablation: a tensor
            (broadcast to the site's value), a callable ``null(value) -> replacement`` (for an
            ``arg:`` site it may return ``None`` to pass ``None``), or a dict ``{site: either}``.
        times: optional diffusion times (>= 8 recommended); with ``at_time`` every effect
            becomes a curve over these times.
        at_time: ``at_time(batch, t, generator) -> batch`` draws the model input at time
            ``t`` (e.g. ``x_t`` from the SDE marginal) using only ``generator`` for noise.
        sample: optional ``sample(model, batch, guidance_scale, seed) -> {metric: Tensor[B]}``
            that runs the sampler and scores it against the clean reference (for the
            guidance-scale sweep).
        guidance_scales: scales of the sweep.
        guidance_batches: how many batches the sweep uses (the sampler is slow).
        embedding_site: the module path whose output is the condition embedding (for the
            embedding analysis); default: the first module site.
        embedding_batches: batches for the embedding analysis only (it stops each forward at
            the embedding, so it can afford more examples than the ablation); default:
            ``batches``. Labels for them: ``embedding_labels`` (same format as ``labels``).
        batch_variants: run the intact and ablated variants as one tiled forward (checked for
            batch independence on the first batch). Set False for models whose throughput
            drops with larger batches (a conv net on one CPU thread; see the benchmark).
        name: a name for the report.
    """

    model: nn.Module
    batches: list[Any]
    forward: Callable[[nn.Module, Any], Tensor] | None = None
    sites: list[str] | None = None
    labels: list[Any] | None = None
    null: Any = None
    times: Sequence[float] | None = None
    at_time: Callable[[Any, float, torch.Generator], Any] | None = None
    sample: Callable[[nn.Module, Any, float, int], Mapping[str, Any]] | None = None
    guidance_scales: Sequence[float] = (0.0, 1.0, 2.0)
    guidance_batches: int = 1
    embedding_site: str | None = None
    embedding_batches: list[Any] | None = None
    embedding_labels: list[Any] | None = None
    batch_variants: bool = True
    name: str = ""


@dataclass
class AblationReport:
    """Result of :func:`run_ablation`.

    Attributes:
        data: the JSON-ready report (schema in ``docs/COND_ABLATION.md``); ``data["sites"]``
            holds ``{"site", "verdict", "ablations": {name: {"effect", "ci95", ...}}}``.
        embedding: the :class:`~diagnostics.EmbeddingReport` (or ``None``).
        timing: wall-clock seconds per phase (kept out of ``data`` so that the same seed gives
            the same report).
    """

    data: dict[str, Any]
    embedding: Any = None
    timing: dict[str, float] = field(default_factory=dict)

    @property
    def sites(self) -> list[dict[str, Any]]:
        return self.data["sites"]

    def to_dict(self) -> dict[str, Any]:
        return self.data

    def verdict_table(self) -> str:
        """Plain-text table: site, verdict, effect [CI] per ablation."""
        names = [a for a in ABLATIONS if any(a in s["ablations"] for s in self.sites)]
        rows = [["site", "verdict", *names]]
        for s in self.sites:
            cells = [s["site"], s["verdict"]]
            for a in names:
                r = s["ablations"].get(a)
                cells.append(
                    "-"
                    if r is None
                    else f"{r['effect']:.3f} [{r['ci95'][0]:.3f}, {r['ci95'][1]:.3f}]"
                )
            rows.append(cells)
        for e in self.data.get("errors", []):
            rows.append([e["site"] or "-", "error", *(["-"] * len(names))])
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
        lines.insert(1, "  ".join("-" * w for w in widths))
        return "\n".join(lines)


# ----------------------------------------------------------------------------- helpers


class _Abort(Exception):
    """Raised inside a capture hook to stop a forward once the site value is known."""


class _Unbatchable(Exception):
    """An ablation's replacement cannot be concatenated with the tiled batch."""


_SITE_RE = re.compile(r"^(arg:)?([A-Za-z_][\w.]*|\w+(?:\.\w+)*)(?:\[(\d+)\])?$")


@dataclass(frozen=True)
class _Site:
    text: str
    kind: str  # "module" or "arg"
    path: str  # dotted module path or argument name
    index: int | None  # tuple element for module outputs


def _parse_site(text: str) -> _Site:
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
    return _Site(text.strip(), kind, m.group(2), int(m.group(3)) if m.group(3) else None)


def _seed_of(*keys: int) -> int:
    """A deterministic 63-bit seed from integer keys."""
    return int(np.random.SeedSequence([int(k) for k in keys]).generate_state(2, np.uint64)[0] >> 1)


def _tree_map(fn: Callable[[Tensor], Any], obj: Any) -> Any:
    if isinstance(obj, Tensor):
        return fn(obj)
    if isinstance(obj, Mapping):
        return {k: _tree_map(fn, v) for k, v in obj.items()}
    if isinstance(obj, tuple) and hasattr(obj, "_fields"):  # namedtuple
        return type(obj)(*(_tree_map(fn, v) for v in obj))
    if isinstance(obj, (list, tuple)):
        return type(obj)(_tree_map(fn, v) for v in obj)
    return obj


def _first_dim(obj: Any) -> int | None:
    """Leading dim of the first tensor leaf (the batch size), or None."""
    found: list[int] = []

    def visit(t: Tensor) -> Tensor:
        if not found and t.dim() > 0:
            found.append(t.shape[0])
        return t

    _tree_map(visit, obj)
    return found[0] if found else None


def _describe(x: Any) -> str:
    if isinstance(x, Tensor):
        return f"Tensor{list(x.shape)} {str(x.dtype).replace('torch.', '')}"
    return type(x).__name__


def _derangement(b: int, gen: torch.Generator) -> Tensor:
    """A permutation of range(b) with no fixed point (b >= 2): a random cycle."""
    order = torch.randperm(b, generator=gen)
    perm = torch.empty(b, dtype=torch.long)
    perm[order] = order.roll(-1)
    return perm


class _Runner:
    """Calls the target's forward and installs site hooks."""

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
        return _tree_map(lambda t: t.to(self.device), batch)

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
        with torch.random.fork_rng(devices=self.fork_devices):
            torch.manual_seed(seed)
            out = self.call(batch)
        if not isinstance(out, Tensor) or out.dim() == 0:
            raise AblationError(
                f"the target's forward returned {_describe(out)}; the compared output must be a "
                "Tensor [B, ...] (give AblationTarget.forward to pick it)"
            )
        return out

    # -- sites
    def check_site(self, site: _Site) -> None:
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
        sig = inspect.signature(self.model.forward)
        params = sig.parameters
        has_var_kw = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
        if site.path not in params and not has_var_kw:
            raise AblationError(
                f"site {site.text!r}: {type(self.model).__name__}.forward has no argument "
                f"{site.path!r} (its arguments: {', '.join(params) or 'none'})",
                site=site.text,
            )

    def hook(self, site: _Site, fn: Callable[[Tensor], Any]) -> tuple[Any, list[int]]:
        """Install ``fn(value) -> replacement`` at ``site``; returns (handle, fire counter)."""
        fired = [0]
        if site.kind == "module":
            module = self.modules[site.path]

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
                        parts = ", ".join(f"[{i}] {_describe(o)}" for i, o in enumerate(output))
                        raise AblationError(
                            f"site {site.text!r} returns a {type(output).__name__} ({parts}); "
                            f"say which element, e.g. '{site.path}[0]'",
                            site=site.text,
                        )
                    if site.index >= len(output) or not isinstance(output[site.index], Tensor):
                        got = (
                            _describe(output[site.index])
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
                    f"site {site.text!r}: the module's output is {_describe(output)}, not a Tensor "
                    "(ablate a submodule that returns a tensor, or an 'arg:' site)",
                    site=site.text,
                )

            return module.register_forward_hook(fwd_hook), fired

        sig = inspect.signature(self.model.forward)

        def pre_hook(mod: nn.Module, args: tuple, kwargs: dict) -> Any:
            fired[0] += 1
            try:
                bound = sig.bind(*args, **kwargs)
            except TypeError as e:
                raise AblationError(
                    f"site {site.text!r}: cannot bind forward's arguments: {e}"
                ) from None
            arguments = bound.arguments
            if site.path not in arguments:
                var_kw = [
                    n for n, p in sig.parameters.items() if p.kind is inspect.Parameter.VAR_KEYWORD
                ]
                if var_kw and site.path in arguments.get(var_kw[0], {}):
                    container = arguments[var_kw[0]]
                else:
                    raise AblationError(
                        f"site {site.text!r}: {type(mod).__name__}.forward was called without "
                        f"{site.path!r} (passed: {', '.join(arguments) or 'nothing'}); the model "
                        "does not use that argument in this run",
                        site=site.text,
                    )
            else:
                container = arguments
            value = container[site.path]
            if not isinstance(value, Tensor):
                raise AblationError(
                    f"site {site.text!r}: argument {site.path!r} is {_describe(value)}, not a "
                    "Tensor (nothing to ablate)",
                    site=site.text,
                )
            new = fn(value)
            if new is value:
                return None
            container[site.path] = new
            return bound.args, bound.kwargs

        return self.model.register_forward_pre_hook(pre_hook, with_kwargs=True), fired

    def capture(self, site: _Site, batch: Any, seed: int, *, abort: bool = True) -> Tensor:
        """The site's (first) value on ``batch``; stops the forward there when ``abort``."""
        got: list[Tensor] = []

        def grab(v: Tensor) -> Tensor:
            if not got:
                got.append(v.detach())
                if abort:
                    raise _Abort
            return v

        handle, fired = self.hook(site, grab)
        try:
            self.call_seeded(batch, seed)
        except _Abort:
            pass
        finally:
            handle.remove()
        if not got:
            raise AblationError(
                f"site {site.text!r} never ran during the target's forward (fired {fired[0]} "
                "times); is it on the path the forward takes?",
                site=site.text,
            )
        return got[0]


class _SiteStats:
    """Streaming per-dimension mean/std of a site's value (float64 sums over examples)."""

    def __init__(self) -> None:
        self.n = 0  # examples summed per dimension
        self.s: Tensor | None = None  # per-dim sum
        self.ss: Tensor | None = None  # per-dim sum of |x|^2
        self.shape: tuple[int, ...] | None = None
        self.scalar = False  # shapes differ across batches -> scalar statistics
        self.total: Tensor = torch.zeros((), dtype=torch.complex128)
        self.total_sq = 0.0
        self.count = 0

    def add(self, v: Tensor) -> None:
        x = v.detach().to("cpu")
        x = x.to(torch.complex128 if x.is_complex() else torch.float64)
        self.total = self.total + x.sum()
        self.total_sq += float((x.abs() ** 2).sum())
        self.count += x.numel()
        if self.shape is None:
            self.shape = tuple(x.shape[1:])
        if tuple(x.shape[1:]) != self.shape:
            self.scalar = True
        if not self.scalar:
            s, ss = x.sum(0), (x.abs() ** 2).sum(0)
            self.s = s if self.s is None else self.s + s
            self.ss = ss if self.ss is None else self.ss + ss
            self.n += x.shape[0]

    def mean_std(self) -> tuple[Tensor, Tensor]:
        """Per-dim (or scalar) mean and std; the mean is complex for complex values."""
        assert self.count > 0, "_SiteStats: no values seen"
        if self.scalar or self.s is None:
            m = self.total / self.count
            var = self.total_sq / self.count - float(m.abs() ** 2)
            m = m if m.imag != 0 else m.real
            return m, torch.tensor(max(var, 0.0), dtype=torch.float64).sqrt()
        m = self.s / self.n
        var = (self.ss / self.n - m.abs() ** 2).clamp_min(0)
        return m, var.sqrt()


# ----------------------------------------------------------------------------- the engine


def _check_target(target: Any) -> AblationTarget:
    if not isinstance(target, AblationTarget):
        raise AblationError(
            f"the target is {type(target).__name__}, not a diagnostics.AblationTarget "
            "(the --target factory must return AblationTarget(model=..., batches=[...]))"
        )
    if not isinstance(target.model, nn.Module):
        raise AblationError(
            f"AblationTarget.model is {type(target.model).__name__}, not a torch.nn.Module"
        )
    if not isinstance(target.batches, (list, tuple)) or len(target.batches) == 0:
        raise AblationError(
            "AblationTarget.batches is empty: give at least one batch of inputs "
            f"(got {type(target.batches).__name__} of length "
            f"{len(target.batches) if hasattr(target.batches, '__len__') else '?'})"
        )
    if (target.times is None) != (target.at_time is None):
        raise AblationError(
            "AblationTarget.times and AblationTarget.at_time go together: give both or neither"
        )
    if target.times is not None and len(target.times) == 0:
        raise AblationError("AblationTarget.times is empty: give the diffusion times to probe")
    return target


def _flat_labels(given: list[Any] | None, sizes: list[int]) -> list[str] | None:
    if given is None:
        return None
    labels = list(given)
    n = sum(sizes)
    if len(labels) == len(sizes) and all(
        isinstance(x, (list, tuple)) or (isinstance(x, Tensor) and x.dim() == 1) for x in labels
    ):
        flat = [str(v.item() if isinstance(v, Tensor) else v) for seq in labels for v in seq]
    else:
        flat = [str(v.item() if isinstance(v, Tensor) else v) for v in labels]
    if len(flat) != n:
        raise AblationError(
            f"AblationTarget.labels has {len(flat)} labels for {n} examples "
            "(give one label per batch item)"
        )
    return flat


def _summary(values: np.ndarray, n_boot: int, seed: int) -> tuple[float, list[float]]:
    mean, lo, hi = bootstrap_ci(values, n_boot=n_boot, seed=seed)
    return mean, [lo, hi]


def _r(x: float) -> float:
    """Round for the report (6 significant digits)."""
    return float(f"{x:.6g}")


def run_ablation(
    target: AblationTarget,
    *,
    sites: Sequence[str] | None = None,
    ablations: Sequence[str] = ABLATIONS,
    seed: int = 0,
    device: str | torch.device | None = None,
    batch_variants: bool | None = None,
    n_boot: int = N_BOOT,
    embeddings: bool = True,
    umap: bool = True,
    guidance: bool = True,
    progress: bool = False,
    shard: bool = True,
) -> AblationReport:
    """Ablate the condition at each site and measure how much the output changes.

    Args:
        target: the model, its batches and the optional diffusion/sampler hooks.
        sites: module paths or ``arg:NAME``; default ``target.sites``.
        ablations: any of ``zero, mean, random, shuffle, null``.
        seed: everything random (``x_t`` noise, random conditions, shuffles, bootstrap, the
            model's own RNG, forked per batch) derives from it; same seed, same report.
        device: move the model and the batches there (default: leave them).
        batch_variants: run the intact and ablated variants as one tiled forward when the
            model is batch-independent (checked on the first batch); default
            ``target.batch_variants``.
        n_boot: bootstrap resamples for the 95% CIs.
        embeddings: run the embedding analysis on ``target.embedding_site``.
        umap: include a UMAP projection in the embedding analysis.
        guidance: run the guidance-scale sweep when ``target.sample`` is given.
        progress: show tqdm progress bars.
        shard: under torch.distributed with several ranks, split the ablation passes across
            the ranks and gather the per-example effects (call on every rank). The embedding
            analysis and guidance sweep then run on rank 0 only; rank 0's report is complete.

    Returns:
        An :class:`AblationReport`.

    Raises:
        AblationError: bad input; ``err.report`` holds the sites completed before it.

    Example:
        >>> rep = run_ablation(target, sites=["arg:cond"], ablations=["zero", "shuffle"])
        >>> print(rep.verdict_table())
    """
    import time

    from tqdm.auto import tqdm

    from diagnostics._distributed import check_launch, note_failure

    target = _check_target(target)
    info = check_launch("run_ablation")
    sharding = (info.rank, info.world_size) if shard and info.distributed else (0, 1)
    if sharding[1] > 1 and sharding[0] != 0:
        embeddings = guidance = False  # rank 0 writes the one report
    unknown = [a for a in ablations if a not in ABLATIONS]
    if unknown or not ablations:
        raise AblationError(
            f"unknown ablation(s) {', '.join(map(repr, unknown)) or '(none given)'}; "
            f"choose from {', '.join(ABLATIONS)}"
        )
    site_texts = list(sites) if sites else list(target.sites or [])
    if not site_texts:
        raise AblationError(
            "no sites to ablate: pass --site (a module path or arg:NAME) or set "
            "AblationTarget.sites"
        )
    if batch_variants is None:
        batch_variants = target.batch_variants
    dev = torch.device(device) if device is not None else None
    if dev is not None:
        target.model.to(dev)
    runner = _Runner(target, dev)
    times = list(target.times) if target.times is not None else [None]
    n_t = len(times)
    timing: dict[str, float] = {}

    def model_input(bi: int, ti: int, batches: list[Any] = target.batches) -> Any:
        batch = runner.to_device(batches[bi])
        if target.at_time is None:
            return batch
        gen = torch.Generator().manual_seed(_seed_of(seed, 1, bi, ti))
        return runner.to_device(target.at_time(batch, float(times[ti]), gen))

    data: dict[str, Any] = {
        "tool": "torchdx.cond_ablation",
        "schema": 1,
        "target": target.name or type(target.model).__name__,
        "seed": seed,
        "times": [_r(float(t)) for t in times] if target.times is not None else None,
        "ablations": list(ablations),
        "thresholds": {
            "used_min": USED_MIN,
            "ignored_max": IGNORED_MAX,
            "level": 0.95,
            "n_boot": n_boot,
            "rule": "used: some ablation has CI lo >= used_min; ignored: every ablation has "
            "CI hi < ignored_max; weak: otherwise",
        },
        "n_examples": None,
        "sites": [],
        "errors": [],
        "cond_vs_uncond": None,
        "guidance_sweep": None,
        "embeddings": None,
    }
    report = AblationReport(data=data, timing=timing)
    items = [(bi, ti) for bi in range(len(target.batches)) for ti in range(n_t)]

    def fail(err: AblationError) -> AblationError:
        data["errors"].append({"site": err.site, "message": str(err)})
        err.report = report
        return err

    model_was_training = target.model.training
    with torch.no_grad():
        for si, text in enumerate(site_texts):
            t0 = time.perf_counter()
            try:
                site = _parse_site(text)
                runner.check_site(site)
                result = _run_site(
                    runner,
                    site,
                    si,
                    list(ablations),
                    items,
                    times,
                    model_input,
                    seed,
                    batch_variants,
                    n_boot,
                    target,
                    progress,
                    tqdm,
                    sharding,
                )
            except AblationError as err:
                if err.site is None:
                    err.site = text
                note_failure(f"ablation/site{si}", f"AblationError: {err}")
                raise fail(err) from None
            except Exception as e:  # the model failed on the ablated input (or on its own)
                note_failure(f"ablation/site{si}", f"{type(e).__name__}: {e}")
                first = str(e).splitlines()[0] if str(e) else ""
                err = AblationError(
                    f"site {text!r}: the target's forward raised {type(e).__name__}: {first}",
                    site=text,
                )
                raise fail(err) from e
            data["sites"].append(result)
            data["n_examples"] = result.pop("_n")
            timing[f"site:{text}"] = time.perf_counter() - t0

        # cond vs uncond: the null ablation of the first site that has one
        for s in data["sites"]:
            if "null" in s["ablations"]:
                r = s["ablations"]["null"]
                cvu: dict[str, Any] = {
                    "site": s["site"],
                    "rel_diff": r["effect"],
                    "ci95": r["ci95"],
                    "abs_diff": r["abs_change"],
                }
                if "curve" in r:
                    cvu["curve"] = {
                        "t": r["curve"]["t"],
                        "rel_diff": r["curve"]["effect"],
                        "ci95": r["curve"]["ci95"],
                        "abs_diff": r["curve"]["abs_change"],
                    }
                data["cond_vs_uncond"] = cvu
                break

        analysis = None
        if embeddings:
            t0 = time.perf_counter()
            try:
                analysis = _run_embeddings(
                    runner, report, site_texts, model_input, seed, umap, target
                )
            except AblationError as err:
                raise fail(err) from None
            timing["embeddings:capture"] = time.perf_counter() - t0
        # the embedding analysis (UMAP's numba JIT: ~15 s) runs on a second thread while the
        # sampler sweep keeps the first busy in torch (which releases the GIL)
        worker, failure = None, []
        if analysis is not None:
            t_a = time.perf_counter()

            def run_analysis() -> None:
                try:
                    analysis()
                except BaseException as e:  # re-raised on the main thread
                    failure.append(e)
                timing["embeddings:analysis"] = time.perf_counter() - t_a

            worker = threading.Thread(target=run_analysis, name="torchdx-embeddings")
            worker.start()
        try:
            if guidance and target.sample is not None:
                t0 = time.perf_counter()
                data["guidance_sweep"] = _run_guidance(runner, target, seed, n_boot, progress, tqdm)
                timing["guidance"] = time.perf_counter() - t0
        finally:
            if worker is not None:
                worker.join()
        if failure:
            raise failure[0]
    assert target.model.training == model_was_training, "run_ablation changed the model's mode"
    return report


def _run_site(
    runner: _Runner,
    site: _Site,
    si: int,
    ablations: list[str],
    items: list[tuple[int, int]],
    times: list[Any],
    model_input: Callable[[int, int], Any],
    seed: int,
    batch_variants: bool,
    n_boot: int,
    target: AblationTarget,
    progress: bool,
    tqdm: Any,
    sharding: tuple[int, int] = (0, 1),
) -> dict[str, Any]:
    notes: list[str] = []
    # pass 1: the site's data statistics (forward stopped at the site)
    stats = _SiteStats()
    need_stats = any(a in ("mean", "random") for a in ablations)
    first_value: Tensor | None = None
    for bi, ti in tqdm(
        items, desc=f"{site.text}: stats", disable=not progress or not need_stats, leave=False
    ):
        v = runner.capture(site, model_input(bi, ti), _seed_of(seed, 2, bi, ti))
        if first_value is None:
            first_value = v
        stats.add(v)
        if not need_stats:
            break
    assert first_value is not None
    mean, std = stats.mean_std()
    if stats.scalar and need_stats:
        notes.append("site value shape varies across batches: mean/random use scalar statistics")

    null_spec = target.null
    if isinstance(null_spec, Mapping):
        null_spec = null_spec.get(site.text, null_spec.get(site.path))
    todo = list(ablations)
    if "null" in todo and null_spec is None:
        todo.remove("null")
        notes.append("null skipped: the target defines no null (unconditional) input for this site")
    if "shuffle" in todo and first_value.shape[0] < 2:
        todo.remove("shuffle")
        notes.append("shuffle skipped: batches of one example cannot be permuted")
    if not todo:
        raise AblationError(
            f"site {site.text!r}: none of the ablations {', '.join(ablations)} applies",
            site=site.text,
        )

    def replacement(name: str, c: Tensor, bi: int, ti: int) -> Any:
        if name == "zero":
            return torch.zeros_like(c)
        if name == "mean":
            return mean.to(device=c.device, dtype=c.dtype).expand_as(c).clone()
        if name == "random":
            gen = torch.Generator().manual_seed(_seed_of(seed, 3, si, bi, ti))
            zt = torch.complex128 if c.is_complex() else torch.float64
            z = torch.randn(c.shape, generator=gen, dtype=zt)  # complex: E|z|^2 = 1
            val = mean + std * z
            return val.to(device=c.device, dtype=c.dtype)
        if name == "shuffle":
            gen = torch.Generator().manual_seed(_seed_of(seed, 4, si, bi, ti))
            return c[_derangement(c.shape[0], gen).to(c.device)]
        # null
        spec = null_spec
        if callable(spec) and not isinstance(spec, Tensor):
            out = spec(c)
        else:
            out = spec
        if out is None:
            if site.kind == "module":
                raise AblationError(
                    f"site {site.text!r}: the null input is None; a module output needs a tensor",
                    site=site.text,
                )
            return None
        if not isinstance(out, Tensor):
            raise AblationError(
                f"site {site.text!r}: AblationTarget.null gave {_describe(out)}; need a Tensor",
                site=site.text,
            )
        out = out.detach().to(device=c.device, dtype=c.dtype)
        try:
            return out.expand_as(c).clone() if out.shape != c.shape else out
        except RuntimeError:
            raise AblationError(
                f"site {site.text!r}: the null input {list(out.shape)} does not broadcast to the "
                f"site's value {list(c.shape)}",
                site=site.text,
            ) from None

    # decide batched vs sequential on the first item
    batched = bool(batch_variants)
    seq_only: set[str] = set()
    if batched:
        batched, why = _batchable(
            runner, site, model_input(*items[0]), len(todo) + 1, _seed_of(seed, 5, *items[0])
        )
        if not batched:
            notes.append(f"variants run one forward each ({why})")

    per: dict[str, dict[str, list[list[np.ndarray]]]] = {
        a: {k: [[] for _ in times] for k in ("rel", "cos", "abs")} for a in todo
    }
    n_examples = 0
    rank, world = sharding
    done: dict[tuple[int, int], tuple[dict[str, dict[str, np.ndarray]], int]] = {}
    mine = [it for k_, it in enumerate(items) if k_ % world == rank]  # this rank's shard
    for bi, ti in tqdm(mine, desc=f"{site.text}", disable=not progress, leave=False):
        batch = model_input(bi, ti)
        s = _seed_of(seed, 6, bi, ti)
        outs: dict[str, Tensor] = {}
        intact: Tensor | None = None
        group = [a for a in todo if a not in seq_only] if batched else []
        while group:
            try:
                intact, got = _run_tiled(
                    runner,
                    site,
                    batch,
                    group,
                    s,
                    lambda a, c: replacement(a, c, bi, ti),  # noqa: B023
                )
                outs.update(got)
                break
            except _Unbatchable as e:
                if str(e) == "*":
                    seq_only.update(group)
                    notes.append("site value does not follow the tiled batch: one forward each")
                    break
                seq_only.add(str(e))
                notes.append(f"{e} runs one forward (its replacement cannot be batched)")
                group = [a for a in group if a != str(e)]
        rest = [a for a in todo if a not in outs]
        if rest:
            c_holder: list[Tensor] = []

            def keep(v: Tensor) -> Tensor:
                c_holder.append(v)  # noqa: B023 (called within this iteration)
                return v

            h, _ = runner.hook(site, keep)
            try:
                intact_seq = runner.call_seeded(batch, s)
            finally:
                h.remove()
            if intact is None:
                intact = intact_seq
            if not c_holder:
                raise AblationError(
                    f"site {site.text!r} never ran during the forward", site=site.text
                )
            c = c_holder[0].detach()
            for a in rest:
                rep = replacement(a, c, bi, ti)
                h, _ = runner.hook(site, lambda v, rep=rep: rep)
                try:
                    outs[a] = runner.call_seeded(batch, s)
                finally:
                    h.remove()
        assert intact is not None
        done[(bi, ti)] = ({a: example_effects(intact, outs[a]) for a in todo}, intact.shape[0])
    if world > 1:  # every rank's per-example effects, in item order on every rank
        from diagnostics._distributed import all_gather_objects

        parts = all_gather_objects(
            (done, notes), tag=f"ablation/site{si}", what=f"ablation site {site.text!r} gather"
        )
        done = {}
        for part, part_notes in parts:
            done.update(part)
            notes.extend(n for n in part_notes if n not in notes)
    for bi, ti in items:
        effs, b = done[(bi, ti)]
        for a in todo:
            for k in ("rel", "cos", "abs"):
                per[a][k][ti].append(effs[a][k])
        if ti == 0:
            n_examples += b

    # summarise
    result_ablations: dict[str, Any] = {}
    cis: list[tuple[float, float]] = []
    for a in todo:
        mats = {
            k: np.stack([np.concatenate(per[a][k][ti]) for ti in range(len(times))], axis=1)
            for k in ("rel", "cos", "abs")
        }  # (N, T)
        bseed = _seed_of(seed, 7, si, ABLATIONS.index(a))
        eff, ci = _summary(mats["rel"].mean(axis=1), n_boot, bseed)
        cos, cos_ci = _summary(mats["cos"].mean(axis=1), n_boot, bseed + 1)
        entry: dict[str, Any] = {
            "effect": _r(eff),
            "ci95": [_r(ci[0]), _r(ci[1])],
            "verdict": verdict_from_ci(ci[0], ci[1]),
            "cosine": _r(cos),
            "cosine_ci95": [_r(cos_ci[0]), _r(cos_ci[1])],
            "abs_change": _r(float(mats["abs"].mean())),
            "n": int(mats["rel"].shape[0]),
        }
        if target.times is not None:
            curve_eff, curve_ci, curve_cos, curve_abs = [], [], [], []
            for ti in range(len(times)):
                m, c_ = _summary(mats["rel"][:, ti], n_boot, bseed + 10 + ti)
                curve_eff.append(_r(m))
                curve_ci.append([_r(c_[0]), _r(c_[1])])
                curve_cos.append(_r(float(mats["cos"][:, ti].mean())))
                curve_abs.append(_r(float(mats["abs"][:, ti].mean())))
            entry["curve"] = {
                "t": [_r(float(t)) for t in times],
                "effect": curve_eff,
                "ci95": curve_ci,
                "cosine": curve_cos,
                "abs_change": curve_abs,
            }
        result_ablations[a] = entry
        cis.append((ci[0], ci[1]))
    return {
        "site": site.text,
        "kind": site.kind,
        "verdict": site_verdict(cis),
        "batched": batched and not seq_only,
        "ablations": result_ablations,
        "notes": notes,
        "_n": n_examples,
    }


def _tile(batch: Any, n: int, b: int) -> Any:
    """Repeat every tensor leaf with leading dim ``b`` ``n`` times along dim 0."""
    return _tree_map(
        lambda t: torch.cat([t] * n, 0) if t.dim() > 0 and t.shape[0] == b else t, batch
    )


def _batchable(runner: _Runner, site: _Site, batch: Any, n: int, seed: int) -> tuple[bool, str]:
    """Is a tiled forward equal, chunk by chunk, to the plain forward (batch-independent)?"""
    b = _first_dim(batch)
    if b is None:
        return False, "no batched tensor in the inputs"
    try:
        ref = runner.call_seeded(batch, seed)
        out = runner.call_seeded(_tile(batch, n, b), seed)
    except AblationError:
        raise
    except Exception as e:  # the model may not accept a larger batch
        return False, f"tiled forward failed: {type(e).__name__}"
    if out.shape[0] != n * ref.shape[0] or ref.shape[0] != b:
        return False, "output's leading dim does not follow the batch"
    chunks = out.reshape(n, *ref.shape)  # (n, B, ...)
    scale = ref.abs().max().clamp_min(1e-12)
    if not all(
        torch.allclose(chunks[k], ref, atol=1e-5 * float(scale), rtol=1e-4) for k in range(n)
    ):
        return False, "the model is not batch-independent (tiled copies disagree)"
    return True, ""


def _run_tiled(
    runner: _Runner,
    site: _Site,
    batch: Any,
    names: list[str],
    seed: int,
    make: Callable[[str, Tensor], Any],
) -> tuple[Tensor, dict[str, Tensor]]:
    """One forward over [intact, ablation_1, ...] copies of the batch."""
    b = _first_dim(batch)
    assert b is not None
    n = len(names) + 1
    fired: list[int] = []

    def replace(v: Tensor) -> Tensor:
        fired.append(1)
        if v.shape[0] != n * b:
            raise _Unbatchable("*")
        c = v[:b]
        parts = [c]
        for a in names:
            r = make(a, c)
            if r is None or not isinstance(r, Tensor) or r.shape != c.shape:
                raise _Unbatchable(a)
            parts.append(r)
        return torch.cat(parts, 0)  # (n*B, ...)

    h, _ = runner.hook(site, replace)
    try:
        out = runner.call_seeded(_tile(batch, n, b), seed)
    finally:
        h.remove()
    if not fired:
        raise AblationError(f"site {site.text!r} never ran during the forward", site=site.text)
    chunks = out.reshape(n, out.shape[0] // n, *out.shape[1:])  # (n, B, ...)
    return chunks[0], {a: chunks[k + 1] for k, a in enumerate(names)}


def _run_embeddings(
    runner: _Runner,
    report: AblationReport,
    site_texts: list[str],
    model_input: Callable[..., Any],
    seed: int,
    umap: bool,
    target: AblationTarget,
) -> Callable[[], None] | None:
    """Capture the embeddings (model forwards, main thread); returns the analysis to run."""
    from diagnostics._embeddings import analyze_embeddings

    text = target.embedding_site
    if text is None:
        mods = [t for t in site_texts if not t.startswith("arg:")]
        if not mods:
            return None
        text = mods[0]
    site = _parse_site(text)
    runner.check_site(site)
    batches, given = target.batches, target.labels
    if target.embedding_batches is not None:
        batches, given = target.embedding_batches, target.embedding_labels
    embs: list[Tensor] = []
    sizes: list[int] = []
    n = 0
    for bi in range(len(batches)):
        v = runner.capture(site, model_input(bi, 0, batches), _seed_of(seed, 2, bi, 0))
        sizes.append(v.shape[0])
        if n < _MAX_EMBEDDINGS:
            v = v.reshape(v.shape[0], -1)  # (B, E)
            if v.is_complex():
                v = torch.view_as_real(v).reshape(v.shape[0], -1)  # (B, 2E)
            embs.append(v.float().cpu())
            n += v.shape[0]
    labels = _flat_labels(given, sizes)
    emb = torch.cat(embs, 0)[:_MAX_EMBEDDINGS]  # (N, E)
    if labels is not None:
        labels = labels[: emb.shape[0]]

    def analyse() -> None:  # numpy/sklearn/umap only: safe off the main thread
        rep = analyze_embeddings(emb, labels, umap=umap, seed=seed)
        report.embedding = rep
        d = rep.to_dict()
        d["site"] = text
        report.data["embeddings"] = d

    return analyse


def _run_guidance(
    runner: _Runner, target: AblationTarget, seed: int, n_boot: int, progress: bool, tqdm: Any
) -> dict[str, Any]:
    assert target.sample is not None
    scales = [float(s) for s in target.guidance_scales]
    nb = max(1, min(target.guidance_batches, len(target.batches)))
    values: dict[str, list[list[float]]] = {}
    bar = tqdm(total=len(scales) * nb, desc="guidance sweep", disable=not progress, leave=False)
    for k, scale in enumerate(scales):
        for bi in range(nb):
            batch = runner.to_device(target.batches[bi])
            with torch.random.fork_rng(devices=runner.fork_devices):
                torch.manual_seed(_seed_of(seed, 8, bi))
                metrics = target.sample(runner.model, batch, scale, _seed_of(seed, 9, bi) % 2**31)
            for name, v in metrics.items():
                arr = np.asarray(
                    v.detach().cpu() if isinstance(v, Tensor) else v, dtype=np.float64
                ).ravel()
                values.setdefault(name, [[] for _ in scales])[k].extend(arr.tolist())
            bar.update(1)
    bar.close()
    out: dict[str, Any] = {"scales": [_r(s) for s in scales], "metrics": {}}
    for name, per_scale in values.items():
        means, cis = [], []
        for k, vals in enumerate(per_scale):
            finite = np.asarray([x for x in vals if np.isfinite(x)])
            if finite.size == 0:
                means.append(None)
                cis.append([None, None])
                continue
            m, ci = _summary(finite, n_boot, _seed_of(seed, 10, k))
            means.append(_r(m))
            cis.append([_r(ci[0]), _r(ci[1])])
        out["metrics"][name] = {"mean": means, "ci95": cis, "n": len(per_scale[0])}
    return out
