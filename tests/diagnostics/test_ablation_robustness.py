"""The conditioning ablation on models and batches the first version had not seen: a model that
reads only the norm of its condition, an encoder called twice per forward, batches of one
example, a trailing batch of one, a later batch of another size, a shuffle-only run on a
collapsed encoder, and identical non-condition inputs (the additive flag)."""

import math

import numpy as np
import pytest
import torch
from torch import nn

from diagnostics import AblationError, AblationTarget, run_ablation
from diagnostics import ablation_example as S
from diagnostics._ablation._runner import derangement
from diagnostics._ablation._site import _interaction
from diagnostics._ablation._verdict import decide

FAST = {"embeddings": False, "umap": False, "guidance": False, "n_boot": 300, "seed": 0}


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _batches(sizes, d=8, c=4, seed=0, x=None):
    """``{"x": (b, d), "cond": (b, c)}`` per size; ``x``: one input row shared by every example."""
    g = _gen(seed)
    out = []
    for b in sizes:
        xb = torch.randn(b, d, generator=g) if x is None else x.expand(b, -1).clone()
        out.append({"x": xb, "cond": torch.randn(b, c, generator=g)})
    return out


class FiLM(nn.Module):
    """``x * (1 + enc(cond))``: the condition scales the input (not additive)."""

    def __init__(self, c: int = 4, d: int = 8, collapsed: bool = False) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.enc = nn.Linear(c, d)
        if collapsed:  # the encoder's output ignores its input
            with torch.no_grad():
                self.enc.weight.zero_()

    def forward(self, x, cond):
        return x * (1 + self.enc(cond))


class PassCond(nn.Module):
    """The output is the condition itself (``x`` is read only for its batch size)."""

    def forward(self, x, cond):
        return cond + 0 * x.sum(1, keepdim=True)


# ---- 1: an off-distribution replacement is channel, never content
class NormOnly(nn.Module):
    """Reads only ``||cond||``; with unit-norm conditions the content is ignored."""

    def forward(self, x, cond):
        return x * cond.norm(dim=1, keepdim=True)


def test_norm_only_model_is_not_used_although_the_mean_moves_it():
    g = _gen(0)
    batches = []
    for _ in range(3):
        cond = torch.randn(8, 16, generator=g)
        batches.append(
            {"x": torch.randn(8, 16, generator=g), "cond": cond / cond.norm(dim=1)[:, None]}
        )
    rep = run_ablation(
        AblationTarget(model=NormOnly(), batches=batches, sites=["arg:cond"]), **FAST
    )
    s = rep.sites[0]
    assert s.ablations["mean"].ci95[0] > 0.5  # the batch mean is far from unit norm
    assert s.content.ablation == "shuffle" and not s.content.above_floor
    assert s.channel.above_floor and s.verdict == "constant", s.reason
    assert "while giving each example another example's condition does not" in s.reason
    assert "the condition acts as a fixed bias" in s.reason


def test_decide_counts_mean_as_channel():
    zeros = np.zeros(10)
    d = decide(zeros, {"mean": np.full(10, 0.5), "shuffle": zeros})
    assert (
        d.verdict == "constant" and d.channel.ablation == "mean" and d.content.ablation == "shuffle"
    )
    # mean alone cannot say whether the content is used
    d = decide(zeros, {"mean": np.full(10, 0.5)})
    assert d.verdict == "inconclusive" and d.content is None
    assert "no content ablation (shuffle) was run, so used cannot be told from constant" in d.reason


# ---- 2: a module called twice per forward
class TwoCalls(nn.Module):
    """One encoder applied to two conditions: ``x + enc(a) * enc(b)``."""

    def __init__(self) -> None:
        super().__init__()
        self.enc = nn.Identity()

    def forward(self, x, a, b):
        return x + self.enc(a) * self.enc(b)


def _two_call_batches():
    g = _gen(1)
    return [
        {"x": torch.randn(8, 4, generator=g), "a": 3 + torch.randn(8, 4, generator=g),
         "b": -2 + torch.randn(8, 4, generator=g)}
        for _ in range(2)
    ]  # fmt: skip


def test_module_called_twice_gets_its_own_ablated_value_per_call():
    batches = _two_call_batches()
    kw = dict(sites=["enc"], ablations=["zero", "mean", "shuffle"], **FAST)
    tiled = run_ablation(
        AblationTarget(model=TwoCalls(), batches=batches), batch_variants=True, **kw
    )
    seq = run_ablation(
        AblationTarget(model=TwoCalls(), batches=batches), batch_variants=False, **kw
    )
    a, b = tiled.sites[0], seq.sites[0]
    assert a.batched and not b.batched
    assert a.floor.effect == b.floor.effect == 0.0  # the identity is the identity at every call
    for name in ("zero", "mean", "shuffle"):
        assert a.ablations[name].effect == pytest.approx(b.ablations[name].effect, rel=1e-5)
    assert any("'enc' is called 2 times per forward" in n for n in b.notes), b.notes
    # mean: each call gets the data mean of its own values (a's at call 0, b's at call 1)
    xs = torch.cat([t["x"] for t in batches])
    ma = torch.cat([t["a"] for t in batches]).double().mean(0)
    mb = torch.cat([t["b"] for t in batches]).double().mean(0)
    intact = torch.cat([t["x"] + t["a"] * t["b"] for t in batches]).double()
    want = ((intact - (xs + ma * mb)).norm(dim=1) / intact.norm(dim=1)).mean()
    assert b.ablations["mean"].effect == pytest.approx(float(want), rel=1e-4)


class CallsBySize(nn.Module):
    """Calls its encoder a second time on batches of 8 (a data-dependent number of calls)."""

    def __init__(self) -> None:
        super().__init__()
        self.enc = nn.Linear(4, 4)

    def forward(self, x, cond):
        e = self.enc(cond)
        if x.shape[0] == 8:
            e = e + self.enc(cond)
        return x + e


def test_a_call_count_that_changes_between_batches_is_refused():
    tgt = AblationTarget(model=CallsBySize(), batches=_batches([4, 8], d=4), sites=["enc"])
    for batched in (True, False):
        with pytest.raises(
            AblationError,
            match=r"^site 'enc': module 'enc' is called 2 times per forward on batch 1 but 1 time "
            r"on batch 0; each call is replaced by its index within the forward",
        ):
            run_ablation(tgt, ablations=["zero", "shuffle"], batch_variants=batched, **FAST)


class CallsByValue(nn.Module):
    """Calls its encoder again only while the first call's output is non-zero."""

    def __init__(self) -> None:
        super().__init__()
        self.enc = nn.Linear(4, 4)

    def forward(self, x, cond):
        e = self.enc(cond)
        if bool(e.abs().sum() > 0):
            e = e + self.enc(cond)
        return x + e


def test_a_call_count_that_the_ablation_changes_is_refused():
    tgt = AblationTarget(model=CallsByValue(), batches=_batches([8, 8], d=4), sites=["enc"])
    with pytest.raises(
        AblationError,
        match=r"^site 'enc': module 'enc' is called 1 time per forward with the zero ablation on "
        r"batch 0 but 2 times intact",
    ):
        run_ablation(tgt, ablations=["zero"], batch_variants=False, **FAST)


# ---- 3: do the conditions vary: over the whole run
def test_batches_of_one_example_get_a_verdict():
    tgt = AblationTarget(model=FiLM(), batches=_batches([1] * 10), sites=["arg:cond", "enc"])
    rep = run_ablation(tgt, ablations=["zero", "shuffle"], **FAST)
    for s in rep.sites:
        assert s.verdict == "used", s.reason
        assert s.ablations["shuffle"].n == 10
        assert s.reason.startswith("giving each example another example's condition")


def test_batches_of_one_with_one_condition_over_the_run_stay_inconclusive():
    batches = _batches([1] * 8)
    for t in batches:
        t["cond"] = torch.ones(1, 4)
    rep = run_ablation(AblationTarget(model=FiLM(), batches=batches, sites=["arg:cond"]), **FAST)
    s = rep.sites[0]
    assert s.verdict == "inconclusive" and "same for every example" in s.reason


# ---- 4: a batch of one example is never counted as shuffled with itself
def test_trailing_batch_of_one_is_shuffled_with_another_batchs_condition():
    eye = torch.eye(17)  # every swap of two one-hot conditions changes the output by sqrt(2)
    batches = [
        {"x": torch.randn(16, 3), "cond": eye[:16]},
        {"x": torch.randn(1, 3), "cond": eye[16:]},
    ]
    for batched in (True, False):
        tgt = AblationTarget(model=PassCond(), batches=batches, sites=["arg:cond"])
        s = run_ablation(tgt, ablations=["zero", "shuffle"], batch_variants=batched, **FAST).sites[
            0
        ]
        assert s.ablations["shuffle"].n == 17
        assert s.ablations["shuffle"].effect == pytest.approx(math.sqrt(2), rel=1e-5)
        assert s.batched == batched  # the batch of one is checked for tiling on its own


def test_batch_of_one_with_its_neighbours_condition_is_left_out_and_said():
    eye = torch.eye(16)
    batches = [{"x": torch.randn(16, 3), "cond": eye}, {"x": torch.randn(1, 3), "cond": eye[:1]}]
    tgt = AblationTarget(model=PassCond(), batches=batches, sites=["arg:cond"])
    s = run_ablation(tgt, ablations=["zero", "shuffle"], **FAST).sites[0]
    assert s.ablations["shuffle"].n == 16 and s.ablations["zero"].n == 17
    assert s.ablations["shuffle"].effect == pytest.approx(math.sqrt(2), rel=1e-5)
    assert (
        "shuffle leaves out 1 example (batch 1): a batch of one example with the same condition "
        "as its neighbouring batch" in s.notes
    ), s.notes


def test_derangement_of_one_is_refused():
    with pytest.raises(ValueError, match=r"derangement\(1\): a batch of 1 example\(s\) cannot"):
        derangement(1, _gen())


def test_quality_deltas_leave_out_a_sampler_batch_of_one():
    model = S.trained(0.2)
    tgt = S.make_static_target(model, n_batches=1)
    clean = S.make_target(model, n_batches=1, b=8, times=False).batches[0]
    one = {k: v[:1] for k, v in clean.items()}
    tgt.sample, tgt.sample_batches, tgt.guidance_batches = S.sample_fn, [one, clean], 2
    rep = run_ablation(tgt, sites=["cond_encoder"], ablations=["shuffle", "null"],
                       **{**FAST, "guidance": True})  # fmt: skip
    site = rep.sites[0]
    assert site.ablations["shuffle"].metrics["neg_mse"].n == 8  # the batch of one left out
    assert site.ablations["null"].metrics["neg_mse"].n == 9
    assert (
        "quality deltas of shuffle leave out sampler batch 0: one example, nothing to shuffle "
        "it with" in site.notes
    )


# ---- 5: a later batch of another size is checked again
class MixesOddBatches(nn.Module):
    """Batch-independent on batches of 8, centres the embedding over the batch otherwise."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.enc = nn.Linear(4, 8)

    def forward(self, x, cond):
        e = self.enc(cond)
        if x.shape[0] % 8:
            e = e - e.mean(0, keepdim=True)
        return x * (1 + e)


def test_a_later_batch_of_another_size_is_checked_for_tiling():
    batches = _batches([8, 8, 3])
    kw = dict(sites=["enc"], ablations=["zero", "shuffle"], **FAST)
    a = run_ablation(
        AblationTarget(model=MixesOddBatches(), batches=batches), batch_variants=True, **kw
    )
    b = run_ablation(
        AblationTarget(model=MixesOddBatches(), batches=batches), batch_variants=False, **kw
    )
    sa, sb = a.sites[0], b.sites[0]
    assert not sa.batched
    assert "batch 2 (3x8, 3x4): variants run one forward each (the model mixes the examples" in (
        " ".join(sa.notes)
    )
    for name in ("zero", "shuffle"):
        assert sa.ablations[name].effect == pytest.approx(sb.ablations[name].effect, rel=1e-6)


# ---- 6: shuffle alone cannot tell ignored from constant
def test_shuffle_alone_on_a_collapsed_encoder_is_inconclusive():
    tgt = AblationTarget(model=FiLM(collapsed=True), batches=_batches([8, 8]), sites=["enc"])
    s = run_ablation(tgt, ablations=["shuffle"], **FAST).sites[0]
    assert s.verdict == "inconclusive", s.reason
    assert (
        "but no channel ablation (zero, random, null, mean) was run, so ignored cannot be told "
        "from constant" in s.reason
    )
    assert "collapsed encoder" in s.reason
    # with a channel ablation the same site is constant
    s = run_ablation(tgt, ablations=["shuffle", "zero"], **FAST).sites[0]
    assert s.verdict == "constant", s.reason


def test_decide_without_channel_is_inconclusive():
    zeros = np.zeros(10)
    d = decide(zeros, {"shuffle": zeros})
    assert d.verdict == "inconclusive" and d.channel is None
    assert "no channel ablation" in d.reason
    assert decide(zeros, {"shuffle": zeros, "zero": zeros}).verdict == "ignored"


# ---- 7: additive needs two different inputs
@pytest.mark.parametrize("site", ["arg:cond", "enc"])
def test_additive_is_not_flagged_when_the_other_inputs_are_identical(site):
    x = torch.randn(1, 8, generator=_gen(3))
    tgt = AblationTarget(model=FiLM(), batches=_batches([8, 8], x=x), sites=[site])
    s = run_ablation(tgt, ablations=["zero", "shuffle"], **FAST).sites[0]
    assert s.verdict == "used", s.reason
    assert not s.additive and s.interaction is None and "additive" not in s.reason
    assert (
        "interaction not measured (additive not tested): the inputs other than the condition "
        "do not differ between the examples the shuffle pairs" in " ".join(s.notes)
    )
    # the same model on different inputs: measured, and not additive (it scales x)
    tgt.batches = _batches([8, 8])
    s = run_ablation(tgt, ablations=["zero", "shuffle"], **FAST).sites[0]
    assert s.interaction is not None and s.interaction.above_floor and not s.additive


def test_interaction_reports_how_far_apart_the_paired_inputs_are():
    g = _gen(5)
    gx, hc = torch.randn(6, 4, generator=g, dtype=torch.float64), torch.randn(6, 4, generator=g)
    perm = derangement(6, g)
    same = gx[:1].expand(6, -1)
    out = _interaction(same * hc, same * hc[perm], same * hc[perm[perm]], perm)
    assert np.allclose(out["sep"], 0.0) and np.allclose(out["rel"], 0.0)
    out = _interaction(gx * hc, gx * hc[perm], gx * hc[perm[perm]], perm)
    assert out["sep"].min() > 0.1
