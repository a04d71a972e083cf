"""The verdict rule on small models written for each case (issue: content vs channel, a
measured floor): healthy -> used, severed -> ignored, a steady 0.5% effect -> weak, a collapsed
encoder -> constant, identical conditions -> inconclusive, 3 examples -> inconclusive, dropout
left on -> a non-zero floor that a tiny effect does not leave."""

import numpy as np
import torch
from torch import nn

from diagnostics import AblationTarget, run_ablation
from diagnostics import ablation_example as S
from diagnostics._ablation._verdict import MIN_EXAMPLES, decide

FAST = {"embeddings": False, "umap": False, "n_boot": 300, "seed": 0}


def _batches(n_batches=4, b=16, d=16, c=16, seed=0, same_cond=False):
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n_batches):
        cond = torch.randn(b, c, generator=g)
        if same_cond:
            cond = cond[:1].expand(b, -1).clone()  # every example the same condition
        out.append({"x": torch.randn(b, d, generator=g), "cond": cond})
    return out


class Additive(nn.Module):
    """x + eps * enc(cond): the condition contributes a steady, small share of the output."""

    def __init__(self, eps: float, c: int = 16) -> None:
        super().__init__()
        self.eps = eps
        self.enc = nn.Identity()

    def forward(self, x, cond):
        return x + self.eps * self.enc(cond)


class Collapsed(nn.Module):
    """An encoder whose weights are 0 and bias is not: its output ignores its input."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.enc = nn.Linear(16, 16)
        self.head = nn.Linear(16, 16)
        with torch.no_grad():
            self.enc.weight.zero_()
            self.enc.bias.normal_()

    def forward(self, x, cond):
        return x + self.head(self.enc(cond))


class Dropped(nn.Module):
    """Dropout left on (train mode) and a condition that adds 0.1% of the output."""

    def __init__(self) -> None:
        super().__init__()
        self.drop = nn.Dropout(0.1)

    def forward(self, x, cond):
        return self.drop(x) + 1e-3 * cond


def _site(rep, name):
    return {s.site: s for s in rep.sites}[name]


def test_healthy_is_used_with_reason():
    rep = run_ablation(S.make_static_target(S.trained(0.2), n_batches=2), **FAST)
    for s in rep.sites:
        assert s.verdict == "used", s.reason
        assert s.content.ablation in ("shuffle", "mean") and s.content.above_floor
        assert s.content.ci95[0] >= rep.min_effect
        assert s.floor.effect < 1e-5  # a deterministic model: round-off only
        assert (
            s.reason.startswith(
                ("giving each example another example's condition", "replacing the condition with")
            )
            and "; the floor is 0" in s.reason
        )


def test_severed_is_ignored():
    rep = run_ablation(S.make_static_target(S.trained(0.2, sever=True), n_batches=2), **FAST)
    for s in rep.sites:
        assert s.verdict == "ignored", s.reason
        assert "no ablation changes the output beyond the floor" in s.reason


def test_steady_small_effect_is_weak_never_ignored():
    tgt = AblationTarget(model=Additive(0.004), batches=_batches(), sites=["arg:cond", "enc"])
    rep = run_ablation(tgt, ablations=["zero", "shuffle", "mean"], **FAST)
    for s in rep.sites:
        assert 0.003 < s.content.effect < 0.01, s.content  # 0.5-0.8% of the output
        assert s.content.ci95[1] < 0.05 and s.content.above_floor
        assert s.verdict == "weak", s.reason
        assert "above the floor" in s.reason and "below min_effect 0.05" in s.reason
    # the same effect is "used" when the user says 0.3% matters
    rep = run_ablation(tgt, ablations=["shuffle"], min_effect=0.003, sites=["arg:cond"], **FAST)
    assert rep.sites[0].verdict == "used" and rep.min_effect == 0.003


def test_collapsed_encoder_is_constant_never_used():
    tgt = AblationTarget(model=Collapsed(), batches=_batches(), sites=["enc", "arg:cond"])
    rep = run_ablation(tgt, **FAST)
    enc = _site(rep, "enc")
    assert enc.verdict == "constant", enc.reason
    assert enc.channel.ablation == "zero" and enc.channel.effect > 0.1
    assert enc.content.effect == 0.0 and not enc.content.above_floor
    assert "fixed bias" in enc.reason and "collapsed encoder" in enc.reason
    # at the input, nothing the condition carries reaches the output
    assert _site(rep, "arg:cond").verdict == "ignored"


def test_identical_conditions_are_inconclusive():
    model = S.trained(0.2)
    tgt = S.make_static_target(model, n_batches=2)
    for b in tgt.batches:
        b["cond"] = b["cond"][:1].expand_as(b["cond"]).clone()
    rep = run_ablation(tgt, **FAST)
    for s in rep.sites:
        assert s.verdict == "inconclusive", s.reason
        assert "same for every example" in s.reason and "shuffling" in s.reason


def test_three_examples_are_inconclusive():
    tgt = S.make_static_target(S.trained(0.2), n_batches=1, b=3)
    rep = run_ablation(tgt, **FAST)
    for s in rep.sites:
        assert s.verdict == "inconclusive"
        assert s.reason.startswith(f"only 3 examples: at least {MIN_EXAMPLES}")


def test_dropout_left_on_gives_a_floor_and_a_tiny_effect_is_not_used():
    model = Dropped().train()
    tgt = AblationTarget(model=model, batches=_batches(8, d=64, c=64), sites=["arg:cond"])
    rep = run_ablation(tgt, **FAST)
    s = rep.sites[0]
    assert s.floor.effect > 0.1, s.floor  # the model's own randomness, measured
    assert s.verdict != "used", s.reason
    assert s.verdict == "ignored", s.reason
    assert any("the forward is random" in n for n in s.notes), s.notes
    assert model.training  # observed, not changed


def test_decide_edges():
    zeros = np.zeros(10)
    d = decide(zeros, {"zero": zeros, "shuffle": zeros})
    assert d.verdict == "ignored"
    # a wide content CI that may reach min_effect: too wide to decide, said so
    rng = np.random.default_rng(0)
    noisy = np.abs(rng.normal(0.0, 0.3, 10))
    d = decide(noisy, {"shuffle": np.abs(rng.normal(0.0, 0.3, 10))})
    assert d.verdict == "inconclusive" and "too wide" in d.reason
    # no content ablation: used cannot be told from constant
    d = decide(zeros, {"zero": np.full(10, 0.5)})
    assert d.verdict == "inconclusive" and "no content ablation" in d.reason
    # a content CI that straddles min_effect
    d = decide(zeros, {"shuffle": np.linspace(0.0, 0.1, 10)})
    assert d.verdict == "inconclusive" and "straddles" in d.reason
