"""NanWatch on models it had not seen: built-in modules, NaN already in weights, uninitialised
memory, sparse gradients, user hooks, in-place writes, parameter-only gradients, stale
gradients, shared modules, and a wrong ``run`` argument."""

import functools
import math

import pytest
import torch
import torch.nn.modules.module as torch_module
import torch.utils.checkpoint
from torch import nn

import diagnostics._nanwatch._watch as watch_impl
from contracts import TorchdxError
from diagnostics import NanWatch, NanWatchError, NonFiniteError, summarize
from tests.diagnostics.nanwatch_helpers import assert_no_hooks, line_of, loss_step, report_of

_line_of = functools.partial(line_of, __file__)
_report = report_of
_step = loss_step
_no_hooks_left = assert_no_hooks


# -- 1. source line of a torch built-in module ----------------------------------------------
class Scaled(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(4, 4)
        self.norm = nn.LayerNorm(4)

    def forward(self, x):
        h = self.a(x) * 1e30  # finite, but its variance overflows float32
        return self.norm(h)  # <layernorm-call>


class ZeroWeight(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 4)
        with torch.no_grad():
            self.lin.weight.zero_()

    def forward(self, x):
        return self.lin(x)  # <linear-call>


def test_source_of_a_builtin_module_is_the_user_line_that_called_it():
    """nn.LayerNorm's op runs in torch's code only: the line is the user's call of the module,
    not watch.run (the op pass's caller) or a torch frame."""
    torch.manual_seed(0)
    model = Scaled()
    rep = _report(NanWatch(model), _step(model), torch.randn(2, 4))
    assert (rep.module, rep.op) == ("norm", "aten.native_layer_norm.default")
    assert (rep.source["file"], rep.source["line"]) == (__file__, _line_of("layernorm-call"))
    assert rep.source["function"] == "forward"
    assert f"at {__file__}:{_line_of('layernorm-call')} in forward" in str(rep)


def test_backward_source_of_a_builtin_module_is_the_forward_call_line():
    """An nn.Linear whose weight gradient overflows (finite grad_output, finite input): the
    forward call of the module, as detect_anomaly would show it from the user's side."""
    model = ZeroWeight()
    rep = _report(NanWatch(model), _step(model, 1e30), torch.full((2, 4), 1e10))
    assert (rep.module, rep.phase) == ("lin", "backward")
    assert "AddmmBackward0" in rep.op
    assert (rep.source["file"], rep.source["line"]) == (__file__, _line_of("linear-call"))
    assert f"forward call at {__file__}:{_line_of('linear-call')}" in str(rep)


# -- 2. NaN already in a parameter ------------------------------------------------------------
def _nan_weight_model():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 1))
    with torch.no_grad():
        model[2].weight[0, 1] = math.nan
    return model


def test_nan_already_in_a_parameter_is_named_not_blamed_on_its_user():
    model = _nan_weight_model()
    rep = _report(NanWatch(model), _step(model), torch.randn(2, 4))
    assert rep.headline() == (
        "NAN already in parameter '2.weight' (1 NaN of 4 values) before this step, not "
        "produced by it; first used by module '2' (Linear) at op aten.addmm.default"
    )
    assert "first produced" not in str(rep)
    assert (rep.origin, rep.nonfinite_params) == ("parameter", [("2.weight", 1, 0, 4)])
    assert "non-finite parameters (before this step): '2.weight' (1 NaN of 4 values)" in str(rep)
    rep = _report(NanWatch(model, mode="eager"), _step(model), torch.randn(2, 4))
    assert (rep.origin, rep.module, rep.nonfinite_params) == (
        "parameter",
        "2",
        [("2.weight", 1, 0, 4)],
    )


class LogWithSpare(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 1)
        self.spare = nn.Parameter(torch.tensor([math.inf, 1.0]), requires_grad=False)  # unused

    def forward(self, x):
        return torch.log(self.lin(x) - 100)  # NaN made by this step


def test_nonfinite_parameter_the_producer_does_not_use_is_only_noted():
    """The producer (the root) holds an Inf parameter, but its op pass finds the op that made
    the NaN from finite inputs: the step produced it."""
    torch.manual_seed(0)
    model = LogWithSpare()
    rep = _report(NanWatch(model), _step(model), torch.randn(2, 4))
    assert (rep.origin, rep.module, rep.op) == ("step", "", "aten.log.default")
    assert rep.headline().startswith("NAN first produced in forward by module ''")
    assert rep.nonfinite_params == [("spare", 0, 1, 2)]
    assert any("the first producer found does not use them" in n for n in rep.notes)


# -- 3. uninitialised memory ----------------------------------------------------------------
class PartlyWritten(nn.Module):
    def __init__(self, read: bool) -> None:
        super().__init__()
        self.a = nn.Linear(4, 4)
        self.read = read

    def forward(self, x):
        h = self.a(x)
        out = torch.empty(x.shape[0], 6)  # <empty-alloc>
        out[:, :4] = h  # columns 4 and 5 are never written
        if self.read:
            return out.sum(-1)  # <uninit-read>
        return out


@pytest.fixture
def nan_filled_empty():
    """Deterministic mode fills uninitialised memory with NaN: a reproducible stand-in for the
    arbitrary bits empty() returns."""
    was = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(was)


def test_empty_is_never_blamed_the_op_reading_its_memory_is(nan_filled_empty):
    torch.manual_seed(0)
    model = PartlyWritten(read=True)
    rep = _report(NanWatch(model), _step(model), torch.randn(2, 4))
    assert rep.op == "aten.sum.dim_IntList"  # not aten.empty.memory_format
    assert (rep.source["file"], rep.source["line"]) == (__file__, _line_of("uninit-read"))
    assert rep.uninitialized["op"] == "aten.empty.memory_format"
    assert rep.uninitialized["source"]["line"] == _line_of("empty-alloc")
    assert rep.headline().endswith(
        "at op aten.sum.dim_IntList, from uninitialised memory allocated by "
        "aten.empty.memory_format"
    )
    assert any(
        n.startswith("the non-finite values come from uninitialised memory") for n in rep.notes
    )


def test_uninitialised_memory_left_in_a_module_output_is_named(nan_filled_empty):
    torch.manual_seed(0)
    model = nn.Sequential(PartlyWritten(read=False), nn.Linear(6, 1))
    rep = _report(NanWatch(model), _step(model), torch.randn(2, 4))
    assert rep.module == "0" and rep.op is None
    assert rep.uninitialized["op"] == "aten.empty.memory_format"
    assert rep.source["line"] == _line_of("empty-alloc")
    assert any("it was never (fully) written" in n for n in rep.notes)


# -- 4. sparse gradients ----------------------------------------------------------------------
class SparseEmb(nn.Module):
    def __init__(self, shift: float) -> None:
        super().__init__()
        self.emb = nn.Embedding(10, 4, sparse=True)
        self.lin = nn.Linear(4, 1)
        self.shift = shift

    def forward(self, i):
        return torch.log(self.lin(self.emb(i)) - self.shift)


def _ids():
    return torch.tensor([[1, 2], [3, 4]])


def test_sparse_embedding_gradients_are_watched_and_localized():
    torch.manual_seed(0)
    healthy = SparseEmb(shift=-100.0)
    init = {k: v.clone() for k, v in healthy.state_dict().items()}

    def step(i):
        loss = healthy(i).mean()
        loss.backward()
        return loss

    grads = []
    for watch in (None, NanWatch(healthy), NanWatch(healthy, mode="eager", backward_hooks=True)):
        healthy.load_state_dict(init)
        healthy.zero_grad(set_to_none=True)
        loss = step(_ids()) if watch is None else watch.run(step, _ids())
        grads.append((loss.detach(), healthy.emb.weight.grad.to_dense()))
    assert all(torch.equal(g[0], grads[0][0]) and torch.equal(g[1], grads[0][1]) for g in grads)

    model = SparseEmb(shift=100.0)

    def bad_step(i):
        loss = model(i).mean()
        loss.backward()
        return loss

    rep = _report(NanWatch(model), bad_step, _ids())
    assert rep.replayable and (rep.module, rep.op) == ("", "aten.log.default")


# -- 5. user forward pre-hooks run once in the op pass ----------------------------------------
class Log(nn.Module):
    def forward(self, x):
        return torch.log(x)


def test_user_forward_pre_hook_runs_once_in_the_op_pass():
    """A pre-hook that shifts the input: the op pass must see the module's input shifted once
    (as in the step), so its op, op inputs and output are bit-identical to a normal call."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 4), Log())
    x = torch.randn(3, 4)
    outs, pre_calls, fwd_calls = [], [], []
    model[1].register_forward_pre_hook(lambda m, a: (pre_calls.append(1), (a[0] - 1,))[1])
    model[1].register_forward_hook(
        lambda m, a, o: (fwd_calls.append(1), outs.append(o.detach().clone()))[0]
    )
    rep = _report(NanWatch(model), _step(model), x)
    with torch.no_grad():
        expected = model[0](x) - 1  # what log sees in a normal call
    assert (rep.module, rep.op) == ("1", "aten.log.default")
    assert rep.op_inputs[0] == summarize(expected.requires_grad_())
    assert len(pre_calls) == len(fwd_calls) >= 3  # step, replay, op pass: once per call
    ref = outs[0]
    for o in outs[1:]:  # every call, the op pass's included, bit-identical (NaN == NaN)
        assert torch.equal(o.isnan(), ref.isnan()) and torch.equal(
            o.nan_to_num(7), ref.nan_to_num(7)
        )
    assert not any("other values" in n for n in rep.notes)


def test_global_forward_pre_hook_runs_once_in_the_op_pass():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 4), Log())
    x = torch.randn(3, 4)
    hook = torch_module.register_module_forward_pre_hook(
        lambda m, a: (a[0] - 1,) if isinstance(m, Log) else None
    )
    try:
        rep = _report(NanWatch(model), _step(model), x)
        assert len(torch_module._global_forward_pre_hooks) == 1  # put back after the op pass
    finally:
        hook.remove()
    with torch.no_grad():
        expected = model[0](x) - 1
    assert rep.op == "aten.log.default"
    assert rep.op_inputs[0] == summarize(expected.requires_grad_())


# -- 6. input summaries before an in-place write ----------------------------------------------
class ZeroInPlace(nn.Module):
    def forward(self, x):
        x.mul_(0)  # writes into its input
        return torch.log(x)


def test_input_summary_is_taken_before_the_module_writes_into_its_input():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 4), ZeroInPlace())
    x = torch.randn(3, 4)
    with torch.no_grad():
        seen = model[0](x)  # what ZeroInPlace received
    _step(model)(x)  # unwatched: what the step leaves
    bare = [p.grad.clone() for p in model.parameters()]
    model.zero_grad(set_to_none=True)
    rep = _report(NanWatch(model), _step(model), x)
    assert (rep.module, rep.op) == ("1", "aten.log.default")
    assert rep.inputs == [summarize(seen)]  # not the zeros it wrote over it
    assert "x∈[0, 0]" in rep.op_inputs[0]  # log's own input: the zeros
    _no_hooks_left(model)
    for a, p in zip(bare, model.parameters(), strict=True):  # the extra replay left no trace
        assert torch.equal(a.nan_to_num(7.0), p.grad.nan_to_num(7.0))


def test_extra_replay_that_raises_leaves_no_hooks_and_is_noted():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 4), ZeroInPlace())
    calls = []

    def step(x):
        calls.append(1)
        if len(calls) == 3:  # the step, replay 1, then the replay copying the inputs
            raise KeyError("boom in the extra replay")
        loss = model(x).pow(2).mean()
        loss.backward()
        return loss

    rep = _report(NanWatch(model), step, torch.randn(3, 4))
    assert (rep.module, rep.op) == ("1", "aten.log.default")
    assert any("could not copy the inputs of '1'" in n and "KeyError" in n for n in rep.notes)
    _no_hooks_left(model)


# -- 7. bad items from activations only -------------------------------------------------------
class SqrtParam(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.zeros(5))

    def forward(self, x):
        return x * torch.sqrt(self.w)  # d/dw sqrt(w) at 0: inf


class RowNorm(nn.Module):
    def forward(self, x):
        return torch.sqrt((x * x).sum(-1, keepdim=True))  # d/dx at a zero row: 0/0


def test_bad_items_are_not_read_off_a_parameter_gradient():
    torch.manual_seed(0)
    model = nn.Sequential(SqrtParam(), nn.Linear(5, 1))
    rep = _report(NanWatch(model), _step(model), torch.randn(3, 5))
    assert (rep.module, rep.phase) == ("0", "backward")
    assert rep.bad_items is None  # the gradient of w (shape [5]) has no batch axis


def test_bad_items_of_a_backward_producer_come_from_its_input_gradient():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 4), RowNorm(), nn.Linear(1, 1))
    mask = torch.tensor([[1.0], [0.0], [1.0]])  # row 1 reaches RowNorm as zeros

    def step(x):
        loss = model[2](model[1](model[0](x) * mask)).pow(2).mean()
        loss.backward()
        return loss

    rep = _report(NanWatch(model), step, torch.randn(3, 4))
    assert (rep.module, rep.phase) == ("1", "backward")
    assert rep.bad_items == [1]


# -- 8. stale gradients -----------------------------------------------------------------------
_STALE = (
    "NAN in the .grad of {} from before this step: it was non-finite before this step's "
    "backward (a stale gradient, not produced by this step; .grad accumulates: call "
    "optimizer.zero_grad() between steps)"
)


@pytest.mark.parametrize("mode", ["eager", "replay"])
def test_stale_grad_left_by_a_failed_step_is_reported_as_stale(mode):
    """The step after a failing one, without zero_grad(): its own gradients are finite, but they
    are added to the NaN gradients the failed step left."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 1))
    step = _step(model)
    watch = NanWatch(model, mode=mode)
    watch.run(step, torch.randn(2, 4))
    bad = torch.randn(2, 4)
    bad[0, 0] = math.nan
    with pytest.raises(NonFiniteError):
        watch.run(step, bad)  # NaN data: every gradient NaN, and left so
    rep = _report(watch, step, torch.randn(2, 4))
    names = ["0.weight", "0.bias", "1.weight", "1.bias"]
    assert rep.headline() == _STALE.format(", ".join(map(repr, names)))
    assert (rep.origin, rep.module, rep.op, rep.stale_grads) == ("stale_grad", None, None, names)
    assert rep.replayable and "stale non-finite grads (before this step's backward)" in str(rep)
    model.zero_grad(set_to_none=True)
    watch.run(step, torch.randn(2, 4))  # healthy again
    assert watch.last_status == "ok"


@pytest.mark.parametrize("mode", ["eager", "replay"])
def test_stale_grad_before_the_first_watched_step_is_reported_as_stale(mode):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 1))
    step = _step(model)
    step(torch.randn(2, 4))  # unwatched: gradients exist when the watch starts
    with torch.no_grad():
        model[0].weight.grad[0, 0] = math.nan
    rep = _report(NanWatch(model, mode=mode), step, torch.randn(2, 4))
    assert rep.headline() == _STALE.format("'0.weight'")
    assert (rep.origin, rep.module, rep.stale_grads) == ("stale_grad", None, ["0.weight"])


def test_stale_grad_does_not_hide_a_fault_of_the_step():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 4), Log())
    model[0](torch.rand(2, 4)).pow(2).mean().backward()  # unwatched, finite: grads exist
    with torch.no_grad():
        model[0].bias.grad[0] = math.inf
    rep = _report(NanWatch(model), _step(model), torch.randn(2, 4))
    assert (rep.origin, rep.module, rep.op) == ("step", "1", "aten.log.default")
    assert rep.stale_grads == ["0.bias"]
    assert any("was already non-finite before this step's backward" in n for n in rep.notes)


def test_gradients_are_not_checked_before_healthy_steps(monkeypatch):
    """The pre-step gradient check runs before a watch's first step and after a step that did
    not end healthy, never between healthy steps."""
    model = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 1))
    step = _step(model)
    calls = []
    real = watch_impl.nonfinite_grads
    monkeypatch.setattr(
        watch_impl, "nonfinite_grads", lambda *a, **k: (calls.append(1), real(*a, **k))[1]
    )
    watch = NanWatch(model)
    for _ in range(4):
        watch.run(step, torch.randn(2, 4))
    assert len(calls) == 1 and watch.last_status == "ok"


# -- 9. shared modules ------------------------------------------------------------------------
class Sqrt(nn.Module):
    def forward(self, x):
        return torch.sqrt(x)


class TwiceSqrt(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(4, 4)
        self.s = Sqrt()  # called twice
        self.b = nn.Linear(4, 4)

    def forward(self, x):
        h = self.s(self.a(x).abs() + 1)  # finite gradient
        return self.s(self.b(h) * 0)  # sqrt at 0: NaN gradient


class ShiftedSqrt(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.zeros(4))

    def forward(self, x, c):
        return x * torch.sqrt(self.w + c)


class TwiceShifted(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.s = ShiftedSqrt()  # called twice; only the first call's w-gradient is inf

    def forward(self, x):
        return self.s(x, 0.0) + self.s(x, 1.0)


def test_shared_module_backward_names_its_call_and_op():
    torch.manual_seed(0)
    model = TwiceSqrt()
    rep = _report(NanWatch(model), _step(model), torch.randn(2, 4))
    assert (rep.module, rep.phase) == ("s", "backward")
    assert rep.op is not None and "SqrtBackward0" in rep.op
    assert (rep.call_index, rep.call_count) == (2, 2)
    assert rep.headline().startswith(
        "NAN first produced in backward by module 's' (Sqrt, call 2 of 2) at op"
    )


def test_shared_module_parameter_gradient_names_the_call_that_made_it():
    torch.manual_seed(0)
    model = TwiceShifted()
    rep = _report(NanWatch(model), _step(model), torch.randn(2, 4))
    assert (rep.module, rep.phase) == ("s", "backward")
    assert rep.op is not None and "SqrtBackward0" in rep.op
    assert (rep.call_index, rep.call_count) == (1, 2)


class Checkpointed(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(4, 4)
        self.s = Sqrt()
        self.c = nn.Linear(4, 1)

    def forward(self, x):
        h = torch.utils.checkpoint.checkpoint(self.s, self.a(x) * 0, use_reentrant=False)
        return self.c(h)


def test_checkpoint_recompute_is_not_a_second_call():
    """Activation checkpointing re-runs the forward inside backward: not a shared module."""
    torch.manual_seed(0)
    model = Checkpointed()
    rep = _report(NanWatch(model), _step(model), torch.randn(2, 4))
    assert (rep.module, rep.phase, rep.call_index, rep.call_count) == ("s", "backward", None, None)
    assert "SqrtBackward0" in rep.op


# -- the op pass runs in the autocast region of the step -------------------------------------
def test_op_pass_runs_under_the_steps_autocast():
    """An fp16 overflow inside torch.autocast: re-run outside the autocast region the module
    would compute in float32 and produce nothing; the op pass re-enters the region."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 16), nn.Linear(16, 1))
    x = torch.randn(4, 16) * 1e5  # past float16's max (65504): autocast's cast makes Inf

    def step(x):
        with torch.autocast("cpu", dtype=torch.float16):
            out = model(x)
        loss = out.float().pow(2).mean()
        loss.backward()
        return loss

    rep = _report(NanWatch(model), step, x)
    assert (rep.module, rep.phase, rep.kind) == ("0", "forward", "inf")
    assert rep.op == "aten._to_copy.default"  # the float16 cast of the input
    assert not any("did not reproduce" in n or "other values" in n for n in rep.notes)


# -- 10. a step function that is not callable -------------------------------------------------
def test_run_rejects_a_non_callable_step_fn():
    lin = nn.Linear(2, 1)
    watch = NanWatch(lin)
    with pytest.raises(NanWatchError) as ei:
        watch.run(42)
    assert isinstance(ei.value, TorchdxError)
    assert str(ei.value) == (
        "NanWatch.run(step_fn): expected a callable (the step function), got int (42); hint: "
        "watch.run(step, *args) calls step(*args), which runs forward + backward and returns "
        "the loss; pass the function first, then its arguments"
    )
    loss = lin(torch.ones(1, 2)).sum()
    with pytest.raises(NanWatchError, match=r"got Tensor \(tensor\[\] f32.*not its result"):
        watch.run(loss)
    assert watch.steps == 0


# -- replay 2 failing on an in-place write ----------------------------------------------------
class ZeroSqrt(nn.Module):
    def forward(self, x):
        x.mul_(0)  # an in-place write into the input: full backward hooks refuse it
        return torch.sqrt(x)  # d/dx at 0: inf, times the zeroing: NaN


def test_replay_with_backward_hooks_failing_keeps_the_first_replays_gradients():
    """Replay 2 (full backward hooks) raises on the in-place write; the report falls back to
    replay 1, whose gradients are non-finite as the step's were: the step is replayable."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 4), ZeroSqrt(), nn.Linear(4, 1))
    rep = _report(NanWatch(model), _step(model), torch.randn(2, 4))
    assert rep.replayable and rep.phase == "backward"
    assert any("replay with full backward hooks failed" in n for n in rep.notes)
    assert not any("not replayable" in n for n in rep.notes)
    _no_hooks_left(model)
