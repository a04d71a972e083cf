"""The conditioning ablation on models and batches the first version had not seen: a model that
reads only the norm of its condition, an encoder called twice per forward, batches of one
example, a trailing batch of one, a later batch of another size, a shuffle-only run on a
collapsed encoder, identical non-condition inputs (the additive flag), recurrent encoders whose
values hold the batch on dim 1 (GRU/LSTM ``h_n``, time-major outputs), dict/tuple conditions,
a site with no batch axis, mistyped site names, a forward that draws from NumPy's and Python's
global RNGs, zero and non-finite outputs, in-place ops on the site's value and on the inputs,
tuple/dict model outputs, and a class condition whose shuffle pairs examples of one class."""

import json
import math
import random
import re

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


# ---- 8: the batch axis of a site's value is found, not assumed to be dim 0
class GRUCond(nn.Module):
    """``x * (1 + h_n[-1])`` of a GRU over the condition sequence ``(B, T, 4)``; ``h_n`` is
    ``[layers, B, H]`` (the batch on dim 1)."""

    def __init__(self, layers: int = 1, lstm: bool = False) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.enc = (nn.LSTM if lstm else nn.GRU)(4, 8, num_layers=layers, batch_first=True)

    def forward(self, x, cond):
        _, h = self.enc(cond)
        h = h[0] if isinstance(h, tuple) else h  # LSTM: (h_n, c_n)
        return x * (1 + h[-1])


class TimeMajorGRU(nn.Module):
    """A time-major GRU (``batch_first=False``: its output is ``[T, B, H]``) whose output reads
    each example's mean over time."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.enc = nn.GRU(4, 8)

    def forward(self, x, cond):
        out, _ = self.enc(cond.transpose(0, 1))
        return x * (1 + out.mean(0))


def _seq_batches(sizes, t=5, seed=0):
    g = _gen(seed)
    return [
        {"x": torch.randn(b, 8, generator=g), "cond": torch.randn(b, t, 4, generator=g)}
        for b in sizes
    ]


def test_gru_hidden_state_with_the_batch_on_dim_1_is_ablated_along_the_batch():
    batches = _seq_batches([8, 8, 8])
    model = GRUCond()
    tgt = AblationTarget(model=model, batches=batches, sites=["enc[1]"], null=torch.zeros(1, 1, 8))
    s = run_ablation(tgt, ablations=["zero", "mean", "shuffle", "null"], **FAST).sites[0]
    assert "the site's value [1, 8, 8] holds the batch on dim 1: the ablations act along it" in (
        s.notes
    )
    # mean: the data mean over the examples (not over the single layer: the identity)
    with torch.no_grad():
        hs = torch.cat([model.enc(t["cond"])[1] for t in batches], 1)  # (1, 24, 8)
        xs = torch.cat([t["x"] for t in batches])
        intact, ablated = xs * (1 + hs[-1]), xs * (1 + hs[-1].mean(0))
    want = ((intact - ablated).norm(dim=1) / intact.norm(dim=1)).mean()
    assert s.ablations["mean"].effect == pytest.approx(float(want), rel=1e-4)
    # the shuffle permutes examples within each batch (no batch is taken for one example)
    assert s.ablations["shuffle"].n == 24 and s.interaction is not None
    assert not any("batch of one" in n for n in s.notes), s.notes
    # the null is given (and broadcast) in the value's own layout [layers, 1, H]
    assert s.ablations["null"].effect == s.ablations["zero"].effect
    assert s.verdict == "used", s.reason


def test_time_major_rnn_output_is_used_not_constant():
    """The first version permuted the time steps of a [T, B, H] output: a model that reads
    the mean over time was called constant."""
    sites = {}
    for batched in (True, False):
        tgt = AblationTarget(
            model=TimeMajorGRU(), batches=_seq_batches([8, 8, 8]), sites=["enc[0]"]
        )
        s = run_ablation(tgt, ablations=["zero", "shuffle"], batch_variants=batched, **FAST).sites[
            0
        ]
        assert s.verdict == "used", s.reason
        assert s.batched == batched
        assert "the site's value [5, 8, 8] holds the batch on dim 1" in " ".join(s.notes)
        sites[batched] = s
    assert sites[True].ablations["shuffle"].effect == pytest.approx(
        sites[False].ablations["shuffle"].effect, rel=1e-5
    )


def test_an_ambiguous_batch_axis_is_told_apart_by_tiling():
    """A 2-layer GRU on batches of 2: h_n is [2, 2, 8], both dims 0 and 1 have the batch's
    size; the axis that doubles with a tiled batch is the batch."""
    tgt = AblationTarget(model=GRUCond(layers=2), batches=_seq_batches([2] * 4), sites=["enc[1]"])
    s = run_ablation(tgt, ablations=["zero", "shuffle"], **FAST).sites[0]
    assert "the site's value [2, 2, 8] holds the batch on dim 1: the ablations act along it" in (
        s.notes
    )
    assert s.verdict == "used", s.reason


def test_lstm_state_is_named_by_a_nested_index():
    tgt = AblationTarget(model=GRUCond(lstm=True), batches=_seq_batches([8, 8]), sites=["enc[1]"])
    with pytest.raises(
        AblationError,
        match=r"^site 'enc\[1\]': the module's output element \[1\] is tuple, not a Tensor "
        r"\(\[0\] tensor\[1, 8, 8\] .*\); say which element, e.g. 'enc\[1\]\[0\]'$",
    ):
        run_ablation(tgt, ablations=["zero"], **FAST)
    s = run_ablation(tgt, sites=["enc[1][0]"], ablations=["zero", "shuffle"], **FAST).sites[0]
    assert s.verdict == "used", s.reason
    assert "holds the batch on dim 1" in " ".join(s.notes)


# ---- 9: structured conditions: name the element
class DictCond(nn.Module):
    """``cond = {"style": (B, 4), "bias": (B, 8), "unused": (B, 2)}``."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.enc = nn.Linear(4, 8)

    def forward(self, x, cond):
        return x * (1 + self.enc(cond["style"])) + cond["bias"]


def _dict_batches():
    g = _gen(4)
    return [
        {"x": torch.randn(8, 8, generator=g),
         "cond": {"style": torch.randn(8, 4, generator=g), "bias": torch.randn(8, 8, generator=g),
                  "unused": torch.randn(8, 2, generator=g)}}
        for _ in range(3)
    ]  # fmt: skip


def test_dict_and_tuple_conditions_are_ablated_by_element():
    batches = _dict_batches()
    kept = [{k: v.clone() for k, v in t["cond"].items()} for t in batches]
    tgt = AblationTarget(model=DictCond(), batches=batches)
    with pytest.raises(
        AblationError,
        match=r"^site 'arg:cond': argument 'cond' is dict, not a Tensor \(\[style\] tensor.*\); "
        r"say which element, e.g. 'arg:cond\[style\]'$",
    ):
        run_ablation(tgt, sites=["arg:cond"], ablations=["zero"], **FAST)
    with pytest.raises(
        AblationError,
        match=r"^site 'arg:cond\[styel\]': argument 'cond' is a dict without the key 'styel' "
        r"\(its keys: style, bias, unused\)$",
    ):
        run_ablation(tgt, sites=["arg:cond[styel]"], ablations=["zero"], **FAST)
    sites = ["arg:cond[style]", "arg:cond[bias]", "arg:cond['unused']"]
    rep = run_ablation(tgt, sites=sites, ablations=["zero", "shuffle"], **FAST)
    got = {s.site: s for s in rep.sites}
    assert got["arg:cond[style]"].verdict == "used" and not got["arg:cond[style]"].additive
    assert got["arg:cond[bias]"].verdict == "used" and got["arg:cond[bias]"].additive
    assert got["arg:cond['unused']"].verdict == "ignored"
    for t, k in zip(batches, kept, strict=True):  # the batch's dicts are copied, never changed
        assert all(torch.equal(t["cond"][n], k[n]) for n in k)
    # a tuple condition, and a dict returned by a module
    tup = [{"x": t["x"], "cond": (t["cond"]["style"], t["cond"]["bias"])} for t in batches]

    class TupleCond(DictCond):
        def forward(self, x, cond):
            return super().forward(x, {"style": cond[0], "bias": cond[1]})

    rep = run_ablation(AblationTarget(model=TupleCond(), batches=tup), sites=["arg:cond[0]"],
                       ablations=["zero", "shuffle"], **FAST)  # fmt: skip
    assert rep.sites[0].verdict == "used"


class Pooled(nn.Module):
    """The encoder's output is pooled over the batch: one value ``[8]`` for every example."""

    def __init__(self) -> None:
        super().__init__()
        self.enc = nn.Linear(4, 8)
        self.pool = nn.Identity()

    def forward(self, x, cond):
        return x * (1 + self.pool(self.enc(cond).mean(0)))


@pytest.mark.parametrize(
    ("b", "message"),
    [
        (6, r"^site 'pool': its value tensor\[8\] .* has no axis of the batch's size 6 \(the "
         r"output's leading dim\): the ablations replace the condition of each example"),
        # 8 features on batches of 8: an axis of the batch's size, yet not the batch
        (8, r"^site 'pool': its value tensor\[8\] .* has the batch's size 8 on dim 0 but does "
         r"not grow with the batch \(with the batch tiled twice it is \[8\]\): the ablations "
         r"replace the condition of each example"),
    ],
)  # fmt: skip
def test_a_site_without_a_batch_axis_is_refused(b, message):
    tgt = AblationTarget(model=Pooled(), batches=_batches([b, b]), sites=["pool"])
    with pytest.raises(AblationError, match=message):
        run_ablation(tgt, ablations=["zero", "shuffle"], **FAST)


# ---- 10: a mistyped site says what was meant
class Blocks(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.blocks = nn.ModuleList([nn.Linear(8, 8) for _ in range(2)])
        self.cond_encoder = nn.Linear(4, 8)

    def forward(self, x, cond):
        for b in self.blocks:
            x = b(x)
        return x * self.cond_encoder(cond)


@pytest.mark.parametrize(
    ("site", "message"),
    [
        ("blocks[0]", r"^site 'blocks\[0\]': 'blocks' is a ModuleList, a container that is never "
         r"called, so it has no output to replace; did you mean 'blocks.0'\?"),
        ("blocks", r"^site 'blocks': 'blocks' is a ModuleList, .*; ablate one of its modules "
         r"\(blocks.0, blocks.1\)$"),
        ("cond_encoder.weight", r"^unknown site 'cond_encoder.weight': that is a parameter of "
         r"'cond_encoder', not a module; .*: try 'cond_encoder'$"),
        ("cond_encodr", r"^unknown site 'cond_encodr': Blocks has no module at that path; "
         r"nearest: cond_encoder"),
        ("cond", r"^unknown site 'cond': .*; 'cond' is an argument of Blocks.forward: use "
         r"'arg:cond'$"),
        ("arg:cnd", r"^site 'arg:cnd': Blocks.forward has no argument 'cnd' \(its arguments: x, "
         r"cond\); nearest: cond$"),
    ],
)  # fmt: skip
def test_a_mistyped_site_names_what_was_meant(site, message):
    tgt = AblationTarget(model=Blocks(), batches=_batches([8, 8]))
    with pytest.raises(AblationError, match=message):
        run_ablation(tgt, sites=[site], ablations=["zero"], **FAST)


# ---- 11: the model's own randomness: every global RNG is seeded per forward and put back
class NumpyNoise(nn.Module):
    """Draws its noise from NumPy's and Python's global RNGs (not torch's)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.enc = nn.Linear(4, 8)

    def forward(self, x, cond):
        noise = torch.from_numpy(np.random.randn(*x.shape).astype("float32"))
        return x * (1 + self.enc(cond)) + 0.01 * random.random() * noise


def test_numpy_and_python_rngs_are_seeded_per_forward_and_restored():
    reports = []
    for global_seed in (1, 2):
        tgt = AblationTarget(model=NumpyNoise(), batches=_batches([8, 8]), sites=["arg:cond"])
        np.random.seed(global_seed)
        random.seed(global_seed)
        before = (np.random.get_state()[1].copy(), random.getstate(), torch.get_rng_state())
        reports.append(run_ablation(tgt, ablations=["zero", "shuffle"], **FAST).to_dict())
        assert np.array_equal(np.random.get_state()[1], before[0])
        assert random.getstate() == before[1]
        assert torch.equal(torch.get_rng_state(), before[2])
    assert reports[0] == reports[1]  # the run's seed decides, not the caller's global state
    s = reports[0]["sites"][0]
    assert s["floor"]["effect"] > 0  # the noise is the model's own randomness: in the floor
    assert (
        "variants run one forward each (the forward is random: another draw of the RNG gives "
        "another output (dropout left on?), so tiled copies cannot be checked against it)"
        in s["notes"]
    )


# ---- 12: a per-example effect that is not a number is left out and said, never averaged in
class ZeroForSome(nn.Module):
    """``|x| * relu(w . cond)``: the output is exactly zero where ``w . cond < 0``."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.enc = nn.Linear(4, 1)

    def forward(self, x, cond):
        return x.abs() * torch.relu(self.enc(cond))


def test_a_zero_intact_output_is_compared_with_the_larger_output_not_with_1e_12():
    """The first version divided by ||f(c)|| clamped at 1e-12: a shuffle effect of 4e13%."""
    batches = _batches([8, 8, 8])
    model = ZeroForSome()
    with torch.no_grad():
        zero = torch.cat([model.enc(t["cond"])[:, 0] <= 0 for t in batches])  # (24,)
        k = int(zero.sum())
        zeroed = model.enc(torch.zeros(1, 4))[0, 0] > 0  # does zero make the output non-zero?
    assert 6 <= k <= 18
    s = run_ablation(
        AblationTarget(model=model, batches=batches, sites=["arg:cond"]),
        ablations=["zero", "shuffle"], **FAST,
    ).sites[0]  # fmt: skip
    assert (
        f"the intact output is zero on {k} examples: their relative change is taken against the "
        "larger of the intact and ablated outputs (1 when a zero output becomes non-zero, 0 "
        "when it stays zero)" in s.notes
    )
    assert s.ablations["shuffle"].n == s.ablations["zero"].n == 24
    # zeroing: 100% where the output was non-zero; where it was zero, 100% if zero moves it
    want = ((~zero) | zeroed).double().mean()
    assert s.ablations["zero"].effect == pytest.approx(float(want))
    assert s.ablations["shuffle"].ci95[1] <= 2 and s.verdict == "used", s.reason


class DividesByNorm(nn.Module):
    """``x / ||cond||``: the zero condition makes the output Inf."""

    def forward(self, x, cond):
        return x / cond.norm(dim=1, keepdim=True)


def test_an_ablation_that_makes_the_output_nan_is_left_out_and_said():
    tgt = AblationTarget(model=DividesByNorm(), batches=_batches([8, 8, 8]), sites=["arg:cond"])
    rep = run_ablation(tgt, ablations=["zero", "mean", "shuffle"], **FAST)
    s = rep.sites[0]
    assert (
        "zero makes the output NaN/Inf on 24 examples: the model cannot take that replacement; "
        "they are left out of its effect" in s.notes
    )
    assert "zero" not in s.ablations and s.channel.ablation == "mean"
    assert s.verdict == "used", s.reason
    json.dumps(rep.to_dict(), allow_nan=False)  # report.json stays strict JSON


def test_an_output_that_is_zero_everywhere_is_ignored_and_said():
    class AllZero(nn.Module):
        def forward(self, x, cond):
            return 0 * x * cond.sum(1, keepdim=True)

    tgt = AblationTarget(model=AllZero(), batches=_batches([8, 8]), sites=["arg:cond"])
    s = run_ablation(tgt, ablations=["zero", "shuffle"], **FAST).sites[0]
    assert s.verdict == "ignored", s.reason  # nothing moves the output: a change of 0
    assert (
        "the intact output is zero on every example: each change is taken against the ablated "
        "output (1 when it is not zero); is the compared output the right tensor?" in s.notes
    )


# ---- 13: a condition inside a dict argument: the error says how to name it
class Outer(nn.Module):
    """``forward(batch)`` with ``batch = {"x": ..., "cond": ...}``."""

    def __init__(self) -> None:
        super().__init__()
        self.inner = FiLM()

    def forward(self, batch):
        return self.inner(batch["x"], batch["cond"])


def test_a_condition_inside_a_dict_argument_is_named_by_its_key():
    tgt = AblationTarget(model=Outer(), batches=[(t,) for t in _batches([8, 8])])
    with pytest.raises(
        AblationError,
        match=r"^site 'arg:cond': Outer.forward has no argument 'cond' \(its arguments: batch\); "
        r"the batches hold it inside an argument: use 'arg:batch\[cond\]'$",
    ):
        run_ablation(tgt, sites=["arg:cond"], ablations=["zero"], **FAST)
    s = run_ablation(tgt, sites=["arg:batch[cond]"], ablations=["zero", "shuffle"], **FAST)
    assert s.sites[0].verdict == "used", s.sites[0].reason


# ---- 14: a model already on the GPU (no device=): its CUDA generator is forked too
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_a_model_on_the_gpu_keeps_the_cuda_rng_and_its_dropout_is_seeded():
    class DropCond(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.enc = nn.Linear(4, 8)
            self.drop = nn.Dropout(0.2)

        def forward(self, x, cond):
            return self.drop(x * (1 + self.enc(cond)))

    torch.manual_seed(0)
    model = DropCond().cuda().train()
    batches = [{k: v.cuda() for k, v in t.items()} for t in _batches([8, 8])]
    reports = []
    for cuda_seed in (1, 2):
        torch.cuda.manual_seed(cuda_seed)
        before = torch.cuda.get_rng_state()
        tgt = AblationTarget(model=model, batches=batches, sites=["arg:cond"])
        reports.append(run_ablation(tgt, ablations=["zero", "shuffle"], **FAST).to_dict())
        assert torch.equal(torch.cuda.get_rng_state(), before)
    assert reports[0] == reports[1]
    assert reports[0]["sites"][0]["floor"]["effect"] > 0


# ---- 15: in-place ops: on the site's value after the site, on the model's inputs
class AddsInPlace(nn.Module):
    """``e = enc(cond); e += 1`` (an in-place op on the site's output, like ReLU(inplace=True)
    or a residual ``+=``), with a learned null embedding."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.enc = nn.Linear(4, 8)
        self.null_emb = nn.Parameter(torch.randn(1, 8))

    def forward(self, x, cond):
        e = self.enc(cond)
        e += 1
        return x * e


def test_an_in_place_op_after_the_site_does_not_change_the_kept_value():
    """The first version kept the intact value by reference: ``e += 1`` shifted it before the
    variants were made from it, so one forward per variant saw a floor of 0.93 (random)."""
    model = AddsInPlace()
    null = model.null_emb.detach().clone()
    sites = {}
    for batched in (True, False):
        tgt = AblationTarget(model=model, batches=_batches([8, 8, 8]), sites=["enc"],
                             null=lambda c: model.null_emb.expand_as(c))  # fmt: skip
        s = run_ablation(tgt, ablations=["zero", "mean", "shuffle", "null"],
                         batch_variants=batched, **FAST).sites[0]  # fmt: skip
        assert s.floor.effect == 0.0 and s.verdict == "used", s.reason
        sites[batched] = s
    for name in ("zero", "mean", "shuffle", "null"):
        assert sites[False].ablations[name].effect == pytest.approx(
            sites[True].ablations[name].effect, rel=1e-5
        )
    assert torch.equal(model.null_emb.detach(), null)  # the null was a copy, never changed


class ScalesItsInput(nn.Module):
    """Changes its condition argument in place (``cond.mul_(1.5)``)."""

    def __init__(self) -> None:
        super().__init__()
        self.film = FiLM()

    def forward(self, x, cond):
        cond.mul_(1.5)
        return self.film(x, cond)


def test_a_forward_that_changes_its_inputs_in_place_leaves_the_batches_alone():
    batches = _batches([8, 8, 8])
    kept = [{k: v.clone() for k, v in t.items()} for t in batches]
    tgt = AblationTarget(model=ScalesItsInput(), batches=batches, sites=["arg:cond", "film.enc"])
    for s in run_ablation(tgt, ablations=["zero", "shuffle"], **FAST).sites:
        assert s.floor.effect == 0.0 and s.verdict == "used", s.reason
        assert s.batched
        assert (
            "the forward changes its input cond in place: every forward is given a copy of the "
            "batch, so the batches stay as they were and every variant sees the same inputs"
        ) in s.notes
    for t, k in zip(batches, kept, strict=True):
        assert torch.equal(t["x"], k["x"]) and torch.equal(t["cond"], k["cond"])


# ---- 16: a model whose output is a tuple or a dict
class TwoHeads(nn.Module):
    def __init__(self, as_dict: bool) -> None:
        super().__init__()
        self.film, self.as_dict = FiLM(), as_dict

    def forward(self, x, cond):
        y = self.film(x, cond)
        return {"out": y, "aux": y.sum(1)} if self.as_dict else (y, y.sum(1))


@pytest.mark.parametrize(("as_dict", "key"), [(False, "0"), (True, "'out'")])
def test_a_tuple_or_dict_output_names_its_elements_and_how_to_pick_one(as_dict, key):
    tgt = AblationTarget(model=TwoHeads(as_dict), batches=_batches([8, 8]), sites=["arg:cond"])
    name = "dict" if as_dict else "tuple"
    first = "[out]" if as_dict else "[0]"
    with pytest.raises(
        AblationError,
        match=rf"^the target's forward returned {name} \({re.escape(first)} tensor\[8, 8\] .*\); "
        rf"the compared output must be a Tensor \[B, \.\.\.\] \(give AblationTarget.forward to "
        rf"pick it, e.g. forward=lambda m, b: m\(\*\*b\)\[{key}\]\)$",
    ):
        run_ablation(tgt, ablations=["zero"], **FAST)
    k = "out" if as_dict else 0
    tgt.forward = lambda m, b: m(**b)[k]
    assert run_ablation(tgt, ablations=["zero", "shuffle"], **FAST).sites[0].verdict == "used"


# ---- 17: a shuffle that gives an example its own condition is no test
class ClassCond(nn.Module):
    """``x * (1 + 0.1 * emb(cls))``: two classes."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.emb = nn.Embedding(2, 8)

    def forward(self, x, cls):
        return x * (1 + 0.1 * self.emb(cls))


def _class_batches(n=6, b=8):
    """``b - 1`` examples of class 0 and one of class 1 per batch."""
    g = _gen(7)
    out = []
    for _ in range(n):
        cls = torch.zeros(b, dtype=torch.long)
        cls[int(torch.randint(0, b, (1,), generator=g))] = 1
        out.append({"x": torch.randn(b, 8, generator=g), "cls": cls})
    return out


def test_a_shuffle_within_one_class_is_left_out_not_averaged_in():
    """With 7 of 8 examples of one class, a derangement (one cycle) changes the class of 2
    examples per batch: the first version averaged the 6 unchanged ones in (0.0 each) and
    called a 10% class effect weak."""
    model, batches = ClassCond(), _class_batches()
    with torch.no_grad():  # the effect of swapping the class, per example of class 0
        e = model.emb.weight
        x = torch.cat([t["x"] for t in batches])
        own, other = x * (1 + 0.1 * e[0]), x * (1 + 0.1 * e[1])
        swap = float(((own - other).norm(dim=1) / own.norm(dim=1)).mean())
    assert swap > 0.05
    tgt = AblationTarget(model=model, batches=batches, sites=["arg:cls", "emb"])
    for s in run_ablation(tgt, ablations=["zero", "shuffle"], **FAST).sites:
        assert s.verdict == "used", s.reason
        assert s.ablations["shuffle"].n == 12  # 2 swapped per batch
        assert 0.5 * swap < s.ablations["shuffle"].effect < 2 * swap
        assert (
            "shuffle leaves out 36 examples (batches 0, 1, 2, 3, 4, 5) that it gave their own "
            "condition (another example of the batch has the same one): a swap that changes "
            "nothing is not a test" in s.notes
        )


def test_with_diffusion_times_the_shuffle_averages_the_times_it_swapped():
    model, batches = ClassCond(), _class_batches()
    tgt = AblationTarget(model=model, batches=batches, sites=["arg:cls"])
    one = run_ablation(tgt, ablations=["zero", "shuffle"], **FAST).sites[0]
    tgt.times, tgt.at_time = [0.1 * k for k in range(1, 9)], lambda b, t, gen: b
    many = run_ablation(tgt, ablations=["zero", "shuffle"], **FAST).sites[0]
    assert many.verdict == "used", many.reason
    assert 12 < many.ablations["shuffle"].n <= 48  # other pairs at other times
    assert many.ablations["shuffle"].effect == pytest.approx(
        one.ablations["shuffle"].effect, rel=0.5
    )
    assert (
        "with diffusion times, each time has its own shuffle: an example's shuffle effect is "
        "its mean over the times where its condition was swapped" in many.notes
    )
    assert all(v > 0.05 for v in many.ablations["shuffle"].curve.effect)
