"""How each diagnostic's cost grows with model depth and batch size.

Model: ``nn.TransformerEncoder`` (D=64, 4 heads, ff 256, dropout 0.1) on (B, T=50, D); the step
is forward + MSE + backward. Depth sweep: 4, 16, 64 layers at B=4; batch sweep: B = 2, 8, 32 at
16 layers. Per point, interleaved repeats of the bare step and the step under each tool, the
median ratio (process CPU time on CPU, wall time on CUDA) in one process:

- ``nanwatch``: ``NanWatch(model).run(step)``, the default replay mode's healthy path;
- ``nanwatch_eager``: ``NanWatch(model, mode="eager")``, per-module hooks during the step;
- ``gradflow``: the step followed by ``GradFlow(model).record()``;
- ``contracts_shapes`` / ``contracts_full``: the same model (same weights) whose layers carry a
  contract (``src`` and the return ``Float[Tensor, "B T D"]``, both ``Finite()`` in ``full``
  mode), in that mode; each layer's output is the next layer's input, so ``full`` reads each
  activation once (the extrema a check learns are remembered).

Writes ``docs/results/depth.json`` and the curves to ``docs/depth_cost.png``.

Run: ``python -m benchmarks.bench_depth [--repeats 25] [--device cpu|cuda]``
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import torch
from jaxtyping import Float
from torch import Tensor, nn

import contracts
from benchmarks._results import RESULTS_DIR, device_parser, parse_device_args, write_results
from benchmarks._timing import time_variants
from contracts import Finite, contract
from diagnostics import GradFlow, NanWatch

TOOLS = ("nanwatch", "nanwatch_eager", "gradflow", "contracts_shapes", "contracts_full")
DEPTHS = (4, 16, 64)
BATCHES = (2, 8, 32)
PNG = RESULTS_DIR.parent / "depth_cost.png"


class CheckedLayer(nn.TransformerEncoderLayer):
    """``nn.TransformerEncoderLayer`` under a contract (what a user's own layer would carry)."""

    @contract(dims={"D": "self.self_attn.embed_dim"})
    def forward(
        self,
        src: Annotated[Float[Tensor, "B T D"], Finite()],
        src_mask: Tensor | None = None,
        src_key_padding_mask: Tensor | None = None,
        is_causal: bool = False,
    ) -> Annotated[Float[Tensor, "B T D"], Finite()]:
        return super().forward(src, src_mask, src_key_padding_mask, is_causal)


def _model(layers: int, device: str, layer_class: type = nn.TransformerEncoderLayer) -> nn.Module:
    torch.manual_seed(0)
    layer = layer_class(64, nhead=4, dim_feedforward=256, batch_first=True)
    return nn.TransformerEncoder(layer, num_layers=layers, enable_nested_tensor=False).to(device)


def measure(layers: int, batch: int, repeats: int, device: str) -> dict:
    """Ratios to the bare step for every tool at one (depth, batch) point."""
    model = _model(layers, device)
    checked = _model(layers, device, CheckedLayer)  # the same weights (same seed)
    x = torch.randn(batch, 50, 64, device=device)
    y = torch.randn(batch, 50, 64, device=device)

    def step(m: nn.Module = model) -> Tensor:
        loss = (m(x) - y).pow(2).mean()
        loss.backward()
        return loss

    watch, eager, gf = NanWatch(model), NanWatch(model, mode="eager"), GradFlow(model)

    def variant(fn, m: nn.Module = model):
        def f():
            m.zero_grad(set_to_none=True)
            fn()

        return f

    def under(mode: str):
        def f():
            with contracts.mode(mode):
                step(checked)

        return f

    variants = {
        "bare": variant(step),
        "nanwatch": variant(lambda: watch.run(step)),
        "nanwatch_eager": variant(lambda: eager.run(step)),
        "gradflow": variant(lambda: (step(), gf.record())),
        "contracts_shapes": variant(under("shapes"), checked),
        "contracts_full": variant(under("full"), checked),
    }
    t = time_variants(variants, repeats, device)
    med = {k: v[1] if device == "cpu" else v[0] for k, v in t.items()}  # CPU: process time
    return {
        "modules": sum(1 for _ in model.modules()),
        "params": sum(1 for _ in model.parameters()),
        "bare_ms": med["bare"] * 1e3,
        "ratio": {k: med[k] / med["bare"] for k in TOOLS},
    }


def plot(figures: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
    for ax, sweep, xs, xlabel in (
        (axes[0], "depth", DEPTHS, "layers (B=4, T=50, D=64)"),
        (axes[1], "batch", BATCHES, "batch size (16 layers, T=50, D=64)"),
    ):
        for tool in TOOLS:
            ax.plot(xs, [figures[sweep][str(v)]["ratio"][tool] for v in xs], "o-", label=tool)
        ax.axhline(1.0, color="grey", lw=0.8, ls="--")
        ax.set_xscale("log", base=2)
        ax.set_xticks(xs, [str(v) for v in xs])
        ax.set_xlabel(xlabel)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("step time / bare step")
    axes[0].legend()
    fig.suptitle("Cost of each tool on a healthy training step (measured, one process)")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    ap = device_parser("python -m benchmarks.bench_depth", __doc__, repeats=25)
    a = parse_device_args(ap)
    from tqdm import tqdm

    points = [("depth", d, 4) for d in DEPTHS] + [("batch", 16, b) for b in BATCHES]
    figures: dict[str, dict] = {"depth": {}, "batch": {}}
    for sweep, layers, batch in tqdm(points, desc="depth/batch points"):
        r = measure(layers, batch, a.repeats, a.device)
        figures[sweep][str(layers if sweep == "depth" else batch)] = r
        ratios = ", ".join(f"{k} {v:.3f}x" for k, v in r["ratio"].items())
        tqdm.write(f"{layers:>3} layers, B={batch:<3} bare {r['bare_ms']:.1f} ms: {ratios}")
    if not a.no_write:
        path = write_results(
            "depth", figures, command="python -m benchmarks.bench_depth", device=a.device
        )
        plot(figures, PNG)
        print(f"wrote {path} and {PNG}")


if __name__ == "__main__":
    main()
