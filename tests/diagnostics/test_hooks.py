"""Scoped hooks and the reductions the hooks use: HookSet, tensors_in, amax_abs, max_abs."""

import math
from collections import namedtuple

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn
from torch.utils._pytree import tree_flatten

from diagnostics import HookSet
from diagnostics._hooks import amax_abs, max_abs, tensors_in

Pair = namedtuple("Pair", "a b")


def test_hookset_removes_every_hook_when_the_body_raises():
    lin = nn.Linear(2, 2)
    with pytest.raises(RuntimeError, match="boom"), HookSet() as hooks:
        hooks.add(lin.register_forward_hook(lambda *a: None), "fwd")
        hooks.add(lin.weight.register_hook(lambda g: None), "param")
        assert repr(hooks) == "HookSet(1 fwd, 1 param)"
        raise RuntimeError("boom")
    assert not lin._forward_hooks and not lin.weight._backward_hooks
    assert len(hooks) == 0


_leaf = st.one_of(
    st.none(),
    st.integers(-3, 3),
    st.floats(allow_nan=False),
    st.text(max_size=2),
    st.builds(lambda n: torch.randn(n), st.integers(0, 3)),
)
_tree = st.recursive(
    _leaf,
    lambda kids: st.one_of(
        st.lists(kids, max_size=3),
        st.lists(kids, max_size=3).map(tuple),
        st.dictionaries(st.text(max_size=2), kids, max_size=3),
        st.tuples(kids, kids).map(lambda t: Pair(*t)),
    ),
    max_leaves=8,
)


@settings(max_examples=80, deadline=None)
@given(_tree)
def test_tensors_in_matches_pytree_leaves(tree):
    want = [x for x in tree_flatten(tree)[0] if isinstance(x, torch.Tensor)]
    got = tensors_in(tree)
    assert len(got) == len(want) and all(a is b for a, b in zip(got, want, strict=True))


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.floats(-1e4, 1e4), min_size=1, max_size=20),
    st.sampled_from([torch.float32, torch.float16, torch.bfloat16, torch.float64]),
    st.sampled_from([None, math.nan, math.inf, -math.inf]),
)
def test_amax_abs_is_max_of_abs_and_propagates_nonfinite(values, dtype, special):
    t = torch.tensor(values, dtype=dtype)
    if special is not None:
        t[len(values) // 2] = special
    got = float(amax_abs(t))
    ref = t.double().abs().max().item() if not t.isnan().any() else math.nan
    if math.isnan(ref):
        assert math.isnan(got)
    else:
        assert got == pytest.approx(ref, rel=1e-6)


def test_amax_abs_complex_and_float64_beyond_float32():
    assert float(amax_abs(torch.tensor([3 + 4j, 1j]))) == pytest.approx(5.0)
    huge = torch.tensor([1e300, -2.0], dtype=torch.float64)  # finite, past float32's range
    assert float(amax_abs(huge)) == torch.finfo(torch.float32).max
    assert math.isinf(float(amax_abs(torch.tensor([math.inf], dtype=torch.float64))))


def test_max_abs_over_several_tensors_skips_ints_and_empty():
    ts = [torch.tensor([1, 100]), torch.empty(0), torch.tensor([-3.0, 2.0])]
    assert float(max_abs(ts)) == 3.0
    assert float(max_abs([torch.tensor([1, 2])])) == 0.0
