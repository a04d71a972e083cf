"""The contracts benchmark's step figures: each process its own baseline, the median reported."""

from __future__ import annotations

import pytest

from benchmarks.bench_contracts import paraformer_step_processes


@pytest.mark.slow
def test_step_figures_are_the_median_process_with_the_spread_across_processes():
    got = paraformer_step_processes(procs=3, rounds=1, blocks=1)
    assert got["processes"] == 3 and len(got["per_process"]) == 3
    assert got["per_process"] == sorted(got["per_process"])
    assert got["ratio_full_vs_off"] == got["per_process"][1]  # the median of three
    for key, (lo, hi) in got["spread"].items():
        assert lo <= got[key] <= hi, key
    assert {"ms_full", "ms_shapes", "ms_off", "ratio_off_again_vs_off"} <= got.keys()
    # the reported row is one process's own: its ratios are its times over its own baseline
    assert got["ratio_full_vs_off"] == pytest.approx(got["ms_full"] / got["ms_off"], rel=1e-3)
    assert got["ratio_shapes_vs_off"] == pytest.approx(got["ms_shapes"] / got["ms_off"], rel=1e-3)
