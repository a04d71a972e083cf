"""Round trips of ``contracts.infer`` on every reference model, a ``torch.nn.TransformerEncoder``
and a third-party model: the inferred contracts accept the sample batches and a fresh batch with
new B and T, refuse a transposed input, and list the same dims as the hand-written contracts.

The hand-written ``@contract`` wrappers are taken off the classes while a test runs, so every
refusal seen here comes from an inferred contract.
"""

from __future__ import annotations

import importlib.util
import inspect
import re
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

import contracts
from contracts.docs import render
from contracts.infer import InferResult, infer

from . import test_infer_targets as tg


@pytest.fixture(autouse=True)
def _keep_contract_registry() -> Iterator[None]:
    """``attach`` registers its contract under the method's name, where the hand-written one
    was (for ``contracts.docs`` and the generated property tests), and ``.remove()`` leaves it
    there: put the registry back after each test so no other test sees inferred contracts."""
    try:
        from contracts import _registry

        plans = getattr(_registry, "_PLANS", None)
    except ImportError:  # the registry moved: nothing to restore
        plans = None
    saved = dict(plans) if isinstance(plans, dict) else None
    yield
    if saved is not None:
        plans.clear()
        plans.update(saved)


def _forward(model: Any, batch: Any) -> Any:
    with torch.no_grad():
        return model(**batch) if isinstance(batch, dict) else model(*batch)


def _load(src: str, tmp_path: Path, name: str) -> Any:
    path = tmp_path / f"{name}.py"
    path.write_text(src)
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod


def _strip_handwritten(monkeypatch: pytest.MonkeyPatch, res: InferResult) -> int:
    """Put every inferred class's undecorated forward back; returns how many were contracted."""
    n = 0
    for c in res.contracts:
        f = c.cls.__dict__.get("forward")
        if f is not None and hasattr(f, "__wrapped__"):
            monkeypatch.setattr(c.cls, "forward", inspect.unwrap(f))
            n += 1
    return n


# --- the hand-written tables vs the inferred ones ----------------------------------------------


def _shape(cell: str) -> list[str] | None:
    cell = cell.strip()
    if cell == "[] (scalar)":
        return []
    if cell.startswith("[") and cell.endswith("]"):
        return [x.strip() for x in cell[1:-1].split(",")]
    return None  # a non-tensor


def parse_tables(md: str) -> dict[str, dict[str, dict[str, list[str] | None]]]:
    """``{class: {method: {argument or output: shape}}}`` from contract tables."""
    out: dict[str, dict[str, dict[str, list[str] | None]]] = {}
    cls = method = None
    for line in md.splitlines():
        if line.startswith("### "):
            cls, method = line[4:].strip(), None
            continue
        if cls is None or not line.startswith("| ") or line.startswith("| Method") or "---" in line:
            continue
        cells = [c.strip() for c in line.strip().strip("|").split(" | ")]
        if len(cells) < 9:
            continue
        if cells[0]:
            method = cells[0].strip("`")
        slots = out.setdefault(cls, {}).setdefault(method, {})
        if cells[1]:
            slots[cells[1].replace(" (optional)", "")] = _shape(cells[2])
        if cells[5]:
            slots[cells[5]] = _shape(cells[6])
    return out


def compare_dims(
    hand: dict[str, list[str] | None], ours: dict[str, list[str] | None], literal_ok: set[str]
) -> tuple[int, list[str]]:
    """Compare one method's shapes up to a one-to-one renaming of dims.

    A literal of ours where the hand-written contract has a name is accepted only when our
    warnings named that axis as never varied (``literal_ok``: ``"arg axis i"``).
    """
    fwd: dict[str, str] = {}
    back: dict[str, str] = {}
    compared, problems = 0, []
    for arg, hs in hand.items():
        os_ = ours.get(arg)
        if hs is None or os_ is None or arg not in ours:
            continue
        if any(x.startswith("*") for x in hs + os_):
            continue
        if len(hs) != len(os_):
            problems.append(f"{arg}: rank {hs} vs {os_}")
            continue
        compared += 1
        for i, (h, o) in enumerate(zip(hs, os_)):
            if o.isdigit():
                if h != o and f"{arg} axis {i}" not in literal_ok:
                    problems.append(f"{arg} axis {i}: hand-written {h}, inferred literal {o}")
                continue
            if h.isdigit():
                problems.append(f"{arg} axis {i}: hand-written literal {h}, inferred {o}")
                continue
            if fwd.setdefault(h, o) != o or back.setdefault(o, h) != h:
                problems.append(f"{arg} axis {i}: {h}->{fwd[h]} but {back.get(o)}->{o}")
    return compared, problems


def check_against_handwritten(res: InferResult, hand_md: str) -> int:
    hand = parse_tables(hand_md)
    ours = parse_tables(res.markdown())
    literal_ok: dict[str, set[str]] = {}
    for lit in res.inference.literals:  # "Encoder.forward features axis 2 = 6"
        m = re.match(r"(\S+)\.forward (\S+) axis (\d+) = \d+", lit)
        assert m, lit
        literal_ok.setdefault(m[1], set()).add(f"{m[2]} axis {m[3]}")
    total, problems = 0, []
    for cls, methods in ours.items():
        if cls in hand and "forward" in hand[cls]:
            n, p = compare_dims(
                hand[cls]["forward"], methods["forward"], literal_ok.get(cls, set())
            )
            total += n
            problems += [f"{cls}.forward {x}" for x in p]
    assert not problems, "\n".join(problems)
    return total


def test_compare_dims_catches_a_wrong_unification() -> None:
    hand = {"x": ["B", "T", "D"], "mask": ["B", "T"], "return": ["B", "T", "D"]}
    assert compare_dims(hand, {"x": ["B", "S", "E"], "mask": ["B", "S"], "return": ["B", "S", "E"]},
                        set()) == (3, [])  # fmt: skip
    _, problems = compare_dims(hand, {"x": ["B", "T", "D"], "mask": ["B", "S"]}, set())
    assert problems == ["mask axis 1: T->T but None->S"]
    _, problems = compare_dims(hand, {"x": ["B", "T", "8"]}, set())
    assert problems == ["x axis 2: hand-written D, inferred literal 8"]
    assert compare_dims(hand, {"x": ["B", "T", "8"]}, {"x axis 2"}) == (1, [])


# --- the round trips ---------------------------------------------------------------------------


def _transpose_paraformer(model: Any) -> None:
    b = tg.paraformer_batch(model, *tg.FRESH)
    b["features"] = b["features"].transpose(1, 2)  # (B, F, T): the classic mistake
    _forward(model, b)


def _transpose_first(make: Callable) -> Callable:
    def run(model: Any) -> None:
        b = make(model, *tg.FRESH)
        if isinstance(b, dict):
            k = next(iter(b))
            b[k] = b[k].transpose(1, 2)
        else:
            b = (b[0].transpose(1, 2), *b[1:])
        _forward(model, b)

    return run


def _transpose_audiosr(model: Any) -> None:
    # the root takes [B, L] audio (both free): transpose the U-Net's latent instead
    cfg = model.cfg
    x = torch.randn(2, cfg.latent_channels, 8, 12)  # (B, C, H, W)
    t = torch.randint(0, 10, (2,))
    _forward(model.unet, (x.transpose(2, 3), t, x.transpose(2, 3)))


CASES = {
    "paraformer": (tg.paraformer_target, tg.paraformer_batch, _transpose_paraformer,
                   ["models.paraformer"], 40),
    "sgmse": (tg.sgmse_target, tg.sgmse_batch, _transpose_first(tg.sgmse_batch),
              ["models.sgmse"], 8),
    "diffusion_buffer": (tg.diffusion_buffer_target, tg.diffusion_buffer_batch,
                         _transpose_first(tg.diffusion_buffer_batch),
                         ["models.diffusion_buffer"], 4),
    "audiosr": (tg.audiosr_target, tg.audiosr_batch, _transpose_audiosr, ["models.audiosr"], 10),
    "transformer_encoder": (tg.transformer_target, tg.transformer_batch,
                            _transpose_first(tg.transformer_batch), [], 0),
}  # fmt: skip


@pytest.mark.parametrize("case", sorted(CASES))
def test_round_trip(case: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    make_target, make_batch, transposed, hand_modules, min_compared = CASES[case]
    # the hand-written tables, rendered before any inferred contract is attached
    hand_md = render(hand_modules) if hand_modules else ""
    target = make_target()
    res = infer(target, name=case)
    assert res.dims["B"] == [s[0] for s in tg.SIZES]
    if hand_modules:
        assert _strip_handwritten(monkeypatch, res) > 0
    mod = _load(res.python(), tmp_path, f"_inferred_{case}")
    handles = mod.attach_all()
    assert handles and all(isinstance(h, contracts.Attachment) for h in handles)
    try:
        with contracts.mode("full"):
            for b in target.batches:
                _forward(target.model, b)
            _forward(target.model, make_batch(target.model, *tg.FRESH))
            with pytest.raises(contracts.ContractError, match=r"axis \d: expected size") as e:
                transposed(target.model)
    finally:
        for h in handles:
            h.remove()
    ours = {f"{c.qualname}.forward" for c in res.contracts if c.attachable}
    assert e.value.function in ours, e.value.function  # an inferred contract refused it
    if hand_modules:
        n = check_against_handwritten(res, hand_md)
        assert n >= min_compared, f"only {n} arguments compared with the hand-written contracts"


def test_third_party_wav2vec2(tmp_path: Path) -> None:
    target = tg.wav2vec2_target()
    res = infer(target, name="wav2vec2")
    assert res.dims["B"] == [s[0] for s in tg.SIZES]
    root = res.contract_for(type(target.model))
    assert root.inputs[0].dims == ["B", "T"]
    assert root.return_kind == "dict"
    hidden = {s.name: s for s in root.outputs}["return['last_hidden_state']"]
    assert hidden.dims[0] == "B" and hidden.dims[2] == "D"
    assert root.bound["D"] == "self.config.hidden_size"
    mod = _load(res.python(), tmp_path, "_inferred_wav2vec2")
    handles = mod.attach_all()
    try:
        with contracts.mode("full"):
            for b in target.batches:
                _forward(target.model, b)
            _forward(target.model, tg.wav2vec2_batch(target.model, *tg.FRESH))
            # a feature encoder output fed back with channels last
            fe = target.model.feature_extractor
            with pytest.raises(contracts.ContractError, match="expected size"):
                _forward(target.model.feature_projection, (torch.randn(2, 8, 30),))
            _forward(fe, (torch.randn(3, 400),))
    finally:
        for h in handles:
            h.remove()


def test_third_party_whisper(tmp_path: Path) -> None:
    """An encoder-decoder with token ids; the encoder's frame count is fixed by the model."""
    target = tg.whisper_target()
    res = infer(target, name="whisper")
    root = res.contract_for(type(target.model))
    feats, ids = root.inputs[:2]
    assert feats.dims == ["B", "M", "20"] and ids.dims == ["B", "T"]
    assert ids.constraint == 'Range(0, "V-1")'
    assert root.bound["M"] == "self.config.num_mel_bins"
    assert root.bound["V"] == "self.config.vocab_size"
    enc = {s.name: s for s in res.contract_for(type(target.model.encoder)).outputs}
    # 10 source positions, bound to the attribute rather than to a mask span of equal value
    assert enc["return['last_hidden_state']"].dims == ["B", "S", "D"]
    assert res.contract_for(type(target.model.encoder)).bound["S"] == "self.max_source_positions"
    assert any("WhisperModel.forward input_features axis 2 = 20" in x for x in res.warnings)
    mod = _load(res.python(), tmp_path, "_inferred_whisper")
    handles = mod.attach_all()
    try:
        with contracts.mode("full"):
            _forward(target.model, tg.whisper_batch(target.model, *tg.FRESH))
            b = tg.whisper_batch(target.model, *tg.FRESH)
            b["input_features"] = b["input_features"].transpose(1, 2)  # (B, 20, M)
            with pytest.raises(contracts.ContractError, match="'input_features', axis 1"):
                _forward(target.model, b)
            b = tg.whisper_batch(target.model, *tg.FRESH)
            b["decoder_input_ids"] = b["decoder_input_ids"] + 40  # outside the vocabulary
            with pytest.raises(contracts.ContractError, match=r"V-1"):
                _forward(target.model, b)
    finally:
        for h in handles:
            h.remove()


def test_paraformer_dims_unified_across_modules() -> None:
    """B everywhere; T shared by features, masks and the encoder output; V bound for tokens."""
    target = tg.paraformer_target()
    res = infer(target)
    from models.paraformer import Decoder, Encoder, Paraformer, Predictor

    enc = res.contract_for(Encoder)
    assert [s.dims for s in enc.inputs] == [["B", "T", "F"], ["B", "T"]]
    assert enc.outputs[0].dims == ["B", "T", "D"]
    assert enc.bound == {"F": "self.cfg.n_feats", "D": "self.cfg.d_model"}
    pred = res.contract_for(Predictor)
    assert [s.dims for s in pred.inputs] == [["B", "T", "D"], ["B", "T"]]
    dec = res.contract_for(Decoder)
    assert {s.name: s.dims for s in dec.inputs} == {
        "encoder_out": ["B", "T", "D"],
        "acoustic_embeds": ["B", "S", "D"],
        "enc_mask": ["B", "T"],
        "dec_mask": ["B", "S"],
    }
    root = res.contract_for(Paraformer)
    tokens = {s.name: s for s in root.inputs}["tokens"]
    assert tokens.constraint == 'Range(0, "V-1")' and root.bound["V"] == "self.vocab_size"
    masks = [s for s in root.inputs if s.dtype_cls == "Bool"]
    assert masks and all(s.constraint == "Mask()" for s in masks)
    feats = {s.name: s for s in root.inputs}["features"]
    assert feats.constraint == "Finite()" and feats.observed == "[-2, 2]"
