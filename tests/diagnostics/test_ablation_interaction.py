"""The ablation's interaction measurement: a condition that only adds a bias to the output is
flagged ``additive`` (verdict stays ``used``); one that modulates the features is not."""

import json

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from diagnostics import AblationTarget, run_ablation, write_report
from diagnostics._ablation._runner import derangement
from diagnostics._ablation._site import _interaction

FAST = {"embeddings": False, "umap": False, "guidance": False, "n_boot": 300}
ABL = ["zero", "mean", "shuffle"]


class Net(nn.Module):
    """``x [B, T, 8]``, ``cond [B, 4]``; the condition enters as FiLM, as an output bias, or
    not at all."""

    def __init__(self, mode: str) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.mode = mode
        self.body = nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 8))
        self.enc = nn.Linear(4, 16)
        self.film = nn.Linear(16, 16)
        self.bias = nn.Linear(16, 8)

    def forward(self, x, cond):
        c = self.enc(cond)  # (B, 16)
        h = self.body[0](x)  # (B, T, 16)
        if self.mode == "film":
            h = h * (1 + self.film(c)[:, None, :])
        out = self.body[2](self.body[1](h))  # (B, T, 8)
        if self.mode == "bias":
            out = out + self.bias(c)[:, None, :]
        return out


def _target(mode: str, **kw) -> AblationTarget:
    g = torch.Generator().manual_seed(1)
    batches = [
        {"x": torch.randn(8, 5, 8, generator=g), "cond": torch.randn(8, 4, generator=g)}
        for _ in range(2)
    ]
    return AblationTarget(model=Net(mode).eval(), batches=batches, **kw)


def _run(mode: str, **kw):
    return run_ablation(_target(mode), sites=["arg:cond", "enc"], ablations=ABL, seed=0, **FAST,
                        **kw)  # fmt: skip


def test_bias_only_condition_is_used_and_additive():
    rep = _run("bias")
    for s in rep.sites:
        assert s.verdict == "used", s.reason
        assert s.additive and s.interaction.additive
        assert not s.interaction.above_floor
        assert s.interaction.ci95[1] < 1e-5  # round-off: the swap's change ignores the input
        assert "; additive: the change the condition causes does not depend on the input" in (
            s.reason
        )
        assert "acts only as an additive bias on the output" in s.reason


def test_film_condition_is_used_not_additive():
    rep = _run("film")
    for s in rep.sites:
        assert s.verdict == "used", s.reason
        assert not s.additive and s.interaction.above_floor
        assert s.interaction.ci95[0] > 0.01 and s.interaction.relative > 0.05
        assert "additive" not in s.reason


def test_ignored_condition_is_never_additive():
    rep = _run("none")
    for s in rep.sites:
        assert s.verdict == "ignored"
        assert s.interaction is not None and not s.additive


def test_batched_and_sequential_agree():
    a = _run("bias", batch_variants=True)
    b = _run("bias", batch_variants=False)
    for sa, sb in zip(a.sites, b.sites, strict=True):
        assert sa.batched and not sb.batched
        assert sa.additive == sb.additive is True
    c = _run("film", batch_variants=False)
    d = _run("film", batch_variants=True)
    for sc, sd in zip(c.sites, d.sites, strict=True):
        assert sc.interaction.effect == pytest.approx(sd.interaction.effect, rel=1e-4)


def test_no_shuffle_no_interaction():
    rep = run_ablation(_target("bias"), sites=["arg:cond"], ablations=["zero"], seed=0, **FAST)
    s = rep.sites[0]
    assert s.interaction is None and s.additive is False
    assert s.to_dict()["interaction"] is None


def test_report_json_markdown_and_table_carry_the_flag(tmp_path):
    rep = _run("bias")
    write_report(rep, tmp_path, figures=False)
    data = json.loads((tmp_path / "report.json").read_text())
    site = data["sites"][0]
    assert site["additive"] is True and site["verdict"] == "used"
    assert set(site["interaction"]) >= {"effect", "ci95", "relative", "excess_ci95", "additive"}
    md = (tmp_path / "report.md").read_text()
    assert "## Interaction with the input" in md and "| **yes** |" in md
    assert "**used** (additive)" in md
    assert "used (additive)" in rep.verdict_table()


def test_observes_without_changing():
    """The ablation run (with its shuffle, swap and interaction passes) leaves the very model
    it ran on as found: parameters, buffers, mode and hooks, and the same output."""
    target = _target("film")
    model = target.model
    before = model(**target.batches[0])
    state = {k: v.clone() for k, v in model.state_dict().items()}
    training = model.training
    run_ablation(target, sites=["arg:cond", "enc"], ablations=ABL, seed=0, **FAST)
    assert torch.equal(before, model(**target.batches[0]))
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())
    assert model.training == training
    assert all(
        not (m._forward_hooks or m._forward_pre_hooks or m._backward_hooks) for m in model.modules()
    )


@settings(max_examples=30, deadline=None)
@given(b=st.integers(2, 9), seed=st.integers(0, 10_000))
def test_interaction_zero_iff_additive(b, seed):
    """For f(x, c) = g(x) + h(c) the swap's change is the same on every input (exactly 0); for
    f = g(x) * h(c) it is not."""
    g = torch.Generator().manual_seed(seed)
    gx, hc = (
        torch.randn(b, 6, generator=g, dtype=torch.float64),
        torch.randn(b, 6, generator=g, dtype=torch.float64),
    )
    perm = derangement(b, g)
    add = _interaction(gx + hc, gx + hc[perm], gx + hc[perm[perm]], perm)
    assert np.allclose(add["rel"], 0.0, atol=1e-12)
    mul = _interaction(gx * hc, gx * hc[perm], gx * hc[perm[perm]], perm)
    assert mul["rel"].max() > 1e-6


def test_the_additive_flag_reads_the_shuffle_test_the_verdict_read():
    """``additive`` needs the shuffle above the floor, and that is the verdict's own shuffle
    test (same seed, same margin): the flag is exactly "used or weak, the shuffle above the
    floor, the interaction not"."""
    for mode in ("bias", "film"):
        rep = run_ablation(
            _target(mode), sites=["arg:cond", "enc"], ablations=["zero", "shuffle"], seed=0,
            **FAST,
        )  # fmt: skip
        for s in rep.sites:
            assert s.content.ablation == "shuffle"
            want = s.verdict in ("used", "weak") and s.content.above_floor
            assert s.additive == (want and not s.interaction.above_floor), (mode, s.site)
