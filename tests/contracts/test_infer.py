"""Tests of ``contracts.infer``: unification, value constraints, warnings, hooks, the CLI."""

from __future__ import annotations

import gc
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

import contracts
from contracts import InferTarget
from contracts.infer import InferError, infer, main

from .test_infer_models import (
    _keep_contract_registry,  # noqa: F401 (an autouse fixture)
    _load,
)

ROOT = Path(__file__).resolve().parents[2]


class Pool(nn.Module):
    """Masked mean over time; returns (pooled, lengths) and takes lengths by keyword."""

    def __init__(self, d_model: int) -> None:
        super().__init__()
        self.d_model = d_model
        self.proj = nn.Linear(d_model, d_model)

    def forward(self, x: torch.Tensor, mask: torch.Tensor, *, scale: float = 1.0) -> tuple:
        h = self.proj(x) * scale  # (B, T, D)
        m = mask.unsqueeze(-1).float()  # (B, T, 1)
        lengths = mask.sum(1)  # (B,)
        return (h * m).sum(1) / m.sum(1), lengths


class Tagger(nn.Module):
    """Embedding -> pool -> logits; a dict output, a tuple inside."""

    def __init__(self, vocab_size: int = 11, d_model: int = 6) -> None:
        super().__init__()
        self.vocab_size = vocab_size
        self.embed = nn.Embedding(vocab_size, d_model)
        self.pool = Pool(d_model)
        self.head = nn.Linear(d_model, 3)

    def forward(self, tokens: torch.Tensor, mask: torch.Tensor) -> dict[str, Any]:
        e = self.embed(tokens)  # (B, T, D)
        pooled, lengths = self.pool(e, mask, scale=0.5)
        return {"logits": self.head(pooled), "lengths": lengths, "parts": (e, pooled)}


def tagger_batch(B: int, T: int, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed + 7 * B + T)
    lens = torch.randint(1, T + 1, (B,), generator=g)
    lens[0] = T
    return dict(
        tokens=torch.randint(0, 11, (B, T), generator=g),
        mask=torch.arange(T)[None] < lens[:, None],  # (B, T)
    )


def tagger_target() -> InferTarget:
    torch.manual_seed(0)
    return InferTarget(
        Tagger().eval(), [tagger_batch(2, 9), tagger_batch(3, 5), tagger_batch(5, 7)]
    )


def one_batch_target() -> InferTarget:
    return InferTarget(Tagger().eval(), [tagger_batch(2, 9)])


def empty_target() -> InferTarget:
    return InferTarget(Tagger(), [])


def wrong_target() -> tuple:
    return (Tagger(), [tagger_batch(2, 9)])


def raising_target() -> InferTarget:
    return InferTarget(Tagger(), [tagger_batch(2, 9), {"tokens": torch.zeros(2, 4)}])


# --- unification ------------------------------------------------------------------------------


def test_dims_unified_across_arguments_and_modules() -> None:
    res = infer(tagger_target())
    assert res.dims == {"B": [2, 3, 5], "T": [9, 5, 7]}
    root = res.contract_for(Tagger)
    assert [s.dims for s in root.inputs] == [["B", "T"], ["B", "T"]]
    pool = res.contract_for(Pool)
    ins = {s.name: s for s in pool.inputs}
    assert ins["x"].dims == ["B", "T", "D"] and ins["mask"].dims == ["B", "T"]
    assert pool.bound == {"D": "self.d_model"}
    assert ins["scale"].tensor is False and ins["scale"].pytype == "float"
    assert [s.dims for s in pool.outputs] == [["B", "D"], ["B"]]
    lin = res.contract_for(nn.Linear)  # two instances with different sizes: one contract
    # [B, D] at the head, [B, T, D] in the pool: a variadic prefix, the rest aligned right
    assert lin.inputs[0].dims == ["*batch", "T", "F_in"]
    assert lin.outputs[0].dims == ["*batch", "T", "F_out"]
    assert lin.bound == {"F_in": "self.in_features", "F_out": "self.out_features"}
    assert sorted(lin.paths) == ["head", "pool.proj"]


def test_value_constraints() -> None:
    res = infer(tagger_target())
    emb = {s.name: s for s in res.contract_for(nn.Embedding).inputs}["input"]
    assert emb.constraint == 'Range(0, "V-1")'
    assert res.contract_for(nn.Embedding).bound["V"] == "self.num_embeddings"
    root = {s.name: s for s in res.contract_for(Tagger).inputs}
    assert root["tokens"].constraint == 'Range(0, "V-1")'
    assert root["mask"].constraint == "Mask()"
    outs = {s.name: s for s in res.contract_for(Tagger).outputs}
    assert outs["return['logits']"].constraint == "Finite()"
    assert outs["return['logits']"].observed.startswith("[")
    # lengths never exceed T and reach it: bounded by the length dim
    assert outs["return['lengths']"].constraint == 'Range(0, "T")'
    # tensors nested in the tuple are shown, not checked
    parts = outs["return['parts'][0]"]
    assert parts.dims == ["B", "T", "6"] and not parts.attachable  # Tagger keeps no d_model


def test_mask_needs_a_valid_position_in_every_row() -> None:
    class M(nn.Module):
        def forward(self, x: torch.Tensor, pad: torch.Tensor) -> torch.Tensor:
            return x.masked_fill(pad, 0.0)

    b1 = (torch.randn(2, 4), torch.tensor([[False] * 4, [False, False, True, True]]))
    b2 = (torch.randn(3, 6), torch.zeros(3, 6, dtype=torch.bool))
    res = infer(InferTarget(M(), [b1, b2]))
    pad = res.contract_for(M).inputs[1]
    assert pad.dtype_cls == "Bool" and pad.constraint == ""


def test_non_finite_floats_get_no_finite() -> None:
    m = nn.Identity()
    res = infer(InferTarget(m, [torch.tensor([1.0, float("inf")]), torch.ones(3)]))
    s = res.contract_for(nn.Identity).inputs[0]
    assert s.constraint == "" and "non-finite" in s.note


def test_one_batch_warns_naming_the_dims() -> None:
    res = infer(one_batch_target())
    assert res.dims == {}
    text = " ".join(res.warnings)
    assert "only one batch" in text
    assert "Tagger.forward tokens axis 0 = 2" in text and "tokens axis 1 = 9" in text


def test_dims_that_never_vary_warn() -> None:
    t = InferTarget(Tagger().eval(), [tagger_batch(2, 9, seed=0), tagger_batch(2, 9, seed=1)])
    res = infer(t)
    assert any("no size varied across the 2 batches" in w for w in res.warnings)
    assert "Tagger.forward tokens axis 1 = 9" in res.inference.literals


def test_modules_glob() -> None:
    res = infer(tagger_target(), modules=["pool*", "Embedding"])
    assert {c.qualname for c in res.contracts} == {"Pool", "Linear", "Embedding"}
    with pytest.raises(InferError, match="no module of Tagger matches"):
        infer(tagger_target(), modules=["nothing*"])


# --- generated module -------------------------------------------------------------------------


def test_generated_module_round_trip(tmp_path: Path) -> None:
    target = tagger_target()
    res = infer(target)
    original = Tagger.__dict__["forward"]
    mod = _load(res.python(command="test"), tmp_path, "_inferred_tagger")
    handles = mod.attach_all()
    assert len(handles) == len([c for c in res.contracts])
    try:
        with contracts.mode("full"):
            for b in [*target.batches, tagger_batch(7, 13)]:
                target.model(**b)
            with pytest.raises(contracts.ContractError, match="'mask', axis 1: expected size"):
                b = tagger_batch(4, 6)
                target.model(b["tokens"], b["mask"][:, :5])
            with pytest.raises(contracts.ContractError, match=r"'tokens'.*V-1"):
                b = tagger_batch(4, 6)
                target.model(b["tokens"] + 11, b["mask"])
    finally:
        for h in handles:
            h.remove()
    assert Tagger.__dict__["forward"] is original and not any(h.active for h in handles)


def test_markdown_layout() -> None:
    md = infer(tagger_target(), name="t:f").markdown()
    assert (
        "| Method | Input | Shape | Dtype | Range | Output | Shape | Dtype | Range | Notes |" in md
    )
    assert "| `forward` | tokens | [B, T] | int64 | [0, V-1] | return['logits'] | [B, 3] |" in md
    assert "Dims bound from the model: `D` = `self.d_model`." in md
    assert "| `B` | 2, 3, 5 |" in md


# --- observing changes nothing; hooks always removed ------------------------------------------


def test_outputs_identical_and_hooks_removed() -> None:
    target = tagger_target()
    before = [target.model(**b)["logits"] for b in target.batches]
    seen: list[torch.Tensor] = []
    target.forward = lambda m, b: seen.append(m(**b)["logits"])
    infer(target)
    after = [target.model(**b)["logits"] for b in target.batches]
    for x, y, z in zip(before, seen, after, strict=True):
        assert torch.equal(x, y) and torch.equal(x, z)
    for m in target.model.modules():
        assert not m._forward_hooks and not m._forward_pre_hooks
    assert gc.get_freeze_count() == 0  # the collector is left as it was


def test_model_raising_names_batch_and_module_and_removes_hooks() -> None:
    target = raising_target()
    with pytest.raises(InferError, match=r"batch 1 inside '\(root\)' \(Tagger\): TypeError"):
        infer(target)
    assert gc.get_freeze_count() == 0
    for m in target.model.modules():
        assert not m._forward_hooks and not m._forward_pre_hooks

    class Bad(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inner = nn.Linear(4, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.inner(x)

    with pytest.raises(InferError, match=r"batch 0 inside 'inner' \(Linear\): RuntimeError"):
        infer(InferTarget(Bad(), [torch.zeros(2, 5)]))


def test_bad_targets() -> None:
    with pytest.raises(InferError, match="batches is empty"):
        infer(empty_target())
    with pytest.raises(InferError, match=r"returned tuple, expected contracts\.InferTarget"):
        infer(wrong_target())  # type: ignore[arg-type]
    with pytest.raises(InferError, match="model is str"):
        infer(InferTarget("model", [1, 2]))  # type: ignore[arg-type]


# --- CLI --------------------------------------------------------------------------------------

T = "tests/contracts/test_infer.py"


def test_cli_writes_module_and_markdown(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT)
    out, md = tmp_path / "c.py", tmp_path / "c.md"
    rc = main(["--target", f"{T}:tagger_target", "--out", str(out), "--markdown", str(md)])
    assert rc == 0
    assert "def attach_all()" in out.read_text()
    assert "### Tagger" in md.read_text()
    # the module imports the classes the file defines under its dotted name
    assert '_cls("tests.contracts.test_infer", "Tagger")' in out.read_text()
    # and works in a fresh process: attaches, accepts a new batch, refuses a wrong one
    code = (
        "import sys, contracts; sys.path.insert(0, sys.argv[1]); import c\n"
        "from tests.contracts.test_infer import Tagger, tagger_batch\n"
        "hs = c.attach_all(); m = Tagger(); m(**tagger_batch(6, 11))\n"
        "b = tagger_batch(6, 11)\n"
        "try:\n    m(b['tokens'], b['mask'][:, :4])\nexcept contracts.ContractError as e:\n"
        "    print(len(hs), e.function)\n"
    )
    env = {"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"}
    r = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True,
                       text=True, cwd=ROOT, env=env)  # fmt: skip
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.split() == ["4", "Tagger.forward"], r.stdout  # Tagger, Embedding, Pool, Linear


@pytest.mark.parametrize(
    "target, message",
    [
        ("nocolon", "expected MODULE:FACTORY"),
        (f"{T}:missing", "has no callable 'missing'"),
        ("no/such/file.py:f", "file 'no/such/file.py' not found"),
        (f"{T}:wrong_target", "returned tuple, expected contracts.InferTarget"),
        (f"{T}:empty_target", "batches is empty"),
        (f"{T}:raising_target", "the model raised on batch 1"),
    ],
)
def test_cli_bad_input_exits_2_with_one_line(
    target: str, message: str, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(ROOT)
    assert main(["--target", target, "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err, err


def test_cli_subprocess_help_and_stdout() -> None:
    py = sys.executable
    env = {"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"}
    h = subprocess.run([py, "-m", "contracts.infer", "--help"], capture_output=True, text=True,
                       cwd=ROOT, env=env)  # fmt: skip
    assert h.returncode == 0 and "InferTarget" in h.stdout
    r = subprocess.run([py, "-m", "contracts.infer", "--target", f"{T}:one_batch_target"],
                       capture_output=True, text=True, cwd=ROOT, env=env)  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert "def attach_all()" in r.stdout
    assert "warning: only one batch" in r.stderr
    bad = subprocess.run([py, "-m", "contracts.infer", "--target", f"{T}:empty_target"],
                         capture_output=True, text=True, cwd=ROOT, env=env)  # fmt: skip
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1
    assert "Traceback" not in bad.stderr
    # the model raises half-way, progress bar allowed (not --quiet): still one line
    mid = subprocess.run([py, "-m", "contracts.infer", "--target", f"{T}:raising_target"],
                         capture_output=True, text=True, cwd=ROOT, env=env)  # fmt: skip
    assert mid.returncode == 2, mid.stderr
    assert mid.stderr.strip().splitlines() == [mid.stderr.strip()]
    assert "infer: error: the model raised on batch 1" in mid.stderr


def test_tensors_without_statistics_and_unreadable_calls(monkeypatch: pytest.MonkeyPatch) -> None:
    class Dense(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x.to_dense()

    sparse = [torch.eye(n).to_sparse() for n in (3, 5)]
    res = infer(InferTarget(Dense(), sparse))
    src = res.python()  # a class defined in a function cannot be imported: named, skipped
    assert "Dense: defined inside a function, cannot be imported; skipped" in src
    compile(src, "inferred.py", "exec")
    s = res.contract_for(Dense).inputs[0]
    assert s.dims == ["B", "B"] and s.constraint == ""  # no min/max on a sparse tensor
    assert res.contract_for(Dense).outputs[0].constraint == "Finite()"

    # a call the hooks cannot read is left out with a warning; the forward is untouched
    import contracts._infer_record as rec

    def broken(*a: Any, **k: Any) -> None:
        raise RuntimeError("cannot bind")

    monkeypatch.setattr(rec, "_bind", broken)
    target = tagger_target()
    res = infer(target)
    assert any("could not be observed" in w and "cannot bind" in w for w in res.warnings)
    assert res.contracts == []


def test_module_refusing_hooks_is_left_out_with_a_warning() -> None:
    class NoHooks(nn.Linear):  # as a scripted module does
        def register_forward_pre_hook(self, *a: Any, **k: Any) -> Any:
            raise RuntimeError("register_forward_pre_hook is not supported on ScriptModules")

    class M(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin = NoHooks(4, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.lin(x)

    res = infer(InferTarget(M(), [torch.randn(2, 4), torch.randn(3, 4)]))
    assert [c.qualname for c in res.contracts] == [M.__qualname__]
    assert any("lin: no hooks" in w for w in res.warnings)


def test_two_index_attributes_get_two_names() -> None:
    class Pair(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.vocab_size, self.n_timesteps = 13, 60

        def forward(self, tokens: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            return tokens.float().mean(1) + t.float()

    g = torch.Generator().manual_seed(0)
    batches = [
        (torch.randint(0, 13, (b, n), generator=g), torch.randint(20, 60, (b,), generator=g))
        for b, n in [(2, 7), (3, 4), (5, 6)]
    ]
    c = infer(InferTarget(Pair(), batches)).contract_for(Pair)
    tokens, t = c.inputs
    assert tokens.constraint == 'Range(0, "V-1")'  # a vocabulary wins when both fit
    assert t.constraint == 'Range(0, "T2-1")'  # T is the global length dim: T2
    assert c.bound == {"V": "self.vocab_size", "T2": "self.n_timesteps"}
