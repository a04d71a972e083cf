"""Statistics of the ablation engine: per-example effects, bootstrap CI, variation check."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from diagnostics._stats import bootstrap_ci, example_effects, varies


def test_example_effects_real_and_complex():
    c = torch.ones(3, 4)
    e = example_effects(c, torch.zeros(3, 4))
    assert np.allclose(e["rel"], 1.0) and np.allclose(e["cos"], 0.0)
    e = example_effects(c, c.clone())
    assert np.allclose(e["rel"], 0.0) and np.allclose(e["cos"], 1.0)
    z = torch.randn(2, 5, 3, dtype=torch.complex64)
    e = example_effects(z, -z)  # opposite direction: rel 2, cos -1
    assert np.allclose(e["rel"], 2.0, atol=1e-5) and np.allclose(e["cos"], -1.0, atol=1e-5)
    e = example_effects(z, 1j * z)  # a 90-degree phase turn is orthogonal as real vectors
    assert np.allclose(e["cos"], 0.0, atol=1e-5)


def test_example_effects_shape_mismatch():
    with pytest.raises(AssertionError, match=r"intact \(2, 3\) != ablated \(2, 4\)"):
        example_effects(torch.ones(2, 3), torch.ones(2, 4))


@settings(max_examples=40, deadline=None)
@given(st.lists(st.floats(0, 10, allow_nan=False), min_size=1, max_size=40), st.integers(0, 99))
def test_bootstrap_ci_brackets_mean_and_is_seeded(values, seed):
    mean, lo, hi = bootstrap_ci(values, seed=seed, n_boot=200)
    assert lo <= mean + 1e-12 and mean <= hi + 1e-12
    assert min(values) - 1e-9 <= lo and hi <= max(values) + 1e-9
    assert bootstrap_ci(values, seed=seed, n_boot=200) == (mean, lo, hi)


def test_bootstrap_ci_narrows_with_more_examples():
    rng = np.random.default_rng(0)
    _, lo1, hi1 = bootstrap_ci(rng.normal(1, 1, 20))
    _, lo2, hi2 = bootstrap_ci(rng.normal(1, 1, 2000))
    assert hi2 - lo2 < (hi1 - lo1) / 4


def test_varies_within_a_batch():
    assert not varies(torch.ones(4, 3)) and not varies(torch.ones(1, 3))
    assert varies(torch.randn(4, 3))
    x = torch.ones(4, 3)
    x[2, 1] += 1e-9  # below round-off: the same condition
    assert not varies(x)
    z = torch.ones(3, 2, dtype=torch.complex64)
    z[1] = 1j
    assert varies(z)
