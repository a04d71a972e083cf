"""NanWatch on compiled models: cheap healthy path, eager replay on a failing step."""

import pytest
import torch
from torch import Tensor, nn

from diagnostics import NanWatch, NanWatchError, NonFiniteError


def _line_of(marker: str) -> int:
    with open(__file__) as f:
        hits = [i + 1 for i, line in enumerate(f) if line.rstrip().endswith(f"# <{marker}>")]
    assert len(hits) == 1
    return hits[0]


class Head(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 4)

    def forward(self, x, shift):
        return torch.log(self.lin(x) - shift)  # <producer>


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.inp = nn.Linear(4, 4)
        self.head = Head()

    def forward(self, x, shift):
        return self.head(torch.relu(self.inp(x)) + 1.0, shift)


def _step(model):
    def step(x, shift):
        loss = model(x, shift).mean()
        loss.backward()
        return loss

    return step


def _report(watch, step, *args):
    with pytest.raises(NonFiniteError) as ei:
        watch.run(step, *args)
    return ei.value.report


@pytest.mark.parametrize("where", ["whole", "submodule"])
def test_compiled_model_failure_is_localized_on_the_eager_modules(where):
    torch.manual_seed(0)
    net = Net()
    if where == "whole":
        model = torch.compile(net, backend="aot_eager")
    else:
        net.head = torch.compile(net.head, backend="aot_eager")
        model = net
    step = _step(model)
    watch = NanWatch(model)
    x = torch.randn(3, 4)
    watch.run(step, x, torch.tensor(-100.0))  # healthy, compiled
    assert watch.last_status == "ok"
    net.zero_grad()
    rep = _report(watch, step, x, torch.tensor(1e3))  # log of negatives: NaN
    assert (rep.module, rep.module_type, rep.phase) == ("head", "Head", "forward")
    assert rep.op == "aten.log.default" and rep.replayable
    assert (rep.source["file"], rep.source["line"]) == (__file__, _line_of("producer"))
    assert any(n.startswith("replay was eager") for n in rep.notes)


def test_healthy_compiled_steps_bit_identical_with_watch_on_and_off():
    results = []
    for watched in (False, True):
        torch.manual_seed(0)
        net = Net()
        model = torch.compile(net, backend="aot_eager")
        step = _step(model)
        watch = NanWatch(model)
        x = torch.randn(3, 4)
        losses = []
        for _ in range(3):
            out = (
                watch.run(step, x, torch.tensor(-10.0)) if watched else step(x, torch.tensor(-10.0))
            )
            losses.append(out.detach().clone())
        results.append(losses + [p.grad.clone() for p in net.parameters()])
    assert all(torch.equal(a, b) for a, b in zip(*results, strict=True))


def _nan_backend(gm, example_inputs):
    """A 'compiler' whose numerics differ from eager: it turns every float output into NaN."""

    def run(*args):
        out = gm(*args)
        return type(out)(o * float("nan") if isinstance(o, Tensor) else o for o in out)

    return run


def test_compiled_nan_that_the_eager_replay_does_not_reproduce():
    torch._dynamo.reset()
    torch.manual_seed(0)
    net = Net()
    model = torch.compile(net, backend=_nan_backend)
    rep = _report(NanWatch(model), _step(model), torch.randn(3, 4), torch.tensor(-100.0))
    assert rep.replayable is False and rep.module is None and rep.op is None
    assert rep.headline() == "NAN in this step, not localized (see the notes)"
    note = next(n for n in rep.notes if n.startswith("not reproduced eagerly"))
    assert "compiled numerics differ from eager" in note and "finite gradients" in note
    torch._dynamo.reset()


def test_eager_mode_on_a_compiled_model_is_refused():
    model = torch.compile(Net(), backend="aot_eager")
    with pytest.raises(NanWatchError, match=r"compiled_model, mode='eager'.*use mode='replay'"):
        NanWatch(model, mode="eager")


@pytest.mark.slow
def test_inductor_compiled_model_is_localized():
    torch._dynamo.reset()
    torch.manual_seed(0)
    net = Net()
    model = torch.compile(net, backend="inductor")
    rep = _report(NanWatch(model), _step(model), torch.randn(3, 4), torch.tensor(1e3))
    assert (rep.module, rep.op) == ("head", "aten.log.default")
    assert rep.source["line"] == _line_of("producer")
    torch._dynamo.reset()
