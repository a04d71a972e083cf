"""CFGDropoutMonitor on the stand-in's training loop (p is the configured CFG dropout)."""

import pytest
import torch

from diagnostics import CFGDropoutMonitor
from diagnostics import ablation_example as S
from diagnostics._cfg_monitor import CFGDropoutError


def test_healthy_training_rate_is_ok():
    cfg = S.StandInConfig()
    model = S.fresh(cfg)
    with CFGDropoutMonitor(model, p=0.2) as mon:
        S.train(cfg, 0.2, steps=30, model=model, monitor=mon)
    rep = mon.report()
    assert rep.ok, rep
    assert rep.steps == 30 and rep.total == 30 * 64
    assert abs(rep.observed - 0.2) < 0.05 and len(rep.per_step) == 30


def _run(model, p_cfg, p_true, steps=40, b=64, train=True, **kw):
    mon = CFGDropoutMonitor(model, p=p_cfg, **kw).attach()
    model.train(train)
    g = torch.Generator().manual_seed(1)
    for _ in range(steps):
        drop = torch.rand(b, generator=g) < p_true
        model(torch.randn(b, 16), torch.rand(b), torch.randn(b, 8), drop_cond=drop)
        mon.step()
    mon.remove()
    return mon.report()


def test_never_dropping_is_flagged():
    rep = _run(S.CondDenoiser(S.StandInConfig()), p_cfg=0.2, p_true=0.0)
    assert rep.flag == "never"
    assert "no condition dropped in 2560 draws over 40 steps with configured p=0.2" in rep.message


def test_configured_zero_is_flagged_disabled():
    rep = _run(S.CondDenoiser(S.StandInConfig()), p_cfg=0.0, p_true=0.0)
    assert rep.flag == "disabled" and "never trained" in rep.message


def test_far_rate_is_flagged_and_near_rate_is_not():
    m = S.CondDenoiser(S.StandInConfig())
    assert _run(m, p_cfg=0.2, p_true=0.05).flag == "far"
    assert _run(m, p_cfg=0.2, p_true=0.5).flag == "far"
    assert _run(m, p_cfg=0.2, p_true=0.21).flag is None


def test_eval_forwards_not_counted_and_cond_arg_none():
    m = S.CondDenoiser(S.StandInConfig())
    rep = _run(m, p_cfg=0.2, p_true=0.2, train=False)
    assert rep.total == 0 and rep.flag is None and "no training forward" in rep.message
    mon = CFGDropoutMonitor(m, p=0.5, mask_arg=None, cond_arg="cond").attach()
    m.train()
    for k in range(10):  # every other step unconditional (cond=None): a rate of 0.5
        m(torch.randn(4, 16), torch.rand(4), None if k % 2 else torch.randn(4, 8))
        mon.step()
    mon.remove()
    assert mon.report().observed == 0.5


def test_training_is_bit_identical_with_monitor():
    cfg = S.StandInConfig()
    plain = S.train(cfg, 0.2, steps=15, seed=5, model=S.fresh(cfg, 5))
    watched_model = S.fresh(cfg, 5)
    with CFGDropoutMonitor(watched_model, p=0.2) as mon:
        watched = S.train(cfg, 0.2, steps=15, seed=5, model=watched_model, monitor=mon)
    assert mon.report().steps == 15
    for (name, a), (_, b) in zip(
        plain.state_dict().items(), watched.state_dict().items(), strict=True
    ):
        assert torch.equal(a, b), name
    assert not watched._forward_pre_hooks


def test_hook_removed_on_exception():
    m = S.CondDenoiser(S.StandInConfig())
    with pytest.raises(RuntimeError, match="boom"):
        with CFGDropoutMonitor(m, p=0.2):
            raise RuntimeError("boom")
    assert not m._forward_pre_hooks


def test_bad_configuration_messages():
    m = S.CondDenoiser(S.StandInConfig())
    with pytest.raises(CFGDropoutError, match=r"p=1.5 is not a probability in \[0, 1\]"):
        CFGDropoutMonitor(m, p=1.5)
    with pytest.raises(
        CFGDropoutError,
        match=r"forward has no argument 'drop_mask' \(its arguments: "
        r"x_t, t, cond, drop_cond\)",
    ):
        CFGDropoutMonitor(m, p=0.2, mask_arg="drop_mask")


def test_cfg_p0_model_monitor_flags_and_null_ablation_is_large():
    """Validity: training with p=0 (configured 0.2) -> the monitor flags it, null effect large."""
    from diagnostics import run_ablation

    cfg = S.StandInConfig()
    model = S.fresh(cfg)
    with CFGDropoutMonitor(model, p=0.2) as mon:
        S.train(cfg, 0.0, steps=300, model=model, monitor=mon)  # the bug: p=0 in the loop
    assert mon.report().flag == "never"
    kw = dict(sites=["cond_encoder"], ablations=["null"], embeddings=False, umap=False, n_boot=300)
    null0 = run_ablation(S.make_target(model, n_batches=2), **kw).data["sites"][0]["ablations"][
        "null"
    ]
    ok = run_ablation(S.make_target(S.trained(0.2), n_batches=2), **kw).data["sites"][0][
        "ablations"
    ]["null"]
    assert null0["ci95"][0] >= 0.05  # the untrained null embedding moves the output by >= 5%
    assert null0["ci95"][0] > 2 * ok["ci95"][1], (null0, ok)
