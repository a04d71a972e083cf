"""diagnostics.scaling engine: planted exponents, responsible modules, fits, non-interference."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.nn.modules import module as nn_module

from diagnostics import ScalingError, ScalingTarget
from diagnostics._scaling import ScalingConfig, parse_bytes, parse_sizes
from diagnostics._scaling._analyze import analyze
from diagnostics._scaling._fit import classify, fit_exponent, max_size_within_budget
from diagnostics._scaling._measure import measure, module_keys
from tests.diagnostics import scaling_planted as planted

FAST = dict(repeats=3, warmup=1, progress=False, n_boot=200)


def _run(kind: str, sizes: list[int] | None = None, **kw) -> dict:
    target = planted.make(kind)
    sizes = sizes or planted.SIZES[kind]
    cfg = ScalingConfig(**{**FAST, **kw})
    return analyze(measure(target, "T", sizes, cfg), budget=2**30, n_boot=cfg.n_boot)


def _module(report: dict, name: str) -> dict:
    return next(m for m in report["modules"] if m["module"] == name)


@pytest.mark.parametrize(("kind", "truth"), [("linear", 1.0), ("quadratic", 2.0), ("cubic", 3.0)])
def test_planted_memory_exponents(kind: str, truth: float) -> None:
    rep = _run(kind)
    fit = rep["total"]["exponent"]["memory"]
    assert fit["status"] == "ok"
    assert abs(fit["exponent"] - truth) <= 0.25, (kind, fit)
    assert rep["total"]["class"]["memory"] == ("linear" if truth == 1 else "super-linear")
    assert abs(_module(rep, "conv")["exponent"]["memory"]["exponent"] - 1.0) <= 0.25


def test_quadratic_names_attention() -> None:
    rep = _run("quadratic")
    resp = [f for f in rep["findings"] if f["kind"] == "responsible" and f["metric"] == "memory"]
    assert [f["module"] for f in resp] == ["attn"]
    assert abs(resp[0]["exponent"] - 2.0) <= 0.25
    assert "`attn`: memory exponent" in resp[0]["message"]
    assert "% of peak at T = 1024" in resp[0]["message"]
    assert rep["max_size_within_budget"] is not None


def test_cubic_names_cube_not_the_quadratic() -> None:
    rep = _run("cubic")
    resp = next(f for f in rep["findings"] if f["kind"] == "responsible")
    assert resp["module"] == "cube"
    assert abs(_module(rep, "cube")["exponent"]["memory"]["exponent"] - 3.0) <= 0.25
    assert abs(_module(rep, "attn")["exponent"]["memory"]["exponent"] - 2.0) <= 0.25
    assert _module(rep, "attn")["class"]["memory"] == "super-linear"
    assert _module(rep, "attn")["share"]["memory"] < 0.05  # the cube dominates


def test_tiny_sizes_time_fit_is_inconclusive() -> None:
    rep = _run("linear", sizes=[2, 4, 8, 16])
    fit = rep["total"]["exponent"]["time"]
    assert fit["status"] == "inconclusive"
    assert "too small" in fit["reason"] or "noise" in fit["reason"]
    msgs = [f["message"] for f in rep["findings"] if f["kind"] == "inconclusive"]
    assert any(m.startswith("total time: inconclusive (") for m in msgs)


def test_backward_memory_and_grads_restored() -> None:
    target = planted.quadratic()
    p = next(target.model.parameters())
    p.grad = torch.full_like(p, 7.0)
    before = p.grad
    rep = analyze(
        measure(target, "T", [64, 128, 256], ScalingConfig(**FAST, backward=True)), n_boot=100
    )
    assert p.grad is before and bool((p.grad == 7.0).all())
    assert rep["backward"] is True
    assert abs(rep["total"]["exponent"]["memory"]["exponent"] - 2.0) <= 0.25


def test_outputs_identical_and_hooks_removed() -> None:
    target = planted.cubic()
    x = torch.randn(1, planted.C, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = target.model(x)
    n_pre, n_fwd = len(nn_module._global_forward_pre_hooks), len(nn_module._global_forward_hooks)
    measure(target, "T", [8, 16, 32], ScalingConfig(**FAST))
    with torch.no_grad():
        again = target.model(x)
    assert torch.equal(ref, again)
    assert len(nn_module._global_forward_pre_hooks) == n_pre
    assert len(nn_module._global_forward_hooks) == n_fwd
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in target.model.modules())


class _Fails(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = torch.nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[1] > 40:
            raise RuntimeError("out of memory (planted)")
        return self.lin(x)


def test_failing_size_keeps_the_measured_ones_and_removes_hooks() -> None:
    target = ScalingTarget(_Fails(), axes={"T": lambda n, g: (torch.randn(1, n, 4),)})
    n_fwd = len(nn_module._global_forward_hooks)
    rep = analyze(measure(target, "T", [10, 20, 40, 80], ScalingConfig(**FAST)), n_boot=50)
    assert rep["sizes"] == [10, 20, 40]
    assert rep["failed"]["size"] == 80 and "out of memory (planted)" in rep["failed"]["error"]
    assert any(f["kind"] == "failed" for f in rep["findings"])
    assert len(nn_module._global_forward_hooks) == n_fwd
    with pytest.raises(ScalingError, match=r"only 1 size\(s\) measured; size 80 raised"):
        measure(target, "T", [40, 80, 160], ScalingConfig(**FAST))


class _FailsWhenHooked(torch.nn.Module):
    """Raises inside the hooked timing call at T = 40 (its 4th call: warm-up, memory, timed)."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = torch.nn.Linear(4, 4)
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[1] == 40:
            self.calls += 1
            if self.calls == 4:
                raise RuntimeError("planted failure in the hooked pass")
        return self.lin(x)


def test_failure_inside_the_hooked_pass_removes_hooks() -> None:
    target = ScalingTarget(_FailsWhenHooked(), axes={"T": lambda n, g: (torch.randn(1, n, 4),)})
    n_pre, n_fwd = len(nn_module._global_forward_pre_hooks), len(nn_module._global_forward_hooks)
    sweep = measure(target, "T", [5, 10, 20, 40], ScalingConfig(**FAST))
    assert sweep.sizes == [5, 10, 20]
    assert sweep.failed == {"size": 40, "error": "RuntimeError: planted failure in the hooked pass"}
    assert len(nn_module._global_forward_pre_hooks) == n_pre
    assert len(nn_module._global_forward_hooks) == n_fwd
    assert all(len(r.seconds) == 3 for r in sweep.results)


def test_transformer_fast_path_is_kept() -> None:
    # per-module hooks would switch off nn.TransformerEncoderLayer's fused path; global ones
    # do not, so its children (self_attn, linear1, ...) never run and get no rows
    layer = torch.nn.TransformerEncoderLayer(16, 2, 32, batch_first=True).eval()
    target = ScalingTarget(layer, axes={"T": lambda n, g: (torch.randn(1, n, 16),)})
    rep = analyze(measure(target, "T", [8, 16, 32], ScalingConfig(**FAST)), n_boot=50)
    assert not any(m["module"].startswith("self_attn") for m in rep["modules"])


def test_module_keys_group_only_same_class() -> None:
    m = torch.nn.Module()
    m.blocks = torch.nn.ModuleList([torch.nn.Linear(2, 2), torch.nn.Linear(2, 2)])
    m.parts = torch.nn.ModuleList([torch.nn.Linear(2, 2), torch.nn.ReLU()])
    keys = module_keys(m)
    assert keys["blocks.0"] == keys["blocks.1"] == "blocks.*"
    assert keys["parts.0"] == "parts.0" and keys["parts.1"] == "parts.1"


def test_unknown_axis_and_bad_make_batch() -> None:
    target = planted.linear()
    with pytest.raises(ScalingError, match=r"--axis 'F': target 'linear' has no such axis; its"):
        measure(target, "F", [1, 2, 3], ScalingConfig(**FAST))
    bad = ScalingTarget(target.model, axes={"T": lambda n, g: 1 / 0})
    with pytest.raises(ScalingError, match=r"make_batch\(4, generator\) raised ZeroDivisionError"):
        measure(bad, "T", [4, 8, 16], ScalingConfig(**FAST))


def test_target_validation_messages() -> None:
    with pytest.raises(ScalingError, match=r"model must be a torch\.nn\.Module, got int"):
        ScalingTarget(3, axes={"T": lambda n, g: n})  # type: ignore[arg-type]
    with pytest.raises(ScalingError, match=r"axes\['T'\] must be callable"):
        ScalingTarget(torch.nn.Linear(1, 1), axes={"T": 3})  # type: ignore[dict-item]
    with pytest.raises(ScalingError, match="sizes given for unknown axis 'B'"):
        ScalingTarget(torch.nn.Linear(1, 1), axes={"T": lambda n, g: n}, sizes={"B": [1, 2, 3]})


def test_parsers() -> None:
    assert parse_bytes("24GiB") == 24 * 2**30
    assert parse_bytes("512MiB") == 512 * 2**20
    assert parse_bytes("1.5GB") == 1_500_000_000
    assert parse_bytes("4096") == 4096
    with pytest.raises(ScalingError, match=r"--memory-budget '12XB': expected a number"):
        parse_bytes("12XB")
    assert parse_sizes("100, 200,400") == [100, 200, 400]
    with pytest.raises(ScalingError, match="strictly increasing, got 150 after 200"):
        parse_sizes("100,200,150")
    with pytest.raises(ScalingError, match=r"got 2 size\(s\) \[1, 2\]; need at least 3"):
        parse_sizes("1,2")
    with pytest.raises(ScalingError, match="'x' is not an integer"):
        parse_sizes("1,x,3")
    with pytest.raises(ScalingError, match="sizes must be >= 1, got 0"):
        parse_sizes("0,1,2")


@settings(max_examples=30, deadline=None)
@given(
    k=st.floats(0.3, 3.5),
    c=st.floats(1e-6, 1e6),
    n=st.integers(3, 7),
    noise=st.floats(0.0, 0.02),
)
def test_fit_recovers_power_laws(k: float, c: float, n: int, noise: float) -> None:
    sizes = [2 ** (i + 4) for i in range(n)]
    rng = np.random.default_rng(0)
    samples = [list(c * s**k * (1 + noise * rng.standard_normal(9)).clip(0.5, None)) for s in sizes]
    fit = fit_exponent(sizes, samples, kind="memory", n_boot=200)
    assert abs(fit["exponent"] - k) < 0.05 + 2 * noise
    lo, hi = fit["ci95"]
    assert lo <= fit["exponent"] <= hi
    assert len(fit["sizes_fitted"]) == max(3, math.ceil(n / 2))


def test_noisy_time_is_inconclusive_and_classify() -> None:
    rng = np.random.default_rng(0)
    sizes = [10, 20, 40, 80]
    flat = [list(1e-3 * (1 + 0.3 * rng.random(7))) for _ in sizes]
    fit = fit_exponent(sizes, flat, kind="time")
    assert fit["status"] == "inconclusive" and classify(fit) == "inconclusive"
    quad = [[1e-6 * s**2] * 5 for s in sizes]
    good = fit_exponent(sizes, quad, kind="time")
    assert good["status"] == "ok" and classify(good) == "super-linear"
    assert abs(good["exponent"] - 2) < 1e-9


def test_wide_ci_above_the_linear_band_still_flags_superlinear() -> None:
    sizes = [100, 200, 400]
    jitter = [1.0, 1.0, 1.0, 1.0, 1.6, 1.6, 1.6]  # a burst of load hits several repeats
    samples = [[1e-9 * s**2.5 * j for j in jitter] for s in sizes]
    samples[1] = [v * (1.5 if i < 4 else 1.0) for i, v in enumerate(samples[1])]
    fit = fit_exponent(sizes, samples, kind="time", n_boot=500)
    assert fit["ci95"][1] - fit["ci95"][0] > 0.5, fit
    assert fit["status"] == "ok" and fit["reason"].startswith("imprecise")
    assert classify(fit) == "super-linear"


def test_run_scaling_public_entry() -> None:
    import diagnostics

    rep = diagnostics.run_scaling(
        planted.quadratic(), "T", config=diagnostics.ScalingConfig(**FAST, memory_budget=2**26)
    )
    assert rep["sizes"] == planted.SIZES["quadratic"]
    assert rep["budget"]["budget_bytes"] == 2**26
    assert 1024 < rep["max_size_within_budget"] < 4096  # 8 B per T^2 entry, ~2 live copies
    with pytest.raises(ScalingError, match=r"no sizes for axis 'T'"):
        diagnostics.run_scaling(ScalingTarget(planted.Planted("linear"), axes={"T": len}), "T")


def test_budget_extrapolation() -> None:
    fit = {"status": "ok", "exponent": 2.0, "sizes_fitted": [1, 2, 4]}
    assert max_size_within_budget([1, 2, 4], [1.0, 4.0, 16.0], 0, 64, fit)["size"] == 8
    over = max_size_within_budget([1, 2, 4], [1.0, 4.0, 16.0], 0, 5, fit)
    assert over["size"] == 2 and over["method"] == "largest measured size within the budget"
    assert max_size_within_budget([1, 2, 4], [1.0, 4.0, 16.0], 0, None, fit)["size"] is None


@pytest.mark.gpu
def test_cuda_allocator_peak_and_module_memory() -> None:
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    target = planted.quadratic()
    rep = analyze(
        measure(target, "T", [256, 512, 1024, 2048], ScalingConfig(**FAST, device="cuda")),
        n_boot=100,
    )
    assert rep["memory_method"].startswith("CUDA: torch.cuda.max_memory_allocated")
    assert abs(rep["total"]["exponent"]["memory"]["exponent"] - 2.0) <= 0.25
    assert _module(rep, "attn")["peak_bytes"][-1] > 0  # profiler CUDA memory events per module
    assert any(f["kind"] == "responsible" and f["module"] == "attn" for f in rep["findings"])
