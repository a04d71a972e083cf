"""Models that change after a tool was built, and parameter dtypes beyond float32: NanWatch and
GradFlow read what the model holds at each step, not what it held when they were made."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from diagnostics import GradFlow, GradFlowError, NanWatch, NonFiniteError
from diagnostics._structure import structure_version


class SqrtAtZero(nn.Module):
    """Finite forward; sqrt at exactly 0 makes its weight's gradient Inf (backward only)."""

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.zeros(4))

    def forward(self, x):
        return torch.sqrt(self.w * self.w).sum() + x.sum()


def _step(model):
    def step(x):
        loss = model(x)
        loss = loss if loss.dim() == 0 else loss.sum()
        loss.backward()
        return loss

    return step


def test_the_count_moves_on_every_registration_and_changes_nothing():
    m = nn.Sequential(nn.Linear(2, 2))
    v = structure_version()
    head = nn.Linear(2, 3)
    m.append(head)
    assert structure_version() > v
    assert m[1] is head and [n for n, _ in m.named_parameters()][-1] == "1.bias"


def test_nanwatch_watches_a_head_swapped_in_after_it_was_built():
    model = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 4))
    watch = NanWatch(model)
    model[1] = SqrtAtZero()
    with pytest.raises(NonFiniteError) as exc:
        watch.run(_step(model), torch.randn(2, 4))
    assert exc.value.report.module == "1" and exc.value.report.phase == "backward"


@pytest.mark.parametrize("mode", ["replay", "eager"])
def test_nanwatch_watches_parameters_unfrozen_after_it_was_built(mode):
    model = nn.Sequential(SqrtAtZero(), nn.Linear(4, 1))
    model[0].requires_grad_(False)
    watch = NanWatch(model, mode=mode)
    model[0].requires_grad_(True)

    def step(x):
        loss = model[0](x) + model[1](x).sum()
        loss.backward()
        return loss

    with pytest.raises(NonFiniteError) as exc:
        watch.run(step, torch.randn(2, 4))
    assert exc.value.report.module == "0"


@pytest.mark.parametrize("dtype", [torch.float64, torch.complex64])
def test_nanwatch_healthy_step_of_double_and_complex_parameters(dtype):
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(torch.randn(4, dtype=dtype))
            self.lin = nn.Linear(4, 1).double()

        def forward(self, x):
            return self.lin((x * self.w).abs().double()).mean()

    model = Net()
    x = torch.randn(3, 4, dtype=dtype)
    loss = NanWatch(model).run(_step(model), x)
    assert torch.isfinite(loss)
    with torch.no_grad():
        model.w[0] = float("nan")
    with pytest.raises(NonFiniteError) as exc:
        NanWatch(model).run(_step(model), x)
    assert exc.value.report.kind == "nan"


def test_nanwatch_learns_a_buffer_that_starts_changing_after_the_first_step():
    class Counted(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(2, 1)
            self.register_buffer("seen", torch.zeros(()))
            self.calls = 0

        def forward(self, x):
            self.calls += 1
            if self.calls >= 2:  # starts counting after a warm-up
                self.seen += 1
            return self.lin(x).sum() / (3 - self.seen)  # Inf once seen reaches 3

    model = Counted()
    watch = NanWatch(model)
    x = torch.randn(2, 2)
    watch.run(_step(model), x)  # seen stays 0: not learned as changing
    watch.run(_step(model), x)  # seen 0 -> 1, no copy: learned now
    assert any(b is model.seen for b in watch._mutated_buffers)
    watch.run(_step(model), x)  # seen 1 -> 2: copied before the step from now on
    before = model.seen.clone()
    with pytest.raises(NonFiniteError) as exc:
        watch.run(_step(model), x)  # seen 2 -> 3: Inf; the replay restores seen = 2 first
    assert torch.equal(model.seen, before + 1)  # the user's post-step state, put back
    assert exc.value.report.replayable


def test_gradflow_reads_a_new_head_and_an_unfrozen_module():
    model = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 1))
    model[0].requires_grad_(False)
    gf = GradFlow(model)
    model[1] = nn.Linear(4, 2)
    model[0].requires_grad_(True)
    model(torch.randn(3, 4)).sum().backward()
    rep = gf.record()
    assert set(rep.param_norms) == {"0.weight", "0.bias", "1.weight", "1.bias"}
    assert rep.frozen == [] and rep.unused == []


def test_gradflow_share_of_tied_and_frozen_modules_and_a_typo():
    class Tied(nn.Module):
        def __init__(self):
            super().__init__()
            self.enc = nn.Embedding(10, 4)
            self.dec = nn.Linear(4, 10, bias=False)
            self.dec.weight = self.enc.weight  # tied
            self.frozen = nn.Linear(4, 4)
            self.frozen.requires_grad_(False)

        def forward(self, t):
            return self.dec(self.frozen(self.enc(t))).sum()

    model = Tied()
    gf = GradFlow(model)
    model(torch.tensor([1, 2, 3])).backward()
    rep = gf.record()
    assert rep.share("dec") == pytest.approx(1.0)  # the one weight, known by two names
    assert rep.share("enc") == pytest.approx(1.0)
    assert rep.share("frozen") == 0.0
    with pytest.raises(GradFlowError, match=r"prefix='encc'.*did you mean 'enc'\?"):
        rep.share("encc")


def test_gradflow_no_exploding_flag_against_a_history_of_zero_gradients():
    model = nn.Linear(2, 1)
    gf = GradFlow(model)
    for _ in range(3):
        model.zero_grad()
        (model(torch.randn(4, 2)).sum() * 0).backward()
        assert gf.record().total_norm == 0.0
    model.zero_grad()
    model(torch.randn(4, 2)).sum().backward()
    rep = gf.record()
    assert rep.total_norm > 0 and not rep.exploding and not rep.vanishing


def test_gradflow_does_not_call_a_module_frozen_since_unused():
    model = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 1))
    gf = GradFlow(model)
    model[0].requires_grad_(False)
    model.zero_grad()
    model(torch.randn(3, 4)).sum().backward()
    rep = gf.record()
    assert rep.unused == [] and set(rep.param_norms) == {"1.weight", "1.bias"}
    assert rep.frozen == ["0 (20 parameters)"]
