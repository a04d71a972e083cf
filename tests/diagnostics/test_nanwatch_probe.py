"""NanWatch probed with faults it had not seen: NaN in the data or in a buffer, an Inf made in a
parent's own code, values masked in forward, no_grad branches, model output objects, buffers
rebound or written without a version bump, compiled submodules, user RNGs, in-place ops, and a
step that cannot be run a fourth time. Each test failed before its fix."""

import functools
import math
import random
from collections import OrderedDict
from dataclasses import dataclass

import pytest
import torch
from torch import nn

from diagnostics import NanWatch, NanWatchError
from tests.diagnostics.nanwatch_helpers import assert_no_hooks, line_of, loss_step, report_of

_line_of = functools.partial(line_of, __file__)
_report = report_of
_step = loss_step
_no_hooks_left = assert_no_hooks


def _bn_model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 1))


def _data():
    return torch.randn(5, 3, generator=torch.Generator().manual_seed(1))


# -- 1. NaN in the data: the step's input, not "the step function's code" ---------------------
@pytest.mark.parametrize("mode", ["replay", "eager"])
def test_nan_in_the_data_is_named_as_the_steps_input(mode):
    model = _bn_model()
    x = _data()
    x[2, 1] = math.nan
    rep = _report(NanWatch(model, mode=mode), _step(model), x)
    head = (
        "NAN already in the step's input 'args[0]' (1 NaN of 15 values) before this step, not "
        "produced by it (check the data); first used by module '0' (Linear)"
    )
    assert rep.headline() == head + (" at op aten.addmm.default" if mode == "replay" else "")
    assert (rep.origin, rep.module, rep.nonfinite_inputs) == ("input", "0", [("args[0]", 1, 0, 15)])
    assert "non-finite step inputs: 'args[0]' (1 NaN of 15 values)" in str(rep)
    assert "first produced" not in str(rep)
    if mode == "replay":
        assert rep.bad_items == [2]
    _no_hooks_left(model)


def test_nan_in_a_nested_batch_is_named_by_its_path():
    model = _bn_model()
    x = _data()
    x[4, 0] = math.nan

    def step(batch, *, scale):
        loss = model(batch["x"]).pow(2).mean() * scale
        loss.backward()
        return loss

    rep = _report(NanWatch(model), step, {"x": x, "ids": torch.arange(5)}, scale=1.0)
    assert rep.origin == "input" and rep.nonfinite_inputs == [("args[0]['x']", 1, 0, 15)]
    assert rep.bad_items == [4]


@dataclass
class Batch:
    x: torch.Tensor
    y: torch.Tensor


def test_nan_in_a_dataclass_batch_is_named_by_its_field():
    model = _bn_model()
    x = _data()
    x[1, 2] = math.nan

    def step(*, batch):
        loss = (model(batch.x) - batch.y).pow(2).mean()
        loss.backward()
        return loss

    rep = _report(NanWatch(model), step, batch=Batch(x, torch.zeros(5, 1)))
    assert rep.headline().startswith(
        "NAN already in the step's input \"kwargs['batch'].x\" (1 NaN of 15 values) before this step"
    )
    assert rep.bad_items == [1]


class CleansThenLogs(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(3, 3)

    def forward(self, x):
        return torch.log(self.lin(torch.nan_to_num(x)) - 100)  # <cleans-then-logs>


def test_module_that_cleans_a_nan_input_and_makes_a_new_nan_is_named():
    """Its input held NaN, so the module-level rule cannot call it a producer: the whole-step op
    pass finds the op, and the module running it is named (it was 'outside every module')."""
    torch.manual_seed(0)
    model = CleansThenLogs()
    x = _data()
    x[0, 0] = math.nan
    rep = _report(NanWatch(model), _step(model), x)
    assert rep.headline() == (
        "NAN first produced in forward by module '' (root model) (CleansThenLogs) at op "
        "aten.log.default"
    )
    assert rep.source["line"] == _line_of("cleans-then-logs")
    assert rep.origin == "step" and rep.nonfinite_inputs == [("args[0]", 1, 0, 15)]
    assert rep.bad_items == [0, 1, 2, 3, 4]


def test_inf_in_the_data_is_listed_but_a_mask_like_inf_is_not_a_fault():
    """An Inf input is not an origin by itself (a -inf mask is a legitimate input): the op
    that made NaN of it is named, and the input is listed."""
    model = _bn_model()
    x = _data()
    x[3, 0] = math.inf
    rep = _report(NanWatch(model), _step(model), x)
    assert (rep.origin, rep.module, rep.op) == ("step", "1", "aten.native_batch_norm.default")
    assert rep.nonfinite_inputs == [("args[0]", 0, 1, 15)]
    assert any("the step's input(s) 'args[0]' held NaN/Inf before the step" in n for n in rep.notes)


# -- 2. NaN already in a buffer -----------------------------------------------------------------
def test_nan_in_a_buffer_before_the_step_is_named_as_a_buffer():
    """A bad batch leaves NaN in BatchNorm's running statistics; train mode does not read them,
    eval mode (a frozen BatchNorm) does: the NaN was not made by that step."""
    model = _bn_model()
    watch = NanWatch(model)
    x = _data()
    bad = x.clone()
    bad[2, 1] = math.nan
    assert _report(watch, _step(model), bad).origin == "input"
    model.zero_grad(set_to_none=True)
    watch.run(_step(model), x)  # train mode: the NaN running statistics are not read
    model.zero_grad(set_to_none=True)
    model[1].eval()
    rep = _report(watch, _step(model), x)
    assert rep.headline() == (
        "NAN already in buffers '1.running_mean' (4 NaN of 4 values), '1.running_var' (4 NaN of "
        "4 values) before this step, not produced by it; first used by module '1' (BatchNorm1d) "
        "at op aten.native_batch_norm.default"
    )
    assert rep.origin == "buffer"
    assert "non-finite buffers (before this step): '1.running_mean' (4 NaN of 4 values)" in str(rep)
    assert any("running statistics keep the NaN" in n for n in rep.notes)
    model.zero_grad(set_to_none=True)
    rep = _report(NanWatch(model, mode="eager"), _step(model), x)  # no pre-step copy: a note
    assert (rep.origin, rep.module) == ("step", "1")
    assert any(
        "module '1' holds NaN/Inf in buffer(s) '1.running_mean', '1.running_var' after the step"
        in n
        for n in rep.notes
    )


def test_buffers_written_without_a_version_bump_are_copied_before_each_step():
    """native_batch_norm updates the running statistics without moving their version counter:
    learned by value on the first step, so a later failing step knows their pre-step values
    (the NaN the failing step itself wrote into them is not taken as being there before)."""
    model = _bn_model()
    watch = NanWatch(model)
    x = _data()
    watch.run(_step(model), x)
    model.zero_grad(set_to_none=True)
    bad = x.clone()
    bad[0, 0] = math.nan
    rep = _report(watch, _step(model), bad)
    assert model[1].running_mean.isnan().all()  # what the user's step left
    assert (rep.origin, rep.nonfinite_buffers) == ("input", [])
    assert not any("buffer" in n for n in rep.notes)


def test_op_pass_of_a_batchnorm_runs_from_the_running_statistics_of_its_call():
    """The op pass re-runs the module with its buffers as they were at the call (not as the
    replay left them), and an input the op wrote into shows its value before the op."""
    model = _bn_model()
    x = _data()
    x[3, 0] = math.inf
    rep = _report(NanWatch(model), _step(model), x)
    assert rep.op == "aten.native_batch_norm.default"
    assert not any("did not reproduce" in n for n in rep.notes)
    written = [s for s in rep.op_inputs if "written by this op" in s]
    assert written == [
        "tensor[4] f32 cpu n=4 all non-finite +Inf!1 -Inf!3  (written by this op; max|x| "
        "before it: 0)",
        "tensor[4] f32 cpu n=4 all non-finite NaN!4  (written by this op; max|x| before it: 1)",
    ]


# -- 3. an Inf made in a parent's own code ------------------------------------------------------
class LogInParent(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(4, 4)
        self.b = nn.Linear(4, 4)
        self.h = nn.Linear(4, 1)

    def forward(self, x):
        h = torch.relu(self.a(x))
        h = torch.log(h)  # <parent-log>
        return self.h(self.b(h))  # b turns -inf into NaN (inf - inf)


@pytest.mark.parametrize("mode", ["replay", "eager"])
def test_inf_made_in_a_parents_own_code_is_not_blamed_on_the_child(mode):
    torch.manual_seed(0)
    model = LogInParent()
    rep = _report(NanWatch(model, mode=mode), _step(model), torch.randn(4, 4))
    if mode == "eager":  # no op pass: the child is named, with what is known
        assert rep.module == "b"
        assert any("made NaN of an input that already held Inf" in n for n in rep.notes)
        return
    assert rep.headline() == (
        "INF first produced in forward by module '' (root model) (LogInParent) at op "
        "aten.log.default"
    )
    assert rep.source["line"] == _line_of("parent-log")
    assert rep.candidates[:2] == ["", "b"]
    assert any(
        "module 'b' completed first with a non-finite output, but only turned into NaN an Inf "
        "made earlier by the root model's own code (op aten.log.default)" in n
        for n in rep.notes
    )
    _no_hooks_left(model)


class MaskThenSoftmax(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.q = nn.Linear(4, 4)
        self.softmax = nn.Softmax(-1)

    def forward(self, x, pad):
        sc = self.q(x) @ x.transpose(1, 2)
        sc = sc.masked_fill(pad[:, None, :], -math.inf)  # a mask: not a fault
        return self.softmax(sc) @ x


def test_softmax_of_a_fully_masked_row_in_a_child_stays_the_producer():
    torch.manual_seed(0)
    model = MaskThenSoftmax()
    x = torch.randn(2, 3, 4)
    pad = torch.zeros(2, 3, dtype=torch.bool)
    pad[1] = True

    def step(x, pad):
        loss = model(x, pad).pow(2).mean()
        loss.backward()
        return loss

    rep = _report(NanWatch(model), step, x, pad)
    assert (rep.module, rep.op) == ("softmax", "aten._softmax.default")


# -- 4. values masked in forward, and values outside autograd -----------------------------------
class WhereSqrt(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 4)

    def forward(self, x):
        h = self.lin(x)
        return torch.where(h > 0, torch.sqrt(h), torch.zeros_like(h))  # <where-sqrt>


def test_nan_masked_in_forward_that_reaches_the_gradient_names_the_forward_op():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 4), WhereSqrt(), nn.Linear(4, 1))
    rep = _report(NanWatch(model), _step(model), torch.randn(4, 4))
    assert rep.headline() == (
        "NAN first produced in backward by module '1' (WhereSqrt): the gradient of a value that "
        "op aten.sqrt.default made non-finite in forward and the forward masked"
    )
    assert rep.masked_forward["op"] == "aten.sqrt.default"
    assert rep.source["line"] == _line_of("where-sqrt")
    assert any("torch.where(h > 0, h, 1).sqrt()" in n for n in rep.notes)
    assert not any("did not reproduce" in n for n in rep.notes)


def test_nan_masked_in_the_step_functions_forward_code_is_named_the_same_way():
    torch.manual_seed(0)
    lin = nn.Linear(4, 4)

    def step(x):
        h = lin(x)
        loss = torch.where(h > 0, torch.sqrt(h), torch.zeros_like(h)).mean()  # <loss-where>
        loss.backward()
        return loss

    rep = _report(NanWatch(lin), step, torch.randn(4, 4))
    assert rep.headline() == (
        "NAN first produced in backward by outside every module (step function code): the "
        "gradient of a value that op aten.sqrt.default made non-finite in forward and the "
        "forward masked"
    )
    assert (rep.module, rep.phase, rep.source["line"]) == (None, "backward", _line_of("loss-where"))


class MetricAndSqrt(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(4, 4)
        self.metric = Log0()
        self.h = nn.Linear(4, 1)

    def forward(self, x):
        h = self.a(x)
        with torch.no_grad():
            self.last_metric = self.metric(h).mean()  # -inf, only logged
        return self.h(torch.sqrt(h * 0))  # <sqrt-at-zero>


class Log0(nn.Module):
    def forward(self, h):
        return torch.log(h.abs() * 0)


def test_forward_nan_outside_autograd_is_not_blamed_for_a_backward_fault():
    torch.manual_seed(0)
    model = MetricAndSqrt()
    rep = _report(NanWatch(model), _step(model), torch.randn(4, 4))
    assert (rep.phase, rep.module, rep.op) == ("backward", "", "aten.div.Tensor in SqrtBackward0")
    assert rep.source["line"] == _line_of("sqrt-at-zero")
    assert any(
        "module(s) 'metric' made NaN/Inf in forward outside autograd" in n for n in rep.notes
    )


# -- 5. model output objects -------------------------------------------------------------------
@dataclass
class Output:
    y: torch.Tensor
    aux: torch.Tensor


class ModelOutput(OrderedDict):
    """Like transformers' ModelOutput: a dict subclass pytree does not know."""


class SqrtEncoder(nn.Module):
    def __init__(self, kind: str) -> None:
        super().__init__()
        self.kind = kind
        self.lin = nn.Linear(4, 4)

    def forward(self, x):
        y = torch.sqrt(self.lin(x) - 10)
        return Output(y, y.sum()) if self.kind == "dataclass" else ModelOutput(y=y, aux=y.sum())


class Top(nn.Module):
    def __init__(self, kind: str) -> None:
        super().__init__()
        self.enc = SqrtEncoder(kind)
        self.head = nn.Linear(4, 1)

    def forward(self, x):
        out = self.enc(x)
        return self.head(out["y"] if isinstance(out, dict) else out.y)


@pytest.mark.parametrize("mode", ["replay", "eager"])
@pytest.mark.parametrize("kind", ["dataclass", "dict-subclass"])
def test_module_returning_an_output_object_is_named(kind, mode):
    torch.manual_seed(0)
    model = Top(kind)
    rep = _report(NanWatch(model, mode=mode), _step(model), torch.randn(3, 4))
    assert rep.module == "enc"
    if mode == "replay":
        assert rep.op == "aten.sqrt.default" and rep.bad_items == [0, 1, 2]


# -- 6. state the replays must leave as the step left it ----------------------------------------
class Rebinding(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(4, 4)
        self.h = nn.Linear(4, 1)
        self.register_buffer("ema", torch.zeros(4))
        self.register_buffer("count", torch.zeros(()))

    def forward(self, x):
        h = self.a(x)
        self.ema = 0.5 * self.ema + 0.5 * h.detach().mean(0)  # rebinds, not in place
        self.count = self.count + 1
        return self.h(torch.sqrt(h + 5 - 0.1 * self.count + 0 * self.ema))


def test_buffer_rebound_by_the_step_is_left_as_the_step_left_it():
    results = []
    for watched in (False, True):
        torch.manual_seed(0)
        model = Rebinding()
        watch = NanWatch(model)
        for i in range(3):
            x = torch.randn(4, 4) * (100 if i == 2 else 0.01)
            model.zero_grad(set_to_none=True)
            if watched and i == 2:
                rep = _report(watch, _step(model), x)
            elif watched:
                watch.run(_step(model), x)
            else:
                _step(model)(x)
        results.append([b.clone() for b in model.buffers()])
    assert rep.replayable and (rep.module, rep.op) == ("", "aten.sqrt.default")
    assert all(torch.equal(a, b) for a, b in zip(*results, strict=True))
    assert float(results[1][1]) == 3.0  # one count per step: the replays did not add theirs


def test_compiled_submodule_attributes_are_not_reported_or_replaced():
    """A compile wrapper's ``dynamo_ctx`` compares by identity: a copy of it always looked
    changed, was named in the notes and replaced the user's object with the copy."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 4), nn.Linear(4, 1))
    model[1] = torch.compile(model[1], backend="aot_eager")
    ctx = model[1].dynamo_ctx

    def step(x):
        loss = torch.log(model(x) - 100).mean()
        loss.backward()
        return loss

    rep = _report(NanWatch(model), step, torch.randn(2, 4))
    assert rep.op == "aten.log.default"
    assert not any("module attributes changed" in n for n in rep.notes)
    assert model[1].dynamo_ctx is ctx


def test_a_generator_and_random_given_as_stateful_are_not_advanced_by_the_replays():
    def run(stateful, watched):
        torch.manual_seed(0)
        random.seed(3)
        gen = torch.Generator().manual_seed(5)
        lin = nn.Linear(4, 1)

        def step(x):
            noise = torch.randn(x.shape, generator=gen) * random.random()
            loss = torch.sqrt(lin(x + noise) - 10).mean()
            loss.backward()
            return loss

        x = torch.randn(4, 4)
        if watched:
            rep = _report(NanWatch(lin, stateful=[gen, random] if stateful else []), step, x)
            assert rep.op == "aten.sqrt.default"
        else:
            step(x)
        return gen.get_state(), random.getstate()

    bare = run(False, watched=False)
    kept = run(True, watched=True)
    assert torch.equal(kept[0], bare[0]) and kept[1] == bare[1]
    advanced = run(False, watched=True)
    assert not torch.equal(advanced[0], bare[0])  # why they belong in stateful
    with pytest.raises(NanWatchError, match=r"get_state\(\)/set_state\(\)"):
        NanWatch(nn.Linear(2, 2), stateful=[object()])


# -- 7. in-place ops, a step that cannot run again, eager mode with an optimizer step ---------
class SqrtInPlace(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(4, 4)
        self.b = nn.Linear(4, 1)

    def forward(self, x):
        h = self.a(x)
        h.sqrt_()
        return self.b(h)


def test_op_inputs_written_by_the_op_show_their_value_before_it():
    torch.manual_seed(0)
    model = SqrtInPlace()
    rep = _report(NanWatch(model), _step(model), torch.randn(4, 4))
    assert rep.op == "aten.sqrt_.default"
    (line,) = rep.op_inputs
    assert (
        "NaN!" in line and line.endswith(")") and "(written by this op; max|x| before it: " in line
    )
    assert "NaN" not in line.split("(written")[1]  # the value it read was NaN-free


def test_a_step_that_cannot_run_a_fourth_time_still_gives_a_report():
    """The whole-step op pass is one more run of the step; an exception there (a data
    iterator run dry) is noted instead of escaping from watch.run."""
    lin = nn.Linear(4, 1)
    bad = torch.full((2, 4), -1.0)
    batches = iter([bad, bad])  # the step and replay 1; the op pass finds none left

    def step():
        loss = torch.sqrt(lin(next(batches)) * 0 - 1).mean()
        loss.backward()
        return loss

    rep = _report(NanWatch(lin), step)
    assert rep.module is None and rep.phase == "forward"
    assert any("the op pass over the whole step raised StopIteration" in n for n in rep.notes)
    _no_hooks_left(lin)


def test_eager_mode_says_that_parameter_origin_assumes_no_optimizer_step():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 1))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)

    def step(x):
        opt.zero_grad()
        loss = model(x).pow(2).mean()
        loss.backward()
        opt.step()
        return loss

    NanWatch(model, mode="eager").run(step, torch.randn(4, 4))
    rep = _report(NanWatch(model, mode="eager"), step, torch.randn(4, 4) * 1e30)
    assert rep.module is None and rep.nonfinite_params  # the step's own optimizer wrote them
    assert any(
        "'before this step' assumes step_fn runs no optimizer.step()" in n for n in rep.notes
    )
    rep = _report(NanWatch(model), step, torch.randn(4, 4))
    assert any("cannot tell values the optimizer step wrote" in n for n in rep.notes)
