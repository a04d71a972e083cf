"""The ablation engine on the stand-in conditioned denoiser (diagnostics.ablation_example)."""

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from diagnostics import AblationError, AblationTarget, run_ablation
from diagnostics import ablation_example as S
from diagnostics._ablation._runner import derangement, parse_site
from tests.diagnostics import ablation_standin as F

FAST = {"umap": False, "n_boot": 300}


@pytest.fixture(scope="module")
def healthy():
    return S.trained(0.2)


@pytest.fixture(scope="module")
def healthy_report(healthy):
    return run_ablation(S.make_target(healthy), seed=0, **FAST)


def test_healthy_model_is_used(healthy_report):
    by_site = {s["site"]: s for s in healthy_report.data["sites"]}
    assert set(by_site) == {"cond_encoder", "arg:cond"}
    for s in by_site.values():
        assert s["verdict"] == "used", s
        assert s["ablations"]["shuffle"]["ci95"][0] > 0.3  # a mismatched condition changes a lot
        for r in s["ablations"].values():
            assert r["ci95"][0] <= r["effect"] <= r["ci95"][1]
            assert r["n"] == 64


def test_severed_conditioning_is_ignored():
    rep = run_ablation(S.make_target(S.trained(0.2, sever=True)), seed=0, **FAST)
    for s in rep.data["sites"]:
        assert s["verdict"] == "ignored", s
        assert all(r["ci95"][1] < 1e-6 for r in s["ablations"].values())


def test_untrained_null_embedding_gives_large_null_effect(healthy_report):
    """CFG p=0: the null embedding is never trained, so 'null' is far off the learned path."""
    rep = run_ablation(
        S.make_target(S.trained(0.0)),
        sites=["cond_encoder"],
        ablations=["null"],
        seed=0,
        embeddings=False,
        **FAST,
    )
    null0 = rep.data["sites"][0]["ablations"]["null"]
    null_healthy = healthy_report.data["sites"][0]["ablations"]["null"]
    assert null0["ci95"][0] >= 0.05
    assert null0["ci95"][0] > 2 * null_healthy["ci95"][1], (null0, null_healthy)
    # the channel test alone cannot tell used from constant: said, not guessed
    site = rep.sites[0]
    assert site.verdict == "inconclusive" and "no content ablation" in site.reason
    assert site.channel.ablation == "null" and site.channel.above_floor and site.content is None


def test_curves_over_times_and_cond_vs_uncond(healthy_report):
    d = healthy_report.data
    assert len(d["times"]) >= 8
    for s in healthy_report.data["sites"]:
        for r in s["ablations"].values():
            c = r["curve"]
            assert len(c["t"]) == len(c["effect"]) == len(c["ci95"]) == len(d["times"])
            assert np.isclose(np.mean(c["effect"]), r["effect"], rtol=1e-4)
    cvu = d["cond_vs_uncond"]
    assert cvu["site"] == "cond_encoder" and len(cvu["curve"]["rel_diff"]) == len(d["times"])
    # the condition matters more at high noise: the uncond/cond gap grows with t
    assert cvu["curve"]["rel_diff"][-1] > cvu["curve"]["rel_diff"][0]


def test_embedding_analysis_from_run(healthy_report):
    emb = healthy_report.data["embeddings"]
    assert emb["site"] == "cond_encoder" and emb["n"] == 64 and emb["n_labels"] == 4
    assert not emb["collapsed"] and emb["silhouette"] > 0.5


def test_same_seed_same_report_and_seed_matters(healthy, healthy_report):
    again = run_ablation(S.make_target(healthy), seed=0, **FAST)
    assert again.data == healthy_report.data
    other = run_ablation(
        S.make_target(healthy),
        sites=["cond_encoder"],
        ablations=["random"],
        seed=1,
        embeddings=False,
        **FAST,
    )
    assert (
        other.data["sites"][0]["ablations"]["random"]
        != healthy_report.data["sites"][0]["ablations"]["random"]
    )


def test_batched_variants_match_one_forward_each(healthy):
    kw = dict(sites=["cond_encoder", "arg:cond"], seed=3, embeddings=False, **FAST)
    tgt = S.make_target(healthy, n_batches=2)
    a = run_ablation(tgt, batch_variants=True, **kw)
    b = run_ablation(tgt, batch_variants=False, **kw)
    assert a.data["sites"][0]["batched"] and not b.data["sites"][0]["batched"]
    for sa, sb in zip(a.data["sites"], b.data["sites"], strict=True):
        assert sa["verdict"] == sb["verdict"]
        for name in sa["ablations"]:
            assert np.isclose(
                sa["ablations"][name]["effect"],
                sb["ablations"][name]["effect"],
                rtol=1e-4,
                atol=1e-6,
            )


def test_batch_dependent_model_falls_back_to_sequential(healthy):
    class BatchMean(torch.nn.Module):  # output depends on the whole batch: tiling changes it
        def __init__(self):
            super().__init__()
            self.enc = torch.nn.Linear(8, 4)

        def forward(self, cond):
            e = self.enc(cond)
            return e - e.mean(0, keepdim=True) * torch.arange(e.shape[0])[:, None]

    tgt = AblationTarget(model=BatchMean(), batches=[{"cond": torch.randn(5, 8)}], sites=["enc"])
    rep = run_ablation(tgt, ablations=["zero"], embeddings=False, **FAST)
    s = rep.data["sites"][0]
    assert not s["batched"] and any("not batch-independent" in n for n in s["notes"])


def test_observes_without_changing(healthy):
    tgt = S.make_static_target(healthy, n_batches=1)
    batch = tgt.batches[0]
    before = healthy(**batch)
    rng = torch.get_rng_state()
    run_ablation(tgt, seed=0, **FAST)
    assert torch.equal(torch.get_rng_state(), rng)
    assert torch.equal(healthy(**batch), before)
    assert not healthy._forward_pre_hooks and not healthy._forward_hooks
    assert all(not m._forward_hooks for m in healthy.modules())
    assert not healthy.training


def test_hooks_removed_when_forward_raises(healthy):
    calls = {"n": 0}

    def flaky(model, batch):
        calls["n"] += 1
        if calls["n"] > 3:
            raise RuntimeError("boom in forward")
        return model(**batch)

    tgt = S.make_static_target(healthy, n_batches=2)
    tgt.forward = flaky
    with pytest.raises(
        AblationError,
        match=r"site 'cond_encoder': the target's forward raised "
        r"RuntimeError: boom in forward",
    ):
        run_ablation(tgt, sites=["cond_encoder"], **FAST)
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in healthy.modules())


def test_guidance_sweep(healthy):
    tgt = S.make_target(healthy, n_batches=2)
    tgt.sample, tgt.guidance_scales, tgt.guidance_batches = S.sample_fn, (0.0, 1.0, 3.0), 2
    rep = run_ablation(tgt, sites=["cond_encoder"], ablations=["zero"], embeddings=False, **FAST)
    sw = rep.data["guidance_sweep"]
    assert sw["scales"] == [0.0, 1.0, 3.0]
    m = sw["metrics"]["neg_mse"]
    assert m["n"] == [32, 32, 32] and m["failures"] == [0, 0, 0] and len(m["mean"]) == 3
    assert m["mean"][1] > m["mean"][0]  # conditioning helps this toy denoiser
    # paired against scale 0: the delta is the difference of the means, with a CI above 0
    assert m["delta"][0] == 0.0 and np.isclose(
        m["delta"][1], m["mean"][1] - m["mean"][0], rtol=1e-4
    )
    assert m["delta_ci95"][1][0] > 0


# ---- bad input: one clear message each
def test_unknown_site_lists_nearest(healthy):
    with pytest.raises(AblationError, match=r"unknown site 'cond_encodr'.*nearest: cond_encoder"):
        run_ablation(S.make_static_target(healthy), sites=["cond_encodr"], **FAST)


def test_tuple_site_needs_an_index_and_index_works():
    tgt = F.tuple_target()
    with pytest.raises(
        AblationError,
        match=r"site 'pair' returns a tuple \(\[0\] tensor\[6, 16\] f32 cpu .*, "
        r"\[1\] tensor\[6\] f32 cpu .*\); say which element, e\.g\. 'pair\[0\]'",
    ):
        run_ablation(tgt, ablations=["zero"], **FAST)
    rep = run_ablation(tgt, sites=["pair[0]", "pair[1]"], ablations=["zero", "shuffle"], **FAST)
    assert [s["verdict"] for s in rep.data["sites"]] == ["used", "used"]


def test_non_tensor_site_output():
    class Dicty(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.enc = torch.nn.ModuleDict({"a": torch.nn.Linear(3, 3)})

        def forward(self, x):
            return self.enc["a"](x)

    class Wrap(torch.nn.Module):
        def forward(self, x):
            return {"y": x}

    m = Dicty()
    m.wrap = Wrap()
    m.forward = lambda x: m.enc["a"](m.wrap(x)["y"])
    tgt = AblationTarget(model=m, batches=[(torch.randn(4, 3),)], sites=["wrap"])
    with pytest.raises(
        AblationError, match=r"site 'wrap': the module's output is dict, not a Tensor"
    ):
        run_ablation(tgt, ablations=["zero"], **FAST)


def test_empty_batches_and_wrong_target():
    with pytest.raises(AblationError, match=r"AblationTarget.batches is empty"):
        run_ablation(F.empty_target())
    with pytest.raises(
        AblationError, match=r"the target is dict, not a diagnostics.AblationTarget"
    ):
        run_ablation({"model": None})


def test_arg_site_not_in_signature_or_not_passed(healthy):
    tgt = S.make_static_target(healthy)
    with pytest.raises(
        AblationError,
        match=r"CondDenoiser.forward has no argument 'noise_ref' "
        r"\(its arguments: x_t, t, cond, drop_cond\)",
    ):
        run_ablation(tgt, sites=["arg:noise_ref"], **FAST)
    with pytest.raises(
        AblationError, match=r"called without 'drop_cond'.*does not use that argument"
    ):
        run_ablation(tgt, sites=["arg:drop_cond"], **FAST)


def test_partial_report_when_a_later_site_fails(healthy):
    with pytest.raises(AblationError) as info:
        run_ablation(S.make_static_target(healthy), sites=["cond_encoder", "nowhere"], **FAST)
    rep = info.value.report
    assert [s["site"] for s in rep.data["sites"]] == ["cond_encoder"]
    assert rep.data["errors"][0]["site"] == "nowhere"


def test_bad_ablation_name(healthy):
    with pytest.raises(
        AblationError, match=r"unknown ablation\(s\) 'zeros'; choose from zero, mean"
    ):
        run_ablation(S.make_static_target(healthy), ablations=["zeros"])


def test_null_skipped_without_null(healthy):
    tgt = S.make_static_target(healthy, n_batches=1)
    tgt.null = None
    rep = run_ablation(tgt, sites=["cond_encoder"], embeddings=False, **FAST)
    assert "null" not in rep.data["sites"][0]["ablations"]
    assert any("null skipped" in n for n in rep.data["sites"][0]["notes"])


@given(st.integers(2, 40), st.integers(0, 2**31 - 1))
def test_shuffle_is_aderangement(b, seed):
    perm = derangement(b, torch.Generator().manual_seed(seed))
    assert sorted(perm.tolist()) == list(range(b))
    assert not (perm == torch.arange(b)).any()


def test_site_parsing():
    assert parse_site("a.b[1]").index == 1 and parse_site("arg:cond").kind == "arg"
    with pytest.raises(AblationError, match=r"bad site 'a b'"):
        parse_site("a b")


# ---- batches as users hold them
class _Examples(torch.utils.data.Dataset):
    def __init__(self, batches):
        self.rows = [{k: v[i] for k, v in b.items()} for b in batches for i in range(len(b["t"]))]

    def __len__(self):
        return len(self.rows)

    def __getitem__(self, i):
        return self.rows[i]


def test_dataloader_is_streamed_like_a_list(healthy):
    tgt = S.make_static_target(healthy, n_batches=3, b=8)
    kw = dict(seed=2, embeddings=False, **FAST)
    as_list = run_ablation(tgt, **kw)
    loader = torch.utils.data.DataLoader(_Examples(tgt.batches), batch_size=8)
    tgt.batches = loader
    from_loader = run_ablation(tgt, **kw)
    assert from_loader.data["sites"] == as_list.data["sites"]
    assert from_loader.n_examples == 24


def test_generator_and_shuffled_loader_are_refused(healthy):
    tgt = S.make_static_target(healthy, n_batches=2, b=8)
    batches = list(tgt.batches)
    tgt.batches = (b for b in batches)
    with pytest.raises(
        AblationError,
        match=r"AblationTarget.batches is a one-shot iterator \(generator\): the ablation reads "
        r"the batches several times .* give a list or a DataLoader",
    ):
        run_ablation(tgt, **FAST)
    tgt.batches = torch.utils.data.DataLoader(_Examples(batches), batch_size=8, shuffle=True)
    with pytest.raises(AblationError, match=r"DataLoader with shuffle=True.*use shuffle=False"):
        run_ablation(tgt, **FAST)
    tgt.batches = torch.utils.data.DataLoader(_Examples(batches[:0]), batch_size=8)
    with pytest.raises(
        AblationError,
        match=r"AblationTarget.batches is empty: .*\(got a DataLoader with 0 batches\)",
    ):
        run_ablation(tgt, **FAST)


def test_report_fields_of_the_public_surface(healthy_report):
    d = healthy_report.to_dict()
    assert d["schema"] == 2 and d["min_effect"] == 0.05
    for s in d["sites"]:
        assert s["verdict"] in ("used", "weak", "constant", "ignored", "inconclusive")
        assert isinstance(s["reason"], str) and s["reason"]
        assert set(s["floor"]) >= {"effect", "ci95"}
        for test in ("channel", "content"):
            assert set(s[test]) >= {"effect", "ci95", "ablation"}
        assert set(s["by_label"]) == {"type0", "type1", "type2", "type3"}
        for v in s["by_label"].values():
            assert v["verdict"] == "used" and v["n"] >= 6
        for r in s["ablations"].values():
            assert set(r) >= {"effect", "ci95"}
    site = healthy_report.sites[0]  # the same fields on the report object
    assert site.verdict == d["sites"][0]["verdict"] and site.content.ablation in ("shuffle", "mean")
    # and the JSON view by key, for scripts written against the dictionaries
    assert site["verdict"] == site.verdict and site.get("reason") == site.reason
    assert site["ablations"]["shuffle"]["ci95"] == site.ablations["shuffle"].ci95


def test_quality_deltas_where_the_target_samples(healthy):
    tgt = S.make_static_target(healthy, n_batches=2)
    tgt.sample, tgt.guidance_scales, tgt.guidance_batches = S.sample_fn, (0.0, 1.0), 2
    tgt.sample_batches = S.make_target(healthy, n_batches=2, times=False).batches  # clean x0
    rep = run_ablation(tgt, sites=["cond_encoder"], guidance=False, **FAST)
    abl = rep.data["sites"][0]["ablations"]
    assert set(abl["shuffle"]["metrics"]) == {"neg_mse"} and "metrics" not in abl["zero"]
    for a in ("shuffle", "null"):
        m = abl[a]["metrics"]["neg_mse"]
        assert m["n"] == 32 and m["failures"] == 0
        assert m["ci95"][1] < 0  # another example's condition (or none) makes it worse
    assert rep.guidance_sweep is None


def test_failed_metric_values_are_counted_not_dropped(healthy):
    def flaky(model, batch, scale, seed):
        out = S.sample_fn(model, batch, scale, seed)["neg_mse"].clone()
        out[:3] = float("nan")  # e.g. PESQ refusing three clips
        return {"neg_mse": out}

    tgt = S.make_static_target(healthy, n_batches=1)
    tgt.sample, tgt.guidance_scales = flaky, (0.0, 1.0)
    tgt.sample_batches = S.make_target(healthy, n_batches=1, times=False).batches
    rep = run_ablation(tgt, sites=["cond_encoder"], ablations=["shuffle"], **FAST)
    m = rep.guidance_sweep["metrics"]["neg_mse"]
    assert m["n"] == [13, 13] and m["failures"] == [3, 3] and m["delta_n"] == [13, 13]
    q = rep.sites[0].ablations["shuffle"].metrics["neg_mse"]
    assert q.n == 13 and q.failures == 3


def test_quality_deltas_skipped_when_the_sampler_bypasses_the_site(healthy):
    def bypass(model, batch, scale, seed):  # never calls the model: nothing to ablate
        return {"neg_mse": -batch["x0"].square().mean(dim=1)}

    tgt = S.make_static_target(healthy, n_batches=1)
    tgt.sample, tgt.guidance_scales = bypass, (0.0,)
    tgt.sample_batches = S.make_target(healthy, n_batches=1, times=False).batches
    rep = run_ablation(tgt, sites=["cond_encoder"], ablations=["shuffle"], guidance=False, **FAST)
    site = rep.sites[0]
    assert site.ablations["shuffle"].metrics == {}
    assert "quality deltas skipped: the sampler never reached 'cond_encoder'" in site.notes


@pytest.mark.slow
def test_memory_flat_in_the_number_of_examples():
    """A DataLoader of 64 batches whose outputs would take 1.8 GiB if kept: the peak RSS of a
    fresh process stays that of 4 batches (streamed; the heap is returned after each item)."""
    from benchmarks.bench_cond_ablation import bench_memory

    mem = bench_memory()
    assert mem["outputs_if_kept_mib"] > 1500
    assert mem["growth_mib"] < 200, mem


def test_min_effect_validated_and_errors_in_the_hierarchy(healthy):
    from contracts import TorchdxError
    from diagnostics import TargetLoadError
    from diagnostics.cond_ablation import load_target

    for bad in (-0.1, float("nan"), "0.05"):
        with pytest.raises(AblationError, match=r"min_effect is .*; give a number >= 0"):
            run_ablation(S.make_static_target(healthy, n_batches=1), min_effect=bad, **FAST)
    assert issubclass(AblationError, TorchdxError) and issubclass(TargetLoadError, AblationError)
    with pytest.raises(TargetLoadError, match=r"--target 'nocolon': expected MODULE:FACTORY"):
        load_target("nocolon")


def test_a_model_that_mixes_examples_is_run_one_variant_at_a_time_and_left_unchanged():
    class CentredBN(torch.nn.Module):  # BatchNorm in train mode: each output reads the batch
        def __init__(self):
            super().__init__()
            self.enc = torch.nn.Linear(8, 4)
            self.bn = torch.nn.BatchNorm1d(4)
            self.head = torch.nn.Linear(4 + 3, 2)

        def forward(self, x, cond):
            return self.head(torch.cat([x, self.bn(self.enc(cond))], 1))

    torch.manual_seed(0)
    model = CentredBN().train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    tgt = AblationTarget(
        model=model,
        batches=[{"x": torch.randn(6, 3), "cond": torch.randn(6, 8)} for _ in range(2)],
        sites=["enc"],
    )
    rep = run_ablation(tgt, ablations=["zero", "shuffle"], embeddings=False, **FAST)
    s = rep.data["sites"][0]
    assert not s["batched"] and any("mixes the examples" in n for n in s["notes"]), s["notes"]
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # running stats put back


def test_a_non_finite_intact_output_is_an_error_not_a_verdict():
    class NaNOut(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.enc = torch.nn.Linear(8, 4)

        def forward(self, cond):
            return self.enc(cond).log()  # negative values: NaN

    for batched in (True, False):
        tgt = AblationTarget(model=NaNOut(), batches=[{"cond": -torch.rand(4, 8) - 5}])
        tgt.sites = ["enc"]
        with pytest.raises(AblationError, match="holds NaN/Inf before any ablation"):
            run_ablation(tgt, ablations=["zero"], embeddings=False, batch_variants=batched, **FAST)


def test_random_on_an_integer_condition_draws_observed_values():
    class ClassCond(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = torch.nn.Embedding(5, 4)
            self.head = torch.nn.Linear(4, 2)

        def forward(self, label):
            return self.head(self.emb(label))

    for seed in range(6):  # some seeds drew negative ids before
        tgt = AblationTarget(model=ClassCond(), batches=[{"label": torch.arange(5) % 5}])
        tgt.sites = ["arg:label"]
        run_ablation(tgt, ablations=["random"], embeddings=False, seed=seed, **FAST)
