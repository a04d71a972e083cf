"""GradFlow: fused per-parameter norms, module aggregation, unused/zero, flags, shares."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from diagnostics import GradFlow, GradFlowError


class Cond(nn.Module):
    """A denoiser with a noise encoder whose output may be detached (seed 002)."""

    def __init__(self, detach: bool) -> None:
        super().__init__()
        self.noise_encoder = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 8))
        self.backbone = nn.Linear(8 + 8, 8)
        self.spare = nn.Linear(3, 3)  # never used
        self.gate = nn.Parameter(torch.zeros(8))  # multiplies a zero input: zero grad
        self.detach = detach

    def forward(self, x, noise):
        z = self.noise_encoder(noise)
        if self.detach:
            z = z.detach()
        return self.backbone(torch.cat([x, z], -1)) + self.gate * torch.zeros(8)


def _backward(model, seed=0):
    g = torch.Generator().manual_seed(seed)
    x, n = torch.randn(4, 8, generator=g), torch.randn(4, 4, generator=g)
    model.zero_grad(set_to_none=True)
    model(x, n).pow(2).mean().backward()


def test_norms_match_reference_and_modules_aggregate():
    torch.manual_seed(0)
    m = Cond(detach=False)
    _backward(m)
    rep = GradFlow(m).record()
    for n, p in m.named_parameters():
        if p.grad is not None:
            assert rep.param_norms[n] == pytest.approx(p.grad.norm().item(), rel=1e-5)
    enc = math.sqrt(sum(p.grad.norm() ** 2 for p in m.noise_encoder.parameters()))
    assert rep.module_norms["noise_encoder"] == pytest.approx(float(enc), rel=1e-5)
    assert rep.total_norm == pytest.approx(rep.module_norms[""])
    assert rep.unused == ["spare.weight", "spare.bias"]
    assert rep.zero == ["gate"]
    parts = ["noise_encoder", "backbone", "gate"]
    assert sum(rep.share(k) for k in parts) == pytest.approx(1.0)
    assert 0 < rep.share("noise_encoder") < 1 and rep.share("noise_encoder.0.weight") > 0


def test_detached_encoder_gets_no_gradient():
    m = Cond(detach=True)
    _backward(m)
    rep = GradFlow(m).record()
    assert set(rep.unused) >= {"noise_encoder.0.weight", "noise_encoder.2.bias"}
    assert rep.share("noise_encoder") == 0.0
    assert "unused (grad is None): noise_encoder.0.weight" in str(rep)


def test_grads_are_not_modified():
    m = Cond(detach=False)
    _backward(m)
    before = [p.grad.clone() for p in m.parameters() if p.grad is not None]
    GradFlow(m).record(optimizer=torch.optim.Adam(m.parameters()))
    after = [p.grad for p in m.parameters() if p.grad is not None]
    assert all(torch.equal(a, b) for a, b in zip(before, after, strict=True))


def test_exploding_and_vanishing_against_history():
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 1))
    gf = GradFlow(m, window=10, factor=10.0)
    x = torch.randn(8, 4)
    for _ in range(5):
        m.zero_grad()
        m(x).mean().backward()
        rep = gf.record()
        assert not rep.exploding and not rep.vanishing
    m.zero_grad()
    (m(x).mean() * 1e3).backward()
    rep = gf.record()
    assert rep.exploding and "" in rep.exploding_modules and "0" in rep.exploding_modules
    m.zero_grad()
    (m(x).mean() * 1e-3).backward()
    assert gf.record().vanishing


def test_update_ratio_sgd_and_adam():
    m = nn.Linear(4, 2)
    m(torch.randn(3, 4)).pow(2).mean().backward()
    sgd = torch.optim.SGD(m.parameters(), lr=0.1)
    rep = GradFlow(m).record(optimizer=sgd)
    w = m.weight
    assert rep.update_ratios["weight"] == pytest.approx(
        0.1 * (w.grad.norm() / w.norm()).item(), rel=1e-5
    )
    before = w.detach().clone()
    sgd.step()
    assert (w.detach() - before).norm() / before.norm() == pytest.approx(
        rep.update_ratios["weight"], rel=1e-4
    )
    adam = torch.optim.Adam(m.parameters(), lr=1e-3)
    assert GradFlow(m).record(optimizer=adam).update_ratios["bias"] > 0
    before = {n: p.detach().clone() for n, p in m.named_parameters()}
    adam.step()  # now exp_avg_sq exists: the Adam-aware estimate, per parameter
    # after Adam's first step its bias-corrected moments are g and g**2: the estimate read
    # now (v holds this step's gradient) is the update Adam just made
    rep = GradFlow(m).record(optimizer=adam)
    for name, p in m.named_parameters():
        made = (p.detach() - before[name]).norm() / p.detach().norm()
        assert rep.update_ratios[name] == pytest.approx(made.item(), rel=1e-4), name
    m.zero_grad()
    m(torch.randn(3, 4)).pow(2).mean().backward()
    rep = GradFlow(m).record(optimizer=adam)
    for name, p in m.named_parameters():
        v_hat = adam.state[p]["exp_avg_sq"] / (1 - 0.999 ** float(adam.state[p]["step"]))
        want = 1e-3 * (p.grad / (v_hat.sqrt() + 1e-8)).norm() / p.detach().norm()
        assert rep.update_ratios[name] == pytest.approx(want.item(), rel=1e-5), name


def test_grad_scaler_norms_are_unscaled():
    m = nn.Linear(4, 1)
    x = torch.randn(3, 4)
    m(x).mean().backward()
    ref = GradFlow(m).record().total_norm
    m.zero_grad()
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    scaler.scale(m(x).mean()).backward()
    rep = GradFlow(m).record(scaler=scaler)
    assert rep.scale == 1024.0 and rep.total_norm == pytest.approx(ref, rel=1e-5)
    opt = torch.optim.SGD(m.parameters(), lr=0.1)
    scaler.unscale_(opt)
    assert GradFlow(m).record(optimizer=opt, scaler=scaler).total_norm == pytest.approx(
        ref, rel=1e-5
    )
    m.weight.grad.fill_(math.inf)
    rep = GradFlow(m).record(optimizer=opt, scaler=scaler)
    assert rep.overflow and rep.nonfinite == ["weight"] and not rep.exploding


def test_bad_input_messages():
    with pytest.raises(GradFlowError, match="has no trainable parameters"):
        GradFlow(nn.ReLU())
    m = Cond(detach=False)
    _backward(m)
    with pytest.raises(
        GradFlowError, match=r"share\(prefix='encoder'\): no parameter .* noise_encoder"
    ):
        GradFlow(m).record().share("encoder")


def _nested() -> nn.Module:
    torch.manual_seed(0)
    inner = nn.Sequential(nn.Linear(3, 4), nn.Sequential(nn.Linear(4, 4), nn.LayerNorm(4)))
    return nn.Sequential(inner, nn.Linear(4, 2), nn.Sequential(nn.Linear(2, 2)))


@settings(max_examples=60, deadline=None, derandomize=True, database=None)
@given(
    st.lists(
        st.one_of(st.floats(0, 1e6), st.just(math.nan), st.just(math.inf)), min_size=10, max_size=10
    )
)
def test_module_norms_equal_the_subtree_sums(norms):
    """Module norms from the deepest-first pass equal sqrt(sum of squares) over each module's
    subtree (NaN wins over inf, inf over numbers), as a 0/1 matrix product would give."""
    gf = GradFlow(_nested())
    names = [n for n, _ in gf._named]
    assert len(names) == len(norms)
    got = gf._module_norms([v * v for v in norms])
    for m, v in zip(gf._mod_names, got, strict=True):
        sub = [x for n, x in zip(names, norms, strict=True) if not m or n.startswith(m + ".")]
        if any(math.isnan(x) for x in sub):
            assert math.isnan(v), m
        elif any(math.isinf(x) for x in sub):
            assert v == math.inf, m
        else:
            assert v == pytest.approx(math.sqrt(sum(x * x for x in sub)), rel=1e-12), m


def test_module_flags_read_later_use_the_window_of_their_step():
    m = _nested()
    gf = GradFlow(m, window=5, factor=10.0)
    x = torch.randn(6, 3)
    reps = []
    for scale in (1, 1, 1, 1e3, 1, 1, 1e3, 1e3, 1e3, 1e3, 1):
        m.zero_grad()
        (m(x).sum() * scale).backward()
        reps.append(gf.record())
    # every flag is read after the last record: each must come from its own step's window
    assert reps[0].exploding_modules == reps[2].exploding_modules == []  # < 3 rows of history
    assert "0.1.0" in reps[3].exploding_modules and reps[3].vanishing_modules == []
    assert reps[4].exploding_modules == reps[4].vanishing_modules == []  # median still x1
    assert "0.1.0" in reps[6].exploding_modules  # window x1 x1 x1000 x1 x1: median x1
    assert reps[9].exploding_modules == []  # window x1 x1000 x1000 x1000 x1000: median x1000
    assert "0.1.0" in reps[10].vanishing_modules and reps[10].vanishing


def test_frozen_modules_are_named_and_frozen_tables_are_not():
    import torch
    from torch import nn

    from diagnostics import GradFlow

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.pos = nn.Embedding(8, 4)  # a positional table frozen by design
            self.encoder = nn.Sequential(nn.Linear(4, 4), nn.LayerNorm(4))
            self.head = nn.Linear(4, 1)

        def forward(self, x):
            return self.head(self.encoder(x + self.pos.weight[: x.shape[1]]))

    net = Net()
    net.pos.requires_grad_(False)
    healthy = GradFlow(net)
    net(torch.randn(2, 8, 4)).sum().backward()
    assert healthy.record().frozen == []
    net.encoder.requires_grad_(False)  # the mistake
    rep = GradFlow(net).record()
    assert rep.frozen == ["encoder (28 parameters)"]
    assert "frozen (requires_grad=False): encoder (28 parameters)" in str(rep)
