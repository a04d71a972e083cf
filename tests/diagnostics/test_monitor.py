"""TrainingMonitor: what it writes, that it changes nothing, and how it fails."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from diagnostics import CFGDropoutMonitor, NanWatch, TrainingMonitor, TrainingMonitorError


class Toy(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.enc = nn.Sequential(nn.Linear(4, 8), nn.Tanh())
        self.cond = nn.Linear(3, 8)
        self.dec = nn.Linear(8, 1)
        self.null = nn.Parameter(torch.zeros(8))

    def forward(self, x, c=None, drop_cond=None):
        h = self.enc(x)
        if c is not None:
            e = self.cond(c)
            if drop_cond is not None:
                e = torch.where(drop_cond[:, None], self.null.expand_as(e), e)
            h = h + e
        return self.dec(h).square().mean()


def _events(logdir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(logdir), size_guidance={"scalars": 0, "histograms": 0, "tensors": 0})
    acc.Reload()
    return acc


def _train(monitor_dir=None, steps=6, every=1, hist_every=2):
    torch.manual_seed(0)
    model = Toy()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    mon = None
    if monitor_dir is not None:
        mon = TrainingMonitor(model, monitor_dir, every=every, optimizer=opt, hist_every=hist_every)
    grads = []
    for step in range(steps):
        x, c = torch.randn(16, 4), torch.randn(16, 3)
        drop = torch.rand(16) < 0.3
        loss = model(x, c, drop)
        opt.zero_grad()
        loss.backward()
        if mon is not None:
            mon.step(step, loss=loss, acc=torch.tensor(0.5), **{"sig/max": 2.0})
        grads.append([p.grad.clone() for p in model.parameters()])
        opt.step()
    if mon is not None:
        mon.step(steps, val_loss=0.25)
        mon.close()
    return model, grads, torch.randn(3)


def test_training_is_bit_identical_with_the_monitor(tmp_path):
    m0, g0, rng0 = _train(None)
    m1, g1, rng1 = _train(tmp_path / "run", every=1, hist_every=1)
    for a, b in zip(m0.parameters(), m1.parameters(), strict=True):
        assert torch.equal(a, b)
    for s0, s1 in zip(g0, g1, strict=True):
        assert all(torch.equal(a, b) for a, b in zip(s0, s1, strict=True))
    assert torch.equal(rng0, rng1)  # no random numbers drawn by the monitor


def test_writes_loss_groups_update_ratios_histograms_and_layout(tmp_path):
    _train(tmp_path / "run", steps=4, every=2, hist_every=2)
    acc = _events(tmp_path / "run")
    tags = set(acc.Tags()["scalars"])
    assert {"train/loss", "train/acc", "sig/max", "val/loss", "train/lr"} <= tags
    for g in ("enc", "cond", "dec", "null"):
        assert {f"grad_norm/{g}", f"param_norm/{g}", f"param_count/{g}"} <= tags
    for g in ("enc", "cond", "dec"):  # "null" starts at zero: no ratio at step 0
        assert f"update_ratio/{g}" in tags
    assert [e.step for e in acc.Scalars("train/loss")] == [0, 2]  # every=2
    assert [e.step for e in acc.Scalars("val/loss")] == [4]
    # the group norm is the norm of the group's gradients (checked against a direct computation)
    gn = {e.step: e.value for e in acc.Scalars("grad_norm/total")}
    assert gn[0] > 0 and math.isfinite(gn[2])
    assert {"weights/enc", "grads/dec"} <= set(acc.Tags()["histograms"])
    assert acc.Scalars("nonfinite/grads/enc")[0].value == 0.0
    ratio = acc.Scalars("update_ratio/dec")[0].value
    pn = acc.Scalars("param_norm/dec")[0].value
    assert ratio == pytest.approx(1e-2 * acc.Scalars("grad_norm/dec")[0].value / pn, rel=1e-5)
    layout = acc.Tensors("custom_scalars__config__")
    assert layout, "no custom-scalars layout written"


def test_group_norm_matches_direct_computation(tmp_path):
    torch.manual_seed(0)
    model = Toy()
    model(torch.randn(8, 4), torch.randn(8, 3)).backward()
    with TrainingMonitor(model, tmp_path / "r", hist_every=0) as mon:
        mon.step(0, loss=1.0)
    want = torch.cat([p.grad.reshape(-1) for p in model.enc.parameters()]).norm().item()
    got = _events(tmp_path / "r").Scalars("grad_norm/enc")[0].value
    assert got == pytest.approx(want, rel=1e-5)


def test_update_ratio_uses_adams_normalized_direction(tmp_path):
    torch.manual_seed(0)
    model = Toy()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3, eps=1e-6)
    model(torch.randn(8, 4)).backward()
    opt.step()  # Adam now keeps exp_avg_sq
    opt.zero_grad()
    model(torch.randn(8, 4)).backward()
    with TrainingMonitor(model, tmp_path / "r", optimizer=opt, hist_every=0) as mon:
        mon.step(1, loss=1.0)  # the first logged step computes the ratio
    ps = list(model.enc.parameters())
    c = 1 / (1 - 0.999)  # Adam's bias correction after one step
    u = torch.cat(
        [(p.grad / ((opt.state[p]["exp_avg_sq"] * c).sqrt() + 1e-6)).reshape(-1) for p in ps]
    )
    w = torch.cat([p.detach().reshape(-1) for p in ps])
    want = 1e-3 * u.norm().item() / w.norm().item()
    got = _events(tmp_path / "r").Scalars("update_ratio/enc")[0].value
    assert got == pytest.approx(want, rel=1e-4)
    assert want > 10 * 1e-3 * torch.cat([p.grad.reshape(-1) for p in ps]).norm() / w.norm()


def test_update_ratio_cadence_under_adam(tmp_path):
    torch.manual_seed(0)
    model = Toy()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    with TrainingMonitor(model, tmp_path / "r", optimizer=opt, ratio_every=3) as mon:
        for step in range(7):
            opt.zero_grad()
            model(torch.randn(8, 4)).backward()
            mon.step(step, loss=1.0)
            opt.step()
    acc = _events(tmp_path / "r")
    assert [e.step for e in acc.Scalars("update_ratio/enc")] == [0, 3, 6]
    assert len(acc.Scalars("grad_norm/enc")) == 7
    assert acc.Scalars("param_count/enc")[0].value == 4 * 8 + 8


def test_nonfinite_gradients_are_counted_not_fatal(tmp_path):
    torch.manual_seed(0)
    model = Toy()
    model(torch.randn(8, 4)).backward()
    model.dec.weight.grad[0, 0] = float("nan")
    model.dec.bias.grad[0] = float("inf")
    with TrainingMonitor(model, tmp_path / "r", hist_every=1) as mon:
        mon.step(0, loss=torch.tensor(float("nan")))
    acc = _events(tmp_path / "r")
    assert acc.Scalars("nonfinite/grads/dec")[0].value == 2.0
    assert math.isnan(acc.Scalars("train/loss")[0].value)
    assert "grads/dec" in acc.Tags()["histograms"]  # the finite values still make a histogram


def test_exception_is_written_and_flushed_before_it_propagates(tmp_path):
    model = Toy()
    model(torch.randn(8, 4)).backward()
    with pytest.raises(RuntimeError, match="boom"):
        with TrainingMonitor(model, tmp_path / "r") as mon:
            mon.step(3, loss=1.0)
            raise RuntimeError("boom")
    acc = _events(tmp_path / "r")
    assert acc.Scalars("monitor/exception")[0].step == 3
    text = acc.Tensors("monitor/exception/text_summary")[0].tensor_proto.string_val[0].decode()
    assert "RuntimeError" in text and "boom" in text


def test_cfg_drop_rate_and_nanwatch_status(tmp_path):
    torch.manual_seed(0)
    model = Toy()
    cfg = CFGDropoutMonitor(model, p=0.25, mask_arg="drop_cond").attach()
    watch = NanWatch(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with TrainingMonitor(model, tmp_path / "r", nanwatch=watch, cfg_monitor=cfg) as mon:
        for step in range(3):
            drop = torch.arange(8) < 2 * step  # 0, 2, 4 of 8 dropped

            def train_step(x, c, d):
                loss = model(x, c, d)
                loss.backward()
                return loss

            opt.zero_grad()
            loss = watch.run(train_step, torch.randn(8, 4), torch.randn(8, 3), drop)
            cfg.step()
            mon.step(step, loss=loss)
            opt.step()
    cfg.remove()
    acc = _events(tmp_path / "r")
    assert [e.value for e in acc.Scalars("cfg/drop_rate")] == [0.0, 0.25, 0.5]
    assert [e.value for e in acc.Scalars("cfg/p")] == [0.25] * 3
    assert [e.value for e in acc.Scalars("nanwatch/status")] == [0.0] * 3


def test_bad_arguments_are_named(tmp_path):
    with pytest.raises(TrainingMonitorError, match="argument 'every' is 0; must be >= 1"):
        TrainingMonitor(Toy(), tmp_path, every=0)
    with pytest.raises(TrainingMonitorError, match="'logdir_or_writer' is a int"):
        TrainingMonitor(Toy(), 3)
    with pytest.raises(TrainingMonitorError, match="'model' is a str"):
        TrainingMonitor("model", tmp_path)
    mon = TrainingMonitor(Toy(), tmp_path / "c")
    mon.close()
    with pytest.raises(TrainingMonitorError, match=r"step\(1\): the monitor is closed"):
        mon.step(1, loss=1.0)


def test_a_passed_writer_is_flushed_not_closed(tmp_path):
    from torch.utils.tensorboard import SummaryWriter

    w = SummaryWriter(str(tmp_path / "w"))
    model = Toy()
    model(torch.randn(2, 4)).backward()
    with TrainingMonitor(model, w) as mon:
        mon.step(0, loss=1.0)
    w.add_scalar("after/close", 1.0, 0)  # still usable
    w.close()
    assert "after/close" in _events(tmp_path / "w").Tags()["scalars"]


@pytest.mark.gpu
def test_at_most_one_host_sync_per_logged_step(tmp_path):
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    from diagnostics import count_host_syncs

    model = Toy().cuda()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    mon = TrainingMonitor(model, tmp_path / "g", optimizer=opt, hist_every=2)
    x = torch.randn(16, 4, device="cuda")
    loss = model(x)
    loss.backward()
    for step in range(4):  # steps 0 and 2 carry histograms
        n = count_host_syncs(lambda step=step: mon.step(step, loss=loss, extra=loss * 2))
        assert n <= 1, f"step {step}: {n} host syncs"
    mon.close()
