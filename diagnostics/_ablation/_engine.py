"""The ablation engine: for each site, replace the condition and measure the output change.

Ablations (each compared with the intact run on the same inputs and the same noise):

* ``zero``: all zeros.
* ``mean``: the site's per-dimension mean over the data (a first pass over the batches).
* ``random``: Gaussian with the data's per-dimension mean and std.
* ``shuffle``: the batch's conditions permuted (a derangement: every example gets another
  example's condition; the mismatched-reference test).
* ``null``: the model's own unconditional input, given by ``AblationTarget.null``.

Beside them every site runs the *identity* replacement (its own value through the same hook
path and tiling): the measured **floor** the verdict compares against
(``diagnostics._ablation._verdict``). Every variant's forward gets its own seeded draw of the
model's RNG, so a model that is random in its forward (dropout left on) shows that randomness in
the floor instead of hiding it; inputs and ``x_t`` noise are the same for every variant.

The intact run and the ablated runs are batched together (the batch is tiled, the hook replaces
the copies) when the model is batch-independent; the engine checks that on the first batch and
falls back to one forward per variant otherwise. Batches are streamed (any re-iterable: a list,
a ``DataLoader``): only per-example numbers are kept, never activations.

Under torch.distributed (``torchrun --nproc_per_node=N -m diagnostics.cond_ablation``) the
ablation passes are sharded: rank ``r`` runs the items ``k % N == r`` (every item's noise and
replacements derive from the seed and the item's indices, not from the process), the per-example
effects are gathered, and every rank summarises the same matrices, so rank 0's report equals the
single-process one. The site-statistics pass, the embedding analysis and the guidance sweep run
unsharded (the last two on rank 0 only). See ``docs/DDP.md``.

Example:
    >>> target = AblationTarget(model=net, batches=[{"x": x, "cond": c}], sites=["arg:cond"])
    >>> report = run_ablation(target, seed=0)
    >>> report.sites[0].verdict, report.sites[0].reason  # doctest: +SKIP
    ('used', "giving each example another example's condition changes the output by ...")
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from diagnostics._ablation._guidance import quality_deltas, run_guidance
from diagnostics._ablation._runner import (
    Runner,
    Site,
    derangement,
    describe,
    first_dim,
    parse_site,
    seed_of,
    tile,
)
from diagnostics._ablation._stats import (
    N_BOOT,
    SiteStats,
    bootstrap_ci,
    example_effects,
    varies,
)
from diagnostics._ablation._types import (
    ABLATIONS,
    AblationError,
    AblationReport,
    AblationTarget,
    Curve,
    Effect,
    LabelResult,
    SiteResult,
)
from diagnostics._ablation._verdict import MIN_EFFECT, decide

__all__ = ["flat_labels", "iter_batches", "run_ablation"]

_MAX_EMBEDDINGS = 4096  # embeddings kept for the embedding analysis (bounded memory)
_KINDS = ("rel", "cos", "abs")  # per-example numbers kept per variant
IDENTITY = "identity"  # the floor's variant: the site's own value through the same path
_VARIANT_ID = {name: k + 1 for k, name in enumerate((*ABLATIONS, IDENTITY))}  # 0 = intact


class _Unbatchable(Exception):
    """An ablation's replacement cannot be concatenated with the tiled batch."""


def r6(x: float) -> float:
    """Round for the report (6 significant digits)."""
    return float(f"{x:.6g}")


def iter_batches(batches: Any, what: str) -> Iterable[Any]:
    """``batches`` if it can be read more than once and is not empty; else a clear error.

    A list, a tuple or a ``torch.utils.data.DataLoader`` (without ``shuffle=True``) qualify; a
    generator or any other one-shot iterator does not (the engine reads the batches once per
    site, after a statistics pass).
    """
    if isinstance(batches, (str, bytes, Mapping)) or not isinstance(batches, Iterable):
        raise AblationError(
            f"{what} is {type(batches).__name__}; give a list of batches or a DataLoader"
        )
    if isinstance(batches, Iterator):
        raise AblationError(
            f"{what} is a one-shot iterator ({type(batches).__name__}): the ablation reads the "
            "batches several times (a statistics pass, then one pass per site), and a generator "
            "is empty after the first; give a list or a DataLoader"
        )
    sampler = getattr(batches, "sampler", None)
    if type(sampler).__name__ == "RandomSampler":
        raise AblationError(
            f"{what} is a DataLoader with shuffle=True: every pass would see other batches, "
            "so intact and ablated runs would not be paired; use shuffle=False"
        )
    if next(iter(batches), _EMPTY) is _EMPTY:
        n = len(batches) if hasattr(batches, "__len__") else 0
        raise AblationError(
            f"{what} is empty: give at least one batch of inputs (got a "
            f"{type(batches).__name__} with {n} batches)"
        )
    return batches


_EMPTY = object()


@dataclass
class _Run:
    """The state shared by every pass of one :func:`run_ablation` call."""

    runner: Runner
    target: AblationTarget
    seed: int
    n_boot: int
    min_effect: float
    times: list[Any]
    batch_variants: bool
    progress: bool
    sharding: tuple[int, int]  # (rank, world size)
    intact_metrics: dict[int, dict[str, np.ndarray]] = field(default_factory=dict)

    def items(self, batches: Iterable[Any] | None = None, times: bool = True) -> Iterator[tuple]:
        """``(k, bi, ti, batch)`` over the batches (streamed) and the time indices."""
        k = 0
        for bi, raw in enumerate(self.target.batches if batches is None else batches):
            raw = self.runner.to_device(raw)
            for ti in range(len(self.times) if times else 1):
                yield k, bi, ti, raw
                k += 1

    def n_items(self) -> int | None:
        b = self.target.batches
        return len(b) * len(self.times) if hasattr(b, "__len__") else None

    def model_input(self, raw: Any, bi: int, ti: int) -> Any:
        """Batch ``bi`` as the model sees it at time index ``ti`` (``x_t`` noise from the seed)."""
        if self.target.at_time is None:
            return raw
        gen = torch.Generator().manual_seed(seed_of(self.seed, 1, bi, ti))
        return self.runner.to_device(self.target.at_time(raw, float(self.times[ti]), gen))

    def bar(self, iterable: Iterable[Any], desc: str, total: int | None = None) -> Iterable[Any]:
        """A tqdm progress bar over ``iterable`` when progress is on."""
        if not self.progress:
            return iterable
        from tqdm.auto import tqdm

        return tqdm(iterable, desc=desc, leave=False, total=total)


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
    iter_batches(target.batches, "AblationTarget.batches")
    for name in ("embedding_batches", "sample_batches"):
        if getattr(target, name) is not None:
            iter_batches(getattr(target, name), f"AblationTarget.{name}")
    if (target.times is None) != (target.at_time is None):
        raise AblationError(
            "AblationTarget.times and AblationTarget.at_time go together: give both or neither"
        )
    if target.times is not None and len(target.times) == 0:
        raise AblationError("AblationTarget.times is empty: give the diffusion times to probe")
    return target


def flat_labels(given: Any, sizes: list[int]) -> list[str] | None:
    """One string label per example from per-batch sequences or a flat list."""
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


def run_ablation(
    target: AblationTarget,
    *,
    sites: Sequence[str] | None = None,
    ablations: Sequence[str] = ABLATIONS,
    seed: int = 0,
    device: str | torch.device | None = None,
    batch_variants: bool | None = None,
    n_boot: int = N_BOOT,
    min_effect: float = MIN_EFFECT,
    embeddings: bool = True,
    umap: bool = True,
    guidance: bool = True,
    quality: bool = True,
    progress: bool = False,
    shard: bool = True,
) -> AblationReport:
    """Ablate the condition at each site, measure the output change, and give a verdict.

    Args:
        target: the model, its batches and the optional diffusion/sampler hooks.
        sites: module paths or ``arg:NAME``; default ``target.sites``.
        ablations: any of ``zero, mean, random, shuffle, null`` (the floor always runs).
        seed: everything random (``x_t`` noise, random conditions, shuffles, bootstrap, the
            model's own RNG, per variant) derives from it; same seed, same report.
        device: move the model and the batches there (default: leave them).
        batch_variants: run the intact and ablated variants as one tiled forward when the
            model is batch-independent (checked on the first batch); default
            ``target.batch_variants``.
        n_boot: bootstrap resamples for the 95% CIs.
        min_effect: content effect (CI low) at or above which a site is ``used`` (>= 0).
        embeddings: run the embedding analysis on ``target.embedding_site``.
        umap: include a UMAP projection in the embedding analysis.
        guidance: run the guidance-scale sweep when ``target.sample`` is given.
        quality: quality-level deltas of each ablation when ``target.sample`` is given.
        progress: show tqdm progress bars.
        shard: under torch.distributed with several ranks, split the ablation passes across
            the ranks and gather the per-example effects (call on every rank). The embedding
            analysis, quality deltas and guidance sweep then run on rank 0 only.

    Returns:
        An :class:`AblationReport`; each site has ``verdict``, ``reason``, ``floor``,
        ``channel``, ``content``, ``ablations`` and ``by_label``.

    Raises:
        AblationError: bad input; ``err.report`` holds the sites completed before it.

    Example:
        >>> rep = run_ablation(target, sites=["arg:cond"], ablations=["zero", "shuffle"])
        >>> print(rep.verdict_table())  # doctest: +SKIP
    """
    from diagnostics._distributed import check_launch, note_failure

    if not isinstance(min_effect, (int, float)) or not min_effect >= 0:
        raise AblationError(f"min_effect is {min_effect!r}; give a number >= 0 (e.g. 0.05)")
    target = _check_target(target)
    info = check_launch("run_ablation")
    sharding = (info.rank, info.world_size) if shard and info.distributed else (0, 1)
    if sharding[1] > 1 and sharding[0] != 0:
        embeddings = guidance = quality = False  # rank 0 writes the one report
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
    dev = torch.device(device) if device is not None else None
    if dev is not None:
        target.model.to(dev)
    run = _Run(
        runner=Runner(target, dev),
        target=target,
        seed=seed,
        n_boot=n_boot,
        min_effect=float(min_effect),
        times=list(target.times) if target.times is not None else [None],
        batch_variants=target.batch_variants if batch_variants is None else batch_variants,
        progress=progress,
        sharding=sharding,
    )
    report = AblationReport(
        target=target.name or type(target.model).__name__,
        seed=seed,
        min_effect=float(min_effect),
        times=[r6(float(t)) for t in target.times] if target.times is not None else None,
        ablations=list(ablations),
        n_boot=n_boot,
    )

    def fail(err: AblationError) -> AblationError:
        report.errors.append({"site": err.site, "message": str(err)})
        err.report = report
        return err

    model_was_training = target.model.training
    with torch.no_grad():
        for si, text in enumerate(site_texts):
            t0 = time.perf_counter()
            try:
                site = parse_site(text)
                run.runner.check_site(site)
                site_pass = _SitePass(run, site, si, list(ablations))
                result = site_pass.run()
                if quality and target.sample is not None:
                    t1 = time.perf_counter()
                    for a, deltas in quality_deltas(run, site_pass).items():
                        result.ablations[a].metrics = deltas
                    report.timing[f"quality:{text}"] = time.perf_counter() - t1
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
            report.sites.append(result)
            report.n_examples = site_pass.n_examples
            report.timing[f"site:{text}"] = time.perf_counter() - t0

        analysis = None
        if embeddings:
            t0 = time.perf_counter()
            try:
                analysis = _capture_embeddings(run, report, site_texts, umap)
            except AblationError as err:
                raise fail(err) from None
            report.timing["embeddings:capture"] = time.perf_counter() - t0
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
                report.timing["embeddings:analysis"] = time.perf_counter() - t_a

            worker = threading.Thread(target=run_analysis, name="torchdx-embeddings")
            worker.start()
        try:
            if guidance and target.sample is not None:
                t0 = time.perf_counter()
                report.guidance_sweep = run_guidance(run)
                report.timing["guidance"] = time.perf_counter() - t0
        finally:
            if worker is not None:
                worker.join()
        if failure:
            raise failure[0]
    assert target.model.training == model_was_training, "run_ablation changed the model's mode"
    return report


class _SitePass:
    """All ablations at one site: statistics pass, then one pass over the (sharded) items."""

    def __init__(self, run: _Run, site: Site, si: int, ablations: list[str]) -> None:
        self.run_ = run
        self.site = site
        self.si = si
        self.ablations = ablations
        self.notes: list[str] = []
        self.mean: Tensor | None = None
        self.std: Tensor | None = None
        self.null_spec: Any = None
        self.todo: list[str] = []  # ablations that apply here
        self.batched = False
        self.seq_only: set[str] = set()
        self.n_examples = 0
        self.sizes: list[int] = []  # examples per batch
        self.value_varies = False  # the site's value differs between examples of a batch
        self.inputs_vary: bool | None = None  # a module site's inputs do (None: arg site)

    # -- set-up
    def _statistics(self) -> tuple[Tensor, Any, int, int]:
        """Pass 1: the site's data statistics and whether its value (and a module's inputs)
        differ between examples; returns the first value and the first item."""
        run, site = self.run_, self.site
        stats = SiteStats()
        need = any(a in ("mean", "random") for a in self.ablations)
        first = None
        for _, bi, ti, raw in run.bar(run.items(times=need), f"{site.text}: stats"):
            batch = run.model_input(raw, bi, ti)
            v, inputs_vary = run.runner.capture(
                site, batch, seed_of(run.seed, 2, bi, ti), inputs=True
            )
            if first is None:
                first = (v, batch, bi, ti)
            if ti == 0:
                self.sizes.append(v.shape[0])
            self.value_varies = self.value_varies or varies(v)
            if inputs_vary is not None:
                self.inputs_vary = bool(self.inputs_vary) or inputs_vary
            stats.add(v)
        assert first is not None, "_SitePass: no items"
        self.mean, self.std = stats.mean_std()
        if stats.scalar and need:
            self.notes.append(
                "site value shape varies across batches: mean/random use scalar statistics"
            )
        return first

    def _plan(self, first: Tensor, batch: Any, bi: int, ti: int) -> None:
        """Which ablations apply here, and batched or one forward per variant."""
        site, run = self.site, self.run_
        spec = run.target.null
        if isinstance(spec, Mapping):
            spec = spec.get(site.text, spec.get(site.path))
        self.null_spec = spec
        self.todo = list(self.ablations)
        if "null" in self.todo and spec is None:
            self.todo.remove("null")
            self.notes.append(
                "null skipped: the target defines no null (unconditional) input for this site"
            )
        if "shuffle" in self.todo and first.shape[0] < 2:
            self.todo.remove("shuffle")
            self.notes.append("shuffle skipped: batches of one example cannot be permuted")
        if not self.todo:
            raise AblationError(
                f"site {site.text!r}: none of the ablations {', '.join(self.ablations)} applies",
                site=site.text,
            )
        self.batched = bool(run.batch_variants)
        if self.batched:
            self.batched, why = self._batchable(batch, len(self.todo) + 2, bi, ti)
            if not self.batched:
                self.notes.append(f"variants run one forward each ({why})")

    @property
    def variants(self) -> list[str]:
        return [*self.todo, IDENTITY]

    # -- replacements
    def replacement(self, name: str, c: Tensor, bi: int, ti: int) -> Any:
        """The ablated value of ``c`` (the site's value on item ``(bi, ti)``)."""
        seed, si = self.run_.seed, self.si
        if name == IDENTITY:
            return c.clone()
        if name == "zero":
            return torch.zeros_like(c)
        if name == "mean":
            return self.mean.to(device=c.device, dtype=c.dtype).expand_as(c).clone()
        if name == "random":
            gen = torch.Generator().manual_seed(seed_of(seed, 3, si, bi, ti))
            zt = torch.complex128 if c.is_complex() else torch.float64
            z = torch.randn(c.shape, generator=gen, dtype=zt)  # complex: E|z|^2 = 1
            return (self.mean + self.std * z).to(device=c.device, dtype=c.dtype)
        if name == "shuffle":
            gen = torch.Generator().manual_seed(seed_of(seed, 4, si, bi, ti))
            return c[derangement(c.shape[0], gen).to(c.device)]
        return self._null(c)

    def _null(self, c: Tensor) -> Any:
        site, spec = self.site, self.null_spec
        out = spec(c) if callable(spec) and not isinstance(spec, Tensor) else spec
        if out is None:
            if site.kind == "module":
                raise AblationError(
                    f"site {site.text!r}: the null input is None; a module output needs a tensor",
                    site=site.text,
                )
            return None
        if not isinstance(out, Tensor):
            raise AblationError(
                f"site {site.text!r}: AblationTarget.null gave {describe(out)}; need a Tensor",
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

    # -- forwards
    def _seed(self, bi: int, ti: int, variant: str | None) -> int:
        """The model-RNG seed of one variant's forward (0: intact)."""
        return seed_of(self.run_.seed, 6, bi, ti, 0 if variant is None else _VARIANT_ID[variant])

    def _batchable(self, batch: Any, n: int, bi: int, ti: int) -> tuple[bool, str]:
        """Is a tiled forward equal, chunk by chunk, to the plain forward (batch-independent)?"""
        runner = self.run_.runner
        b = first_dim(batch)
        if b is None:
            return False, "no batched tensor in the inputs"
        seed = seed_of(self.run_.seed, 5, bi, ti)
        try:
            ref = runner.call_seeded(batch, seed)
            out = runner.call_seeded(tile(batch, n, b), seed)
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

    def _tiled(
        self, batch: Any, names: list[str], bi: int, ti: int
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """One forward over [intact, variant_1, ...] copies of the batch."""
        b = first_dim(batch)
        assert b is not None, "_tiled: no batched tensor"
        n = len(names) + 1

        def replace(v: Tensor) -> Tensor:
            if v.shape[0] != n * b:
                raise _Unbatchable("*")
            c = v[:b]
            parts = [c]
            for a in names:
                r = self.replacement(a, c, bi, ti)
                if r is None or not isinstance(r, Tensor) or r.shape != c.shape:
                    raise _Unbatchable(a)
                parts.append(r)
            return torch.cat(parts, 0)  # (n*B, ...)

        seed = self._seed(bi, ti, None)
        out = self.run_.runner.call_replaced(self.site, tile(batch, n, b), seed, replace)
        chunks = out.reshape(n, out.shape[0] // n, *out.shape[1:])  # (n, B, ...)
        return chunks[0], {a: chunks[k + 1] for k, a in enumerate(names)}

    def _item(self, batch: Any, bi: int, ti: int) -> tuple[dict[str, dict[str, np.ndarray]], int]:
        """Per-example effects of every variant on item ``(bi, ti)``, and its batch size."""
        run, site = self.run_, self.site
        outs: dict[str, Tensor] = {}
        intact: Tensor | None = None
        group = [a for a in self.variants if a not in self.seq_only] if self.batched else []
        while group:
            try:
                intact, got = self._tiled(batch, group, bi, ti)
                outs.update(got)
                break
            except _Unbatchable as e:
                if str(e) == "*":
                    self.seq_only.update(group)
                    self.notes.append(
                        "site value does not follow the tiled batch: one forward each"
                    )
                    break
                self.seq_only.add(str(e))
                self.notes.append(f"{e} runs one forward (its replacement cannot be batched)")
                group = [a for a in group if a != str(e)]
        rest = [a for a in self.variants if a not in outs]
        if rest:
            kept: list[Tensor] = []
            intact_seq = run.runner.call_replaced(
                site, batch, self._seed(bi, ti, None), lambda v: kept.append(v) or v
            )
            intact = intact_seq if intact is None else intact
            c = kept[0].detach()
            for a in rest:
                rep = self.replacement(a, c, bi, ti)
                outs[a] = run.runner.call_replaced(
                    site, batch, self._seed(bi, ti, a), lambda v, rep=rep: rep
                )
        assert intact is not None, "_item: no intact output"
        return {a: example_effects(intact, outs[a]) for a in self.variants}, intact.shape[0]

    # -- the pass
    def run(self) -> SiteResult:
        run, site = self.run_, self.site
        first, batch, bi0, ti0 = self._statistics()
        self._plan(first, batch, bi0, ti0)
        rank, world = run.sharding
        done: dict[tuple[int, int], Any] = {}
        order: list[tuple[int, int]] = []
        for k, bi, ti, raw in run.bar(run.items(), site.text, total=run.n_items()):
            order.append((bi, ti))
            if k % world == rank:  # this rank's shard
                done[(bi, ti)] = self._item(run.model_input(raw, bi, ti), bi, ti)
        if world > 1:  # every rank's per-example effects, in item order on every rank
            from diagnostics._distributed import all_gather_objects

            parts = all_gather_objects(
                (done, self.notes),
                tag=f"ablation/site{self.si}",
                what=f"ablation site {site.text!r} gather",
            )
            done = {}
            for part, part_notes in parts:
                done.update(part)
                self.notes.extend(n for n in part_notes if n not in self.notes)
        n_t = len(run.times)
        per = {a: {k: [[] for _ in range(n_t)] for k in _KINDS} for a in self.variants}
        for bi, ti in order:
            effs, b = done[(bi, ti)]
            for a in self.variants:
                for k in _KINDS:
                    per[a][k][ti].append(effs[a][k])
            if ti == 0:
                self.n_examples += b
        mats = {a: _matrices(per[a], n_t) for a in self.variants}  # name -> kind -> (N, T)
        return self._result(mats)

    def _bseed(self, name: str) -> int:
        key = len(ABLATIONS) if name in (IDENTITY, "floor") else ABLATIONS.index(name)
        return seed_of(self.run_.seed, 7, self.si, key)

    def _result(self, mats: dict[str, dict[str, np.ndarray]]) -> SiteResult:
        run, site = self.run_, self.site
        rel = {a: m["rel"].mean(axis=1) for a, m in mats.items()}  # (N,) per variant
        conditions_vary = self.value_varies or bool(self.inputs_vary)
        collapsed = site.kind == "module" and bool(self.inputs_vary) and not self.value_varies
        floor = rel.pop(IDENTITY)
        d = decide(
            floor,
            rel,
            min_effect=run.min_effect,
            n_boot=run.n_boot,
            seed_for=self._bseed,
            conditions_vary=conditions_vary,
            collapsed=collapsed,
        )
        by_label: dict[str, LabelResult] = {}
        labels = flat_labels(run.target.labels, self.sizes)
        for label in sorted(set(labels or [])):
            idx = np.asarray([i for i, v in enumerate(labels or []) if v == label])
            dl = decide(
                floor[idx],
                {a: e[idx] for a, e in rel.items()},
                min_effect=run.min_effect,
                n_boot=run.n_boot,
                seed_for=self._bseed,
                conditions_vary=conditions_vary,
                collapsed=collapsed,
            )
            by_label[label] = LabelResult(
                n=int(idx.size),
                verdict=dl.verdict,
                reason=dl.reason,
                floor=[dl.floor[0], *dl.floor[1]],
                channel=dl.channel,
                content=dl.content,
            )
        return SiteResult(
            site=site.text,
            kind=site.kind,
            verdict=d.verdict,
            reason=d.reason,
            floor=self._effect(IDENTITY, mats[IDENTITY]),
            channel=d.channel,
            content=d.content,
            ablations={a: self._effect(a, mats[a]) for a in self.todo},
            by_label=by_label,
            batched=self.batched and not self.seq_only,
            notes=self.notes,
        )

    def _effect(self, name: str, mats: dict[str, np.ndarray]) -> Effect:
        run = self.run_
        bseed = self._bseed(name)
        eff, lo, hi = bootstrap_ci(mats["rel"].mean(axis=1), n_boot=run.n_boot, seed=bseed)
        cos, clo, chi = bootstrap_ci(mats["cos"].mean(axis=1), n_boot=run.n_boot, seed=bseed + 1)
        curve = None
        if run.target.times is not None:
            n_t = len(run.times)
            pts = [
                bootstrap_ci(mats["rel"][:, ti], n_boot=run.n_boot, seed=bseed + 10 + ti)
                for ti in range(n_t)
            ]
            curve = Curve(
                t=[r6(float(t)) for t in run.times],
                effect=[r6(m) for m, _, _ in pts],
                ci95=[[r6(a), r6(b)] for _, a, b in pts],
                cosine=[r6(float(mats["cos"][:, ti].mean())) for ti in range(n_t)],
                abs_change=[r6(float(mats["abs"][:, ti].mean())) for ti in range(n_t)],
            )
        return Effect(
            effect=r6(eff),
            ci95=[r6(lo), r6(hi)],
            cosine=r6(cos),
            cosine_ci95=[r6(clo), r6(chi)],
            abs_change=r6(float(mats["abs"].mean())),
            n=int(mats["rel"].shape[0]),
            curve=curve,
        )


def _matrices(per: dict[str, list[list[np.ndarray]]], n_t: int) -> dict[str, np.ndarray]:
    """Per-kind ``(N, T)`` matrices from per-time lists of per-batch arrays."""
    return {k: np.stack([np.concatenate(per[k][ti]) for ti in range(n_t)], axis=1) for k in _KINDS}


def _capture_embeddings(
    run: _Run, report: AblationReport, site_texts: list[str], umap: bool
) -> Callable[[], None] | None:
    """Capture the embeddings (model forwards, main thread); returns the analysis to run."""
    from diagnostics._embeddings import analyze_embeddings

    target = run.target
    text = target.embedding_site
    if text is None:
        mods = [t for t in site_texts if not t.startswith("arg:")]
        if not mods:
            return None
        text = mods[0]
    site = parse_site(text)
    run.runner.check_site(site)
    batches, given = target.batches, target.labels
    if target.embedding_batches is not None:
        batches, given = target.embedding_batches, target.embedding_labels
    embs: list[Tensor] = []
    sizes: list[int] = []
    n = 0
    for _, bi, ti, raw in run.items(batches, times=False):
        v, _ = run.runner.capture(site, run.model_input(raw, bi, ti), seed_of(run.seed, 2, bi, ti))
        sizes.append(v.shape[0])
        if n < _MAX_EMBEDDINGS:
            v = v.reshape(v.shape[0], -1)  # (B, E)
            if v.is_complex():
                v = torch.view_as_real(v).reshape(v.shape[0], -1)  # (B, 2E)
            embs.append(v.float().cpu())
            n += v.shape[0]
    labels = flat_labels(given, sizes)
    emb = torch.cat(embs, 0)[:_MAX_EMBEDDINGS]  # (N, E)
    if labels is not None:
        labels = labels[: emb.shape[0]]

    def analyse() -> None:  # numpy/sklearn/umap only: safe off the main thread
        report.embedding = analyze_embeddings(emb, labels, umap=umap, seed=run.seed)
        report.embedding_site = text

    return analyse
