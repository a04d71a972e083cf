"""The ablation engine: for each site, replace the condition and measure the output change.

Ablations (each compared with the intact run on the same inputs and the same noise):

* ``zero``: all zeros.
* ``mean``: the site's per-dimension mean over the data (a first pass over the batches).
* ``random``: Gaussian with the data's per-dimension mean and std.
* ``shuffle``: the batch's conditions permuted (a derangement: every example gets another
  example's condition; the mismatched-reference test). A batch of one example takes the
  condition of a neighbouring batch's example; a batch whose shuffle swaps nothing (one
  condition for every example) is left out of the shuffle statistics, and a note says so.
* ``null``: the model's own unconditional input, given by ``AblationTarget.null``.

Beside them every site runs the *identity* replacement (its own value through the same hook
path and tiling): the measured **floor** the verdict compares against
(``diagnostics._ablation._verdict``). Every variant's forward gets its own seeded draw of the
model's RNG, so a model that is random in its forward (dropout left on) shows that randomness in
the floor instead of hiding it; inputs and ``x_t`` noise are the same for every variant.

The intact run and the ablated runs are batched together (the batch is tiled, the hook replaces
the copies) when the model is batch-independent; the engine checks that once per batch signature
(sizes, shapes, dtypes: a trailing batch of another size is checked again) and falls back to one
forward per variant otherwise. A site that runs several times per forward is replaced at each
call by that call's own ablated value (by call index). Batches are streamed (any re-iterable: a list,
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

import contextlib
import random
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from diagnostics._ablation._guidance import quality_deltas, run_guidance
from diagnostics._ablation._run import Run, flat_labels, iter_batches, r6
from diagnostics._ablation._runner import Runner, parse_site, seed_of
from diagnostics._ablation._site import SitePass
from diagnostics._ablation._types import ABLATIONS, AblationError, AblationReport, AblationTarget
from diagnostics._ablation._verdict import MIN_EFFECT
from diagnostics._stats import N_BOOT

__all__ = ["run_ablation"]

_MAX_EMBEDDINGS = 4096  # embeddings kept for the embedding analysis (bounded memory)


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


@contextlib.contextmanager
def _rng_restored(devices: list[int]) -> Iterator[None]:
    """Put back the global RNG states (torch CPU and ``devices``, NumPy, Python) after the
    block: every forward already runs under its own fork (``forked_rng``); this also covers
    the target's other callbacks and the analysis thread."""
    py, npy = random.getstate(), np.random.get_state()
    try:
        with torch.random.fork_rng(devices=devices):
            yield
    finally:
        random.setstate(py)
        np.random.set_state(npy)


@contextlib.contextmanager
def _buffers_restored(model: torch.nn.Module) -> Iterator[None]:
    """Put back every buffer after the block, however it ends: the ablation's forwards must not
    change the model it measures (BatchNorm's running statistics in train mode, counters)."""
    saved = [(b, b.clone()) for b in model.buffers()]
    try:
        yield
    finally:
        with torch.no_grad():
            for b, v in saved:
                b.copy_(v)


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
            model is batch-independent (checked once per batch signature); default
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
    run = Run(
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
    with torch.no_grad(), _rng_restored(run.runner.fork_devices), _buffers_restored(target.model):
        for si, text in enumerate(site_texts):
            t0 = time.perf_counter()
            try:
                site = parse_site(text)
                run.runner.check_site(site)
                site_pass = SitePass(run, site, si, list(ablations))
                result = site_pass.run()
                if quality and target.sample is not None:
                    t1 = time.perf_counter()
                    for a, deltas in quality_deltas(run, site_pass).items():
                        if a in result.ablations:  # an ablation measured on no example has none
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


def _capture_embeddings(
    run: Run, report: AblationReport, site_texts: list[str], umap: bool
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
    if text not in run.runner.layouts:  # a site not ablated: find its batch axis
        first = run.runner.to_device(next(iter(batches)))
        run.runner.detect_layout(site, run.model_input(first, 0, 0), seed_of(run.seed, 2, 0, 0))
    embs: list[Tensor] = []
    sizes: list[int] = []
    n = 0
    for _, bi, ti, raw in run.items(batches, times=False):
        cap = run.runner.capture(site, run.model_input(raw, bi, ti), seed_of(run.seed, 2, bi, ti))
        v = cap.values[0]  # the first call's value
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
