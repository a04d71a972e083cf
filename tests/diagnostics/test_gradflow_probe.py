"""GradFlow on models, optimizers and training loops it had not seen: each test pins a finding
of the adversarial probe (wrong flag, wrong number or broken guarantee) and its general fix."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from diagnostics import GradFlow


def _mlp(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 6), nn.Tanh(), nn.Linear(6, 1))


def _batch(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(16, 6, generator=g), torch.randn(16, 1, generator=g)


def test_update_ratios_under_a_grad_scaler_are_those_of_the_unscaled_gradients():
    """The ratios were read off the scaled gradients: 1024x too large under init_scale=1024."""
    m = _mlp()
    x, y = _batch()
    opt = torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9)
    (m(x) - y).pow(2).mean().backward()
    ref = GradFlow(m).record(optimizer=opt).update_ratios
    m.zero_grad()
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    scaler.scale((m(x) - y).pow(2).mean()).backward()
    rep = GradFlow(m).record(optimizer=opt, scaler=scaler)
    assert rep.scale == 1024.0
    for name, r in ref.items():
        assert rep.update_ratios[name] == pytest.approx(r, rel=1e-5), name


def test_scaler_without_optimizer_after_unscale_is_not_divided_twice():
    m = _mlp()
    x, y = _batch()
    (m(x) - y).pow(2).mean().backward()
    ref = GradFlow(m).record().total_norm
    m.zero_grad()
    opt = torch.optim.SGD(m.parameters(), lr=0.1)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    scaler.scale((m(x) - y).pow(2).mean()).backward()
    assert GradFlow(m).record(scaler=scaler).total_norm == pytest.approx(ref, rel=1e-5)
    scaler.unscale_(opt)  # the gradients no longer carry the scale
    rep = GradFlow(m).record(scaler=scaler)
    assert rep.scale is None and rep.total_norm == pytest.approx(ref, rel=1e-5)


def test_adam_ratio_of_a_complex_parameter_is_that_of_its_real_view():
    """Adam steps a complex parameter as its real view (moments of the real and imaginary
    parts); the estimate took the complex square root of that state instead."""
    w0 = torch.randn(6, dtype=torch.cfloat, generator=torch.Generator().manual_seed(0))
    xs = [torch.randn(6, dtype=torch.cfloat, generator=torch.Generator().manual_seed(i))
          for i in range(4)]  # fmt: skip

    def ratios(as_complex: bool) -> list[float]:
        m = nn.Module()
        m.w = nn.Parameter(w0.clone() if as_complex else torch.view_as_real(w0).clone())
        adam = torch.optim.Adam([m.w], lr=1e-3)
        out = []
        for x in xs:
            adam.zero_grad()
            w = m.w if as_complex else torch.view_as_complex(m.w)
            (w * x).abs().sum().backward()
            out.append(GradFlow(m).record(optimizer=adam).update_ratios["w"])
            adam.step()
        return out

    assert ratios(True) == pytest.approx(ratios(False), rel=1e-5)


@pytest.mark.parametrize(
    "make",
    [
        lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9),
        lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, nesterov=True, weight_decay=0.1),
        lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.5, dampening=0.3, weight_decay=0.01),
        lambda p: torch.optim.RMSprop(p, lr=1e-2),
        lambda p: torch.optim.RMSprop(p, lr=1e-2, momentum=0.5, centered=True, weight_decay=0.1),
        lambda p: torch.optim.Adagrad(p, lr=0.1, lr_decay=0.01),
        lambda p: torch.optim.SGD(p, lr=0.0, momentum=0.9),
        lambda p: torch.optim.SGD(
            [{"params": p[:2], "lr": 0.5, "momentum": 0.5}, {"params": p[2:], "nesterov": True}],
            lr=0.01,
            momentum=0.9,
        ),
    ],
    ids=[
        "sgd-momentum",
        "sgd-nesterov-wd",
        "sgd-dampening",
        "rmsprop",
        "rmsprop-centered",
        "adagrad",
        "zero-lr",
        "param-groups",
    ],
)
def test_update_ratio_is_the_step_the_optimizer_then_takes(make):
    """Momentum, RMSprop's and Adagrad's normalizers were ignored (``lr * |g|``): with SGD
    momentum 0.9 the ratio read 7x too low by step 4, with RMSprop 100x."""
    m = _mlp()
    opt = make(list(m.parameters()))
    x, y = _batch()
    for _ in range(4):
        opt.zero_grad()
        (m(x) - y).pow(2).mean().backward()
        rep = GradFlow(m).record(optimizer=opt)
        before = {n: p.detach().clone() for n, p in m.named_parameters()}
        opt.step()
        for n, p in m.named_parameters():
            made = ((p.detach() - before[n]).norm() / before[n].norm()).item()
            assert rep.update_ratios[n] == pytest.approx(made, rel=1e-4, abs=1e-12), n


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # torch.compile's own imports
@pytest.mark.filterwarnings("ignore::UserWarning")  # DataParallel without GPUs
def test_compiled_and_data_parallel_models_are_named_as_the_users_model():
    m = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 1))
    want = ["0.weight", "0.bias", "2.weight", "2.bias"]
    for wrapped in (torch.compile(m, backend="eager"), nn.DataParallel(m)):
        m.zero_grad()
        wrapped(torch.randn(3, 4)).sum().backward()
        rep = GradFlow(wrapped).record()
        assert list(rep.param_norms) == want and 0 < rep.share("0") < 1
    inner = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 1))
    inner[0] = torch.compile(inner[0], backend="eager")  # a compiled submodule
    inner(torch.randn(3, 4)).sum().backward()
    rep = GradFlow(inner).record()
    assert list(rep.param_norms) == ["0.weight", "0.bias", "1.weight", "1.bias"]
    assert list(rep.module_norms) == ["", "0", "1"]


def test_modules_registered_elsewhere_keep_this_models_module_history():
    """A loss module built each step (it registers a buffer) moved the process-wide structure
    count: GradFlow re-indexed every record and restarted the per-module history, so
    ``exploding_modules`` could never fire."""
    m = nn.Sequential(nn.Linear(4, 8), nn.Linear(8, 3))
    gf = GradFlow(m, window=10)
    x, y = torch.randn(16, 4), torch.randint(0, 3, (16,))
    for step in range(8):
        m.zero_grad()
        crit = nn.CrossEntropyLoss(weight=torch.ones(3))
        (crit(m(x), y) * (1000.0 if step == 7 else 1.0)).backward()
        rep = gf.record()
    assert rep.exploding and rep.exploding_modules == ["", "0", "1"]


@pytest.mark.parametrize("zero_grad", ["set_to_zero", "none"])
def test_parameter_frozen_since_with_a_stale_grad_is_frozen_not_zero(zero_grad):
    """A parameter frozen after GradFlow was built keeps its last ``.grad`` (zeroed in place,
    or not zeroed at all under gradient accumulation): it was reported as a zero gradient, or
    as a live norm, instead of frozen."""
    m = _mlp()
    gf = GradFlow(m)
    x, y = _batch()
    (m(x) - y).pow(2).mean().backward()
    gf.record()
    m[0].requires_grad_(False)
    if zero_grad == "set_to_zero":
        m.zero_grad(set_to_none=False)
    (m(x) - y).pow(2).mean().backward()
    rep = gf.record()
    assert set(rep.param_norms) == {"2.weight", "2.bias"}
    assert rep.zero == [] and rep.frozen == ["0 (42 parameters)"]
    want = m[2].weight.grad.norm() ** 2 + m[2].bias.grad.norm() ** 2
    assert rep.total_norm == pytest.approx(want.sqrt().item(), rel=1e-6)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_model_converted_to_half_precision_after_gradflow_is_normed_in_float32(dtype):
    """``model.half()`` changes no registration: the norms kept the one-dtype fast path and were
    computed (and rounded) in half precision."""
    m = nn.Linear(300, 300)
    gf = GradFlow(m)
    m.to(dtype)
    g = torch.Generator().manual_seed(0)
    m.weight.grad = (100 * torch.rand(300, 300, generator=g)).to(dtype)
    m.bias.grad = torch.rand(300, generator=g).to(dtype)
    rep = gf.record()
    for n, p in m.named_parameters():
        want = torch.linalg.vector_norm(p.grad.double()).item()
        assert rep.param_norms[n] == pytest.approx(want, rel=1e-5), n  # fp16 out: 5e-4


def _train(with_gradflow: bool, make, *, complex_: bool = False, sparse: bool = False):
    """A few steps; GradFlow (with optimizer and scaler) on or off. Returns everything that
    must be bit-identical."""
    torch.manual_seed(0)
    emb = nn.Embedding(10, 6, sparse=sparse)
    body = _mlp(1)
    model = nn.ModuleDict({"emb": emb, "body": body})
    if complex_:
        model.c = nn.Parameter(torch.randn(6, dtype=torch.cfloat))
    params = [p for n, p in model.named_parameters() if not (sparse and n == "emb.weight")]
    opt = make(params)
    sparse_opt = torch.optim.SGD([emb.weight], lr=0.1) if sparse else None
    # torch's GradScaler cannot unscale complex gradients on the CPU
    scaler = torch.amp.GradScaler("cpu", init_scale=256.0, enabled=not complex_)
    gf = GradFlow(model) if with_gradflow else None
    grads = []
    for _ in range(3):
        opt.zero_grad()
        if sparse_opt:
            sparse_opt.zero_grad()
        idx = torch.randint(0, 10, (16,))
        h = body[0](emb(idx))
        out = body[2](nn.functional.dropout(body[1](h), 0.2))
        loss = out.pow(2).mean()
        if complex_:
            loss = loss + (model.c * h[0].to(torch.cfloat)).abs().mean()
        scaler.scale(loss).backward()
        if gf is not None:
            gf.record(optimizer=opt, scaler=scaler)
        grads.append([p.grad.clone() for p in model.parameters()])
        scaler.step(opt)
        if sparse_opt:
            sparse_opt.step()
        scaler.update()
    state = copy.deepcopy(opt.state_dict()["state"])
    return model, grads, state, scaler.state_dict(), torch.get_rng_state()


@pytest.mark.parametrize(
    "make",
    [
        lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, weight_decay=0.01),
        lambda p: torch.optim.Adam(p, lr=1e-2),
        lambda p: torch.optim.RMSprop(p, lr=1e-2, momentum=0.5, centered=True),
        lambda p: torch.optim.Adagrad(p, lr=0.1),
    ],
    ids=["sgd", "adam", "rmsprop", "adagrad"],
)
@pytest.mark.parametrize("kind", ["dense", "complex", "sparse"])
def test_training_is_bit_identical_with_gradflow_on(make, kind):
    """Parameters, gradients, optimizer and scaler state and the RNG stream are unchanged by
    ``record(optimizer=..., scaler=...)`` (it reads optimizer state to estimate updates)."""
    opts = {"complex_": kind == "complex", "sparse": kind == "sparse"}
    m0, g0, s0, sc0, r0 = _train(False, make, **opts)
    m1, g1, s1, sc1, r1 = _train(True, make, **opts)
    for a, b in zip(m0.parameters(), m1.parameters(), strict=True):
        assert torch.equal(a, b)
    for a, b in zip(g0, g1, strict=True):
        assert all(torch.equal(x.to_dense(), y.to_dense()) for x, y in zip(a, b, strict=True))
    assert s0.keys() == s1.keys()
    for k in s0:
        for key, v in s0[k].items():
            assert torch.equal(torch.as_tensor(v), torch.as_tensor(s1[k][key])), (k, key)
    assert sc0 == sc1 and torch.equal(r0, r1)
