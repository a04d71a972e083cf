"""The real TensorBoard server serves what TrainingMonitor wrote (scalars, custom-scalars
layout, images, text); a headless-Chromium screenshot of the Custom Scalars page."""

from __future__ import annotations

import contextlib
import json
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
import torch
from torch import nn

from diagnostics import TrainingMonitor

CHROMIUM = "/usr/bin/chromium"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=10) as r:
        return r.read()


def write_run(logdir: Path) -> list[float]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 1))
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    losses = []
    with TrainingMonitor(model, logdir, optimizer=opt, hist_every=5) as mon:
        for step in range(12):
            x = torch.randn(16, 4)
            loss = (model(x).squeeze(-1) - x.sum(-1)).square().mean()
            opt.zero_grad()
            loss.backward()
            mon.step(step, loss=loss)
            losses.append(loss.item())
            opt.step()
    return losses


@contextlib.contextmanager
def tensorboard(logdir: Path):
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "tensorboard.main", "--logdir", str(logdir), "--host",
         "127.0.0.1", "--port", str(port), "--reload_interval", "1", "--load_fast", "false"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 25
        while True:
            try:
                if json.loads(_get(f"{base}/data/runs")):
                    break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                err = proc.stderr.read().decode(errors="replace")[-2000:] if proc.stderr else ""
                raise AssertionError(f"tensorboard did not serve the run: {err}")
            time.sleep(0.3)
        yield base
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()


@pytest.mark.slow
def test_tensorboard_serves_what_the_monitor_wrote(tmp_path):
    losses = write_run(tmp_path / "run")
    with tensorboard(tmp_path) as base:
        assert json.loads(_get(f"{base}/data/runs")) == ["run"]
        q = urllib.parse.urlencode({"run": "run", "tag": "train/loss"})
        pts = json.loads(_get(f"{base}/data/plugin/scalars/scalars?{q}"))
        assert [p[1] for p in pts] == list(range(12))
        assert [p[2] for p in pts] == pytest.approx(losses, rel=1e-6)
        layout = json.loads(_get(f"{base}/data/plugin/custom_scalars/layout"))
        titles = {c["title"] for c in layout["category"]}
        assert {"Loss", "Gradients", "Health"} <= titles
        charts = {ch["title"]: ch for c in layout["category"] for ch in c["chart"]}
        assert charts["gradient norm per module group"]["multiline"]["tag"] == ["^grad_norm/.*"]
        tags = json.loads(_get(f"{base}/data/plugin/images/tags"))
        assert "monitor/grad_flow" in tags["run"]
        q = urllib.parse.urlencode({"run": "run", "tag": "monitor/grad_flow", "sample": 0})
        imgs = json.loads(_get(f"{base}/data/plugin/images/images?{q}"))
        png = _get(f"{base}/data/plugin/images/individualImage?{imgs[0]['query']}")
        assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 2000
        assert (
            "monitor/summary/text_summary"
            in json.loads(_get(f"{base}/data/plugin/text/tags"))["run"]
        )
        q = urllib.parse.urlencode({"run": "run", "tag": "monitor/summary/text_summary"})
        text = json.loads(_get(f"{base}/data/plugin/text/text?{q}"))
        assert "12 logged steps" in text[0]["text"] and "inspect_run" in text[0]["text"]
        hist = json.loads(_get(f"{base}/data/plugin/histograms/tags"))
        assert {"weights/0", "grads/2"} <= set(hist["run"])


@pytest.mark.slow
def test_screenshot_of_the_custom_scalars_page(tmp_path):
    if not Path(CHROMIUM).exists():
        pytest.skip("Chromium is not installed (/usr/bin/chromium)")
    write_run(tmp_path / "run")
    shot = tmp_path / "custom_scalars.png"
    with tensorboard(tmp_path) as base:
        subprocess.run(
            [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
             "--window-size=1400,1000", "--virtual-time-budget=15000",
             f"--screenshot={shot}", f"{base}/#custom_scalars"],
            capture_output=True, timeout=60, check=False,
        )  # fmt: skip
    assert shot.is_file() and shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert shot.stat().st_size > 20_000  # a rendered page, not a blank one
