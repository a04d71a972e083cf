"""check_null_condition: the null input's output in training mode vs eval mode."""

import pytest
import torch
from torch import nn

from diagnostics import NullConditionError, check_null_condition


class Net(nn.Module):
    """``forward(x, cond=None)``: ``cond=None`` is the learned null; with ``zero_null`` the
    inference code builds zeros instead. ``noisy`` adds train-mode noise to every output;
    ``extras`` adds dropout and batch norm."""

    def __init__(self, zero_null=False, noisy=False, extras=False):
        super().__init__()
        torch.manual_seed(0)
        self.zero_null, self.noisy = zero_null, noisy
        self.enc = nn.Linear(4, 8)
        self.null = nn.Parameter(torch.randn(8))
        layers = [nn.Linear(16, 16), nn.Tanh()]
        if extras:
            layers += [nn.Dropout(0.5), nn.BatchNorm1d(16)]
        self.body = nn.Sequential(*layers, nn.Linear(16, 3))

    def forward(self, x, cond=None):
        if cond is None:
            null = (
                torch.zeros_like(self.null) if self.zero_null and not self.training else self.null
            )
            e = null.expand(x.shape[0], -1)
        else:
            e = self.enc(cond)
        out = self.body(torch.cat([x, e], -1))
        if self.noisy and self.training:
            out = out + 0.5 * torch.randn_like(out)
        return out


def _batch():
    g = torch.Generator().manual_seed(1)
    return {"x": torch.randn(8, 8, generator=g), "cond": torch.randn(8, 4, generator=g)}


def test_null_built_differently_at_inference_is_flagged():
    rep = check_null_condition(Net(zero_null=True).eval(), _batch(), null={"cond": None})
    assert rep.differs and not rep.ok
    assert rep.args == ["arg:cond"] and rep.cond_change == 0.0 and rep.null_change > 0.01
    assert rep.message.startswith(
        "the null condition differs between training and inference: Net's unconditional "
        "output (arg:cond) changes by "
    )
    assert "the null that inference builds is not the one the model trained on" in rep.message
    assert str(rep).startswith("null condition: FLAG differs: ")


@pytest.mark.parametrize("kw", [{}, {"extras": True}, {"noisy": True}])
def test_healthy_models_are_not_flagged(kw):
    """Dropout/batch norm are held in eval mode; train-mode noise that moves the conditioned
    output as much is not the null's."""
    rep = check_null_condition(Net(**kw).eval(), _batch(), null={"cond": None})
    assert rep.ok, rep
    assert "in training and eval mode" in rep.message
    if not kw:
        assert rep.null_change == 0.0 and rep.message.startswith(
            "the null input (arg:cond) gives the same output in training and eval mode"
        )


def test_callable_null_and_forward():
    rep = check_null_condition(
        Net(zero_null=True),
        (_batch()["x"], _batch()["cond"]),
        null=lambda b: (b[0], None),
        forward=lambda m, b: m(*b),
    )
    assert rep.differs and rep.args == []


def test_model_left_as_found():
    model = Net(extras=True).train()
    model.body[0].eval()  # mixed modes are restored module by module
    bn = model.body[3]
    stats = (bn.running_mean.clone(), bn.running_var.clone(), bn.num_batches_tracked.clone())
    params = [p.detach().clone() for p in model.parameters()]
    rng = torch.get_rng_state()
    check_null_condition(model, _batch(), null={"cond": None})
    assert model.training and not model.body[0].training and model.body[2].training
    assert torch.equal(bn.running_mean, stats[0]) and torch.equal(bn.running_var, stats[1])
    assert torch.equal(bn.num_batches_tracked, stats[2])
    assert all(torch.equal(a, b) for a, b in zip(params, model.parameters(), strict=True))
    assert torch.equal(torch.get_rng_state(), rng)


class _Counting(nn.Module):
    """A model whose forward counts its training-mode calls in a buffer (nothing the check
    holds in eval mode), and draws noise in training mode."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(4, 3)
        self.register_buffer("calls", torch.zeros((), dtype=torch.long))

    def forward(self, x, cond=None):
        if self.training:
            self.calls += 1
        out = self.lin(x if cond is None else x + cond)
        return out + 0.1 * torch.randn_like(out) if self.training else out


def test_buffers_written_by_forward_and_every_rng_are_restored():
    model = _Counting().train()
    batch = {"x": torch.randn(2, 4), "cond": torch.randn(2, 4)}
    rng = torch.get_rng_state()
    queued = len(getattr(torch.cuda, "_queued_calls", []))
    check_null_condition(model, batch, null={"cond": None})
    assert int(model.calls) == 0  # the check's training-mode forwards are undone
    assert torch.equal(torch.get_rng_state(), rng)
    # no seed queued for CUDA devices not yet initialized (nothing would restore it)
    assert len(getattr(torch.cuda, "_queued_calls", [])) == queued


def test_bad_input_messages():
    m = Net()
    with pytest.raises(NullConditionError, match=r"null overrides 'c', which batch lacks"):
        check_null_condition(m, _batch(), null={"c": None})
    with pytest.raises(NullConditionError, match=r"null is a dict of overrides but batch is tuple"):
        check_null_condition(m, (1, 2), null={"cond": None})
    with pytest.raises(NullConditionError, match=r"null is int; give a dict of argument"):
        check_null_condition(m, _batch(), null=3)
    with pytest.raises(NullConditionError, match=r"Net's output is tuple, not a Tensor"):
        check_null_condition(m, _batch(), null={"cond": None}, forward=lambda m, b: (m(**b),))
