"""The evaluation audit on planted protocol faults (analytic and tiny SGMSE+ targets)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from diagnostics import EvalAuditError, EvalTarget
from diagnostics._eval_audit import make_variants, run_audit, sgmse_eval_target
from diagnostics._eval_audit._metrics import builtin_metrics

from .test_eval_audit_standins import (
    AnalyticScore,
    analytic_target,
    converged_si_sdr,
    sde_sample,
    speech_batches,
)


def _kinds(report) -> dict[str, dict]:
    return {f["kind"]: f for f in report.findings}


def _si_sdr_only(**kw) -> EvalTarget:
    kw.setdefault("metrics", builtin_metrics(16000, ["si_sdr"]))
    return analytic_target(**kw)


# --- sampler convergence ---------------------------------------------------------------------


def test_under_converged_sampler_is_flagged_with_its_numbers():
    target = _si_sdr_only(reference={"steps": 16, "weights": "ema"})
    report = run_audit(target, make_variants(target.reference, steps=[16, 256]))
    f = _kinds(report)["under_converged"]
    assert f["severity"] == "problem"
    assert f["delta"] > 2.0 and f["ci95"][0] > 0, f
    assert f["text"].startswith("under-converged: N = 16 → 256 changes SI-SDR by +"), f["text"]
    v = report.variants[0]
    assert v["protocol"] == {"steps": 256, "weights": "ema"}
    assert v["model_calls"] == 16 * report.reference["model_calls"]
    assert v["network_evals"] == 4 * v["model_calls"]  # one batch of 4 examples per call
    assert "converged" not in _kinds(report)


def test_converged_protocol_matches_the_closed_form_answer():
    target = _si_sdr_only(reference={"steps": 512, "weights": "ema"})
    report = run_audit(target, make_variants(target.reference, steps=[1024]))
    kinds = _kinds(report)
    assert "converged" in kinds and "under_converged" not in kinds, report.findings
    assert kinds["converged"]["text"].startswith("converged at N = 512")
    expect = float(converged_si_sdr(target.batches[0]["clean"]).mean())
    got = report.reference["metrics"]["si_sdr"]["mean"]
    assert abs(got - expect) < 0.5, (got, expect)


# --- weights ---------------------------------------------------------------------------------


def test_ema_never_updated_is_flagged():
    target = _si_sdr_only(gain_raw=1.0, gain_ema=1.0)
    report = run_audit(target, make_variants(target.reference, weights=["raw"]))
    kinds = _kinds(report)
    assert kinds["ema_identical_to_raw"]["severity"] == "problem"
    assert "EMA never updated" in kinds["ema_identical_to_raw"]["text"]
    assert report.weights["ema_identical_to_raw"] is True
    # same examples, same sampler noise, same weights: the paired delta is exactly zero
    d = report.variants[0]["delta"]["si_sdr"]
    assert d["delta"] == 0.0 and d["ci95"] == [0.0, 0.0]


def test_checkpoint_without_ema_is_flagged():
    target = _si_sdr_only(gain_raw=0.9, gain_ema=None)
    report = run_audit(target, make_variants(target.reference, weights=["raw"]))
    kinds = _kinds(report)
    assert kinds["ema_not_loaded"]["severity"] == "problem"
    assert "checkpoint has no EMA" in kinds["ema_not_loaded"]["text"]
    assert report.reference["weights_loaded"] == "as given"
    # the same when the target leaves the "ema" entry out altogether
    target = _si_sdr_only(gain_raw=0.9, gain_ema=None)
    target.weights = {"raw": target.weights["raw"]}
    assert "ema_not_loaded" in _kinds(run_audit(target, []))


def test_loader_that_kept_the_raw_weights_is_flagged():
    target = _si_sdr_only(gain_raw=0.9, gain_ema=1.0)
    with torch.no_grad():
        target.model.gain.fill_(0.9)  # the "loader" kept raw although EMA was asked for
    report = run_audit(target, [])
    f = _kinds(report)["ema_not_loaded"]
    assert "holds the raw weights" in f["text"], f
    assert report.weights["model_holds"] == ["raw"]


def test_large_ema_raw_gap_is_flagged_and_a_healthy_ema_is_not():
    ref = {"steps": 64, "weights": "ema"}
    bad = _si_sdr_only(gain_raw=1.0, gain_ema=0.5, reference=ref)
    report = run_audit(bad, make_variants(bad.reference, weights=["raw"]))
    f = _kinds(report)["ema_raw_gap"]
    assert f["severity"] == "problem" and f["delta"] > 5, f
    assert "the EMA weights are worse" in f["text"]

    good = _si_sdr_only(gain_raw=1.0, gain_ema=0.9995, reference=ref)
    report = run_audit(good, make_variants(good.reference, weights=["raw"]))
    kinds = _kinds(report)
    assert "ema_loaded" in kinds and "ema_raw_close" in kinds, report.findings
    for k in ("ema_raw_gap", "ema_not_loaded", "ema_identical_to_raw", "weights_unknown"):
        assert k not in kinds, report.findings


# --- the evaluation itself ---------------------------------------------------------------


def test_metric_with_wrong_sample_rate_is_caught_by_the_agreement_check():
    from models.audio import pesq_score

    fns = builtin_metrics(16000, ["si_sdr", "pesq"])

    def pesq_at_8k(est, ref):  # planted bug: 16 kHz audio scored as 8 kHz narrow band
        return [pesq_score(e, r, 8000) for e, r in zip(est, ref, strict=True)]

    batches = speech_batches(3, seconds=1.0)
    healthy = _si_sdr_only(metrics=fns, batches=batches)
    report = run_audit(healthy, [], agreement_n=2)
    kinds = _kinds(report)
    assert "metrics_agree" in kinds and "metric_disagrees" not in kinds, report.findings
    assert "ceiling_ok" in kinds, report.findings
    assert report.checks["ceiling"]["pesq"]["min"] > 4.4

    buggy = _si_sdr_only(metrics={**fns, "pesq": pesq_at_8k}, batches=batches)
    report = run_audit(buggy, [], agreement_n=2)
    f = _kinds(report)["metric_disagrees"]
    assert f["metric"] == "pesq" and f["max_abs_diff"] > 0.05, f
    assert "PESQ disagrees with its reference (pesq.pesq)" in f["text"]
    assert report.checks["agreement"]["si_sdr"]["agree"] is True


def test_floor_is_the_unprocessed_input():
    target = _si_sdr_only(reference={"steps": 256, "weights": "ema"})
    report = run_audit(target, [])
    floor = report.checks["floor"]["metrics"]["si_sdr"]["mean"]
    from models.audio import si_sdr

    b = target.batches[0]
    assert floor == pytest.approx(float(si_sdr(b["noisy"], b["clean"]).double().mean()), abs=1e-4)
    assert _kinds(report)["beats_floor"]["delta"] > 20


# --- the audit observes without changing ------------------------------------------------------


def test_same_noise_as_a_direct_call_and_weights_restored():
    from models.audio import si_sdr

    target = _si_sdr_only(gain_raw=0.8, gain_ema=1.0)
    report = run_audit(target, make_variants(target.reference, weights=["raw"]), seed=5)
    b = target.batches[0]
    direct = sde_sample(AnalyticScore(1.0), b, torch.Generator().manual_seed(5 * 100003), 8)
    ours = np.asarray(report.per_example["N=8 ema"]["si_sdr"])
    assert np.array_equal(ours, si_sdr(direct, b["clean"]).detach().double().numpy())
    assert target.model.gain.item() == 1.0  # the EMA weights the model held before


def test_weights_restored_when_the_sampler_raises():
    def sample(model, batch, generator, steps=8):
        if model.gain.item() != 1.0:
            raise RuntimeError("boom on the raw weights")
        return sde_sample(model, batch, generator, steps)

    target = _si_sdr_only(gain_raw=0.7, gain_ema=1.0, sample=sample)
    with pytest.raises(RuntimeError, match="boom"):
        run_audit(target, make_variants(target.reference, weights=["raw"]))
    assert target.model.gain.item() == 1.0


# --- bad input ----------------------------------------------------------------------------


def test_bad_input_is_named():
    with pytest.raises(EvalAuditError, match="'sample' is NoneType, not a sampler"):
        run_audit(_si_sdr_only(sample=None), [])
    with pytest.raises(EvalAuditError, match=r"--steps 0: steps 0; expected an integer >= 1"):
        make_variants({"steps": 8}, steps=[0])
    with pytest.raises(EvalAuditError, match=r"unknown metric\(s\) nope; the target has si_sdr"):
        run_audit(_si_sdr_only(), [], metrics=["nope"])
    with pytest.raises(EvalAuditError, match=r"unknown metric\(s\) mos; built-in: si_sdr"):
        run_audit(analytic_target(), [], metrics=["mos"])
    with pytest.raises(EvalAuditError, match="not in the target's reference protocol"):
        run_audit(_si_sdr_only(), [{"steps": 8, "corrector_steps": 0, "weights": "ema"}])
    with pytest.raises(EvalAuditError, match=r"returned \(4,\) for batch 0 under N=8 ema"):
        run_audit(_si_sdr_only(sample=lambda m, b, g, steps=8: torch.zeros(4)), [])
    with pytest.raises(EvalAuditError, match="does not accept keyword 'steps'"):
        run_audit(_si_sdr_only(sample=lambda m, b, g: b["noisy"]), [])


# --- the SGMSE+ path (tiny model, real checkpoint code) ---------------------------------------


def _tiny_checkpoint(tmp_path, ema_mode: str):
    from models.sgmse import EMA, ScoreModel, ScoreModelConfig, save_checkpoint

    torch.manual_seed(0)
    model = ScoreModel(ScoreModelConfig.tiny())
    ema = EMA(model, 0.9)
    if ema_mode == "updated":
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.05 * torch.randn_like(p))
        ema.update(model)
    elif ema_mode == "never_updated":  # the EMA object exists, update() was never called...
        with torch.no_grad():  # ...and the shadow was taken from the final weights
            ema = EMA(model, 0.9)
    return save_checkpoint(
        tmp_path / f"{ema_mode}.pt", model, None if ema_mode == "none" else ema, step=1
    )


def _tiny_audit(path):
    target = sgmse_eval_target(path, n_examples=2, seconds=0.25, batch_size=2)
    target.metrics = builtin_metrics(16000, ["si_sdr"])
    target.reference = {**target.reference, "steps": 2, "corrector_steps": 0}
    return run_audit(target, make_variants(target.reference, weights=["raw"]), agreement_n=1)


def test_sgmse_checkpoint_faults(tmp_path):
    kinds = _kinds(_tiny_audit(_tiny_checkpoint(tmp_path, "none")))
    assert "checkpoint has no EMA" in kinds["ema_not_loaded"]["text"]
    kinds = _kinds(_tiny_audit(_tiny_checkpoint(tmp_path, "never_updated")))
    assert "ema_identical_to_raw" in kinds
    kinds = _kinds(_tiny_audit(_tiny_checkpoint(tmp_path, "updated")))
    assert "ema_loaded" in kinds and "ema_not_loaded" not in kinds, kinds


def test_sgmse_loader_bug_is_caught(tmp_path, monkeypatch):
    import models.sgmse as sg

    path = _tiny_checkpoint(tmp_path, "updated")
    real = sg.load_checkpoint

    def buggy_loader(p, weights="ema"):  # ignores the request: always raw, says "ema"
        m = real(p, weights="raw")
        m.weights_used = weights
        return m

    monkeypatch.setattr(sg, "load_checkpoint", buggy_loader)
    f = _kinds(_tiny_audit(path))["ema_not_loaded"]
    assert "holds the raw weights" in f["text"]


# --- finding rules on hand-made measurements ---------------------------------------------------


def _report(variants, metrics=("si_sdr",)):
    from diagnostics._eval_audit import AuditReport

    ref_p = {"steps": 30, "corrector_steps": 1, "weights": "ema"}
    stat = {"mean": 5.0, "ci95": [4.0, 6.0], "n": 12}
    vs = []
    for change, delta, ci in variants:
        vs.append(
            {
                "protocol": {**ref_p, **change},
                "label": str(change),
                "metrics": {m: dict(stat) for m in metrics},
                "delta": {m: {"delta": delta, "ci95": ci, "n": 12} for m in metrics},
                "seconds_per_example": 2.0,
                "network_evals": 30,
            }
        )
    checks = {
        "floor": {"metrics": {m: dict(stat) for m in metrics}, "delta_reference": {}},
        "ceiling": {},
        "agreement": {},
    }
    report = AuditReport("t", 12, 0, list(metrics),
                         {"protocol": ref_p, "label": "ref", "metrics": {m: stat for m in metrics},
                          "seconds_per_example": 4.0, "network_evals": 60},
                         vs, checks, {})  # fmt: skip
    from diagnostics._eval_audit._findings import make_findings

    return {f["kind"]: f for f in make_findings(report)}


def test_corrector_rules_and_wording():
    k = _report([({"corrector_steps": 0}, 0.5, [0.3, 0.7])])
    assert k["corrector_hurts"]["text"].startswith(
        "corrector hurts: corrector steps = 1 → 0 changes SI-SDR by +0.50 dB [+0.30, +0.70], at "
        "0.50× the network evaluations, 0.50× the seconds"
    )
    assert "corrector_helps" in _report([({"corrector_steps": 0}, -0.5, [-0.7, -0.3])])
    wide = _report([({"corrector_steps": 0}, 0.5, [-0.4, 1.4])])["corrector_neutral"]
    assert "unclear (CI too wide)" in wide["text"]
    tiny = _report([({"corrector_steps": 2}, 0.05, [0.01, 0.09])])["corrector_neutral"]
    assert "no meaningful effect" in tiny["text"]


def test_steps_rules():
    assert "under_converged" in _report([({"steps": 50}, 0.41, [0.22, 0.63])])
    assert "converged" in _report([({"steps": 50}, 0.05, [-0.1, 0.15])])
    assert "steps_unclear" in _report([({"steps": 50}, 0.3, [-0.5, 1.1])])
    assert "fewer_steps_cost" in _report([({"steps": 10}, -1.0, [-1.5, -0.5])])
    assert "fewer_steps_suffice" in _report([({"steps": 10}, 0.0, [-0.1, 0.1])])
    assert "steps_unclear" in _report([({"steps": 10}, 0.6, [-0.1, 1.3])])


def test_pareto_front():
    from diagnostics._eval_audit._findings import pareto_front

    pts = [("a", 1.0, 5.0), ("b", 2.0, 6.0), ("c", 3.0, 5.5), ("d", 1.0, 4.0)]
    assert pareto_front(pts) == ["a", "b"]


def test_sgmse_sampler_takes_every_protocol_setting(tmp_path):
    path = _tiny_checkpoint(tmp_path, "updated")
    target = sgmse_eval_target(path, n_examples=2, seconds=0.25, batch_size=2)
    target.metrics = builtin_metrics(16000, ["si_sdr"])
    target.reference = {**target.reference, "steps": 2, "corrector_steps": 0}
    grids = dict(steps=[1], corrector_steps=[1], snr=[0.2], guidance=[2.0])
    report = run_audit(target, make_variants(target.reference, **grids), agreement_n=1)
    by = {v["label"]: v for v in report.variants}
    ref = report.reference
    assert ref["model_calls"] == 2 and ref["network_evals"] == 4  # N=2, B=2, no corrector
    assert by["N=1 corrector=0 snr=0.5 w=1 ema"]["model_calls"] == 1
    assert by["N=2 corrector=1 snr=0.5 w=1 ema"]["model_calls"] == 4
    # CFG with w != 1: one call of 2B rows per step
    assert by["N=2 corrector=0 snr=0.5 w=2 ema"]["model_calls"] == 2
    assert by["N=2 corrector=0 snr=0.5 w=2 ema"]["network_evals"] == 8
    # snr only acts through the corrector, which is off in the reference: same estimate
    assert by["N=2 corrector=0 snr=0.2 w=1 ema"]["delta"]["si_sdr"]["delta"] == 0.0
