"""NanWatch: healthy path is invisible, failures are localized to the producing module and op."""

import math

import pytest
import torch
from torch import nn

from diagnostics import NanWatch, NanWatchError, NonFiniteError


class Attn(nn.Module):
    """Single-head attention that masks with -inf (NaN on a fully masked row)."""

    def __init__(self, d: int = 8) -> None:
        super().__init__()
        self.qkv = nn.Linear(d, 3 * d)
        self.out = nn.Linear(d, d)

    def forward(self, x, pad):
        q, k, v = self.qkv(x).chunk(3, -1)
        sc = q @ k.transpose(1, 2) / math.sqrt(q.shape[-1])  # (B, T, T)
        sc = sc.masked_fill(pad[:, None, :], float("-inf"))
        return self.out(torch.softmax(sc, -1) @ v)


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.inp = nn.Linear(4, 8)
        self.drop = nn.Dropout(0.2)
        self.attn = Attn()
        self.norm = nn.BatchNorm1d(5)  # a buffer the step mutates
        self.head = nn.Linear(8, 1)

    def forward(self, x, pad):
        return self.head(self.norm(self.attn(self.drop(self.inp(x)), pad)))


def _step(model):
    def step(x, pad):
        loss = model(x, pad).pow(2).mean()
        loss.backward()
        return loss

    return step


def _data(bad_row=None):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(3, 5, 4, generator=g)
    pad = torch.zeros(3, 5, dtype=torch.bool)
    pad[:, 4] = True
    if bad_row is not None:
        pad[bad_row] = True
    return x, pad


def _state(model):
    return (
        [p.grad.clone() for p in model.parameters()],
        [b.clone() for b in model.buffers()],
        torch.rand(4),  # RNG consumption after the step
    )


@pytest.mark.parametrize("mode", ["replay", "eager"])
def test_healthy_steps_bit_identical_with_watch_on_and_off(mode):
    torch.manual_seed(0)
    model = Net()
    init = {k: v.clone() for k, v in model.state_dict().items()}
    x, pad = _data()
    results = []
    for watched in (False, True):
        model.load_state_dict(init)
        model.zero_grad(set_to_none=True)
        torch.manual_seed(123)
        step = _step(model)
        losses = []
        watch = NanWatch(model, mode=mode)
        for _ in range(3):  # grads accumulate across steps
            loss = watch.run(step, x, pad) if watched else step(x, pad)
            losses.append(loss.detach().clone())
        results.append((losses, _state(model)))
    (l0, (g0, b0, r0)), (l1, (g1, b1, r1)) = results
    assert all(torch.equal(a, b) for a, b in zip(l0, l1, strict=True))
    assert all(torch.equal(a, b) for a, b in zip(g0, g1, strict=True))
    assert all(torch.equal(a, b) for a, b in zip(b0, b1, strict=True))
    assert torch.equal(r0, r1)


def test_fully_masked_row_is_localized_to_softmax_in_attention():
    torch.manual_seed(0)
    model = Net()
    x, pad = _data(bad_row=1)
    t = torch.tensor([0.3, 0.0, 0.7])
    with pytest.raises(
        NonFiniteError, match=r"NAN first produced in forward by module 'attn'"
    ) as ei:
        NanWatch(model).run(_step(model), x, pad, context={"padding_mask": pad, "t": t})
    r = ei.value.report
    assert (r.module, r.module_type, r.phase) == ("attn", "Attn", "forward")
    assert r.op == "aten._softmax.default"
    assert r.bad_items == [1] and r.bad_t == {1: 0.0}
    assert r.in_padding_only is True  # row 1 is all padding
    assert r.rank is None and r.replayable
    assert any("-Inf!" in s for s in r.op_inputs) and any("NaN!" in s for s in r.op_outputs)


def test_failure_leaves_user_state_as_the_step_left_it():
    torch.manual_seed(0)
    model = Net()
    init = {k: v.clone() for k, v in model.state_dict().items()}
    x, pad = _data(bad_row=1)
    out = []
    for watched in (False, True):
        model.load_state_dict(init)
        model.zero_grad(set_to_none=True)
        torch.manual_seed(5)
        if watched:
            with pytest.raises(NonFiniteError):
                NanWatch(model).run(_step(model), x, pad)
        else:
            _step(model)(x, pad)
        out.append(_state(model))
    for a, b in zip(out[0][0] + out[0][1], out[1][0] + out[1][1], strict=True):
        assert torch.equal(a.nan_to_num(7.0), b.nan_to_num(7.0))
    assert torch.equal(out[0][2], out[1][2])


class _Norm(nn.Module):
    def forward(self, x):
        return torch.sqrt((x * x).sum(-1, keepdim=True))  # d/dx at 0: 0/0


class _BwdNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(4, 4)
        self.n = _Norm()
        self.b = nn.Linear(1, 1)

    def forward(self, x):
        return self.b(self.n(self.a(x) * 0))


def test_backward_producer_and_autograd_node():
    model = _BwdNet()

    def step(x):
        loss = model(x).mean()
        loss.backward()
        return loss

    with pytest.raises(NonFiniteError) as ei:
        NanWatch(model).run(step, torch.randn(2, 4))
    r = ei.value.report
    assert (r.module, r.phase) == ("n", "backward")
    assert r.op is not None and "SqrtBackward0" in r.op
    assert set(r.nonfinite_grads) == {"a.weight", "a.bias"}


def test_eager_mode_localizes_module_without_replay():
    torch.manual_seed(0)
    model = Net()
    x, pad = _data(bad_row=2)
    with pytest.raises(NonFiniteError, match="eager mode") as ei:
        NanWatch(model, mode="eager").run(_step(model), x, pad)
    assert ei.value.report.module == "attn" and ei.value.report.mode == "eager"


def test_loss_code_outside_the_model():
    lin = nn.Linear(4, 4)

    def step(x, sigma):
        loss = (lin(x) / sigma).pow(2).mean()
        loss.backward()
        return loss

    with pytest.raises(NonFiniteError, match="outside every module") as ei:
        NanWatch(lin).run(step, torch.randn(2, 4), torch.zeros(2, 1))
    assert ei.value.report.module is None and ei.value.report.op == "aten.div.Tensor"


def test_hooks_removed_when_step_raises():
    torch.manual_seed(0)
    model = Net()
    x, pad = _data(bad_row=1)
    calls = {"n": 0}

    def step(x, pad):
        calls["n"] += 1
        loss = model(x, pad).mean()
        loss.backward()
        if calls["n"] == 2:  # the replay raises
            raise KeyError("boom in replay")
        return loss

    with pytest.raises(NonFiniteError, match="replay raised KeyError") as ei:
        NanWatch(model, backward_hooks=False).run(step, x, pad)
    assert isinstance(ei.value.__cause__, KeyError)

    def bad_step(x, pad):
        model(x, pad)
        raise RuntimeError("user bug")

    with pytest.raises(RuntimeError, match="user bug"):  # never swallowed
        NanWatch(model, mode="eager").run(bad_step, x, pad)
    for m in model.modules():
        assert not m._forward_hooks and not m._forward_pre_hooks and not m._backward_hooks
        assert not m._backward_pre_hooks
    assert all(not p._backward_hooks for p in model.parameters())


def test_not_replayable_is_said_clearly():
    lin = nn.Linear(2, 1)
    calls = {"n": 0}

    def step(x):
        calls["n"] += 1
        scale = math.nan if calls["n"] == 1 else 1.0  # data differs on replay
        loss = lin(x).mean() * scale
        loss.backward()
        return loss

    with pytest.raises(NonFiniteError, match="not replayable") as ei:
        NanWatch(lin).run(step, torch.ones(3, 2))
    assert ei.value.report.replayable is False


def test_optimizer_step_inside_step_fn_is_not_replayable():
    lin = nn.Linear(2, 1)
    opt = torch.optim.SGD(lin.parameters(), lr=1e30)

    def step(x):
        loss = lin(x).pow(2).mean() * math.inf
        loss.backward()
        opt.step()
        return loss

    with pytest.raises(NonFiniteError, match=r"modified parameters in place"):
        NanWatch(lin).run(step, torch.ones(3, 2))


def test_bad_input_messages():
    with pytest.raises(NanWatchError, match="has no trainable parameters"):
        NanWatch(nn.ReLU())
    with pytest.raises(NanWatchError, match="unknown mode; valid modes: replay, eager"):
        NanWatch(nn.Linear(1, 1), mode="fast")
    lin = nn.Linear(2, 2)
    with pytest.raises(NanWatchError, match="returned NoneType, not a loss"):
        NanWatch(lin).run(lambda x: lin(x).sum().backward(), torch.ones(1, 2))
    with pytest.raises(NanWatchError, match=r"the loss must be a scalar, got shape \(1, 2\)"):
        NanWatch(lin).run(lambda x: lin(x), torch.ones(1, 2))
    with pytest.raises(NanWatchError, match=r"unknown key\(s\) \['mask'\]"):
        NanWatch(lin).run(lambda x: lin(x).sum(), torch.ones(1, 2), context={"mask": None})


def test_dict_and_tuple_results_are_returned_unchanged():
    lin = nn.Linear(2, 1)

    def step(x):
        loss = lin(x).mean()
        loss.backward()
        return {"loss": loss, "n": 3}

    out = NanWatch(lin).run(step, torch.ones(2, 2))
    assert out["n"] == 3
    assert NanWatch(lin).run(lambda x: (lin(x).mean(), 1), torch.ones(2, 2))[1] == 1


def test_grad_scaler_overflow_is_a_skip_not_a_fault():
    lin = nn.Linear(2, 1)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**16)
    watch = NanWatch(lin, scaler=scaler)

    def step(x):
        loss = lin(x).mean()
        scaler.scale(loss).backward()
        lin.weight.grad.fill_(math.inf)  # as an fp16 overflow of the scaled grads would
        return loss

    watch.run(step, torch.ones(2, 2))
    assert watch.last_status == "scaler_overflow" and watch.skipped_steps == 1
    lin.zero_grad()
    with pytest.raises(NonFiniteError):
        watch.run(lambda x: scaler.scale(lin(x).mean() * math.inf), torch.ones(2, 2))


def test_huge_but_finite_gradients_are_not_a_fault():
    lin = nn.Linear(4, 1)

    def step(x):
        loss = lin(x).mean()
        loss.backward()
        lin.weight.grad.fill_(1e30)  # L2 norm overflows float32; every element is finite
        return loss

    watch = NanWatch(lin)
    watch.run(step, torch.ones(2, 4))
    assert watch.last_status == "ok"


@pytest.mark.gpu
@pytest.mark.parametrize("mode", ["replay", "eager"])
def test_one_host_sync_per_healthy_step_on_cuda(mode):
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    from diagnostics import count_host_syncs

    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(64, nhead=4, dim_feedforward=128, batch_first=True)
    model = nn.TransformerEncoder(layer, num_layers=2, enable_nested_tensor=False).cuda()
    x = torch.randn(4, 20, 64, device="cuda")
    watch = NanWatch(model, mode=mode)

    def step():
        loss = model(x).pow(2).mean()
        loss.backward()
        return loss

    watch.run(step)  # first step: learns which buffers change
    model.zero_grad(set_to_none=True)
    bare = count_host_syncs(step)  # whatever the model's own step does
    model.zero_grad(set_to_none=True)
    assert count_host_syncs(lambda: watch.run(step)) == bare + 1
    assert watch.last_status == "ok"
