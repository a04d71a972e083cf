"""report.source: the line of the user's code that produced the first non-finite value."""

import torch
from torch import nn

from diagnostics import NanWatch, NonFiniteError


def _line_of(marker: str) -> int:
    """Line number (1-based) of the line of this file that ends with ``# <marker>``."""
    with open(__file__) as f:
        hits = [i + 1 for i, line in enumerate(f) if line.rstrip().endswith(f"# <{marker}>")]
    assert len(hits) == 1, f"marker {marker!r} found {len(hits)} times"
    return hits[0]


class LogHead(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 4)

    def forward(self, x):
        h = self.lin(x)
        return torch.log(h - 1e3)  # <fwd-producer>


class SqrtAtZero(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 4)

    def forward(self, x):
        h = self.lin(x) * 0  # exact zeros: sqrt is finite forward, its gradient is inf
        return torch.sqrt(h)  # <bwd-producer>


def _raise(watch, step, *args):
    try:
        watch.run(step, *args)
    except NonFiniteError as e:
        return e.report
    raise AssertionError("expected a NonFiniteError")


def test_forward_producer_in_a_module_forward():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 4), LogHead())

    def step(x):
        loss = model(x).mean()
        loss.backward()
        return loss

    rep = _raise(NanWatch(model), step, torch.randn(2, 4))
    assert (rep.module, rep.op) == ("1", "aten.log.default")
    assert rep.source["file"] == __file__
    assert rep.source["line"] == _line_of("fwd-producer")
    assert rep.source["function"] == "forward"
    assert rep.source["code"].startswith("return torch.log(h - 1e3)")
    assert f"at {__file__}:{_line_of('fwd-producer')} in forward" in str(rep)
    md = rep.to_markdown()
    assert f"`{__file__}:{_line_of('fwd-producer')}`" in md


def test_forward_producer_in_the_step_functions_loss_code():
    lin = nn.Linear(4, 1)

    def step(x, sigma):
        out = lin(x)
        loss = (out / sigma).pow(2).mean()  # <loss-code>
        loss.backward()
        return loss

    rep = _raise(NanWatch(lin), step, torch.randn(3, 4), torch.zeros(3, 1))
    assert rep.module is None and rep.op == "aten.div.Tensor"
    assert (rep.source["file"], rep.source["line"]) == (__file__, _line_of("loss-code"))
    assert rep.source["function"] == "step"


def test_backward_producer_points_at_the_forward_line_that_made_the_node():
    torch.manual_seed(0)
    model = nn.Sequential(SqrtAtZero(), nn.Linear(4, 1))

    def step(x):
        loss = model(x).mean()
        loss.backward()
        return loss

    rep = _raise(NanWatch(model), step, torch.randn(2, 4))
    assert (rep.module, rep.phase) == ("0", "backward")
    assert "SqrtBackward0" in rep.op
    assert (rep.source["file"], rep.source["line"]) == (__file__, _line_of("bwd-producer"))
    assert f"forward call at {__file__}:{_line_of('bwd-producer')}" in str(rep)


def test_backward_producer_in_loss_code():
    lin = nn.Linear(4, 1)

    def step(x):
        out = lin(x) * 0
        loss = out.abs().sqrt().sum()  # <loss-sqrt>
        loss.backward()
        return loss

    rep = _raise(NanWatch(lin), step, torch.randn(2, 4))
    assert rep.phase == "backward" and rep.module is None
    assert (rep.source["file"], rep.source["line"]) == (__file__, _line_of("loss-sqrt"))


def test_healthy_step_does_not_turn_on_anomaly_mode():
    lin = nn.Linear(2, 1)
    seen = []

    def step(x):
        seen.append(torch.is_anomaly_enabled())
        loss = lin(x).mean()
        loss.backward()
        return loss

    NanWatch(lin).run(step, torch.ones(2, 2))
    assert seen == [False]


def test_eager_mode_backward_fault_from_parameter_gradients():
    """Eager mode has no backward hooks by default: the module called last in forward whose own
    parameter gradient is non-finite is named (here the Linear feeding the sqrt)."""
    torch.manual_seed(0)
    model = nn.Sequential(SqrtAtZero(), nn.Linear(4, 1))

    def step(x):
        loss = model(x).mean()
        loss.backward()
        return loss

    rep = _raise(NanWatch(model, mode="eager"), step, torch.randn(2, 4))
    assert (rep.module, rep.phase, rep.mode) == ("0.lin", "backward", "eager")
    assert any("parameter gradients after the step" in n for n in rep.notes)
    rep = _raise(NanWatch(model, mode="eager", backward_hooks=True), step, torch.randn(2, 4))
    assert (rep.module, rep.phase) == ("0", "backward")  # grad_output/grad_input per module


def test_eager_hooks_follow_parameters_frozen_and_unfrozen_between_steps():
    """The eager recorder is kept across steps, but which parameters need grad is read at each
    step: progressive unfreezing neither crashes the step (a hook on a frozen parameter) nor
    leaves an unfrozen parameter unwatched."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 1))
    watch = NanWatch(model, mode="eager", backward_hooks=True)
    hooked = []

    def step(x):
        hooked.append(bool(model[0].weight._backward_hooks))  # during the step, hooks are on
        loss = model(x).mean()
        loss.backward()
        return loss

    watch.run(step, torch.randn(2, 4))
    model[0].requires_grad_(False)
    watch.run(step, torch.randn(2, 4))
    model[0].requires_grad_(True)
    watch.run(step, torch.randn(2, 4))
    assert hooked == [True, False, True]
    assert not model[0].weight._backward_hooks  # and removed after the step
