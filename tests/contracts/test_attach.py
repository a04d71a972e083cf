"""contracts.attach: contracts on code we don't own, removed cleanly."""

from __future__ import annotations

import gc
import itertools
import types
import weakref

import pytest
import torch
from jaxtyping import Float, Float32
from torch import Tensor, nn

import contracts
from contracts import ContractError


def test_attach_to_torch_module_and_remove():
    lin = nn.Linear(16, 4)
    original = nn.Linear.forward
    handle = contracts.attach(
        nn.Linear, "forward", input=Float[Tensor, "*b 16"], returns=Float[Tensor, "*b 4"]
    )
    try:
        assert lin(torch.zeros(3, 16)).shape == (3, 4)
        with pytest.raises(ContractError, match=r"Linear.forward\(\): argument 'input', axis 1"):
            lin(torch.zeros(3, 8))
    finally:
        handle.remove()
    assert nn.Linear.forward is original
    handle.remove()  # idempotent
    assert "removed" in repr(handle)


def test_attach_context_manager_removes_on_exception():
    original = nn.Linear.forward
    with pytest.raises(ContractError):
        with contracts.attach(nn.Linear, "forward", input=Float[Tensor, "B 2"]):
            nn.Linear(2, 2)(torch.zeros(1, 3))
    assert nn.Linear.forward is original


def test_attach_on_subclass_does_not_touch_base():
    class Mine(nn.Linear):
        pass

    with contracts.attach(Mine, "forward", input=Float[Tensor, "B 2"]):
        nn.Linear(3, 1)(torch.zeros(1, 3))  # base class unaffected
        with pytest.raises(ContractError):
            Mine(3, 1)(torch.zeros(1, 3))
    assert "forward" not in Mine.__dict__


def test_attach_bad_parameter_name():
    with pytest.raises(TypeError, match="has no parameter inputs; its parameters are self, input"):
        contracts.attach(nn.Linear, "forward", inputs=Float[Tensor, "B 2"])
    with pytest.raises(TypeError, match="has no attribute 'fwd'"):
        contracts.attach(nn.Linear, "fwd")


# --- several attachments on one attribute, removed in any order -------------------------------


class _Net(nn.Module):
    def forward(self, x):
        return x


_CONTRACTS = {  # each refuses one of the probes below and accepts the others
    "B2": Float[Tensor, "B 2"],  # refuses (3, 5)
    "3F": Float[Tensor, "3 F"],  # refuses (4, 2)
    "f32": Float32[Tensor, "B F"],  # refuses float64
}
_PROBES = {
    "B2": lambda: torch.zeros(3, 5),
    "3F": lambda: torch.zeros(4, 2),
    "f32": lambda: torch.zeros(3, 2, dtype=torch.float64),
}


def _active(model: nn.Module) -> set[str]:
    """The contracts that refuse their probe now."""
    out = set()
    for name, probe in _PROBES.items():
        try:
            model(probe())
        except ContractError:
            out.add(name)
    return out


@pytest.mark.parametrize("order", list(itertools.permutations(range(3))))
def test_stacked_attachments_removed_in_any_order(order):
    """Regression: removing the first of two attachments removed both, and removing the
    second then put the first one's wrapper back (first-in-first-out removal)."""
    original = _Net.__dict__["forward"]
    names = list(_CONTRACTS)
    handles = [contracts.attach(_Net, "forward", x=_CONTRACTS[n]) for n in names]
    model = _Net()
    assert _active(model) == set(names)
    assert model(torch.zeros(3, 2)).shape == (3, 2)  # all three accept it
    left = set(names)
    try:
        for i in order:
            handles[i].remove()
            left.discard(names[i])
            assert _active(model) == left, (order, i)
            assert not handles[i].active
    finally:
        for h in handles:
            h.remove()
    assert _Net.__dict__["forward"] is original


def test_first_in_first_out_removal_of_two():
    original = _Net.__dict__["forward"]
    h1 = contracts.attach(_Net, "forward", x=_CONTRACTS["B2"])
    h2 = contracts.attach(_Net, "forward", x=_CONTRACTS["3F"])
    h1.remove()
    assert _active(_Net()) == {"3F"}
    h1.remove()  # idempotent: touches nothing
    assert _active(_Net()) == {"3F"}
    h2.remove()
    assert _active(_Net()) == set()
    assert _Net.__dict__["forward"] is original


def test_attach_to_instance_restores_the_instance():
    """Regression: removing a contract attached to one instance left a bound method in the
    instance's __dict__."""
    lin = nn.Linear(2, 2)
    before = dict(vars(lin))
    h1 = contracts.attach(lin, "forward", input=Float[Tensor, "B 2"])
    h2 = contracts.attach(lin, "forward", input=Float[Tensor, "3 F"])
    with pytest.raises(ContractError, match=r"^Linear\.forward\(\): argument 'input', axis 0"):
        lin(torch.zeros(4, 2))
    nn.Linear(2, 2)(torch.zeros(4, 2))  # other instances and the class are untouched
    assert "forward" not in nn.Linear.__dict__ or nn.Linear.__dict__["forward"] is not None
    h1.remove()
    h2.remove()
    assert vars(lin).keys() == before.keys() and "forward" not in vars(lin)
    assert lin.forward.__func__ is nn.Linear.forward
    lin(torch.zeros(4, 2))


def test_instance_attribute_it_owned_is_put_back():
    class Holder:
        pass

    obj = Holder()

    def fn(x):
        return x

    obj.fn = fn
    with contracts.attach(obj, "fn", x=Float[Tensor, "B 2"]):
        with pytest.raises(ContractError):
            obj.fn(torch.zeros(1, 3))
    assert vars(obj) == {"fn": fn}


class _Static:
    @staticmethod
    def s(x):
        return x

    @classmethod
    def c(cls, x):
        return x


class _StaticSub(_Static):
    pass


@pytest.mark.parametrize("owner", [_Static, _StaticSub])
@pytest.mark.parametrize("attribute", ["s", "c"])
def test_static_and_class_methods_stack_and_restore(owner, attribute):
    """Inherited descriptors stay descriptors (a staticmethod seen through a subclass used to
    be installed as a plain function, i.e. an instance method)."""
    before = dict(vars(owner))
    h1 = contracts.attach(owner, attribute, x=Float[Tensor, "B 2"])
    h2 = contracts.attach(owner, attribute, x=Float[Tensor, "3 F"])
    for call in (getattr(owner, attribute), getattr(owner(), attribute)):
        assert call(torch.zeros(3, 2)).shape == (3, 2)
        with pytest.raises(ContractError):
            call(torch.zeros(4, 2))
    h1.remove()
    getattr(owner(), attribute)(torch.zeros(3, 5))  # only "3 F" left
    with pytest.raises(ContractError):
        getattr(owner, attribute)(torch.zeros(4, 2))
    h2.remove()
    assert dict(vars(owner)) == before


def test_module_function_stacked():
    mod = types.ModuleType("_attach_probe")

    def f(x):
        return x

    mod.f = f
    h1 = contracts.attach(mod, "f", x=Float[Tensor, "B 2"])
    with contracts.attach(mod, "f", x=Float[Tensor, "3 F"]):
        with pytest.raises(ContractError):
            mod.f(torch.zeros(3, 5))
        h1.remove()
        mod.f(torch.zeros(3, 5))
    assert mod.f is f


def test_attachment_on_a_dropped_instance_does_not_keep_it_alive():
    lin = nn.Linear(2, 2)
    contracts.attach(lin, "forward", input=Float[Tensor, "B 2"])
    ref = weakref.ref(lin)
    del lin
    gc.collect()
    assert ref() is None


def test_attribute_replaced_after_attach_is_left_alone():
    mod = types.ModuleType("_attach_probe2")

    def f(x):
        return x

    def g(x):
        return x

    mod.f = f
    h1 = contracts.attach(mod, "f", x=Float[Tensor, "B 2"])
    mod.f = g  # someone else's patch, on top of ours
    h2 = contracts.attach(mod, "f", x=Float[Tensor, "3 F"])  # a new stack over g
    h1.remove()
    with pytest.raises(ContractError):  # h2 still active
        mod.f(torch.zeros(4, 2))
    h2.remove()
    assert mod.f is g  # what was there when h2 attached; h1's removal did not clobber it
