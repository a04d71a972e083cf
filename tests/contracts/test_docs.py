"""`python -m contracts.docs`: tables from code, and `--check` guards the committed file."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_committed_contract_docs_are_current():
    r = subprocess.run(
        [sys.executable, "-m", "contracts.docs", "--check"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stderr[-3000:]


def test_render_and_check_roundtrip(tmp_path, monkeypatch):
    (tmp_path / "docmod.py").write_text(
        textwrap.dedent("""
        from typing import Annotated
        from torch import Tensor, nn
        from jaxtyping import Float, Int, Bool
        from contracts import contract, Range, Mask

        class Tok(nn.Module):
            vocab_size = 9

            @contract(dims={"V": "self.vocab_size"}, outputs=("logits",),
                      notes={"tokens": "Target token ids"})
            def forward(self, tokens: Annotated[Int[Tensor, "B N"], Range(0, "V-1")],
                        mask: Annotated[Bool[Tensor, "B N"], Mask()]) -> Float[Tensor, "B N V"]:
                ...
    """)
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    from contracts.docs import main, render

    text = render(["docmod"])
    assert "### Tok" in text
    assert (
        "| `forward` | tokens | [B, N] | int | [0, V-1] | logits | [B, N, V] | float | any "
        "| Target token ids |"
    ) in text
    assert "|  | mask | [B, N] | bool | {0, 1}, ≥1 valid per row |  |  |  |  |  |" in text
    assert "Dims bound from the model: `V` = `self.vocab_size`." in text
    out = tmp_path / "C.md"
    assert main(["--modules", "docmod", "--out", str(out)]) == 0
    assert main(["--modules", "docmod", "--out", str(out), "--check"]) == 0
    out.write_text(out.read_text() + "stale\n")
    assert main(["--modules", "docmod", "--out", str(out), "--check"]) == 1
