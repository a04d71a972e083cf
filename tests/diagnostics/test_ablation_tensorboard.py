"""cond_ablation's TensorBoard output, read back with TensorBoard's own reader: margin charts
(effect + CI per site and ablation) in a Custom Scalars layout, diffusion steps round(1000 t),
the figures as images, the report as text, the embeddings with labels in the projector."""

import json

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.custom_scalar import layout_pb2

from diagnostics.cond_ablation import main

QUICK = ["--no-umap", "--quiet", "--no-guidance", "--threads", "1"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("tb") / "run"
    n = torch.get_num_threads()
    try:
        rc = main(["--target", "diagnostics.ablation_example:healthy_target", "--out", str(out),
                   *QUICK])  # fmt: skip
    finally:
        torch.set_num_threads(n)
    assert rc == 0
    acc = EventAccumulator(str(out / "tensorboard"), size_guidance={"images": 0, "tensors": 0})
    acc.Reload()
    return out, acc, json.loads((out / "report.json").read_text())


def test_effect_curves_on_diffusion_steps(run):
    _, acc, data = run
    tags = set(acc.Tags()["scalars"])
    steps = [round(1000 * t) for t in data["times"]]
    for s in data["sites"]:
        for a in [*s["ablations"], "floor"]:
            for part in ("effect", "ci_lo", "ci_hi"):
                assert f"ablation/{s['site'].replace(':', '_')}/{a}/{part}" in tags
        events = acc.Scalars(f"ablation/{s['site'].replace(':', '_')}/shuffle/effect")
        assert [e.step for e in events] == steps
        curve = s["ablations"]["shuffle"]["curve"]["effect"]
        assert [round(e.value, 4) for e in events] == [round(v, 4) for v in curve]


def test_custom_scalars_layout_has_margin_charts(run):
    _, acc, data = run
    tensors = acc.Tensors("custom_scalars__config__")
    layout = layout_pb2.Layout()
    layout.ParseFromString(tensors[0].tensor_proto.string_val[0])
    charts = {c.title: c for cat in layout.category for c in cat.chart}
    site = data["sites"][0]["site"]
    title = f"{site} shuffle: effect with 95% CI (step = round(1000·t), t = diffusion time)"
    assert title in charts
    margin = charts[title].margin.series[0]
    tag = f"ablation/{site}/shuffle"
    assert (margin.value, margin.lower, margin.upper) == (
        f"{tag}/effect", f"{tag}/ci_lo", f"{tag}/ci_hi")  # fmt: skip
    cats = [c.title for c in layout.category]
    assert f"cond_ablation {site} ({data['sites'][0]['verdict']})" in cats


def test_figures_as_images_report_and_verdicts_as_text(run):
    _, acc, data = run
    assert "cond_ablation/effect_vs_t" in acc.Tags()["images"]
    img = acc.Images("cond_ablation/effect_vs_t")[0]
    assert img.width > 100 and img.height > 100
    texts = {t for t in acc.Tags()["tensors"] if t.endswith("text_summary")}
    assert {"cond_ablation/verdicts/text_summary", "cond_ablation/report/text_summary"} <= texts
    verdicts = acc.Tensors("cond_ablation/verdicts/text_summary")[0].tensor_proto.string_val[0]
    assert data["sites"][0]["reason"].encode() in verdicts


def test_embeddings_with_labels_in_the_projector(run):
    out, _, _ = run
    config = (out / "tensorboard" / "projector_config.pbtxt").read_text()
    assert 'tensor_name: "condition_embedding' in config and "metadata_path" in config
    meta = next((out / "tensorboard").rglob("metadata.tsv")).read_text().split()
    assert set(meta) == {"type0", "type1", "type2", "type3"} and len(meta) == 64
    # one solid-colour sprite per point: coloured by label without choosing "color by"
    assert "sprite" in config and "image_path" in config
    assert next((out / "tensorboard").rglob("sprite.png")).stat().st_size > 100


@pytest.mark.slow
def test_tensorboard_server_serves_the_ablation_run(run):
    """The real server (127.0.0.1, free port) serves the margin-chart layout, the scalars on
    diffusion steps, the figures, the verdict text and the projector config."""
    import urllib.parse

    from tests.diagnostics.test_tensorboard_server import _get, tensorboard

    out, _, data = run
    site = data["sites"][0]["site"]
    with tensorboard(out / "tensorboard") as base:
        assert json.loads(_get(f"{base}/data/runs")) == ["."]
        layout = json.loads(_get(f"{base}/data/plugin/custom_scalars/layout"))
        charts = {ch["title"]: ch for c in layout["category"] for ch in c["chart"]}
        margin = charts[
            f"{site} shuffle: effect with 95% CI (step = round(1000·t), t = diffusion time)"
        ]
        assert margin["margin"]["series"][0]["value"] == f"ablation/{site}/shuffle/effect"
        q = urllib.parse.urlencode({"run": ".", "tag": f"ablation/{site}/floor/effect"})
        pts = json.loads(_get(f"{base}/data/plugin/scalars/scalars?{q}"))
        assert [p[1] for p in pts] == [round(1000 * t) for t in data["times"]]
        assert (
            "cond_ablation/effect_vs_t" in json.loads(_get(f"{base}/data/plugin/images/tags"))["."]
        )
        q = urllib.parse.urlencode({"run": ".", "tag": "cond_ablation/verdicts/text_summary"})
        text = json.loads(_get(f"{base}/data/plugin/text/text?{q}"))
        assert data["sites"][0]["verdict"] in text[0]["text"]
        config = json.loads(_get(f"{base}/data/plugin/projector/runs"))
        assert config == ["."]


@pytest.mark.slow
def test_screenshot_of_the_margin_charts(run, tmp_path):
    """Headless Chromium renders the Custom Scalars page of the ablation run."""
    import subprocess
    from pathlib import Path

    from tests.diagnostics.test_tensorboard_server import CHROMIUM, tensorboard

    if not Path(CHROMIUM).exists():
        pytest.skip("Chromium is not installed (/usr/bin/chromium)")
    out, _, _ = run
    shot = tmp_path / "cond_ablation_custom_scalars.png"
    with tensorboard(out / "tensorboard") as base:
        subprocess.run(
            [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
             "--window-size=1400,1000", "--virtual-time-budget=15000",
             f"--screenshot={shot}", f"{base}/#custom_scalars"],
            capture_output=True, timeout=90, check=False,
        )  # fmt: skip
    assert shot.is_file() and shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert shot.stat().st_size > 20_000  # a rendered page, not a blank one
