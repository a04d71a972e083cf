"""python -m diagnostics.compare_models: figures, exit codes, one-line errors."""

import subprocess
import sys

import pytest

from diagnostics._compare import CompareError, compare_models, param_groups
from diagnostics.compare_models import main


def test_compare_tiny_toggle():
    rep = compare_models("tiny", "tiny,use_global_encoder=true", repeats=2, seconds=0.25)
    enc = rep.params_b["global_encoder"]
    assert rep.params_a.get("global_encoder", 0) == 0 and enc > 0
    assert rep.total_b - rep.total_a == enc + rep.params_b["unet[global path]"]
    assert rep.ablation["A"] is None and rep.latency_a_ms > 0
    text = rep.to_text()
    assert "ratio B/A" in text and "peak memory" in text and "zero-ablation" in text


def test_ablation_detects_a_live_global_path(tmp_path):
    import torch

    from models.audiosr import AudioSR, AudioSRConfig, save_checkpoint

    torch.manual_seed(0)
    m = AudioSR(AudioSRConfig.tiny(use_global_encoder=True, zero_init_global=False))
    for p in m.parameters():  # undo every zero-init (out conv, proj_out, ResBlock conv2)
        if not p.any():
            torch.nn.init.normal_(p, std=0.1)
    save_checkpoint(m, tmp_path / "live.pt")
    rep = compare_models("tiny", str(tmp_path / "live.pt"), repeats=1, seconds=0.25)
    assert rep.ablation["B"] > 1e-4
    assert "CHANGES the output" in rep.to_text()


def test_main_exit_codes(capsys):
    assert main(["--a", "tiny", "--b", "tiny,use_global_encoder=true", "--repeats", "1",
                 "--seconds", "0.25"]) == 0  # fmt: skip
    assert "total" in capsys.readouterr().out
    assert main(["--a", "tiny,nosuchkey=1"]) == 2
    err = capsys.readouterr().err
    assert "nosuchkey" in err and err.count("\n") == 1
    assert main(["--a", "missing.pt"]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_bad_flag_one_line_exit_2():
    r = subprocess.run([sys.executable, "-m", "diagnostics.compare_models", "--bogus"],
                       capture_output=True, text=True)  # fmt: skip
    assert r.returncode == 2
    assert [ln for ln in r.stderr.splitlines() if ln.strip()] == [
        "compare_models: unrecognized arguments: --bogus"
    ]


def test_help():
    r = subprocess.run([sys.executable, "-m", "diagnostics.compare_models", "--help"],
                       capture_output=True, text=True)  # fmt: skip
    assert r.returncode == 0 and "--a" in r.stdout


def test_param_groups_and_errors():
    from models.audiosr import AudioSR, AudioSRConfig

    groups = param_groups(AudioSR(AudioSRConfig.tiny()))
    assert "unet.down" in groups and "global_encoder" not in groups
    with pytest.raises(CompareError, match="repeats=0"):
        compare_models("tiny", "tiny", repeats=0)


def _mlp_variant(spec):
    """A factory for any model: an MLP with an optional FiLM-like context path."""
    import torch

    from diagnostics._compare import Variant

    width, _, ctx = spec.partition("+")
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(8, int(width)), torch.nn.Linear(int(width), 8))
    model = torch.nn.ModuleDict({"net": net})
    if ctx:
        model["ctx"] = torch.nn.Linear(8, 8)

    def forward(m, x, zero=False):
        out = m["net"](x)
        return out if "ctx" not in m else out + (0 if zero else m["ctx"](x))

    return Variant(
        model=model,
        description=f"mlp {spec}",
        inputs=lambda batch, seconds, seed: torch.randn(
            batch, 8, generator=torch.Generator().manual_seed(seed)
        ),
        forward=forward,
        ablate=(lambda m, x: forward(m, x, zero=True)) if ctx else None,
        ablated="the context path",
    )


def test_any_two_variants_from_one_factory(capsys):
    rep = compare_models("16", "16+ctx", factory=_mlp_variant, repeats=2)
    assert rep.params_b["ctx"] == 72 and "ctx" not in rep.params_a
    assert rep.ablation["A"] is None and rep.ablation["B"] > 0.01
    assert "zero-ablation of the context path (B)" in rep.to_text()
    factory = "tests.diagnostics.test_compare_models:_mlp_variant"
    assert main(["--factory", factory, "--a", "16", "--b", "32+ctx", "--repeats", "1"]) == 0
    assert "mlp 32+ctx" in capsys.readouterr().out
    assert main(["--factory", "nocolon", "--a", "16"]) == 2
    assert "expected MODULE:FUNCTION" in capsys.readouterr().err
