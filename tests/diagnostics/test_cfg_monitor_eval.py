"""CFGDropoutMonitor's ``eval`` flag: CFG dropout the model applies on its own at evaluation."""

import pytest
import torch
from torch import nn

from diagnostics import CFGDropoutMonitor


class Net(nn.Module):
    """``forward(x, cond, drop_cond=None)``: without a mask the model draws its own in training
    (and, with ``eval_bug``, at evaluation too); dropped conditions become the learned null."""

    def __init__(self, eval_bug: bool = False, p: float = 0.3, noise: bool = False) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.p, self.eval_bug, self.noise = p, eval_bug, noise
        self.enc = nn.Linear(4, 8)
        self.null = nn.Parameter(torch.randn(8))
        self.body = nn.Sequential(nn.Linear(16, 16), nn.Tanh(), nn.Linear(16, 2))

    def forward(self, x, cond, drop_cond=None):
        if drop_cond is None and (self.training or self.eval_bug):
            drop_cond = torch.rand(x.shape[0], device=x.device) < self.p
        e = self.enc(cond)
        if drop_cond is not None:
            e = torch.where(drop_cond[:, None], self.null.expand_as(e), e)
        out = self.body(torch.cat([x, e], -1))
        return out + torch.randn_like(out) if self.noise else out  # e.g. a sampler's noise


def _session(model, mon, train_steps=20, eval_calls=5, mask_at_eval=None, device="cpu"):
    g = torch.Generator().manual_seed(3)
    outs = []
    for _ in range(train_steps):
        model.train()
        model(torch.randn(16, 8, generator=g).to(device), torch.randn(16, 4, generator=g).to(device),
              drop_cond=(torch.rand(16, generator=g) < 0.3).to(device))  # fmt: skip
        if mon is not None:
            mon.step()
    model.eval()
    with torch.no_grad():
        for _ in range(eval_calls):
            x = torch.randn(16, 8, generator=g).to(device)
            c = torch.randn(16, 4, generator=g).to(device)
            kw = {} if mask_at_eval is None else {"drop_cond": mask_at_eval(16)}
            outs.append(model(x, c, **kw))
    return outs


def test_dropout_at_eval_is_flagged_naming_the_module():
    model = Net(eval_bug=True)
    with CFGDropoutMonitor(model, p=0.3) as mon:
        _session(model, mon)
    rep = mon.report()
    assert rep.flag == "eval" and not rep.ok
    assert 0 < rep.eval_dropped < rep.eval_total == 5 * 16
    assert rep.message.startswith(
        "CFG dropout applied at evaluation: Net.forward dropped the condition of "
    )
    assert "in eval mode (model.training is False) although no drop mask was passed" in (
        rep.message
    )
    assert "FLAG eval" in str(rep)
    assert rep.to_dict()["eval_dropped"] == rep.eval_dropped


def test_healthy_eval_is_not_flagged():
    model = Net(eval_bug=False)
    with CFGDropoutMonitor(model, p=0.3) as mon:
        _session(model, mon)
    rep = mon.report()
    assert rep.ok, rep
    assert rep.eval_dropped == 0 and rep.eval_total == 5 * 16


def test_forward_that_draws_noise_at_eval_is_not_flagged():
    """The check replays the forward's own random draws: noise is not a dropped condition."""
    model = Net(eval_bug=False, noise=True)
    with CFGDropoutMonitor(model, p=0.3) as mon:
        _session(model, mon)
    rep = mon.report()
    assert rep.ok, rep
    assert rep.eval_total == 5 * 16 and rep.eval_dropped == 0


def test_explicit_unconditional_pass_at_eval_is_the_callers_choice():
    """CFG sampling passes an all-True mask (or cond=None) on purpose: never flagged."""
    model = Net(eval_bug=False)
    with CFGDropoutMonitor(model, p=0.3) as mon:
        _session(model, mon, mask_at_eval=lambda b: torch.ones(b, dtype=torch.bool))
    rep = mon.report()
    assert rep.ok and rep.eval_total == 0


def test_eval_checks_limit_and_off():
    model = Net(eval_bug=True)
    with CFGDropoutMonitor(model, p=0.3, eval_checks=2) as mon:
        _session(model, mon)
    assert mon.report().eval_total == 2 * 16
    with CFGDropoutMonitor(model, p=0.3, eval_checks=0) as mon:
        _session(model, mon)
    rep = mon.report()
    assert rep.ok and rep.eval_total == 0


def test_train_flag_takes_precedence_and_message_names_both():
    model = Net(eval_bug=True)
    with CFGDropoutMonitor(model, p=0.3) as mon:
        g = torch.Generator().manual_seed(0)
        model.train()
        for _ in range(10):
            model(torch.randn(16, 8, generator=g), torch.randn(16, 4, generator=g),
                  drop_cond=torch.zeros(16, dtype=torch.bool))  # fmt: skip
            mon.step()
        model.eval()
        with torch.no_grad():
            model(torch.randn(16, 8, generator=g), torch.randn(16, 4, generator=g))
    rep = mon.report()
    assert rep.flag == "never"
    assert "CFG dropout is not applied; CFG dropout applied at evaluation" in rep.message


@pytest.mark.parametrize("eval_bug", [False, True])
def test_outputs_and_rng_identical_with_monitor(eval_bug):
    model = Net(eval_bug)
    torch.manual_seed(11)
    plain = _session(model, None)
    state_plain = torch.get_rng_state()
    model = Net(eval_bug)
    torch.manual_seed(11)
    with CFGDropoutMonitor(model, p=0.3) as mon:
        watched = _session(model, mon)
    assert torch.equal(torch.get_rng_state(), state_plain)
    for a, b in zip(plain, watched, strict=True):
        assert torch.equal(a, b)
    assert not model._forward_hooks and not model._forward_pre_hooks


def test_hooks_removed_on_exception():
    model = Net()
    with pytest.raises(RuntimeError, match="boom"):
        with CFGDropoutMonitor(model, p=0.3):
            raise RuntimeError("boom")
    assert not model._forward_hooks and not model._forward_pre_hooks


@pytest.mark.gpu
@pytest.mark.parametrize("eval_bug", [False, True])
def test_eval_check_on_cuda_replays_cuda_draws(eval_bug):
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    model = Net(eval_bug=eval_bug, noise=True).cuda()
    with CFGDropoutMonitor(model, p=0.3) as mon:
        _session(model, mon, device="cuda")
    rep = mon.report()
    assert rep.eval_total == 5 * 16
    assert (rep.flag == "eval") == eval_bug, rep
    assert (rep.eval_dropped > 0) == eval_bug


class _Counting(Net):
    """Net with a buffer its forward writes (a call counter, as a cache or EMA would)."""

    def __init__(self) -> None:
        super().__init__(eval_bug=True)
        self.register_buffer("calls", torch.zeros((), dtype=torch.long))

    def forward(self, x, cond, drop_cond=None):
        self.calls += 1
        return super().forward(x, cond, drop_cond)


def test_the_eval_re_run_leaves_the_buffers_as_found():
    model = _Counting()
    with CFGDropoutMonitor(model, p=0.3) as mon:
        _session(model, mon, train_steps=2, eval_calls=3)
    assert mon.report().eval_total == 3 * 16  # three re-runs happened
    assert int(model.calls) == 2 + 3  # the model's own forwards only


def test_no_rng_copies_when_the_eval_check_cannot_run():
    """Without mask_arg (or with detect) the eval check never runs: it is off from the start,
    so eval forwards pay no RNG state copy."""
    model = Net()
    mon = CFGDropoutMonitor(model, p=0.3, mask_arg=None, cond_arg="cond")
    assert mon.eval_checks == 0
    with mon:
        model.eval()
        model(torch.randn(2, 8), torch.randn(2, 4), torch.zeros(2, dtype=torch.bool))
    assert mon._rng is None
