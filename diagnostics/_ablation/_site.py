"""One site's pass: the statistics pass, the variants (ablations and the floor) per item, and
the hand-over of the per-example numbers to :mod:`diagnostics._ablation._outcome`.

Every decision that depends on a batch is taken per batch, not from the first one: how many
examples it holds (a batch of one takes its shuffled condition from a neighbouring batch),
whether its shuffle swaps anything, and whether its variants can run as one tiled forward
(checked once per batch signature: sizes, shapes and dtypes of its tensors).

A site that runs several times in one forward (an encoder applied to two inputs) gets its own
ablated value at each call, by the call's index within the forward: the intact value of that
call, ablated (the same shuffle permutation at every call; ``mean``/``random`` from that call's
statistics). The number of calls must be the same for every batch and for every variant;
otherwise the site is refused with an error that names it.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor

from diagnostics._ablation._outcome import INTERACTION, summarise
from diagnostics._ablation._run import Run, trim_heap
from diagnostics._ablation._runner import (
    Captured,
    Layout,
    Site,
    derangement,
    describe,
    first_dim,
    seed_of,
    tile,
    tree_map,
)
from diagnostics._ablation._spread import LEFT_OUT, Spread, pairing, swapped_rows, swaps_within
from diagnostics._ablation._types import ABLATIONS, AblationError, SiteResult
from diagnostics._stats import SiteStats, example_effects, flat_real

__all__ = ["IDENTITY", "INTERACTION", "SitePass", "trim_heap"]

IDENTITY = "identity"  # the floor's variant: the site's own value through the same path
SHUFFLE2 = "shuffle2"  # the shuffle applied twice: the same swap seen on another input
_VARIANT_ID = {name: k + 1 for k, name in enumerate((*ABLATIONS, IDENTITY, SHUFFLE2))}  # 0 intact
_EPS = 1e-12
# an intact output this far below the batch's largest (or exactly zero) has no relative change
_ZERO_OUTPUT = 1e-6
_ZERO = "zero output"  # the key of the zero-output note


class _Unbatchable(Exception):
    """An ablation's replacement cannot be concatenated with the tiled batch."""


@dataclass
class _Item:
    """How one item ``(bi, ti)`` is run: its batch size and how its shuffle is made
    (``"within"``: a derangement of the batch; ``"donor"``: a neighbouring batch's example;
    ``None``: left out, for the :data:`~diagnostics._ablation._spread.LEFT_OUT` reason
    ``left_out``)."""

    bi: int
    ti: int
    b: int
    shuffle: str | None = None
    donor: list[Tensor] | None = None  # per call: the donor example's value (1, ...)
    left_out: str | None = None


@dataclass
class ItemOut:
    """One item's per-example numbers: ``effs[measure][kind]`` (``B``,), with ``ok`` 1 where
    the measure was taken; the batch size; why its shuffle was left out; tiled or not."""

    effs: dict[str, dict[str, np.ndarray]]
    b: int
    left_out: str | None
    tiled: bool
    zero: np.ndarray | None = None  # (B,) the intact output is zero
    unswapped: np.ndarray | None = None  # (B,) the shuffle gave the example its own condition
    nonfinite: dict[str, np.ndarray] = field(default_factory=dict)  # variant -> (B,) NaN/Inf


class SitePass:
    """All ablations at one site: statistics pass, then one pass over the (sharded) items."""

    def __init__(self, run: Run, site: Site, si: int, ablations: list[str]) -> None:
        self.run_ = run
        self.site = site
        self.si = si
        self.ablations = ablations
        self.notes: list[str] = []
        self.means: list[Tensor] = []  # per call: the site's data mean
        self.stds: list[Tensor] = []
        self.null_spec: Any = None
        self.todo: list[str] = []  # ablations that apply here
        self.seq_only: set[str] = set()  # ablations whose replacement cannot be tiled
        self.tiling: dict[tuple, bool] = {}  # batch signature -> variants run tiled
        self.n_calls = 1  # the site's calls per forward
        self.layout: Layout | None = None  # the site's batch axis (found in the stats pass)
        self.n_examples = 0
        self.sizes: list[int] = []  # examples per batch
        self.swaps: dict[int, bool] = {}  # batch -> its own shuffle swaps conditions
        self.values = Spread()  # the site's values over the run
        self.inputs = Spread()  # a module site's inputs over the run
        self.left_out: dict[str, list[int]] = {}  # LEFT_OUT key -> batches out of the shuffle
        # (bi, ti) -> (B,) bool: the shuffle gives the example a condition other than its own
        self.swapped: dict[tuple[int, int], np.ndarray] = {}

    # -- set-up
    @property
    def what(self) -> str:
        """The site in words: ``module 'enc'`` or ``argument 'cond'``."""
        kind = "module" if self.site.kind == "module" else "argument"
        return f"{kind} {self.site.path!r}"

    def _statistics(self) -> None:
        """Pass 1: the site's data statistics per call, its calls per forward, and whether its
        value (and a module's inputs) differ over the run and within each batch."""
        run, site = self.run_, self.site
        need = any(a in ("mean", "random") for a in self.ablations)
        stats: list[SiteStats] = []
        for _, bi, ti, raw in run.bar(run.items(times=need), f"{site.text}: stats"):
            batch = run.model_input(raw, bi, ti)
            seed = seed_of(run.seed, 2, bi, ti)
            if not stats:  # where the site's examples are (its batch axis): once per site
                self.layout = run.runner.detect_layout(site, batch, seed)
                if self.layout.note:
                    self.notes.append(self.layout.note)
            cap = run.runner.capture(site, batch, seed, abort=bool(stats) and self.n_calls == 1,
                                     inputs=True)  # fmt: skip
            if not stats:  # the first forward runs whole: it counts the calls
                self.n_calls = len(cap.values)
                stats = [SiteStats() for _ in cap.values]
            elif self.n_calls > 1:
                self.check_calls(len(cap.values), bi)
            self._observe(cap, bi, ti)
            for k, v in enumerate(cap.values):
                stats[k].add(v)
        assert stats, "SitePass: no items"
        self.means, self.stds = map(list, zip(*(s.mean_std() for s in stats), strict=True))
        if need and any(s.scalar for s in stats):
            self.notes.append(
                "site value shape varies across batches: mean/random use scalar statistics"
            )
        if self.n_calls > 1:
            self.notes.append(
                f"{self.what} is called {self.n_calls} times per forward: each call gets its own "
                "ablated value (by call index; the shuffle permutes every call alike)"
            )

    def _observe(self, cap: Captured, bi: int, ti: int) -> None:
        """Record one batch's values (and inputs) for the run-wide and within-batch tests."""
        for k, v in enumerate(cap.values):
            self.values.add(("value", ti, k), v)
        for k, call in enumerate(cap.inputs or []):
            for j, t in enumerate(call):
                self.inputs.add(("input", ti, k, j), t)
        if ti == 0:
            b = int(cap.values[0].shape[0])
            self.sizes.append(b)
            self.swaps[bi] = swaps_within(cap)
            if "shuffle" in self.ablations and b >= 2 and self.swaps[bi]:
                for t in range(len(self.run_.times)):  # each time has its own permutation
                    self.swapped[(bi, t)] = swapped_rows(cap, self._perm(b, bi, t))

    def check_calls(self, n: int, bi: int, variant: str | None = None) -> None:
        """Refuse a forward that calls the site another number of times than the first one."""
        if n == self.n_calls:
            return
        where, ref = f"on batch {bi}", "on batch 0"
        if variant is not None:
            where, ref = f"with the {variant} ablation on batch {bi}", "intact"
        raise AblationError(
            f"site {self.site.text!r}: {self.what} is called {n} time{'s' * (n != 1)} per "
            f"forward {where} but {self.n_calls} time{'s' * (self.n_calls != 1)} {ref}; "
            "each call is replaced by its index within the forward, so the number of calls "
            "must not change: ablate a site that runs a fixed number of times",
            site=self.site.text,
        )

    def _plan(self) -> None:
        """Which ablations apply here."""
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
        if not self.todo:
            raise AblationError(
                f"site {site.text!r}: none of the ablations {', '.join(self.ablations)} applies",
                site=site.text,
            )

    def _variants(self, item: _Item) -> list[str]:
        """The forwards of ``item`` besides the intact one."""
        names = [a for a in self.todo if a != "shuffle" or item.shuffle]
        return [*names, IDENTITY, *([SHUFFLE2] if item.shuffle == "within" else [])]

    @property
    def measures(self) -> list[str]:
        """The per-example numbers kept per item."""
        return [*self.todo, IDENTITY, *([INTERACTION] if "shuffle" in self.todo else [])]

    # -- the shuffle of one item
    def _item_plan(self, batch: Any, bi: int, ti: int, neighbour: tuple | None) -> _Item:
        """How ``(bi, ti)`` runs: its size and its shuffle (within, from a donor, or left out)."""
        item = _Item(bi, ti, self.sizes[bi])
        if "shuffle" not in self.todo:
            return item
        if item.b >= 2:
            item.shuffle = "within" if self.swaps[bi] else None
            item.left_out = None if item.shuffle else "same"
            return item
        if neighbour is None:
            item.left_out = "alone"
            return item
        run = self.run_
        nbi, nraw = neighbour
        abort = self.n_calls == 1
        own = run.runner.capture(self.site, batch, seed_of(run.seed, 2, bi, ti), abort=abort,
                                 inputs=True)  # fmt: skip
        other_batch = run.model_input(run.runner.to_device(nraw), nbi, ti)
        other = run.runner.capture(self.site, other_batch, seed_of(run.seed, 2, nbi, ti),
                                   abort=abort, inputs=True)  # fmt: skip
        if not abort:
            self.check_calls(len(other.values), nbi)
        item.left_out = pairing(own, other)
        if item.left_out is None:
            item.shuffle, item.donor = "donor", [v[:1] for v in other.values]
        return item

    # -- replacements
    def replacement(
        self,
        name: str,
        c: Tensor,
        bi: int,
        ti: int,
        call: int = 0,
        donor: list[Tensor] | None = None,
    ) -> Any:
        """The ablated value of ``c`` (the site's value at call ``call`` on item ``(bi, ti)``);
        ``donor``: the shuffle takes this (per call) instead of permuting the batch."""
        if name == IDENTITY:
            return c.clone()
        if name == "zero":
            return torch.zeros_like(c)
        k = min(call, len(self.means) - 1)
        if name == "mean":
            return self.means[k].to(device=c.device, dtype=c.dtype).expand_as(c).clone()
        if name == "random":
            return self._random(c, bi, ti, call, k)
        if name in ("shuffle", SHUFFLE2):
            if donor is not None:
                assert name == "shuffle", "replacement: a donor item has no second shuffle"
                return donor[call].to(device=c.device, dtype=c.dtype).expand_as(c).clone()
            perm = self._perm(c.shape[0], bi, ti).to(c.device)
            return c[perm] if name == "shuffle" else c[perm[perm]]
        return self._null(c)

    def _random(self, c: Tensor, bi: int, ti: int, call: int, k: int) -> Tensor:
        """A random condition: observed values for ids, else Gaussian with the data's
        per-dimension mean and std (of call ``k``); its own draw per call."""
        keys = (self.run_.seed, 3, self.si, bi, ti, *((call,) if call else ()))
        gen = torch.Generator().manual_seed(seed_of(*keys))
        if not (c.is_floating_point() or c.is_complex()):  # ids, classes, flags: a
            # Gaussian cast to int would make ids no table holds; draw observed values
            pick = torch.randint(0, c.numel(), c.shape, generator=gen)
            return c.reshape(-1)[pick.reshape(-1).to(c.device)].reshape(c.shape)
        zt = torch.complex128 if c.is_complex() else torch.float64
        z = torch.randn(c.shape, generator=gen, dtype=zt)  # complex: E|z|^2 = 1
        return (self.means[k] + self.stds[k] * z).to(device=c.device, dtype=c.dtype)

    def _perm(self, b: int, bi: int, ti: int) -> Tensor:
        """The shuffle's derangement of item ``(bi, ti)`` (``SHUFFLE2`` applies it twice)."""
        gen = torch.Generator().manual_seed(seed_of(self.run_.seed, 4, self.si, bi, ti))
        return derangement(b, gen)

    def _null(self, c: Tensor) -> Any:
        """The target's null for ``c`` (batch on dim 0), given and broadcast in the site's own
        layout (a GRU's ``h_n`` as ``[layers, B, H]``), returned with the batch on dim 0."""
        site, spec = self.site, self.null_spec
        ax = self.layout.value if self.layout is not None else 0
        own = c.movedim(0, ax)  # the value as the model holds it
        out = spec(own) if callable(spec) and not isinstance(spec, Tensor) else spec
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
        try:  # a copy: the model may change it in place (the null may be its parameter)
            out = out.expand_as(own).clone()
        except RuntimeError:
            raise AblationError(
                f"site {site.text!r}: the null input {list(out.shape)} does not broadcast to the "
                f"site's value {list(own.shape)}",
                site=site.text,
            ) from None
        return out.movedim(ax, 0)

    # -- forwards
    def _seed(self, bi: int, ti: int, variant: str | None) -> int:
        """The model-RNG seed of one variant's forward (0: intact)."""
        return seed_of(self.run_.seed, 6, bi, ti, 0 if variant is None else _VARIANT_ID[variant])

    def _tiles(self, batch: Any, item: _Item) -> bool:
        """Run ``item``'s variants as one tiled forward? Checked once per batch signature (a
        later batch of another size or shape is checked again)."""
        if not self.run_.batch_variants:
            return False
        sig = _signature(batch)
        if sig not in self.tiling:
            n = len(self.todo) + 2 + ("shuffle" in self.todo)  # intact, variants, floor, swap
            ok, why = self._batchable(batch, n, item.bi, item.ti)
            self.tiling[sig] = ok
            if not ok and len(self.tiling) == 1:
                self.notes.append(f"variants run one forward each ({why})")
            elif not ok:
                self.notes.append(
                    f"batch {item.bi} ({_shapes(batch)}): variants run one forward each ({why})"
                )
        return self.tiling[sig]

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
            # the copies after the first with other values: a model that mixes examples
            # (batch statistics, BatchNorm in train mode, a batch-mean condition) gives the
            # first copy another output, where identical copies would hide it
            varied = runner.call_seeded(tile(batch, n, b, vary=True), seed)
        except AblationError:
            raise
        except Exception as e:  # the model may not accept a larger batch
            return False, f"tiled forward failed: {type(e).__name__}"
        _finite_intact(ref, bi)
        if out.shape[0] != n * ref.shape[0] or ref.shape[0] != b or varied.shape != out.shape:
            return False, "output's leading dim does not follow the batch"
        chunks = out.reshape(n, *ref.shape)  # (n, B, ...)
        first = varied.reshape(n, *ref.shape)[0]  # (B, ...): the copy with the batch's values
        scale = ref.abs().max().clamp_min(1e-12)

        def same(a: Tensor) -> bool:
            return torch.allclose(a, ref, atol=1e-5 * float(scale), rtol=1e-4)

        if not all(same(chunks[k]) for k in range(n)):
            if not same(runner.call_seeded(batch, seed_of(self.run_.seed, 5, bi, ti, 1))):
                return False, (
                    "the forward is random: another draw of the RNG gives another output "
                    "(dropout left on?), so tiled copies cannot be checked against it"
                )
            return False, "the model is not batch-independent (tiled copies disagree)"
        if not same(first):
            return False, (
                "the model mixes the examples of a batch (its output for one example changes "
                "with the others': batch statistics, BatchNorm in train mode)"
            )
        return True, ""

    def _tiled(self, batch: Any, names: list[str], item: _Item) -> tuple[Tensor, dict[str, Tensor]]:
        """One forward over [intact, variant_1, ...] copies of the batch; every call of the
        site replaces its copies from its own intact value."""
        b = first_dim(batch)
        assert b is not None, "_tiled: no batched tensor"
        n = len(names) + 1
        calls = [0]

        def replace(v: Tensor) -> Tensor:
            k = calls[0]
            calls[0] += 1
            if v.shape[0] != n * b:
                raise _Unbatchable("*")
            c = v[:b]
            parts = [c]
            for a in names:
                r = self.replacement(a, c, item.bi, item.ti, k, item.donor)
                if r is None or not isinstance(r, Tensor) or r.shape != c.shape:
                    raise _Unbatchable(a)
                parts.append(r)
            return torch.cat(parts, 0)  # (n*B, ...)

        seed = self._seed(item.bi, item.ti, None)
        out = self.run_.runner.call_replaced(self.site, tile(batch, n, b), seed, replace)
        self.check_calls(calls[0], item.bi)
        if out.shape[0] != n * b:
            raise _Unbatchable("*")
        chunks = out.reshape(n, b, *out.shape[1:])  # (n, B, ...)
        return chunks[0], {a: chunks[k + 1] for k, a in enumerate(names)}

    def _try_tiled(
        self, batch: Any, item: _Item, outs: dict[str, Tensor]
    ) -> tuple[Tensor | None, bool]:
        """The tiled forward of the variants that can be tiled (into ``outs``): the intact
        output (or None) and whether every variant of the item ran tiled."""
        variants = self._variants(item)
        group = [a for a in variants if a not in self.seq_only]
        while group:
            try:
                intact, got = self._tiled(batch, group, item)
            except _Unbatchable as e:
                if str(e) == "*":
                    self.tiling[_signature(batch)] = False
                    self.notes.append(
                        f"site value does not follow the tiled batch (batch {item.bi}): "
                        "one forward each"
                    )
                    return None, False
                self.seq_only.add(str(e))
                self.notes.append(f"{e} runs one forward (its replacement cannot be batched)")
                group = [a for a in group if a != str(e)]
                continue
            outs.update(got)
            return intact, len(got) == len(variants)
        return None, False

    def _sequential(self, batch: Any, item: _Item, names: list[str], outs: dict) -> Tensor:
        """One forward per variant in ``names`` (into ``outs``); returns the intact output.
        Each call of the site gets the replacement made from that call's intact value."""
        run, site = self.run_, self.site
        kept: list[Tensor] = []
        intact = run.runner.call_replaced(
            site,
            batch,
            self._seed(item.bi, item.ti, None),
            lambda v: kept.append(v.detach().clone()) or v,
        )
        self.check_calls(len(kept), item.bi)
        for a in names:
            reps = [self.replacement(a, c.detach(), item.bi, item.ti, k, item.donor)
                    for k, c in enumerate(kept)]  # fmt: skip
            outs[a] = self._call_with(batch, item, a, reps)
        return intact

    def _call_with(self, batch: Any, item: _Item, name: str, reps: list[Any]) -> Tensor:
        """The output with call ``k`` of the site replaced by ``reps[k]``."""
        calls = [0]

        def by_call(v: Tensor) -> Any:
            k = calls[0]
            calls[0] += 1
            if k >= len(reps):
                self.check_calls(k + 1, item.bi, name)
            return reps[k]

        seed = self._seed(item.bi, item.ti, name)
        out = self.run_.runner.call_replaced(self.site, batch, seed, by_call)
        self.check_calls(calls[0], item.bi, name)
        return out

    def _item(self, batch: Any, item: _Item) -> ItemOut:
        """Per-example effects of every variant on ``item``."""
        outs: dict[str, Tensor] = {}
        intact, all_tiled = None, False
        if self._tiles(batch, item):
            intact, all_tiled = self._try_tiled(batch, item, outs)
        rest = [a for a in self._variants(item) if a not in outs]
        if rest:
            intact_seq = self._sequential(batch, item, rest, outs)
            intact = intact_seq if intact is None else intact
        assert intact is not None, "_item: no intact output"
        _finite_intact(intact, item.bi)
        b = intact.shape[0]
        if b != item.b:
            raise AblationError(
                f"site {self.site.text!r}: {self.what} holds {item.b} examples on batch "
                f"{item.bi} but the output has {b} (its leading dim): the site's batch axis "
                "must be the output's batch",
                site=self.site.text,
            )
        effs = {a: example_effects(intact, outs[a]) for a in outs if a != SHUFFLE2}
        # where the plain relative change is not a number: a variant's output that is NaN/Inf
        # (the model cannot take that replacement: left out of that variant's effect), and a
        # zero intact output, whose change is taken against the larger of the two outputs
        # (1 when it becomes non-zero, 0 when it stays zero), never against a clamped 1e-12
        zero_t = _zero_rows(intact)  # (B,) bool
        zero = zero_t.cpu().numpy()
        if zero.any():
            for a, e in effs.items():
                den = _against(flat_real(intact), flat_real(outs[a]), zero_t)
                e["rel"] = e["abs"] / den
        bad = {a: ~_finite_rows(o) for a, o in outs.items()}
        if SHUFFLE2 in outs:
            perm = self._perm(b, item.bi, item.ti)
            effs[INTERACTION] = _interaction(intact, outs["shuffle"], outs[SHUFFLE2], perm)
            inv = torch.argsort(perm).numpy()  # example m = inv[j] sees j's swap on its input
            bad[INTERACTION] = bad["shuffle"] | bad["shuffle"][inv] | bad[SHUFFLE2][inv]
        for a in self.measures:
            if a in effs:
                effs[a]["ok"] = (~bad[a]).astype(np.float64)
            else:
                effs[a] = _absent(b, a)
        # an example whose shuffled condition equals its own (another example of the batch has
        # the same one) was not swapped: its shuffle effect is 0 by construction, not a finding
        swapped = self.swapped.get((item.bi, item.ti)) if item.shuffle == "within" else None
        for a in ("shuffle", INTERACTION):
            if a in effs and "swap" not in effs[a]:  # measured here (_absent gives zeros)
                effs[a]["swap"] = np.ones(b) if swapped is None else swapped.astype(np.float64)
        unswapped = None if swapped is None else ~swapped
        nonfinite = {a: m for a, m in bad.items() if a in self.todo and m.any()}
        return ItemOut(effs, b, item.left_out, all_tiled, zero, unswapped, nonfinite)

    # -- the pass
    def _outputs(self) -> tuple[dict[tuple[int, int], ItemOut], list[tuple[int, int]]]:
        """This rank's items run; every rank's per-item numbers gathered (in item order)."""
        run, site = self.run_, self.site
        rank, world = run.sharding
        done: dict[tuple[int, int], ItemOut] = {}
        order: list[tuple[int, int]] = []
        items: Iterator = run.paired_items()
        for k, bi, ti, raw, neighbour in run.bar(items, site.text, total=run.n_items()):
            order.append((bi, ti))
            if k % world == rank:  # this rank's shard
                batch = run.model_input(raw, bi, ti)
                done[(bi, ti)] = self._item(batch, self._item_plan(batch, bi, ti, neighbour))
                trim_heap()  # memory flat in the number of examples (see _run.trim_heap)
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
        return done, order

    def run(self) -> SiteResult:
        self._statistics()
        self._plan()
        done, order = self._outputs()
        n_t = len(self.run_.times)
        per: dict[str, dict[str, list[list[np.ndarray]]]] = {}
        for bi, ti in order:
            out = done[(bi, ti)]
            for a in self.measures:
                kinds = per.setdefault(a, {k: [[] for _ in range(n_t)] for k in out.effs[a]})
                for k, v in out.effs[a].items():
                    kinds[k][ti].append(v)
            if ti == 0:
                self.n_examples += out.b
        self._note_left_out(done, order)
        self._note_undefined(done, order)
        self._note_unswapped(done, order)
        mutated = self.run_.runner.mutated
        if mutated:
            self.notes.append(
                f"the forward changes its input{'s' * (len(mutated) > 1)} "
                f"{', '.join(mutated[:4])} in place: every forward is given a copy of the "
                "batch, so the batches stay as they were and every variant sees the same inputs"
            )
        mats = {a: _matrices(per[a], n_t) for a in self.measures}  # name -> kind -> (N, T)
        batched = all(done[key].tiled for key in order)  # the same on every rank
        return summarise(self, mats, batched)

    def _note_undefined(self, done: dict[tuple[int, int], ItemOut], order: list) -> None:
        """Say which examples have a zero intact output (their relative change is taken
        against the larger output) and which a variant makes NaN/Inf (left out of it)."""
        n_t = len(self.run_.times)
        sizes = [done[(bi, 0)].b for bi, ti in order if ti == 0]
        rows: dict[str, list[np.ndarray]] = {}

        def mark(key: str, bi: int, m: np.ndarray) -> None:
            rows.setdefault(key, [np.zeros(n, dtype=bool) for n in sizes])[bi] |= m

        everywhere = True  # the intact output is zero on every example at every time
        for bi, ti in order:
            out = done[(bi, ti)]
            if out.zero is not None:
                mark(_ZERO, bi, out.zero)
            everywhere = everywhere and out.zero is not None and bool(out.zero.all())
            for a, m in out.nonfinite.items():
                mark(a, bi, m)
        at = " (at one diffusion time or more)" if n_t > 1 else ""

        def count(key: str) -> int:
            return int(np.concatenate(rows[key]).sum()) if key in rows else 0

        k = count(_ZERO)
        if everywhere:
            self.notes.append(
                "the intact output is zero on every example: each change is taken against the "
                "ablated output (1 when it is not zero); is the compared output the right "
                "tensor?"
            )
        elif k:
            self.notes.append(
                f"the intact output is zero on {k} example{'s' * (k != 1)}{at}: their relative "
                "change is taken against the larger of the intact and ablated outputs (1 when "
                "a zero output becomes non-zero, 0 when it stays zero)"
            )
        for a in self.todo:
            k = count(a)
            if k:
                self.notes.append(
                    f"{a} makes the output NaN/Inf on {k} example{'s' * (k != 1)}{at}: the "
                    "model cannot take that replacement; they are left out of its effect"
                )

    def _note_unswapped(self, done: dict[tuple[int, int], ItemOut], order: list) -> None:
        """Say how many examples the shuffle gave their own condition (left out of it)."""
        n_t = len(self.run_.times)
        never: dict[int, np.ndarray] = {}
        some = 0
        for bi, ti in order:
            m = done[(bi, ti)].unswapped
            if m is not None:
                never[bi] = never.get(bi, np.ones_like(m)) & m
                some += int(m.sum())
        k = sum(int(m.sum()) for m in never.values())
        if k:
            shown = [bi for bi, m in never.items() if m.any()]
            where = ", ".join(map(str, shown[:8])) + (", ..." if len(shown) > 8 else "")
            self.notes.append(
                f"shuffle leaves out {k} example{'s' * (k != 1)} (batch"
                f"{'es' * (len(shown) != 1)} {where}) that it gave their own condition "
                "(another example of the batch has the same one): a swap that changes nothing "
                "is not a test"
            )
        if n_t > 1 and some:
            self.notes.append(
                "with diffusion times, each time has its own shuffle: an example's shuffle "
                "effect is its mean over the times where its condition was swapped"
            )

    def _note_left_out(self, done: dict[tuple[int, int], ItemOut], order: list) -> None:
        """Say which batches the shuffle statistics leave out, and why."""
        why = self.left_out
        for bi, ti in order:
            out = done[(bi, ti)]
            if ti == 0 and out.left_out is not None:
                why.setdefault(out.left_out, []).append(bi)
        for key, batches in why.items():
            shown = ", ".join(map(str, batches[:8])) + (", ..." if len(batches) > 8 else "")
            n = sum(done[(bi, 0)].b for bi in batches)
            self.notes.append(
                f"shuffle leaves out {n} example{'s' * (n != 1)} (batch"
                f"{'es' * (len(batches) != 1)} {shown}): {LEFT_OUT[key]}"
            )


def _signature(batch: Any) -> tuple:
    """The sizes, shapes and dtypes of a batch's tensors (what tiling depends on)."""
    leaves: list[tuple] = []
    tree_map(lambda t: leaves.append((tuple(t.shape), str(t.dtype))) or t, batch)
    return tuple(leaves)


def _shapes(batch: Any) -> str:
    """A batch's tensor shapes in words, for a note."""
    return ", ".join("x".join(map(str, s)) or "scalar" for s, _ in _signature(batch)[:4])


def _absent(b: int, name: str) -> dict[str, np.ndarray]:
    """The numbers of a measure not taken on an item (``ok`` 0: left out of its statistics)."""
    kinds = ("rel", "cos", "abs", "sep") if name == INTERACTION else ("rel", "cos", "abs")
    out = {k: np.full(b, np.nan) for k in kinds}
    out["ok"] = np.zeros(b)
    if name in ("shuffle", INTERACTION):
        out["swap"] = np.zeros(b)
    return out


def _zero_rows(out: Tensor) -> Tensor:
    """``(B,)`` bool: the examples whose output is zero (or below ``_ZERO_OUTPUT`` of the
    batch's largest): no relative change can be taken against them."""
    norms = flat_real(out).norm(dim=1)
    return norms <= _ZERO_OUTPUT * norms.max()


def _against(ref: Tensor, other: Tensor, zero: Tensor) -> np.ndarray:
    """``(B,)`` denominators of a relative change: ``||ref||``, or where ``ref`` is zero the
    larger of ``||ref||`` and ``||other||`` (``ref``, ``other``: ``(B, D)`` float64)."""
    r = ref.norm(dim=1)
    o = torch.nan_to_num(other.norm(dim=1), nan=0.0, posinf=0.0)
    return torch.where(zero, torch.maximum(r, o), r).clamp_min(_EPS).cpu().numpy()


def _finite_rows(out: Tensor) -> np.ndarray:
    """``(B,)`` bool: the examples whose output is finite everywhere."""
    x = torch.view_as_real(out) if out.is_complex() else out
    return torch.isfinite(x).reshape(x.shape[0], -1).all(dim=1).cpu().numpy()


def _finite_intact(out: Tensor, bi: int) -> None:
    """The intact output must be finite: a NaN/Inf in it leaves nothing to compare."""
    if not bool(torch.isfinite(out).all()):
        raise AblationError(
            f"the target's output on batch {bi} holds NaN/Inf before any ablation: there is "
            "nothing to compare; hint: find where with diagnostics.NanWatch, or fix the inputs"
        )


def _interaction(intact: Tensor, shuffled: Tensor, twice: Tensor, perm: Tensor) -> dict:
    """Per-example interaction of the shuffle's swap with the input.

    Example ``j`` sees the swap ``c_j -> c_pi(j)``: ``d_j = S_j - I_j``. Example ``m`` with
    ``pi(m) = j`` sees the same swap between the shuffled run (``c_pi(m) = c_j``) and the run
    shuffled twice (``c_pi(pi(m)) = c_pi(j)``): ``d'_j = T_m - S_m``. Returns ``rel`` =
    ``||d - d'|| / ||I_j||``, ``cos`` (here: ``||d - d'|| / ||d||``), ``abs`` = ``||d - d'||``
    and ``sep`` = ``||I_j - S_m|| / ||I_j||``: how far apart the two inputs are as the model
    sees them with the same condition ``c_j`` (0: the same input, so ``d = d'`` trivially and
    the example says nothing about the interaction).
    """
    i, s, t = flat_real(intact), flat_real(shuffled), flat_real(twice)  # (B, D)
    inv = torch.argsort(perm.to(i.device))  # inv[j] = m with perm[m] = j
    d = s - i  # (B, D): the swap seen on its own input
    d2 = t[inv] - s[inv]  # (B, D): the same swap seen on another input
    diff = (d - d2).norm(dim=1)  # (B,)
    zero = _zero_rows(intact).to(i.device)  # a zero intact output: against the larger output
    rel = diff.cpu().numpy() / _against(i, s, zero)
    share = diff / d.norm(dim=1).clamp_min(_EPS)
    sep = (i - s[inv]).norm(dim=1).cpu().numpy() / _against(i, s[inv], zero)
    return {"rel": rel, "cos": share.cpu().numpy(), "abs": diff.cpu().numpy(), "sep": sep}


def _matrices(per: dict[str, list[list[np.ndarray]]], n_t: int) -> dict[str, np.ndarray]:
    """Per-kind ``(N, T)`` matrices from per-time lists of per-batch arrays."""
    return {k: np.stack([np.concatenate(per[k][ti]) for ti in range(n_t)], axis=1) for k in per}
