"""TensorBoardLogger: events are read back with TensorBoard's own EventAccumulator."""

import math

import pytest
import torch
from torch import nn

from diagnostics import GradFlow, NanWatch, NonFiniteError, TensorBoardLogger


def _read(log_dir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(log_dir), size_guidance={"tensors": 0, "scalars": 0})
    acc.Reload()
    return acc


def test_gradflow_scalars_and_histogram_counts(tmp_path):
    m = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 1))
    m(torch.randn(3, 4)).mean().backward()
    rep = GradFlow(m).record()
    with TensorBoardLogger(str(tmp_path)) as tb:
        tb.log_gradflow(rep, step=3)
        counts = tb.log_histogram("act", torch.tensor([1.0, math.nan, math.inf, -math.inf, 2.0]), 3)
        tb.log_histogram("allbad", torch.full((4,), math.nan), 3)  # no crash, counts only
    assert counts == {"nan": 1, "posinf": 1, "neginf": 1}
    acc = _read(tmp_path)
    tags = acc.Tags()
    total = acc.Scalars("torchdx/grad_norm/total")[0]
    assert total.step == 3 and total.value == pytest.approx(rep.total_norm, rel=1e-5)
    assert acc.Scalars("torchdx/grad_share/0")[0].value == pytest.approx(rep.share("0"), rel=1e-5)
    assert acc.Scalars("torchdx/act/nan")[0].value == 1.0
    assert acc.Scalars("torchdx/allbad/nan")[0].value == 4.0
    assert "torchdx/act" in tags["histograms"] and "torchdx/allbad" not in tags["histograms"]
    assert acc.Histograms("torchdx/act")[0].histogram_value.num == 2  # finite values only


def test_nonfinite_report_is_text_and_flushed_before_raise(tmp_path):
    lin = nn.Linear(2, 1)

    def step(x):
        loss = lin(x).mean() / torch.zeros(())
        loss.backward()
        return loss

    tb = TensorBoardLogger(str(tmp_path))
    with pytest.raises(NonFiniteError), tb.guard(step=7):
        NanWatch(lin).run(step, torch.ones(2, 2))
    acc = _read(tmp_path)  # read while the writer is still open: it was flushed
    text = acc.Tensors("torchdx/nonfinite/text_summary")[0]
    assert text.step == 7
    assert b"outside every module" in text.tensor_proto.string_val[0]
    tb.close()


def test_custom_scalars_layout_names_the_logged_tags(tmp_path):
    from tensorboard.plugins.custom_scalar import layout_pb2

    m = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 1))
    m(torch.randn(3, 4)).mean().backward()
    with TensorBoardLogger(str(tmp_path)) as tb:
        tb.log_gradflow(GradFlow(m).record(), step=1)
        tb.log_gradflow(GradFlow(m).record(), step=2)
    events = _read(tmp_path).Tensors("custom_scalars__config__")
    assert len(events) == 1  # written once
    layout = layout_pb2.Layout.FromString(events[0].tensor_proto.string_val[0])
    charts = {c.title: list(c.multiline.tag) for cat in layout.category for c in cat.chart}
    assert charts["gradient norm (total and per module)"] == [r"^torchdx/grad_norm/.*"]
