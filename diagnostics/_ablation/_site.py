"""One site's pass: the statistics pass, the variants (ablations and the floor) per item, the
summary and the verdict."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch import Tensor

from diagnostics._ablation._run import Run, flat_labels, r6, trim_heap
from diagnostics._ablation._runner import (
    Site,
    derangement,
    describe,
    first_dim,
    seed_of,
    tile,
)
from diagnostics._ablation._types import (
    ABLATIONS,
    AblationError,
    Curve,
    Effect,
    Interaction,
    LabelResult,
    SiteResult,
)
from diagnostics._ablation._verdict import (
    FLOOR_MARGIN,
    ROUNDOFF,
    ablation_test,
    decide,
    floor_margin,
)
from diagnostics._stats import (
    SiteStats,
    bootstrap_ci,
    example_effects,
    flat_real,
    varies,
)

__all__ = ["IDENTITY", "INTERACTION", "SitePass"]

_RANDOM_FLOOR = 1e-3  # a floor above this (CI low) is randomness, not round-off: say so
_KINDS = ("rel", "cos", "abs")  # per-example numbers kept per variant
IDENTITY = "identity"  # the floor's variant: the site's own value through the same path
SHUFFLE2 = "shuffle2"  # the shuffle applied twice: the same swap seen on another input
INTERACTION = "interaction"  # per-example numbers of the interaction (not a forward)
_VARIANT_ID = {name: k + 1 for k, name in enumerate((*ABLATIONS, IDENTITY, SHUFFLE2))}  # 0 intact
_EPS = 1e-12


class _Unbatchable(Exception):
    """An ablation's replacement cannot be concatenated with the tiled batch."""


class SitePass:
    """All ablations at one site: statistics pass, then one pass over the (sharded) items."""

    def __init__(self, run: Run, site: Site, si: int, ablations: list[str]) -> None:
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
        assert first is not None, "SitePass: no items"
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
            self.batched, why = self._batchable(batch, len(self.variants) + 1, bi, ti)
            if not self.batched:
                self.notes.append(f"variants run one forward each ({why})")

    @property
    def variants(self) -> list[str]:
        """The forwards per item besides the intact one."""
        return [*self.todo, IDENTITY, *([SHUFFLE2] if "shuffle" in self.todo else [])]

    @property
    def measures(self) -> list[str]:
        """The per-example numbers kept per item."""
        return [*self.todo, IDENTITY, *([INTERACTION] if "shuffle" in self.todo else [])]

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
            if not (c.is_floating_point() or c.is_complex()):  # ids, classes, flags: a
                # Gaussian cast to int would make ids no table holds; draw observed values
                pick = torch.randint(0, c.numel(), c.shape, generator=gen)
                return c.reshape(-1)[pick.reshape(-1).to(c.device)].reshape(c.shape)
            zt = torch.complex128 if c.is_complex() else torch.float64
            z = torch.randn(c.shape, generator=gen, dtype=zt)  # complex: E|z|^2 = 1
            return (self.mean + self.std * z).to(device=c.device, dtype=c.dtype)
        if name in ("shuffle", SHUFFLE2):
            perm = self._perm(c.shape[0], bi, ti).to(c.device)
            return c[perm] if name == "shuffle" else c[perm[perm]]
        return self._null(c)

    def _perm(self, b: int, bi: int, ti: int) -> Tensor:
        """The shuffle's derangement of item ``(bi, ti)`` (``SHUFFLE2`` applies it twice)."""
        gen = torch.Generator().manual_seed(seed_of(self.run_.seed, 4, self.si, bi, ti))
        return derangement(b, gen)

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
            return False, "the model is not batch-independent (tiled copies disagree)"
        if not same(first):
            return False, (
                "the model mixes the examples of a batch (its output for one example changes "
                "with the others': batch statistics, BatchNorm in train mode)"
            )
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
        _finite_intact(intact, bi)
        effs = {a: example_effects(intact, outs[a]) for a in self.variants if a != SHUFFLE2}
        if SHUFFLE2 in outs:
            perm = self._perm(intact.shape[0], bi, ti)
            effs[INTERACTION] = _interaction(intact, outs["shuffle"], outs[SHUFFLE2], perm)
        return effs, intact.shape[0]

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
        n_t = len(run.times)
        per = {a: {k: [[] for _ in range(n_t)] for k in _KINDS} for a in self.measures}
        for bi, ti in order:
            effs, b = done[(bi, ti)]
            for a in self.measures:
                for k in _KINDS:
                    per[a][k][ti].append(effs[a][k])
            if ti == 0:
                self.n_examples += b
        mats = {a: _matrices(per[a], n_t) for a in self.measures}  # name -> kind -> (N, T)
        return self._result(mats)

    def _bseed(self, name: str) -> int:
        if name == INTERACTION:
            key = len(ABLATIONS) + 1
        else:
            key = len(ABLATIONS) if name in (IDENTITY, "floor") else ABLATIONS.index(name)
        return seed_of(self.run_.seed, 7, self.si, key)

    def _result(self, mats: dict[str, dict[str, np.ndarray]]) -> SiteResult:
        run, site = self.run_, self.site
        rel = {a: m["rel"].mean(axis=1) for a, m in mats.items()}  # (N,) per variant
        conditions_vary = self.value_varies or bool(self.inputs_vary)
        collapsed = site.kind == "module" and bool(self.inputs_vary) and not self.value_varies
        floor = rel.pop(IDENTITY)
        rel.pop(INTERACTION, None)
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
        floor_effect = self._effect(IDENTITY, mats[IDENTITY])
        if floor_effect.ci95[0] > _RANDOM_FLOOR:
            self.notes.append(
                f"the floor is {floor_effect.effect:.2g}: the output changes between runs with the "
                "same inputs, so the forward is random (dropout or CFG dropout left on: "
                "model.train()?); effects inside the floor cannot be seen"
            )
        inter = None
        reason = d.reason
        if INTERACTION in mats:
            inter = self._interaction(mats, floor, rel["shuffle"], d.verdict)
            if inter.additive:
                reason += (
                    f"; additive: the change the condition causes does not depend on the input "
                    f"(interaction {100 * inter.effect:.3g}% [{100 * inter.ci95[0]:.3g}, "
                    f"{100 * inter.ci95[1]:.3g}], within the floor): the condition acts only as "
                    "an additive bias on the output, it does not modulate the features"
                )
        return SiteResult(
            site=site.text,
            kind=site.kind,
            verdict=d.verdict,
            reason=reason,
            floor=floor_effect,
            channel=d.channel,
            content=d.content,
            ablations={a: self._effect(a, mats[a]) for a in self.todo},
            by_label=by_label,
            batched=self.batched and not self.seq_only,
            notes=self.notes,
            interaction=inter,
            additive=bool(inter is not None and inter.additive),
        )

    def _interaction(
        self,
        mats: dict[str, dict[str, np.ndarray]],
        floor: np.ndarray,
        shuffle: np.ndarray,
        verdict: str,
    ) -> Interaction:
        """The interaction summary and the additive flag (see :class:`Interaction`)."""
        n_boot, bseed = self.run_.n_boot, self._bseed(INTERACTION)
        m = mats[INTERACTION]
        ie = m["rel"].mean(axis=1)  # (N,)
        eff, lo, hi = bootstrap_ci(ie, n_boot=n_boot, seed=bseed)
        share, slo, shi = bootstrap_ci(m["cos"].mean(axis=1), n_boot=n_boot, seed=bseed + 1)
        f2 = np.sqrt(2.0) * floor  # four outputs against the floor's two
        margin = max(ROUNDOFF, FLOOR_MARGIN * float(f2.mean()))
        xm, xlo, xhi = bootstrap_ci(ie - f2, n_boot=n_boot, seed=bseed + 2)
        # the shuffle's own test, with the seed and margin the verdict used (the same answer)
        shuffled = ablation_test(
            "shuffle", shuffle, floor, floor_margin(floor), n_boot, self._bseed("shuffle")
        )
        above = bool(xlo > margin)
        used = verdict in ("used", "weak") and shuffled.above_floor
        return Interaction(
            effect=r6(eff),
            ci95=[r6(lo), r6(hi)],
            relative=r6(share),
            relative_ci95=[r6(slo), r6(shi)],
            excess=r6(xm),
            excess_ci95=[r6(xlo), r6(xhi)],
            above_floor=above,
            additive=bool(used and not above),
            n=int(ie.size),
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
    ``||d - d'|| / ||I_j||``, ``cos`` (here: ``||d - d'|| / ||d||``) and ``abs`` = ``||d - d'||``.
    """
    i, s, t = flat_real(intact), flat_real(shuffled), flat_real(twice)  # (B, D)
    inv = torch.argsort(perm.to(i.device))  # inv[j] = m with perm[m] = j
    d = s - i  # (B, D): the swap seen on its own input
    d2 = t[inv] - s[inv]  # (B, D): the same swap seen on another input
    diff = (d - d2).norm(dim=1)  # (B,)
    rel = diff / i.norm(dim=1).clamp_min(_EPS)
    share = diff / d.norm(dim=1).clamp_min(_EPS)
    return {"rel": rel.cpu().numpy(), "cos": share.cpu().numpy(), "abs": diff.cpu().numpy()}


def _matrices(per: dict[str, list[list[np.ndarray]]], n_t: int) -> dict[str, np.ndarray]:
    """Per-kind ``(N, T)`` matrices from per-time lists of per-batch arrays."""
    return {k: np.stack([np.concatenate(per[k][ti]) for ti in range(n_t)], axis=1) for k in _KINDS}
