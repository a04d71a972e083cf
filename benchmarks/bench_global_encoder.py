"""Global encoder toggle: parameter, latency and memory deltas (via diagnostics.compare_models).

Baseline = the same config with ``use_global_encoder=False``, measured in the same process.
Also counts, without building weights (meta device), the parameters the toggle adds at
AudioSR's own U-Net width (128 base, mults 1,2,3,5, 256 mel bins) in this implementation.
Run: ``python -m benchmarks.bench_global_encoder`` (writes docs/results/global_encoder.json).
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

import torch

from diagnostics import compare_models
from diagnostics._compare import param_groups  # the per-group counter behind compare_models
from models.audiosr import AudioSR, AudioSRConfig, GlobalAudioEncoder


def full_width_counts() -> dict[str, int]:
    kw = dict(base_channels=128, channel_mults=(1, 2, 3, 5), attention_levels=(1, 2, 3),
              num_res_blocks=2, groups=32, n_mels=256, num_heads=8)  # fmt: skip
    with torch.device("meta"):
        a = param_groups(AudioSR(AudioSRConfig(**kw)))
        b = param_groups(AudioSR(AudioSRConfig(use_global_encoder=True, **kw)))
        enc = sum(p.numel() for p in GlobalAudioEncoder(AudioSRConfig(**kw)).parameters())
    ta, tb = sum(a.values()), sum(b.values())
    print(
        f"AudioSR-width U-Net (ours): {ta:,} -> {tb:,} parameters ({tb - ta:+,}, "
        f"{(tb - ta) / ta:+.2%}); encoder {enc:,}, per-layer global path "
        f"{b['unet[global path]']:,}"
    )
    return {"without": ta, "with": tb, "added": tb - ta, "encoder": enc,
            "global_path": b["unet[global path]"]}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.bench_global_encoder", description=__doc__
    )
    p.add_argument("--seconds", type=float, default=1.0)
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--no-write", action="store_true", help="print only (no results file)")
    a = p.parse_args(argv)
    figures: dict[str, Any] = {}
    for preset in ("tiny", "default"):
        rep = compare_models(preset, f"{preset},use_global_encoder=true", repeats=a.repeats,
                             seconds=a.seconds)  # fmt: skip
        print(f"== {preset} ==")
        print(rep.to_text())
        print()
        figures[preset] = {
            "params_without": rep.total_a,
            "params_with": rep.total_b,
            "params_added": rep.total_b - rep.total_a,
            "latency_without_ms": round(rep.latency_a_ms, 2),
            "latency_with_ms": round(rep.latency_b_ms, 2),
            "latency_ratio": round(rep.latency_b_ms / rep.latency_a_ms, 4),
            "peak_without_bytes": rep.peak_a_bytes,
            "peak_with_bytes": rep.peak_b_bytes,
            "memory_method": rep.memory_method,
        }
    figures["audiosr_width_params"] = full_width_counts()
    figures["setup"] = {"seconds": a.seconds, "repeats": a.repeats, "batch": 1, "threads": 1}
    if not a.no_write:
        from benchmarks._results import write_results

        cmd = "python -m benchmarks.bench_global_encoder " + " ".join(
            sys.argv[1:] if argv is None else argv
        )
        print(f"wrote {write_results('global_encoder', figures, command=cmd.strip())}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
