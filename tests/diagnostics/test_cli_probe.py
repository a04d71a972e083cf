"""Adversarial probes of the claim-auditing tools (inspect_run, eval_audit, scaling,
compare_models, CFGDropoutMonitor, check_null_condition): inputs they had not seen, each pinned
to the fix it needed (a crash, a wrong verdict, a misleading line, a lost report, a changed RNG).
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from diagnostics import (
    CFGDropoutError,
    CFGDropoutMonitor,
    EvalTarget,
    NullConditionError,
    ScalingConfig,
    ScalingTarget,
    check_null_condition,
    run_scaling,
)
from diagnostics._compare import CompareError, Variant, compare_models
from diagnostics._eval_audit import make_variants, run_audit
from diagnostics._inspect_rules import inspect_scalars

HERE = Path(__file__).resolve()
ROOT = HERE.parents[2]
ME = str(HERE)


def _err_lines(capsys) -> list[str]:
    return [ln for ln in capsys.readouterr().err.splitlines() if ln.strip() and "USDT" not in ln]


@pytest.fixture(autouse=True)
def _restore_threads():
    old = torch.get_num_threads()
    yield
    torch.set_num_threads(old)


# --- inspect_run -------------------------------------------------------------------------------


def _tb_run(folder: Path, points: list[tuple[int, float]], tag: str = "train/loss") -> None:
    from torch.utils.tensorboard import SummaryWriter

    w = SummaryWriter(str(folder))
    for step, v in points:
        w.add_scalar(tag, v, step)
    w.close()


def test_inspect_nonfinite_count_tag_holding_inf_does_not_crash():
    # before: int(inf) raised OverflowError inside the rule and the whole inspection died
    found = inspect_scalars({"nonfinite/enc": [(0, 0.0), (3, math.inf), (5, 2.0)]})
    kinds = [(f.kind, f.step) for f in found]
    assert ("nonfinite", 3) in kinds  # the inf itself is reported as a non-finite value
    assert ("nonfinite", 5) in kinds and "2 non-finite values in enc" in found[-1].detail


def test_inspect_run_says_when_nothing_was_inspected(tmp_path, capsys):
    from diagnostics.inspect_run import main

    (tmp_path / "corrupt").mkdir()
    (tmp_path / "corrupt" / "events.out.tfevents.1.host").write_bytes(os.urandom(300))
    _tb_run(tmp_path / "empty", [])
    out = tmp_path / "f.json"
    assert main([str(tmp_path), "--json", str(out), "--no-progress"]) == 0
    text = capsys.readouterr().out.splitlines()
    assert text == [
        "run corrupt: NOT INSPECTED: no readable event in its 1 event file(s) (empty, or not a "
        "TensorBoard file)",
        "run empty: NOT INSPECTED: no scalar logged (nothing written yet, or only other data)",
        "no findings: no run holds scalars, so nothing was inspected",
    ]
    runs = json.loads(out.read_text())["runs"]
    assert [r["readable"] for r in runs] == [False, True]


def test_inspect_run_negative_steps_span_and_empty_logdir(tmp_path, capsys):
    from diagnostics.inspect_run import main

    _tb_run(tmp_path / "r", [(s, 1.0) for s in range(-5, 3)])
    assert main([str(tmp_path / "r"), "--no-progress"]) == 0
    assert "run .: 1 tags, steps -5 to 2, 0 findings" in capsys.readouterr().out
    # an unset shell variable ("") must not inspect the current folder recursively
    assert main([""]) == 2
    assert _err_lines(capsys) == [
        "inspect_run: error: LOGDIR is empty; give a run folder or a tree of runs"
    ]
    f = tmp_path / "file.txt"
    f.write_text("x")
    assert main([str(f)]) == 2
    assert _err_lines(capsys)[0].endswith("is not a directory (it is a file)")


def test_inspect_run_reads_tf2_tensor_scalars(tmp_path):
    # TF2 / Keras log a scalar as a rank-0 tensor of the "scalars" plugin: before, such a run
    # read as empty, and with the reader's defaults only 10 of its points would have been kept
    from tensorboard.compat.proto import event_pb2, summary_pb2
    from tensorboard.summary.writer.event_file_writer import EventFileWriter
    from tensorboard.util import tensor_util

    from diagnostics.inspect_run import inspect_logdir

    w = EventFileWriter(str(tmp_path))
    plugin = summary_pb2.SummaryMetadata.PluginData(plugin_name="scalars")
    for i in range(30):
        value = summary_pb2.Summary.Value(
            tag="train/loss",
            tensor=tensor_util.make_tensor_proto(float("nan") if i == 20 else 1.0 / (i + 1)),
            metadata=summary_pb2.SummaryMetadata(plugin_data=plugin),
        )
        w.add_event(event_pb2.Event(step=i, wall_time=1.0 + i, summary=summary_pb2.Summary(
            value=[value])))  # fmt: skip
    w.close()
    rep = inspect_logdir(tmp_path)
    assert rep["runs"][0]["points"] == 30 and rep["runs"][0]["steps"] == [0, 29]
    assert [(f["kind"], f["step"]) for f in rep["findings"]] == [("nonfinite", 20)]


def test_inspect_run_ctrl_c_reports_and_writes_the_runs_read(tmp_path, capsys, monkeypatch):
    import diagnostics.inspect_run as ir

    _tb_run(tmp_path / "a", [(0, float("nan")), (1, 1.0)])
    _tb_run(tmp_path / "b", [(0, 1.0)])
    real = ir.read_run

    def read(name, folder, n):
        if name == "b":
            raise KeyboardInterrupt
        return real(name, folder, n)

    monkeypatch.setattr(ir, "read_run", read)
    out = tmp_path / "f.json"
    assert ir.main([str(tmp_path), "--json", str(out), "--no-progress"]) == 130
    rep = json.loads(out.read_text())
    assert [r["run"] for r in rep["runs"]] == ["a"] and rep["findings"][0]["kind"] == "nonfinite"
    assert rep["interrupted"] == "after 1 of 2 runs"
    assert _err_lines(capsys) == [
        "inspect_run: interrupted (Ctrl-C) after 1 of 2 runs: reported the runs read so far; "
        f"wrote them to {out}"
    ]


# --- eval_audit --------------------------------------------------------------------------------


class _Net(nn.Module):
    def __init__(self, layers: bool = True) -> None:
        super().__init__()
        self.lin = nn.Linear(1, 1)
        if layers:
            self.drop = nn.Dropout(0.5)

    def forward(self, x):
        return self.lin(x)


def _batches(n: int = 8, length: int = 4000, silent: bool = False) -> list[dict]:
    g = torch.Generator().manual_seed(0)
    clean = torch.zeros(n, length) if silent else torch.randn(n, length, generator=g)
    noisy = clean + 0.3 * torch.randn(n, length, generator=g)
    h = n // 2 if n > 1 else n
    return [{"noisy": noisy[:h], "clean": clean[:h]}] + (
        [{"noisy": noisy[h:], "clean": clean[h:]}] if n > 1 else []
    )


def _toy_sample(model, batch, generator, steps=30):
    y, x = batch["noisy"], batch["clean"]
    return y - (y - x) * (1 - 1.0 / steps) + torch.randn(y.shape, generator=generator) * 0.01


def _si_sdr():
    from diagnostics._eval_audit._metrics import builtin_metrics

    return builtin_metrics(16000, ["si_sdr"])


def _target(sample=_toy_sample, batches=None, metrics="si_sdr", model=None, **kw) -> EvalTarget:
    return EvalTarget(
        model if model is not None else _Net().eval(),
        batches if batches is not None else _batches(),
        sample,
        reference={"steps": 30},
        metrics=_si_sdr() if metrics == "si_sdr" else metrics,
        name="toy",
        **kw,
    )


def _kinds(report) -> dict[str, dict]:
    return {f["kind"]: f for f in report.findings}


def test_eval_audit_nonfinite_reference_estimates_are_flagged():
    def sample(model, batch, generator, steps=30):
        out = _toy_sample(model, batch, generator, steps)
        if steps == 30:  # the reference protocol only
            out[0, 0] = float("nan")
        return out

    t = _target(sample)
    f = _kinds(run_audit(t, make_variants(t.reference, steps=[50])))["nonfinite_estimates"]
    assert f["severity"] == "problem" and f["text"].startswith(
        "N=30 (the reference protocol): 2 estimate(s) contain NaN/Inf"
    )


def test_eval_audit_metric_that_scores_nothing_does_not_crash_the_findings():
    # before: the all-NaN clean-vs-clean ceiling formatted min=None with :.3f (TypeError)
    t = _target(metrics={"si_sdr": lambda e, c: np.full(e.shape[0], np.nan)})
    kinds = _kinds(run_audit(t, [], agreement_n=2))
    assert "ceiling_failed" not in kinds
    assert kinds["metric_unscored"]["severity"] == "problem"
    assert kinds["metric_unscored"]["text"].startswith(
        "SI-SDR gave no score (NaN) for 8 of 8 examples under the reference protocol (nor clean "
        "vs clean"
    )
    assert "first pair ours nan vs reference" in kinds["metric_disagrees"]["text"]


def test_eval_audit_estoi_placeholder_is_not_a_score():
    # pystoi returns 1e-5 (with a warning) for a clip too short to score; that is no score
    from diagnostics._eval_audit._metrics import builtin_metrics, reference_metric

    short = torch.randn(2, 2000, generator=torch.Generator().manual_seed(0))  # 0.125 s
    ours = builtin_metrics(16000, ["estoi"])["estoi"](short, short)
    theirs = reference_metric("estoi", 16000)(short, short)
    assert np.isnan(ours).all() and np.isnan(theirs).all()


def test_eval_audit_one_example_gives_no_verdict():
    t = _target(batches=_batches(n=1))
    kinds = _kinds(run_audit(t, make_variants(t.reference, steps=[10, 50])))
    assert "under_converged" not in kinds and "fewer_steps_cost" not in kinds
    assert kinds["steps_unclear"]["text"].startswith("unclear (1 example: no CI): N = 30")
    assert "beats_floor" not in kinds
    assert kinds["floor_not_beaten"]["text"].endswith("; 1 example cannot tell")


def test_eval_audit_agreement_n_zero_is_not_a_disagreement():
    t = _target()
    kinds = _kinds(run_audit(t, [], agreement_n=0))
    assert "metric_disagrees" not in kinds
    assert kinds["metric_unchecked"]["text"] == "SI-SDR not checked: --agreement-n 0"


def test_eval_audit_names_silent_references():
    t = _target(batches=_batches(silent=True))
    kinds = _kinds(run_audit(t, []))
    assert kinds["silent_references"]["text"].startswith(
        "8 of 8 clean references are silent (constant): no metric can score"
    )
    assert "8 silent clean reference(s) (above), or the metric" in kinds["ceiling_failed"]["text"]


def test_eval_audit_flags_a_model_sampled_in_training_mode():
    def sample(model, batch, generator, steps=30):
        model(batch["noisy"][:, :1])
        return _toy_sample(model, batch, generator, steps)

    report = run_audit(_target(sample, model=_Net().train()), [])
    f = _kinds(report)["train_mode"]
    assert f["severity"] == "problem"
    assert f["text"].startswith(
        "the model ran in training mode while sampling (2 of 2 forward calls): its Dropout "
        "layers act as in training; call model.eval()"
    )
    assert report.checks["sampling"]["train_mode_calls"] == 2
    plain = _kinds(run_audit(_target(sample, model=_Net(layers=False).train()), []))
    assert plain["train_mode"]["severity"] == "info"
    assert "train_mode" not in _kinds(run_audit(_target(sample, model=_Net().eval()), []))


def test_eval_audit_global_rng_sampler_is_paired_and_caller_rng_untouched():
    def sample(model, batch, generator, steps=30):  # draws from the global RNG: a user bug
        return _toy_sample(model, batch, generator, steps) + 0.05 * torch.randn(
            batch["noisy"].shape
        )

    t = _target(sample)
    torch.manual_seed(123)
    state = torch.get_rng_state()
    report = run_audit(t, make_variants(t.reference, steps=[30, 31]))
    assert torch.equal(state, torch.get_rng_state())  # the caller's RNG as it was
    f = _kinds(report)["sampler_global_rng"]
    assert f["text"].startswith("the sampler draws from the global torch RNG (4 of 4 calls)")
    # the same global draws under every protocol: a run again gives the same numbers
    again = run_audit(t, make_variants(t.reference, steps=[30, 31]))
    assert report.per_example == again.per_example


def test_eval_audit_cli_sampler_errors(capsys, tmp_path):
    from diagnostics.eval_audit import main

    out = tmp_path / "a"
    assert main([f"--target={ME}:raising_reference_target", "--quiet", f"--out={out}"]) == 2
    assert _err_lines(capsys) == [
        "eval_audit: error: the sampler of 'toy' raised on batch 0 under the reference protocol "
        "N=30: ValueError: bad shapes in my sampler (at test_cli_probe.py:"
        f"{_RAISE_LINE})"
    ]
    assert not out.exists()
    # under a variant: that variant is skipped with the error, the rest is reported
    code = main([f"--target={ME}:raising_variant_target", "--quiet", f"--out={out}",
                 "--steps", "10,50"])  # fmt: skip
    assert code == 0
    rep = json.loads((out / "report.json").read_text())
    assert rep["variants"][1]["skipped"] == "the sampler raised RuntimeError: out of memory"
    assert rep["variants"][0]["metrics"]["si_sdr"]["n"] == 8
    assert main([f"--target={ME}:raising_metric_target", "--quiet", f"--out={out}"]) == 2
    line = _err_lines(capsys)[-1]
    assert line.startswith(
        "eval_audit: error: metric 'mine' raised on batch 0 under the reference protocol N=30: "
        "ZeroDivisionError: oops"
    )


_RAISE_LINE = 0


def raising_reference_target() -> EvalTarget:
    def sample(model, batch, generator, steps=30):
        raise ValueError("bad shapes in my sampler")

    global _RAISE_LINE
    _RAISE_LINE = sample.__code__.co_firstlineno + 1
    return _target(sample)


def raising_variant_target() -> EvalTarget:
    def sample(model, batch, generator, steps=30):
        if steps == 50:
            raise RuntimeError("out of memory")
        return _toy_sample(model, batch, generator, steps)

    return _target(sample)


def raising_metric_target() -> EvalTarget:
    def mine(est, clean):
        raise ZeroDivisionError("oops")

    return _target(metrics={"mine": mine})


def interrupted_target() -> EvalTarget:
    def sample(model, batch, generator, steps=30):
        if steps == 50:
            raise KeyboardInterrupt
        return _toy_sample(model, batch, generator, steps)

    return _target(sample)


def test_eval_audit_cli_ctrl_c_after_the_reference_writes_what_was_done(capsys, tmp_path):
    from diagnostics.eval_audit import main

    out = tmp_path / "a"
    code = main([f"--target={ME}:interrupted_target", "--quiet", f"--out={out}",
                 "--steps", "10,50,70"])  # fmt: skip
    assert code == 130
    rep = json.loads((out / "report.json").read_text())
    assert rep["interrupted"] is True
    assert [v.get("skipped") for v in rep["variants"]] == [
        None,
        "interrupted (Ctrl-C)",
        "interrupted (Ctrl-C)",
    ]
    assert rep["findings"][0]["kind"] == "interrupted"
    assert _err_lines(capsys) == [
        f"eval_audit: interrupted (Ctrl-C): wrote the protocols done so far to {out}"
    ]


@pytest.mark.parametrize(
    ("argv", "line"),
    [
        (["--seconds", "nan"], "--seconds nan: expected a finite number"),
        (["--seconds", "inf"], "--seconds inf: expected a finite number"),
        (["--threads", "0"], "--threads 0: must be >= 1"),
        (["--device", "meta"], "--device 'meta': meta tensors hold no data to sample with"),
        ([f"--target={ME}:raising_variant_target", "--out", "{file}"],
         "--out '{file}': exists and is a file; expected a folder"),
        ([f"--target={ME}:raising_variant_target", "--out", "{file}/sub"],
         "--out '{file}/sub': '{file}' is a file, not a folder"),
        ([f"--target={ME}:raising_variant_target", "--out", "{tmp}/o", "--doc", "{file}/D.md"],
         "--doc '{file}/D.md': '{file}' is a file, not a folder"),
    ],
)  # fmt: skip
def test_eval_audit_cli_bad_values_fail_before_any_work(argv, line, capsys, tmp_path):
    from diagnostics.eval_audit import main

    f = tmp_path / "a_file"
    f.write_text("x")
    argv = [a.format(file=f, tmp=tmp_path) for a in argv]
    assert main([*argv, "--quiet"]) == 2
    assert _err_lines(capsys) == [f"eval_audit: error: {line.format(file=f, tmp=tmp_path)}"]
    assert not (tmp_path / "o").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a CPU machine")
def test_eval_audit_cli_cuda_on_a_cpu_machine(capsys):
    from diagnostics.eval_audit import main

    assert main(["--device", "cuda", "--quiet"]) == 2
    assert _err_lines(capsys) == [
        "eval_audit: error: --device 'cuda': CUDA is not available on this machine (no GPU, or "
        "torch built without CUDA); use --device cpu"
    ]


def test_eval_audit_help_lists_examples_one_per_line():
    r = subprocess.run([sys.executable, "-m", "diagnostics.eval_audit", "--help"],
                       capture_output=True, text=True, cwd=ROOT, timeout=120)  # fmt: skip
    assert r.returncode == 0
    assert "\nexamples:\n  python -m diagnostics.eval_audit\n" in r.stdout
    assert "130 when interrupted" in r.stdout and "(default 4; 0: not compared)" in r.stdout


# --- scaling -----------------------------------------------------------------------------------


class _BNNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(8, 8)
        self.drop = nn.Dropout(0.5)
        self.bn = nn.BatchNorm1d(8)

    def forward(self, x):
        return self.bn(self.drop(self.lin(x)))


def _b(n, g):
    return (torch.randn(n, 8, generator=g),)


FASTCFG = dict(repeats=3, progress=False, n_boot=50)


def test_scaling_leaves_a_training_mode_model_and_the_rng_as_found():
    model = _BNNet().train()
    sd = {k: v.clone() for k, v in model.state_dict().items()}
    torch.manual_seed(7)
    rng = torch.get_rng_state()
    rep = run_scaling(ScalingTarget(model, {"B": _b}), "B", [4, 8, 16],
                      config=ScalingConfig(**FASTCFG))  # fmt: skip
    assert torch.equal(rng, torch.get_rng_state())  # dropout drew from a fork
    for k, v in model.state_dict().items():  # batch-norm statistics as they were
        assert torch.equal(v, sd[k]), k
    assert model.training
    f = next(f for f in rep["findings"] if f["kind"] == "train-mode")
    assert f["message"] == (
        "the model was measured in training mode: its BatchNorm1d, Dropout layers act as in "
        "training; call model.eval() in the factory to measure inference"
    )
    plain = run_scaling(ScalingTarget(nn.Linear(8, 8), {"B": _b}), "B", [4, 8, 16],
                        config=ScalingConfig(**FASTCFG))  # fmt: skip
    assert all(f["kind"] != "train-mode" for f in plain["findings"])  # no such layer: silent


def test_scaling_names_a_make_batch_that_ignores_the_size():
    t = ScalingTarget(nn.Linear(8, 8).eval(), {"B": lambda n, g: (torch.randn(4, 8, generator=g),)})
    rep = run_scaling(t, "B", [4, 8, 16], config=ScalingConfig(**FASTCFG))
    assert rep["findings"][0]["message"] == (
        "the input holds 128 B at every B (4..16): make_batch ignores its size argument, so "
        "these figures do not measure growth along B"
    )


def test_scaling_budget_not_overestimated_before_the_quadratic_term_takes_over():
    from diagnostics._scaling._fit import max_size_within_budget

    sizes = [1, 2, 4, 8, 16, 32]
    peaks = [32.0 * s + 4.0 * s * s for s in sizes]  # quadratic, not dominant yet at 32
    fit = {"status": "ok", "exponent": 1.66, "sizes_fitted": sizes[3:]}
    terms = {"k": 2, "terms": {"1": 32.0, "2": 4.0}, "crossover": 8.0, "rel_rmse": 0.0}
    budget = 4 * 10_000**2 + 32 * 10_000
    old = max_size_within_budget(sizes, peaks, 0, budget, fit)["size"]
    new = max_size_within_budget(sizes, peaks, 0, budget, fit, terms=terms)
    assert old > 20_000  # the power law of the upper sizes promises twice what fits
    assert abs(new["size"] - 10_000) <= 1
    assert "polynomial fit over all sizes" in new["method"]


def test_scaling_cli_bad_out_fails_before_measuring(tmp_path, capsys, monkeypatch):
    from diagnostics import scaling

    f = tmp_path / "file"
    f.write_text("x")
    monkeypatch.setattr("diagnostics._scaling._measure.measure", _no_measure)
    assert scaling.main(["--target", f"{ME}:scaling_target", "--out", str(f), "--quiet"]) == 2
    assert _err_lines(capsys) == [
        f"scaling: error: --out '{f}': exists and is a file; expected a folder"
    ]


def _no_measure(*a, **k):
    raise AssertionError("measured before checking --out")


def scaling_target() -> ScalingTarget:
    return ScalingTarget(nn.Linear(8, 8).eval(), {"B": _b, "C": _b},
                         sizes={"B": [4, 8, 16], "C": [4, 8, 16]})  # fmt: skip


def test_scaling_cli_ctrl_c_writes_the_completed_runs(tmp_path, capsys, monkeypatch):
    import diagnostics._scaling._measure as m
    from diagnostics import scaling

    real = m.measure

    def measure(target, axis, sizes, cfg):
        if axis == "C":
            raise KeyboardInterrupt
        return real(target, axis, sizes, cfg)

    monkeypatch.setattr(m, "measure", measure)
    out = tmp_path / "o"
    argv = ["--target", f"{ME}:scaling_target", "--out", str(out), "--quiet", "--repeats", "3",
            "--no-png", "--no-tensorboard"]  # fmt: skip
    assert scaling.main(argv) == 130
    assert json.loads((out / "report.json").read_text())["axis"] == "B"
    assert _err_lines(capsys) == [
        f"scaling: interrupted (Ctrl-C) after 1 of 2 run(s); wrote the 1 run(s) completed to {out}"
    ]


@pytest.mark.parametrize(
    ("argv", "line"),
    [
        (["--threads", "0"], "--threads=0: need >= 1"),
        (["--warmup", "-1"], "--warmup=-1: need >= 0"),
        (["--memory-repeats", "0"], "--memory-repeats=0: need >= 1"),
        (["--memory-budget", "1e400"], "--memory-budget '1e400': too large (not a finite number "
         "of bytes)"),
        (["--target", f"{ME}:scaling_target", "--device", "meta"],
         "--device 'meta': only cpu and cuda[:N] are measured (time and peak memory are read "
         "from their allocators), not 'meta'"),
    ],
)  # fmt: skip
def test_scaling_cli_flags_are_named(argv, line, capsys, tmp_path):
    from diagnostics import scaling

    assert scaling.main([*argv, "--quiet", "--out", str(tmp_path / "o")]) == 2
    assert _err_lines(capsys) == [f"scaling: error: {line}"]
    assert not (tmp_path / "o").exists()


def test_scaling_help_shows_a_single_percent_sign():
    r = subprocess.run([sys.executable, "-m", "diagnostics.scaling", "--help"],
                       capture_output=True, text=True, cwd=ROOT, timeout=120)  # fmt: skip
    assert r.returncode == 0 and "95% bootstrap" in r.stdout and "%%" not in r.stdout


# --- compare_models ----------------------------------------------------------------------------


def _variant(spec: str) -> Variant:
    if spec == "boom":
        raise RuntimeError("factory exploded")
    m = nn.Sequential(nn.Linear(4, 4), nn.Dropout(0.5))
    fwd = (lambda mod, x: (mod(x), 1)) if spec == "tuple" else (lambda mod, x: mod(x))
    return Variant(model=m, description=spec, inputs=lambda b, s, seed: torch.randn(b, 4),
                   forward=fwd)  # fmt: skip


@pytest.mark.parametrize(
    ("argv", "line"),
    [
        (["--a", "x", "--b", "boom"],
         "the factory on spec 'boom' raised RuntimeError: factory exploded"),
        (["--a", "tuple", "--b", "x"],
         "forward() of A returned tuple, not a Tensor; return the output to compare"),
        (["--threads", "0"], "--threads 0: expected an integer >= 1"),
        (["--seconds", "nan"], "--seconds nan: expected a finite number > 0"),
    ],
)  # fmt: skip
def test_compare_models_cli_errors_are_one_line(argv, line, capsys):
    from diagnostics.compare_models import main

    assert main(["--factory", f"{ME}:_variant", "--repeats", "1", *argv]) == 2
    assert _err_lines(capsys) == [f"compare_models: error: {line}"]


def test_compare_models_leaves_the_caller_rng_as_found():
    torch.manual_seed(99)
    state = torch.get_rng_state()
    rep = compare_models("x", "y", factory=_variant, repeats=1)
    assert torch.equal(state, torch.get_rng_state())
    assert rep.memory_method.startswith("CPU: torch.profiler")


def test_compare_models_reads_cpu_memory_for_cpu_models_on_a_gpu_machine(monkeypatch):
    # before: a visible GPU made it read the CUDA allocator, which a CPU model never touches
    import diagnostics._compare as c

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(c, "_cuda_devices", lambda: [])
    big = lambda spec: Variant(  # noqa: E731
        model=nn.Linear(256, 256), description=spec,
        inputs=lambda b, s, seed: torch.randn(64, 256), forward=lambda mod, x: mod(x) @ mod.weight,
    )  # fmt: skip
    rep = compare_models("x", "y", factory=big, repeats=1)
    assert (
        rep.memory_method == "CPU: torch.profiler allocation/free events, peak of the running sum"
    )
    assert rep.peak_a_bytes > 0
    with pytest.raises(CompareError, match=r"seconds=inf: expected a finite number > 0"):
        compare_models("x", "y", factory=big, seconds=math.inf)


def test_compare_models_help_explains_every_flag():
    r = subprocess.run([sys.executable, "-m", "diagnostics.compare_models", "--help"],
                       capture_output=True, text=True, cwd=ROOT, timeout=120)  # fmt: skip
    assert r.returncode == 0
    for flag in ("--batch BATCH         examples", "--threads THREADS     torch CPU threads",
                 "--seed SEED           seed"):  # fmt: skip
        assert flag in r.stdout
    assert "exit status:" in r.stdout and "\nexamples:\n" in r.stdout


# --- CFGDropoutMonitor, check_null_condition --------------------------------------------------


class _Cond(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 4)
        self.null = nn.Parameter(torch.ones(4))

    def forward(self, x, cond=None, drop_cond=None):
        if drop_cond is not None:
            cond = torch.where(drop_cond[:, None], self.null, cond)
        return self.lin(x) + (0 if cond is None else cond)


def test_cfg_monitor_does_not_call_few_draws_without_a_drop_never():
    m = _Cond().train()
    with CFGDropoutMonitor(m, p=0.1) as mon:
        for _ in range(2):  # 8 draws at p=0.1: no drop 43% of the time
            m(torch.randn(4, 4), torch.randn(4, 4), drop_cond=torch.zeros(4, dtype=torch.bool))
            mon.step()
    rep = mon.report()
    assert rep.flag is None
    assert rep.message == (
        "no condition dropped yet in 8 draws with configured p=0.1, which happens by chance 43% "
        "of the time: too few draws to tell (zero drops is flagged from 66 draws on)"
    )
    with CFGDropoutMonitor(m, p=0.1) as mon:
        for _ in range(17):  # 68 draws: (0.9)^68 < 1e-3
            m(torch.randn(4, 4), torch.randn(4, 4), drop_cond=torch.zeros(4, dtype=torch.bool))
            mon.step()
    assert mon.report().flag == "never"


class _Wrap(nn.Module):  # what DDP / DataParallel / torch.compile look like from outside
    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.module = inner

    def forward(self, *args, **kwargs):
        return self.module(*args, **kwargs)


class _KW(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.m = _Cond()

    def forward(self, x, **kw):
        return self.m(x, **kw)


@pytest.mark.parametrize("make", [lambda: _Wrap(_Cond()), _KW])
def test_cfg_monitor_reads_the_mask_through_wrappers(make):
    model = make().train()
    g = torch.Generator().manual_seed(0)
    with CFGDropoutMonitor(model, p=0.5) as mon:
        for _ in range(20):
            drop = torch.rand(8, generator=g) < 0.5
            model(torch.randn(8, 4), cond=torch.randn(8, 4), drop_cond=drop)
            mon.step()
    rep = mon.report()
    assert rep.ok and rep.total == 160 and 60 < rep.dropped < 100, rep


def test_cfg_monitor_names_a_detect_that_raises():
    m = _Cond().train()
    with CFGDropoutMonitor(m, p=0.5, detect=lambda a, k: k["nope"]):
        with pytest.raises(CFGDropoutError, match=r"detect\(args, kwargs\) raised KeyError"):
            m(torch.randn(2, 4), torch.randn(2, 4))


class _NanNull(_Cond):
    def __init__(self, when) -> None:
        super().__init__()
        self.when = when

    def forward(self, x, cond=None, drop_cond=None):
        out = super().forward(x, cond, drop_cond)
        if self.when == "all" or (cond is None and self.training == self.when):
            out = out * float("nan")
        return out


def test_null_check_does_not_call_nan_outputs_the_same():
    b = {"x": torch.randn(2, 4), "cond": torch.randn(2, 4)}
    with pytest.raises(NullConditionError, match="hold NaN/Inf, so the outputs cannot be"):
        check_null_condition(_NanNull("all"), b, null={"cond": None})
    rep = check_null_condition(_NanNull(True), b, null={"cond": None})
    assert rep.differs and "holds NaN/Inf in training mode only" in rep.message
