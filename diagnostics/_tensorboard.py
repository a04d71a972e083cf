"""A small writer layer over ``torch.utils.tensorboard.SummaryWriter`` for torchdx reports.

Gradient norms and shares become scalars, histograms log their non-finite counts as separate
scalars (TensorBoard's own histogram code would raise or silently drop them), and a
:class:`~diagnostics.NonFiniteError` report becomes a text entry that is flushed to disk before
the error propagates. A custom-scalars layout groups these curves. TensorBoard is imported only
when a logger is created.
"""

from __future__ import annotations

import contextlib
import math
import re
from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor

from ._gradflow import GradFlowReport
from ._nanwatch import NonFiniteError, NonFiniteReport

__all__ = ["TensorBoardLogger"]


class TensorBoardLogger:
    """Log torchdx diagnostics to TensorBoard.

    Args:
        log_dir: directory for the event files (ignored when ``writer`` is given).
        writer: an existing ``SummaryWriter`` to write through.
        prefix: tag prefix (``"torchdx"`` gives ``torchdx/grad_norm/total``).
        depth: module depth for per-module scalars (1 = top-level submodules).

    Example:
        >>> tb = TensorBoardLogger("runs/exp1")
        >>> with tb.guard(step):          # a NonFiniteError is logged + flushed, then re-raised
        ...     watch.run(train_step, batch)
        >>> tb.log_gradflow(gradflow.record(), step)
        >>> tb.close()
    """

    def __init__(
        self,
        log_dir: str | None = None,
        *,
        writer: Any = None,
        prefix: str = "torchdx",
        depth: int = 1,
    ) -> None:
        if writer is None:
            from torch.utils.tensorboard import SummaryWriter  # heavy: imported lazily

            writer = SummaryWriter(log_dir=log_dir)
        self.writer = writer
        self.prefix = prefix.rstrip("/")
        self.depth = depth
        self._layout_written = False

    def _tag(self, *parts: str) -> str:
        return "/".join([self.prefix, *parts]) if self.prefix else "/".join(parts)

    def write_layout(self) -> None:
        """A custom-scalars layout for this logger's tags (written once, on the first log):
        gradient norms, shares, update ratios, parameter counts and non-finite events."""
        if self._layout_written or not hasattr(self.writer, "add_custom_scalars"):
            return
        t = re.escape(self._tag(""))
        self.writer.add_custom_scalars(
            {
                "torchdx gradients": {
                    "gradient norm (total and per module)": ["Multiline", [f"^{t}grad_norm/.*"]],
                    "share of the gradient norm per module": ["Multiline", [f"^{t}grad_share/.*"]],
                    "update ratio (max, median)": ["Multiline", [f"^{t}update_ratio/.*"]],
                    "unused / zero / non-finite parameters, flags": ["Multiline", [f"^{t}grad/.*"]],
                },
                "torchdx health": {
                    "non-finite events (NanWatch)": ["Multiline", [f"^{t}nonfinite/.*"]],
                    "non-finite values in histograms": [
                        "Multiline",
                        [f"^{t}.*/(nan|posinf|neginf)$"],
                    ],
                },
            }
        )
        self._layout_written = True

    def log_gradflow(self, report: GradFlowReport, step: int) -> None:
        """Total and per-module gradient norms, shares, counts of unused/zero parameters."""
        self.write_layout()
        w = self.writer
        w.add_scalar(self._tag("grad_norm", "total"), report.total_norm, step)
        for name, v in report.module_norms.items():
            if name and name.count(".") < self.depth:
                w.add_scalar(self._tag("grad_norm", name), v, step)
                w.add_scalar(self._tag("grad_share", name), report.share(name), step)
        w.add_scalar(self._tag("grad", "unused_params"), len(report.unused), step)
        w.add_scalar(self._tag("grad", "zero_params"), len(report.zero), step)
        w.add_scalar(self._tag("grad", "nonfinite_params"), len(report.nonfinite), step)
        w.add_scalar(self._tag("grad", "exploding"), float(report.exploding), step)
        w.add_scalar(self._tag("grad", "vanishing"), float(report.vanishing), step)
        if report.update_ratios:
            vals = [v for v in report.update_ratios.values() if math.isfinite(v)]
            if vals:
                w.add_scalar(self._tag("update_ratio", "max"), max(vals), step)
                w.add_scalar(
                    self._tag("update_ratio", "median"), sorted(vals)[len(vals) // 2], step
                )

    def log_histogram(self, tag: str, tensor: Tensor, step: int) -> dict[str, int]:
        """Histogram of the finite values of ``tensor``; NaN/+Inf/-Inf counts as scalars.

        Returns:
            ``{"nan": n, "posinf": n, "neginf": n}`` (also written as ``TAG/nan`` etc.).
        """
        self.write_layout()
        x = tensor.detach()
        if x.is_complex():
            x = x.abs()
        if not x.is_floating_point():
            x = x.float()
        x = x.reshape(-1)  # (N,)
        counts = torch.stack(
            [x.isnan().sum(), (x == math.inf).sum(), (x == -math.inf).sum()]
        ).tolist()
        out = dict(zip(("nan", "posinf", "neginf"), (int(c) for c in counts), strict=True))
        full = self._tag(tag)
        for k, v in out.items():
            self.writer.add_scalar(f"{full}/{k}", v, step)
        finite = x[torch.isfinite(x)]
        if finite.numel():
            self.writer.add_histogram(full, finite.float().cpu(), step)
        return out

    def log_nonfinite(self, error: NonFiniteError | NonFiniteReport, step: int) -> None:
        """Write a NonFiniteError report as a text entry and flush the writer at once."""
        rep = error.report if isinstance(error, NonFiniteError) else error
        self.write_layout()
        self.writer.add_text(self._tag("nonfinite"), rep.to_markdown(), step)
        self.writer.add_scalar(self._tag("nonfinite", "events"), 1.0, step)
        self.writer.flush()

    @contextlib.contextmanager
    def guard(self, step: int) -> Iterator[TensorBoardLogger]:
        """Log (and flush) any NonFiniteError raised inside, then let it propagate."""
        try:
            yield self
        except NonFiniteError as e:
            self.log_nonfinite(e, step)
            raise

    def flush(self) -> None:
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()

    def __enter__(self) -> TensorBoardLogger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"TensorBoardLogger({getattr(self.writer, 'log_dir', '?')!r})"
