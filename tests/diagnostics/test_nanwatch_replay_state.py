"""Replays without side effects: after a NonFiniteError, a GradScaler, stateful objects and module
attributes are what the user's single step left, not what the replays made of them."""

import pytest
import torch
from torch import nn

from diagnostics import NanWatch, NanWatchError, NonFiniteError


class LogNet(nn.Module):
    """log of a negative activation: a forward NaN producer; counts its calls (Python state)."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(3, 3)
        self.calls = 0
        self.last_mean = 0.0

    def forward(self, x):
        self.calls += 1
        h = self.lin(x)
        self.last_mean = round(float(h.detach().mean()), 3)
        return torch.log(h - 100.0)  # NaN: every value is negative


def _setup():
    torch.manual_seed(0)
    model = LogNet()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**16, growth_interval=1)
    return model, opt, scaler


class Counter:
    """A user object with state_dict/load_state_dict that step_fn advances."""

    def __init__(self) -> None:
        self.n = 0

    def state_dict(self):
        return {"n": self.n}

    def load_state_dict(self, sd):
        self.n = sd["n"]


def _run(watched: bool):
    model, opt, scaler = _setup()
    counter = Counter()
    x = torch.randn(4, 3)

    def step(x):
        loss = model(x).mean()
        scaler.scale(loss).backward()
        scaler.unscale_(opt)  # e.g. for gradient clipping
        scaler.update()  # grows the scale (finite gradients, growth_interval=1)
        opt.param_groups[0]["lr"] *= 0.5  # a schedule inside the step
        counter.n += 1
        return loss

    report = None
    if watched:
        watch = NanWatch(model, scaler=scaler, stateful=[opt, counter])
        with pytest.raises(NonFiniteError) as ei:
            watch.run(step, x)
        report = ei.value.report
    else:
        step(x)
    state = {
        "scale": float(scaler.get_scale()),
        "growth": int(scaler._growth_tracker),
        "lr": opt.param_groups[0]["lr"],
        "counter": counter.n,
        "calls": model.calls,
        "last_mean": model.last_mean,
        "stage": dict(scaler._per_optimizer_states),
    }
    return state, report


def test_scaler_stateful_and_attributes_are_what_the_single_step_left():
    plain, _ = _run(watched=False)
    watched, rep = _run(watched=True)
    assert plain["scale"] == 2.0**17  # the single step grew the scale (growth_interval=1)
    assert watched == plain
    assert (rep.module, rep.phase, rep.op) == ("", "forward", "aten.log.default")
    assert rep.replayable, rep.notes


def test_module_attribute_changed_by_the_replay_is_named_in_notes():
    _, rep = _run(watched=True)
    note = next(n for n in rep.notes if "module attributes changed" in n)
    assert "calls (1 -> " in note  # the replays counted again; the step's value is back
    assert "last_mean" not in note  # same value in the replay: nothing to say


def test_without_stateful_the_replays_change_the_user_object():
    """The restore is what makes the difference (this test fails if restoring is a no-op)."""
    model, _opt, _scaler = _setup()
    counter = Counter()

    def step(x):
        loss = model(x).mean()
        loss.backward()
        counter.n += 1
        return loss

    with pytest.raises(NonFiniteError):
        NanWatch(model).run(step, torch.randn(4, 3))
    assert counter.n > 1  # replayed without being restored
    counter.n = 0
    with pytest.raises(NonFiniteError):
        NanWatch(model, stateful=[counter]).run(step, torch.randn(4, 3))
    assert counter.n == 1


def test_healthy_steps_with_scaler_and_stateful_are_bit_identical():
    results = []
    for watched in (False, True):
        torch.manual_seed(0)
        lin = nn.Linear(3, 2)
        opt = torch.optim.Adam(lin.parameters(), lr=1e-2)
        scaler = torch.amp.GradScaler("cpu", init_scale=4.0)
        x = torch.randn(5, 3)

        def step(x, lin=lin, scaler=scaler):
            loss = lin(x).pow(2).mean()
            scaler.scale(loss).backward()
            return loss

        watch = NanWatch(lin, scaler=scaler, stateful=[opt])
        for _ in range(3):
            opt.zero_grad()
            watch.run(step, x) if watched else step(x)
            scaler.step(opt)
            scaler.update()
        results.append([p.detach().clone() for p in lin.parameters()] + [scaler._scale.clone()])
    assert all(torch.equal(a, b) for a, b in zip(*results, strict=True))


def test_stateful_must_have_state_dict():
    lin = nn.Linear(1, 1)
    with pytest.raises(NanWatchError, match=r"item 1 \(object\) has no state_dict\(\)"):
        NanWatch(lin, stateful=[torch.optim.SGD(lin.parameters(), lr=1.0), object()])
    with pytest.raises(NanWatchError, match="expected a list or tuple of objects, got SGD"):
        NanWatch(lin, stateful=torch.optim.SGD(lin.parameters(), lr=1.0))


def test_scaler_unscale_inside_step_does_not_break_the_replay():
    """Without restoring the scaler, the replay's second unscale_() raises."""
    model, opt, scaler = _setup()

    def step(x):
        loss = model(x).mean()
        scaler.scale(loss).backward()
        scaler.unscale_(opt)
        return loss

    with pytest.raises(NonFiniteError) as ei:
        NanWatch(model, scaler=scaler).run(step, torch.randn(4, 3))
    assert ei.value.report.replayable and ei.value.report.op == "aten.log.default"
    stage = scaler._per_optimizer_states[id(opt)]["stage"]
    assert stage.name == "UNSCALED"  # as the user's step left it: step()/update() still work
