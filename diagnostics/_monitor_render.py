"""What TrainingMonitor writes besides scalars: its custom-scalars layout, the closing summary
table and the gradient-flow heat map. Pure functions of plain data (matplotlib imported lazily).
"""

from __future__ import annotations

from typing import Any

__all__ = ["custom_scalars_layout", "grad_flow_image", "summary_markdown"]


def custom_scalars_layout(extra_prefixes: set[str], cfg: bool) -> dict[str, dict[str, list[Any]]]:
    """Loss, this model's own signals (one chart per extra tag prefix), CFG, gradients, health.

    Example:
        >>> sorted(custom_scalars_layout({"cif"}, cfg=False))
        ['Gradients', 'Health', 'Loss', 'Model signals']
    """
    layout: dict[str, dict[str, list[Any]]] = {
        "Loss": {
            "train vs validation loss": ["Multiline", [r"^train/loss$", r"^val/loss$"]],
            "other training scalars": ["Multiline", [r"^train/(?!loss$).*"]],
            "validation metrics": ["Multiline", [r"^val/.*"]],
        }
    }
    extra = sorted(set(extra_prefixes) - {"cfg", "train", "val"})
    if extra:
        layout["Model signals"] = {f"{p}/*": ["Multiline", [f"^{p}/.*"]] for p in extra}
    if cfg:
        layout["Conditioning (CFG)"] = {
            "drop rate vs configured p": [
                "Multiline",
                [r"^cfg/(drop_rate|p|drop_fraction|p_uncond)$"],
            ],
            "loss of conditioned vs dropped examples": ["Multiline", [r"^cfg/loss_.*"]],
        }
    layout["Gradients"] = {
        "gradient norm per module group": ["Multiline", [r"^grad_norm/.*"]],
        "update ratio lr*|grad|/|param| per group (healthy ~1e-3)": [
            "Multiline",
            [r"^update_ratio/.*"],
        ],
        "parameter norm per group": ["Multiline", [r"^param_norm/.*"]],
    }
    layout["Health"] = {
        "non-finite values in histograms": ["Multiline", [r"^nonfinite/.*"]],
        "NanWatch status (0 ok, 1 scaler overflow, 2 non-finite)": [
            "Multiline",
            [r"^nanwatch/.*"],
        ],
    }
    return layout


def summary_markdown(head: str, groups: list[str], counts: list[int], last: list[float]) -> str:
    """``head`` and a Markdown table: group, parameter count, last gradient norm."""
    rows = ["| group | parameters | last grad norm |", "| --- | --- | --- |"]
    rows += [f"| {g} | {n:,} | {v:.4g} |" for g, n, v in zip(groups, counts, last, strict=True)]
    return head + "\n\n" + "\n".join(rows)


def grad_flow_image(groups: list[str], steps: list[int], flow: list[list[float]]) -> Any:
    """HWC uint8 heat map: log10 gradient norm per group (rows) over logged steps (columns).

    Each column sits at its step on the x axis (steps logged out of order are sorted; a step
    logged twice shows its last values; uneven gaps keep their width); a row shorter than
    ``groups`` (a group added later in the run) is blank before it appeared.

    Raises:
        ImportError: matplotlib is not installed (the ``viz`` extra).
    """
    import numpy as np
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # heavy: lazily
    from matplotlib.figure import Figure

    last = {s: i for i, s in enumerate(steps)}  # step -> its last logged column
    xs = sorted(last)
    rows = [flow[last[s]] + [float("nan")] * (len(groups) - len(flow[last[s]])) for s in xs]
    data = np.log10(np.clip(np.array(rows, dtype=float).T, 1e-12, None))  # (G, S)
    x = np.array(xs, dtype=float)
    if len(x) > 1:  # column edges halfway between neighbouring steps
        mid = (x[1:] + x[:-1]) / 2
        edges = np.concatenate([[x[0] - (mid[0] - x[0])], mid, [x[-1] + (x[-1] - mid[-1])]])
    else:
        edges = np.array([x[0] - 0.5, x[0] + 0.5])
    fig = Figure(figsize=(8, 1.2 + 0.35 * len(groups)), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    mesh = ax.pcolormesh(
        edges, np.arange(len(groups) + 1) - 0.5, np.ma.masked_invalid(data), cmap="viridis"
    )
    ax.set_ylim(len(groups) - 0.5, -0.5)  # first group on top
    ax.set_yticks(range(len(groups)), groups)
    ax.set_xlabel("step")
    ax.set_title("gradient flow: log10 gradient norm per group (dark = vanishing)")
    fig.colorbar(mesh, ax=ax, label="log10 |grad|")
    fig.tight_layout()
    fig.canvas.draw()
    return np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()  # (H, W, 3)
