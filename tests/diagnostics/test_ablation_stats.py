"""Statistics of the ablation engine: per-example effects, bootstrap CI, verdict thresholds."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from diagnostics._ablation._stats import (
    IGNORED_MAX,
    USED_MIN,
    bootstrap_ci,
    example_effects,
    site_verdict,
    verdict_from_ci,
)


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


def test_verdict_thresholds():
    assert verdict_from_ci(USED_MIN, 0.9) == "used"
    assert verdict_from_ci(USED_MIN - 1e-6, 0.9) == "weak"  # a big mean with a CI touching 0.05
    assert verdict_from_ci(0.0, IGNORED_MAX - 1e-9) == "ignored"
    assert verdict_from_ci(0.0, IGNORED_MAX) == "weak"
    assert site_verdict([(0.0, 0.001), (0.2, 0.3)]) == "used"
    assert site_verdict([(0.0, 0.001), (0.0, 0.002)]) == "ignored"
    assert site_verdict([(0.0, 0.001), (0.02, 0.03)]) == "weak"
