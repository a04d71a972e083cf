"""The seed faults, reproduced by tiny stand-ins, each caught and localized.

Stand-ins (defined here so these tests do not depend on models/ under construction):
BBED score loss with t_eps = 0, a Paraformer-style masked self-attention with a fully padded
utterance, an fp16 projection that overflows, an exploding learning rate, an integer timestep
tensor, and a noise encoder whose output is detached (seed 002).
"""

import math

import pytest
import torch
from torch import nn

from diagnostics import GradFlow, NanWatch, NonFiniteError, summarize


# ---------------------------------------------------------------- BBED with t_eps = 0
class BBEDStandIn(nn.Module):
    """sigma(t)^2 = theta (k^(2t) - 1) / (2 ln k): zero at t = 0 (k = 2.6, theta = 0.52)."""

    def __init__(self, k: float = 2.6, theta: float = 0.52) -> None:
        super().__init__()
        self.k, self.theta = k, theta

    def forward(self, t, z):
        sigma = torch.sqrt(self.theta * (self.k ** (2 * t) - 1) / (2 * math.log(self.k)))
        return -z / sigma[:, None, None]  # DSM target -z / sigma


class ScoreStandIn(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.sde = BBEDStandIn()
        self.net = nn.Sequential(nn.Linear(6, 16), nn.GELU(), nn.Linear(16, 6))

    def forward(self, x, t, z):
        return self.net(x + z), self.sde(t, z)


def test_bbed_t_eps_zero_sigma_to_zero():
    torch.manual_seed(0)
    model = ScoreStandIn()
    t_eps = 0.0
    t = torch.tensor([0.5, t_eps, 0.9, 0.3])  # the sampler's last time hits t_eps exactly
    x, z = torch.randn(4, 5, 6), torch.randn(4, 5, 6)

    def step(x, t, z):
        score, target = model(x, t, z)
        loss = (score - target).pow(2).mean()
        loss.backward()
        return loss

    with pytest.raises(NonFiniteError) as ei:
        NanWatch(model).run(step, x, t, z, context={"t": t})
    r = ei.value.report
    assert (r.module, r.phase, r.op) == ("sde", "forward", "aten.div.Tensor")
    assert r.bad_items == [1] and r.bad_t == {1: 0.0}
    assert any("x∈[0, " in s for s in r.op_inputs)  # sigma has a zero


# ---------------------------------------------------------------- Paraformer fully masked row
class SelfAttnStandIn(nn.Module):
    def __init__(self, d: int = 16, h: int = 2) -> None:
        super().__init__()
        self.h = h
        self.linear_qkv = nn.Linear(d, 3 * d)
        self.linear_out = nn.Linear(d, d)

    def forward(self, x, mask):  # mask: (B, T) True = valid (FunASR convention)
        B, T, D = x.shape
        q, k, v = self.linear_qkv(x).view(B, T, 3, self.h, D // self.h).permute(2, 0, 3, 1, 4)
        # q, k, v: (B, h, T, dk)
        scores = q @ k.transpose(-2, -1) / math.sqrt(D // self.h)  # (B, h, T, T)
        scores = scores.masked_fill(~mask[:, None, None, :], float("-inf"))
        attn = torch.softmax(scores, dim=-1)
        out = (attn @ v).transpose(1, 2).reshape(B, T, D)  # (B, T, D)
        return self.linear_out(out)


class EncoderLayerStandIn(nn.Module):
    def __init__(self, d: int = 16) -> None:
        super().__init__()
        self.self_attn = SelfAttnStandIn(d)
        self.norm1 = nn.LayerNorm(d)
        self.ff = nn.Sequential(nn.Linear(d, 32), nn.ReLU(), nn.Linear(32, d))

    def forward(self, x, mask):
        x = x + self.self_attn(self.norm1(x), mask)
        return x + self.ff(x)


class ParaformerStandIn(nn.Module):
    def __init__(self, n_feats: int = 8, d: int = 16, vocab: int = 11) -> None:
        super().__init__()
        self.embed = nn.Linear(n_feats, d)
        self.encoder = nn.ModuleList([EncoderLayerStandIn(d) for _ in range(2)])
        self.ctc = nn.Linear(d, vocab)

    def forward(self, feats, mask):
        x = self.embed(feats)
        for layer in self.encoder:
            x = layer(x, mask)
        return self.ctc(x).log_softmax(-1)


def test_paraformer_fully_masked_row_nan_from_softmax():
    torch.manual_seed(0)
    model = ParaformerStandIn()
    feats = torch.randn(3, 7, 8)
    lengths = torch.tensor([7, 0, 4])  # an empty utterance slipped through the data loader
    valid = torch.arange(7)[None, :] < lengths[:, None]  # (B, T)

    def step(feats, mask):
        logp = model(feats, mask)
        loss = -(logp[..., 0] * mask).sum() / mask.sum()
        loss.backward()
        return loss

    with pytest.raises(NonFiniteError) as ei:
        NanWatch(model).run(step, feats, valid, context={"valid_mask": valid})
    r = ei.value.report
    assert (r.module, r.phase) == ("encoder.0.self_attn", "forward")
    assert r.op == "aten._softmax.default" and r.kind == "nan"
    assert r.bad_items == [1] and r.in_padding_only is True


# ---------------------------------------------------------------- fp16 overflow
def _fp16_model(gain: float) -> nn.Module:
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(8, 8), nn.GELU(), nn.Linear(8, 8), nn.LayerNorm(8)).half()
    with torch.no_grad():
        m[2].weight.mul_(gain)
    return m


def _fp16_step(m):
    def step(x):
        loss = m(x).float().pow(2).mean()
        loss.backward()
        return loss

    return step


def test_fp16_overflow_localized_to_the_overflowing_linear():
    m = _fp16_model(gain=4000.0)
    x = torch.randn(4, 8).half() * 100
    with pytest.raises(NonFiniteError) as ei:
        NanWatch(m).run(_fp16_step(m), x)
    r = ei.value.report
    assert (r.module, r.module_type, r.phase) == ("2", "Linear", "forward")
    assert r.op == "aten.addmm.default" and "inf" in r.kind
    assert "3" in r.candidates  # LayerNorm turns the Inf into NaN: a later candidate, not it


def test_fp16_headroom_reported_for_near_overflow():
    m = _fp16_model(gain=1000.0)
    x = torch.randn(4, 8).half() * 100

    def step(x):  # activations near the fp16 limit; the NaN comes from elsewhere
        loss = m(x).float().pow(2).mean() * torch.tensor(math.nan)
        loss.backward()
        return loss

    with pytest.raises(NonFiniteError) as ei:
        NanWatch(m).run(step, x)
    head = {name: room for name, _, room in ei.value.report.headroom}
    assert "2" in head and 1.0 < head["2"] < 16.0
    assert summarize(m[2](m[1](m[0](x)))).count("headroom=") == 1


# ---------------------------------------------------------------- exploding learning rate
def test_exploding_lr_flagged_by_gradflow_then_caught():
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 1))
    opt = torch.optim.SGD(m.parameters(), lr=0.01)
    x, y = torch.randn(16, 8), torch.randn(16, 1)
    watch, gf = NanWatch(m), GradFlow(m)

    def step(x, y):
        loss = (m(x) - y).pow(2).mean()
        loss.backward()
        return loss

    flagged_at = None
    with pytest.raises(NonFiniteError) as ei:
        for i in range(40):
            if i == 5:
                opt.param_groups[0]["lr"] = 5.0  # the schedule bug
            opt.zero_grad()
            watch.run(step, x, y)
            rep = gf.record(optimizer=opt)
            if rep.exploding and flagged_at is None:
                flagged_at = i
            opt.step()
    assert flagged_at is not None and flagged_at < ei.value.report.step
    r = ei.value.report
    # the first Inf is the squared error of the loss code: (1e20)^2 overflows before any layer
    assert (r.module, r.phase, r.op) == (None, "forward", "aten.pow.Tensor_Scalar")
    assert "+Inf!" in r.op_outputs[0] and all("Inf" not in s for s in r.op_inputs)


# ---------------------------------------------------------------- integer timesteps (seed 000)
class TimeEmbedStandIn(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(1000, 8)
        self.net = nn.Linear(8, 8)

    def forward(self, x, t):
        return self.net(x + self.emb(t))


def test_integer_timestep_tensor_in_stats_code():
    t = torch.randint(0, 1000, (4,))
    assert "i64" in summarize(t) and "x∈[" in summarize(t)
    m = TimeEmbedStandIn()

    def step(x, t):
        loss = m(x, t).log().mean()  # log of negatives: NaN
        loss.backward()
        return loss

    with pytest.raises(NonFiniteError) as ei:
        NanWatch(m).run(step, torch.randn(4, 8), t, context={"t": t})
    r = ei.value.report
    assert r.module is None and r.op == "aten.log.default"
    assert GradFlow(m).record().total_norm >= 0  # int inputs never reach the stats code


# ---------------------------------------------------------------- detached encoder (seed 002)
class NoiseCondStandIn(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.noise_encoder = nn.Sequential(nn.Conv1d(1, 4, 5, stride=2), nn.ReLU())
        self.film = nn.Linear(4, 16)
        self.score = nn.Linear(8, 8)

    def forward(self, x, noise_ref):
        z = self.noise_encoder(noise_ref).mean(-1).detach()  # the bug: .detach()
        scale, shift = self.film(z).chunk(2, -1)
        return self.score(x) * (1 + scale) + shift


def test_detached_encoder_gets_no_gradient():
    m = NoiseCondStandIn()
    x, ref = torch.randn(2, 8), torch.randn(2, 1, 40)

    def step(x, r):
        loss = m(x, r).pow(2).mean()
        loss.backward()
        return loss

    NanWatch(m).run(step, x, ref)
    rep = GradFlow(m).record()
    assert rep.unused == ["noise_encoder.0.weight", "noise_encoder.0.bias"]
    assert rep.share("noise_encoder") == 0.0 and rep.share("film") > 0
