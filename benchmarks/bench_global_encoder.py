"""Global encoder toggle: parameter, latency and memory deltas (via diagnostics.compare_models).

Baseline = the same config with ``use_global_encoder=False``, measured in the same process.
Also counts, without building weights (meta device), the parameters the toggle adds at
AudioSR's own U-Net width (128 base, mults 1,2,3,5, 256 mel bins) in this implementation.
Run: ``python benchmarks/bench_global_encoder.py``.
"""

from __future__ import annotations

import argparse

import torch

from diagnostics._compare import compare_models, param_groups
from models.audiosr import AudioSR, AudioSRConfig, GlobalAudioEncoder


def full_width_counts() -> None:
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


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--seconds", type=float, default=1.0)
    p.add_argument("--repeats", type=int, default=7)
    a = p.parse_args()
    for preset in ("tiny", "default"):
        rep = compare_models(preset, f"{preset},use_global_encoder=true", repeats=a.repeats,
                             seconds=a.seconds)  # fmt: skip
        print(f"== {preset} ==")
        print(rep.to_text())
        print()
    full_width_counts()


if __name__ == "__main__":
    main()
