"""inspect_run: planted faults in runs the monitor wrote are found at the right step."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import torch
from torch import nn

from diagnostics import CFGDropoutMonitor, TrainingMonitor
from diagnostics._inspect_rules import RuleConfig, inspect_scalars
from diagnostics.inspect_run import inspect_logdir, main


class Toy(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.enc = nn.Sequential(nn.Linear(4, 16), nn.Tanh())
        self.cond = nn.Linear(3, 16)
        self.dec = nn.Linear(16, 1)
        self.null = nn.Parameter(torch.zeros(16))
        self.gate = 1.0

    def forward(self, x, c, y, drop_cond=None):
        e = self.cond(c) * self.gate
        if drop_cond is not None:
            e = torch.where(drop_cond[:, None], self.null.expand_as(e), e)
        return (self.dec(self.enc(x) + e).squeeze(-1) - y).square().mean()


def write_run(
    logdir, steps=60, spike_at=None, nan_at=None, dead_from=None, drop_stops_at=None, lr_fn=None
):
    """A real training run written by TrainingMonitor, with the faults asked for."""
    torch.manual_seed(0)
    model = Toy()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    w_true = torch.randn(4)
    cfg = CFGDropoutMonitor(model, p=0.3, mask_arg="drop_cond").attach()
    with TrainingMonitor(model, logdir, optimizer=opt, cfg_monitor=cfg, hist_every=10) as mon:
        for step in range(steps):
            x, c = torch.randn(32, 4), torch.randn(32, 3)
            y = x @ w_true + 0.1 * torch.randn(32)
            if step == spike_at:  # a bad batch: targets 10x too large
                y = y * 10
            if step == nan_at:
                x[0, 0] = float("nan")
            if dead_from is not None and step >= dead_from:
                model.gate = 0.0
            drop = torch.rand(32) < 0.3
            if drop_stops_at is not None and step >= drop_stops_at:
                drop = torch.zeros(32, dtype=torch.bool)
            if lr_fn is not None:
                for group in opt.param_groups:
                    group["lr"] = lr_fn(step)
            opt.zero_grad()
            loss = model(x, c, y, drop)
            loss.backward()
            cfg.step()
            mon.step(step, loss=loss)
            if step != nan_at:
                opt.step()
    cfg.remove()


def _found(report):
    return {(f["kind"], f["tag"], f["step"]) for f in report["findings"]}


def test_healthy_run_has_no_finding(tmp_path):
    write_run(tmp_path / "healthy")
    report = inspect_logdir(tmp_path / "healthy")
    assert report["findings"] == [], report["findings"]
    assert report["runs"][0]["steps"] == [0, 59] and report["runs"][0]["tags"] > 10


def test_planted_faults_are_found_at_their_steps(tmp_path):
    write_run(tmp_path / "bad", spike_at=25, nan_at=35, dead_from=20, drop_stops_at=40)
    found = _found(inspect_logdir(tmp_path / "bad"))
    assert ("loss_spike", "train/loss", 25) in found
    assert ("nonfinite", "train/loss", 35) in found
    assert ("grad_dead", "grad_norm/cond", 20) in found
    assert ("cfg_drop_rate", "cfg/drop_rate", 40) in found
    kinds = {k for k, _, _ in found}
    assert "plateau" not in kinds and "divergence" not in kinds, found


def test_each_fault_alone_gives_only_its_own_finding(tmp_path):
    write_run(tmp_path / "spike", spike_at=30)
    assert _found(inspect_logdir(tmp_path / "spike")) == {("loss_spike", "train/loss", 30)}
    write_run(tmp_path / "drop", drop_stops_at=45)
    # with no condition dropped, the null embedding gets no gradient: dead from the same step
    assert _found(inspect_logdir(tmp_path / "drop")) == {
        ("cfg_drop_rate", "cfg/drop_rate", 45),
        ("grad_dead", "grad_norm/null", 45),
    }


def test_learning_rate_faults_in_real_runs(tmp_path):
    def saw(step):  # two schedulers fighting from step 20
        return 3e-3 if step < 20 or ((step - 20) // 3) % 2 else 1e-3

    write_run(tmp_path / "saw", lr_fn=saw)
    assert ("lr_oscillation", "train/lr", 20) in _found(inspect_logdir(tmp_path / "saw"))

    write_run(tmp_path / "boom", lr_fn=lambda step: 3e-3 if step < 30 else 1.0)
    div = [f for f in inspect_logdir(tmp_path / "boom")["findings"] if f["kind"] == "divergence"]
    assert div and 30 <= div[0]["step"] <= 32, div  # lr=1 acts from the step-30 update


def test_cli_table_json_strict_and_bad_input(tmp_path, capsys):
    write_run(tmp_path / "runs" / "a", steps=40, nan_at=12)
    write_run(tmp_path / "runs" / "b", steps=40)
    out = tmp_path / "f.json"
    assert main([str(tmp_path / "runs"), "--json", str(out), "--no-progress"]) == 0
    report = json.loads(out.read_text())
    assert [r["run"] for r in report["runs"]] == ["a", "b"]
    f = next(f for f in report["findings"] if f["kind"] == "nonfinite")
    assert set(f) == {"kind", "tag", "step", "value", "detail", "run"}
    assert f["step"] == 12 and f["run"] == "a" and f["value"] is None and "nan" in f["detail"]
    table = capsys.readouterr().out
    assert "run a:" in table and "nonfinite" in table
    assert main([str(tmp_path / "runs"), "--strict", "--no-progress"]) == 1
    assert main([str(tmp_path / "runs" / "b"), "--strict", "--no-progress"]) == 0
    (tmp_path / "empty").mkdir()
    assert main([str(tmp_path / "empty")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no TensorBoard event files" in err
    assert main([str(tmp_path / "missing")]) == 2
    assert "is not a directory" in capsys.readouterr().err


def test_cli_subprocess_help_and_bad_flag():
    py = [sys.executable, "-m", "diagnostics.inspect_run"]
    r = subprocess.run([*py, "--help"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and "--strict" in r.stdout and "findings" in r.stdout
    r = subprocess.run([*py, ".", "--bogus"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "--bogus" in r.stderr


# ---- the rules on hand-made curves
def _c(vals, start=0):
    return [(start + i, float(v)) for i, v in enumerate(vals)]


def test_divergence_plateau_and_gap():
    down_up = [1.0 * 0.9**i for i in range(30)] + [0.047 * 1.2**i for i in range(30)]
    kinds = {(f.kind, f.step) for f in inspect_scalars({"train/loss": _c(down_up)})}
    div = [s for k, s in kinds if k == "divergence"]
    assert div and 29 <= div[0] <= 34, kinds
    flat = [1.0 * 0.8**i for i in range(10)] + [0.107] * 40
    pl = [f for f in inspect_scalars({"train/loss": _c(flat)}) if f.kind == "plateau"]
    assert pl and 8 <= pl[0].step <= 12
    train = _c([1.0 / (1 + i) for i in range(50)])
    val = [(i, v) for i, v in _c([0.8, 0.6, 0.5, 0.45, 0.5, 0.6, 0.7], 0)]
    val = [(st * 8, v) for st, v in val]
    gap = [f for f in inspect_scalars({"train/loss": train, "val/loss": val}) if f.kind ==
           "train_val_gap"]  # fmt: skip
    assert gap and gap[0].step == 32


def test_gradient_and_update_ratio_rules():
    total = _c([1.0] * 30)
    s = {
        "grad_norm/total": total,
        "grad_norm/a": _c([0.5] * 30),
        "grad_norm/tiny": _c([1e-3] * 10 + [1e-9] * 20),
        "grad_norm/boom": _c([0.1] * 15 + [50.0] * 15),
        "update_ratio/a": _c([1e-3] * 12 + [0.5] * 18),
        "update_ratio/early": _c([0.5] * 8 + [1e-3] * 22),  # zero-init transient: not judged
        "update_ratio/grows": _c([1e-3] * 12 + [0.5] * 18),
        "param_norm/grows": _c([0.01] * 12 + [0.01 * 1.3**i for i in range(18)]),
    }
    got = {(f.kind, f.tag, f.step) for f in inspect_scalars(s)}
    assert ("grad_vanishing", "grad_norm/tiny", 10) in got
    assert ("grad_exploding", "grad_norm/boom", 15) in got
    assert ("update_ratio_high", "update_ratio/a", 12) in got
    quiet = ("grad_norm/a", "update_ratio/early", "update_ratio/grows")
    assert not any(t in quiet for _, t, _ in got), got


def test_lr_oscillation_but_not_warmup_cosine():
    cosine = [min(1, (i + 1) / 10) * (0.5 + 0.5 * math.cos(math.pi * i / 100)) for i in range(100)]
    assert inspect_scalars({"train/lr": _c(cosine)}) == []
    saw = [1e-3 if (i // 3) % 2 else 1e-4 for i in range(30)]
    f = inspect_scalars({"train/lr": _c(saw)})
    assert [x.kind for x in f] == ["lr_oscillation"] and f[0].step == 3  # its first move


def test_thresholds_are_configurable():
    s = {"train/loss": _c([1.0, 1.01] * 10 + [1.8] + [1.0, 1.01] * 5)}
    assert [f.step for f in inspect_scalars(s) if f.kind == "loss_spike"] == [20]
    assert not [f for f in inspect_scalars(s, RuleConfig(spike_rel=2.0)) if f.kind == "loss_spike"]


def test_healthy_small_batch_drop_rates_without_counts_give_no_finding():
    """Rates of a small batch (k of 8 draws) logged without cfg/drop_n: the draws per step are
    read off the lattice of the rates, so sampling noise is not a finding, in any of 40 runs."""
    g = torch.Generator().manual_seed(0)
    for _ in range(40):
        drops = (torch.rand(80, 8, generator=g) < 0.1).sum(1).tolist()
        s = {"cfg/drop_rate": [(i, k / 8) for i, k in enumerate(drops)], "cfg/p": [(0, 0.1)]}
        assert [f for f in inspect_scalars(s) if f.kind == "cfg_drop_rate"] == []


def test_small_batch_drop_that_stops_without_counts_is_found():
    g = torch.Generator().manual_seed(1)
    drops = (torch.rand(80, 8, generator=g) < 0.3).sum(1).tolist()
    drops[50:] = [0] * 30
    s = {"cfg/drop_rate": [(i, k / 8) for i, k in enumerate(drops)], "cfg/p": [(0, 0.3)]}
    assert [(f.kind, f.step) for f in inspect_scalars(s) if f.kind == "cfg_drop_rate"] == [
        ("cfg_drop_rate", 50)
    ]


def test_drop_rate_lattice_is_read_only_when_pinned_down():
    from diagnostics._inspect_rules import _lattice_draws

    assert _lattice_draws([0.0, 0.125, 0.25, 0.125]) == 8
    assert _lattice_draws([0.0, 1 / 12, 3 / 12, 2 / 12]) == 12
    assert _lattice_draws([0.1037, 0.0981, 0.1102, 0.0993]) is None  # a smoothed rate
    assert _lattice_draws([0.125, 0.125]) is None  # one value: not enough to read n
