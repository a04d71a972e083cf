"""The embedded default target (SGMSE+) wired to models.sgmse / models.audio, and the shipped
checkpoint's real verdict (a missing or broken checkpoint fails here: no skip)."""

import pytest
import torch

from diagnostics import run_ablation
from diagnostics._ablation._default_target import default_target, sgmse_target

TINY = dict(
    n_mixtures=4,
    n_embed=6,
    batch_size=2,
    frames=8,
    n_times=8,
    guidance_n=2,
    sampler_steps=2,
    guidance_scales=(0.0, 1.0),
)


def test_sgmse_target_wiring_on_a_tiny_model():
    from models.sgmse import ScoreModel, ScoreModelConfig

    torch.manual_seed(0)
    model = ScoreModel(ScoreModelConfig.tiny()).eval()
    tgt = sgmse_target(model, **TINY)
    assert tgt.sites == ["noise_encoder", "arg:noise_ref"] and len(tgt.times) == 8
    rep = run_ablation(tgt, seed=0, umap=False, n_boot=200)
    d = rep.to_dict()
    assert [s["site"] for s in d["sites"]] == ["noise_encoder", "arg:noise_ref"]
    assert d["cond_vs_uncond"]["site"] == "noise_encoder"
    sw = d["guidance_sweep"]
    assert sw["scales"] == [0.0, 1.0] and "si_sdr" in sw["metrics"]
    assert sw["unprocessed"]["si_sdr"]["n"] == 2  # the noisy mixture's own score
    assert sw["metrics"]["si_sdr"]["delta"][0] == 0.0  # paired against scale 0
    for s in d["sites"]:
        assert s["verdict"] == "inconclusive" and s["reason"].startswith("only 4 examples")
        for a in ("null", "shuffle"):
            assert s["ablations"][a]["metrics"]["si_sdr"]["n"] == 2
    assert d["embeddings"]["n"] == 6 and d["embeddings"]["n_labels"] == 6


@pytest.mark.slow
def test_shipped_checkpoint_uses_the_noise_reference_and_severed_is_ignored():
    """The shipped checkpoint's verdict on the default data (docs/COND_ABLATION.md has the full
    run): the content of the noise reference is used at both sites; with the embedding the
    network receives multiplied by 0, nothing is above the floor."""
    tgt = default_target(n_mixtures=12, batch_size=6, n_embed=12)
    kw = dict(
        ablations=["zero", "shuffle", "null"],
        seed=0,
        embeddings=False,
        guidance=False,
        quality=False,
        n_boot=300,
    )
    rep = run_ablation(tgt, **kw)
    for s in rep.sites:
        assert s.verdict == "used", s.reason
        assert s.content.ablation == "shuffle" and s.content.ci95[0] > 0.1, s.content
        assert s.floor.effect < 1e-5  # eval mode: round-off only
    # sever downstream of the site: the condition embedding the network receives is x 0, so
    # whatever the ablation puts at noise_encoder's output cannot reach the score
    model = tgt.model
    orig = model.condition
    model.condition = lambda *a: orig(*a) * 0.0
    try:
        rep0 = run_ablation(tgt, **kw)
    finally:
        del model.condition
    assert [s.verdict for s in rep0.sites] == ["ignored", "ignored"], rep0.verdict_table()
