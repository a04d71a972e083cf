"""TrainingMonitor, the embedding analysis and the training-loop checks on inputs they had not
seen: each test pins a finding of the adversarial probe (crash, wrong flag, lost log) and its
general fix."""

from __future__ import annotations

import collections
import dataclasses
import subprocess
import sys
import textwrap
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from diagnostics import (
    LossWatch,
    TrainingCheckError,
    TrainingMonitor,
    analyze_embeddings,
    check_no_retained_graph,
)
from diagnostics._monitor_render import grad_flow_image

ROOT = Path(__file__).resolve().parents[2]


def _events(logdir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(logdir), size_guidance={"scalars": 0, "histograms": 0, "tensors": 0})
    acc.Reload()
    return acc


def _scalars(acc, tag):
    return [(e.step, e.value) for e in acc.Scalars(tag)]


# ---------------------------------------------------------------------------- TrainingMonitor
def test_sparse_embedding_gradients_are_logged_not_fatal(tmp_path):
    """``Embedding(sparse=True)``: mon.step raised NotImplementedError (a norm of a sparse
    tensor) and the histogram flattened it."""
    torch.manual_seed(0)
    m = nn.Sequential(nn.Embedding(10, 4, sparse=True), nn.Linear(4, 1))
    m(torch.tensor([1, 1, 2])).sum().backward()
    want = m[0].weight.grad.to_dense().norm().item()
    with TrainingMonitor(m, tmp_path / "r", hist_every=1) as mon:
        mon.step(0, loss=1.0)
    acc = _events(tmp_path / "r")
    assert _scalars(acc, "grad_norm/0")[0][1] == pytest.approx(want, rel=1e-6)
    assert "grads/0" in acc.Tags()["histograms"]


@pytest.mark.parametrize("end", ["raise", "exit"])
def test_steps_logged_before_a_crash_outside_with_reach_the_disk(tmp_path, end):
    """A loop without ``with``/close() that dies of an exception (or sys.exit) lost every
    step: the events were still buffered. They are flushed at exit, with the exception."""
    script = textwrap.dedent(f"""
        import sys, torch
        from torch import nn
        from diagnostics import TrainingMonitor
        m = nn.Linear(4, 1)
        m(torch.randn(2, 4)).sum().backward()
        mon = TrainingMonitor(m, sys.argv[1], hist_every=0)
        for s in range(5):
            mon.step(s, loss=float(s))
        if {end!r} == "raise":
            raise RuntimeError("crash in the middle")
        sys.exit(3)
    """)
    run = subprocess.run([sys.executable, "-c", script, str(tmp_path / "r")], cwd=ROOT,
                         capture_output=True, text=True, timeout=300)  # fmt: skip
    assert run.returncode != 0
    acc = _events(tmp_path / "r")
    assert [s for s, _ in _scalars(acc, "train/loss")] == [0, 1, 2, 3, 4]
    if end == "raise":
        text = acc.Tensors("monitor/exception/text_summary")[0].tensor_proto.string_val[0]
        assert "RuntimeError" in text.decode() and "crash in the middle" in text.decode()
        assert "crash in the middle" in run.stderr  # the traceback is still printed


def test_a_parameter_frozen_since_is_not_logged_as_a_dead_gradient(tmp_path):
    """Its stale ``.grad`` (zeroed in place) was logged as ``grad_norm = 0``: inspect_run's
    ``grad_dead`` for a layer that was frozen on purpose."""
    m = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 1))
    with TrainingMonitor(m, tmp_path / "r", hist_every=0) as mon:
        m(torch.randn(2, 4)).sum().backward()
        mon.step(0, loss=1.0)
        m[0].requires_grad_(False)
        m.zero_grad(set_to_none=False)
        m(torch.randn(2, 4)).sum().backward()
        mon.step(1, loss=1.0)
    acc = _events(tmp_path / "r")
    assert [s for s, _ in _scalars(acc, "grad_norm/0")] == [0]
    assert [s for s, _ in _scalars(acc, "grad_norm/1")] == [0, 1]


def test_a_module_added_after_the_monitor_is_logged(tmp_path):
    m = nn.Sequential(nn.Linear(4, 4))
    with TrainingMonitor(m, tmp_path / "r", hist_every=0) as mon:
        m(torch.randn(2, 4)).sum().backward()
        mon.step(0, loss=1.0)
        m.append(nn.Linear(4, 1))  # a head added mid-run
        m.zero_grad()
        m(torch.randn(2, 4)).sum().backward()
        mon.step(1, loss=1.0)
    acc = _events(tmp_path / "r")
    assert [s for s, _ in _scalars(acc, "grad_norm/1")] == [1]
    assert _scalars(acc, "param_count/1") == [(1, 5.0)]
    assert mon.groups == ["0", "1"] and acc.Tags()["images"] == ["monitor/grad_flow"]


def test_heat_map_puts_steps_logged_out_of_order_in_step_order():
    """Columns were drawn in logging order between the first and last logged step: steps
    5, 3, 9, 1 gave a reversed axis with the columns in the wrong places."""
    groups = ["a", "b"]
    rows = {1: [1.0, 0.1], 3: [2.0, 0.01], 5: [4.0, 1.0], 9: [0.5, 3.0]}
    shuffled = grad_flow_image(groups, [5, 3, 9, 1], [rows[s] for s in (5, 3, 9, 1)])
    ordered = grad_flow_image(groups, [1, 3, 5, 9], [rows[s] for s in (1, 3, 5, 9)])
    assert np.array_equal(shuffled, ordered)
    # a group added later: its earlier cells are blank, not a crash on ragged rows
    assert grad_flow_image(groups, [0, 1], [[1.0], [1.0, 2.0]]).ndim == 3


def test_grad_scaler_gradients_are_logged_unscaled(tmp_path):
    """Under AMP the logged gradient norms, update ratios and gradient histograms carried the
    loss scale (65536x by default, jumping at every scale change)."""
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(4, 8), nn.Linear(8, 1))
    x = torch.randn(8, 4)
    opt = torch.optim.SGD(m.parameters(), lr=0.1)
    m(x).pow(2).mean().backward()
    with TrainingMonitor(m, tmp_path / "ref", optimizer=opt, hist_every=1) as mon:
        mon.step(0, loss=1.0)
    m.zero_grad()
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    scaler.scale(m(x).pow(2).mean()).backward()
    with TrainingMonitor(m, tmp_path / "amp", optimizer=opt, hist_every=1, scaler=scaler) as mon:
        mon.step(0, loss=1.0)
    ref, amp = _events(tmp_path / "ref"), _events(tmp_path / "amp")
    for tag in ("grad_norm/0", "grad_norm/total", "update_ratio/1"):
        assert _scalars(amp, tag)[0][1] == pytest.approx(_scalars(ref, tag)[0][1], rel=1e-5)
    h_ref, h_amp = ref.Histograms("grads/0")[0], amp.Histograms("grads/0")[0]
    assert h_amp.histogram_value.max == pytest.approx(h_ref.histogram_value.max, rel=1e-5)


def test_update_ratio_under_sgd_momentum_is_the_step_taken(tmp_path):
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 1))
    opt = torch.optim.SGD(m.parameters(), lr=0.05, momentum=0.9)
    x = torch.randn(16, 4)
    made = []
    with TrainingMonitor(m, tmp_path / "r", optimizer=opt, hist_every=0, ratio_every=1) as mon:
        for step in range(5):
            opt.zero_grad()
            m(x).pow(2).mean().backward()
            mon.step(step, loss=1.0)
            before = torch.cat([p.detach().reshape(-1) for p in m[0].parameters()])
            opt.step()
            after = torch.cat([p.detach().reshape(-1) for p in m[0].parameters()])
            made.append(((after - before).norm() / before.norm()).item())
    got = [v for _, v in _scalars(_events(tmp_path / "r"), "update_ratio/0")]
    assert got == pytest.approx(made, rel=1e-4)


def _train_monitored(logdir):
    """Sparse embedding, SGD momentum, a GradScaler, dropout; the monitor on when logdir."""
    torch.manual_seed(0)
    emb, body = nn.Embedding(10, 6, sparse=True), nn.Sequential(nn.Linear(6, 6), nn.Linear(6, 1))
    model = nn.ModuleDict({"emb": emb, "body": body})
    opt = torch.optim.SGD(body.parameters(), lr=0.1, momentum=0.9, weight_decay=0.01)
    sparse_opt = torch.optim.SGD(emb.parameters(), lr=0.1)
    scaler = torch.amp.GradScaler("cpu", init_scale=256.0)
    mon = None
    if logdir is not None:
        mon = TrainingMonitor(model, logdir, optimizer=opt, hist_every=2, ratio_every=1,
                              scaler=scaler)  # fmt: skip
    for step in range(4):
        opt.zero_grad()
        sparse_opt.zero_grad()
        h = nn.functional.dropout(emb(torch.randint(0, 10, (16,))), 0.2)
        loss = body(h).pow(2).mean()
        scaler.scale(loss).backward()
        if mon is not None:
            mon.step(step, loss=loss)
        scaler.step(opt)
        sparse_opt.step()
        scaler.update()
    if mon is not None:
        mon.close()
    return model, opt.state_dict()["state"], torch.get_rng_state()


def test_training_is_bit_identical_with_the_monitor_on_sparse_scaled_momentum(tmp_path):
    m0, s0, r0 = _train_monitored(None)
    m1, s1, r1 = _train_monitored(tmp_path / "r")
    for a, b in zip(m0.parameters(), m1.parameters(), strict=True):
        assert torch.equal(a, b)
    for k in s0:
        assert torch.equal(s0[k]["momentum_buffer"], s1[k]["momentum_buffer"])
    assert torch.equal(r0, r1)


# ---------------------------------------------------------------------------- embeddings
@pytest.mark.parametrize("shape", [(2, 8), (50, 1), (30,)])
def test_two_embeddings_or_one_dimension_are_not_collapsed_by_rank(shape):
    """Centred, two embeddings (or 1-D ones) span one direction whatever they are: the rank
    test called every such set collapsed."""
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(0))
    rep = analyze_embeddings(x, umap=False)
    assert not rep.collapsed and rep.collapse_reason == ""
    assert any(n.startswith("effective rank not judged") for n in rep.notes)
    tight = torch.ones(2, 8) + 1e-6 * torch.randn(2, 8)  # still caught by the spread test
    assert analyze_embeddings(tight, umap=False).collapsed


def test_nonfinite_embeddings_are_left_out_and_named():
    """A NaN or Inf row crashed the analysis (LinAlgError: SVD did not converge)."""
    x = torch.randn(20, 8, generator=torch.Generator().manual_seed(0))
    x[3, 2], x[7, 0] = float("nan"), float("inf")
    labels = ["a", "b"] * 10
    rep = analyze_embeddings(x, labels, umap=False)
    clean = analyze_embeddings(x[[i for i in range(20) if i not in (3, 7)]],
                               [v for i, v in enumerate(labels) if i not in (3, 7)], umap=False)  # fmt: skip
    assert rep.nonfinite == 2 and rep.n == 18 and len(rep.labels) == 18
    assert rep.effective_rank == pytest.approx(clean.effective_rank)
    assert rep.silhouette == pytest.approx(clean.silhouette)
    assert "2 of 20 embeddings hold NaN/Inf (rows 3, 7): left out of every statistic" in rep.notes
    assert rep.to_dict()["nonfinite"] == 2


@pytest.mark.parametrize(
    ("x", "match"),
    [
        (torch.zeros(0, 4), r"need at least 2 embeddings \(rows\), got 0 \(shape \(0, 4\)\)"),
        (torch.zeros(1, 4), r"need at least 2 embeddings \(rows\), got 1"),
        (torch.full((5, 4), float("nan")), r"5 of 5 embeddings hold NaN/Inf; fewer than 2"),
    ],
)
def test_too_few_embeddings_raise_a_clear_error(x, match):
    """No rows crashed in reshape ("cannot reshape tensor of 0 elements")."""
    with pytest.raises(ValueError, match=match):
        analyze_embeddings(x, umap=False)


def test_mean_pairwise_cosine_needs_no_n_by_n_matrix():
    """The mean cosine was read off an N x N Gram matrix: 3.2 GB at N = 20 000."""
    g = torch.Generator().manual_seed(0)
    small = torch.randn(30, 5, generator=g) + 0.5
    u = small.double() / small.double().norm(dim=1, keepdim=True)
    gram = u @ u.T
    want = ((gram.sum() - gram.trace()) / (30 * 29)).item()
    assert analyze_embeddings(small, umap=False).mean_pairwise_cosine == pytest.approx(want)
    x = torch.randn(4000, 4, generator=g).numpy()  # a Gram matrix would be 128 MB
    tracemalloc.start()
    try:
        analyze_embeddings(x, umap=False, keep=False)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 20e6, f"peak {peak / 1e6:.0f} MB"


def test_tensor_labels_and_identical_embeddings_read_plainly():
    rep = analyze_embeddings(torch.randn(20, 4), labels=torch.arange(20) % 2, umap=False)
    assert rep.labels[:3] == ["0", "1", "0"]  # not "tensor(0)"
    same = analyze_embeddings(torch.ones(20, 4), labels=["a", "b"] * 10, umap=False)
    assert same.collapsed and "silhouette skipped: all 20 embeddings are identical" in same.notes


class _BrokenUmap:
    """Stands in for umap-learn whose import or fit fails."""

    def find_spec(self, name, path=None, target=None):
        if name == "umap":
            raise RuntimeError("numba: incompatible llvmlite")
        return None


def test_umap_that_cannot_be_imported_or_fitted_degrades_with_a_note(monkeypatch):
    x = torch.randn(12, 4, generator=torch.Generator().manual_seed(0))
    monkeypatch.setitem(sys.modules, "umap", None)  # not installed
    rep = analyze_embeddings(x)
    assert rep.umap is None
    assert rep.notes[-1].startswith("UMAP skipped: umap-learn is not installed (pip install")
    monkeypatch.delitem(sys.modules, "umap")
    monkeypatch.setattr(sys, "meta_path", [_BrokenUmap(), *sys.meta_path])
    rep = analyze_embeddings(x)  # the import raises something else than ImportError
    assert rep.umap is None and rep.notes[-1] == (
        "UMAP skipped: importing umap-learn failed: RuntimeError: numba: incompatible llvmlite"
    )
    monkeypatch.setattr(sys, "meta_path", sys.meta_path[1:])

    class Reducer:
        def __init__(self, **kw):
            pass

        def fit_transform(self, x):
            raise ValueError("spectral init failed")

    monkeypatch.setitem(sys.modules, "umap", type(sys)("umap"))
    sys.modules["umap"].UMAP = Reducer
    rep = analyze_embeddings(x)
    assert rep.umap is None and not rep.collapsed
    assert rep.notes[-1] == "UMAP skipped: the fit failed: ValueError: spectral init failed"


# ---------------------------------------------------------------------------- training checks
@pytest.mark.parametrize(
    "losses",
    [
        [-10 - 0.05 * i for i in range(40)],  # a negative log-likelihood, improving
        [-5 - 10 * (1 - np.exp(-i / 10)) + 0.3 * (-1) ** i for i in range(40)],  # -SI-SDR
        [1 - 0.1 * i for i in range(40)],  # crossing zero, improving
    ],
    ids=["nll", "si-sdr", "crossing-zero"],
)
def test_losswatch_does_not_call_a_falling_negative_loss_divergent(losses):
    """``second half > 2 x first half`` holds for every falling negative loss."""
    watch = LossWatch(window=20)
    for v in losses:
        watch.update(v)


def test_losswatch_still_flags_a_rising_negative_loss():
    watch = LossWatch(window=20)
    with pytest.raises(TrainingCheckError, match="loss diverges"):
        for i in range(40):
            watch.update(-10 + 1.5 * i)


def test_check_no_retained_graph_looks_into_deques_records_and_survives_cycles():
    x = torch.ones(2, requires_grad=True)
    loss = (2 * x).sum()

    @dataclasses.dataclass
    class Record:
        step: int
        loss: object

    for obj, where in [
        (collections.deque([1.0, loss]), r"h\[1\]"),
        ([Record(3, loss)], r"h\[0\]\.loss"),
        ({"a": {loss}}, r"h\['a'\]\{\.\.\.\}"),
    ]:
        with pytest.raises(TrainingCheckError, match=where + " is a tensor attached"):
            check_no_retained_graph(obj, "h")
    cyclic: list = [1.0]
    cyclic.append(cyclic)
    check_no_retained_graph(cyclic, "h")  # was RecursionError
    # a parameter (a leaf that requires grad) holds no graph: was flagged
    check_no_retained_graph({"best": [nn.Parameter(torch.ones(2))], "loss": loss.item()}, "h")


# ---------------------------------------------------------------------------- statistics
def test_bootstrap_draws_in_bounded_memory_with_the_same_numbers():
    """The bootstrap built one (n_boot, N) index matrix and its gathered values: 8 * n_boot * N
    bytes twice (320 MB at N = 20 000, 3.2 GB at 200 000)."""
    from diagnostics._stats import bootstrap_ci

    v = np.random.default_rng(0).normal(size=500)
    idx = np.random.default_rng(7).integers(0, 500, size=(1000, 500))
    means = v[idx].mean(axis=1)
    alpha = (1.0 - 0.95) / 2.0  # as bootstrap_ci computes it (not exactly 0.025)
    lo, hi = np.quantile(means, [alpha, 1.0 - alpha])
    assert bootstrap_ci(v, seed=7) == (float(v.mean()), float(lo), float(hi))  # bit for bit
    big = np.random.default_rng(1).normal(size=20_000)
    tracemalloc.start()
    try:
        bootstrap_ci(big, seed=0)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 100e6, f"peak {peak / 1e6:.0f} MB"
