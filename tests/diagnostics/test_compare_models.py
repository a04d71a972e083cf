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
