"""Read TensorBoard runs with TensorBoard's own reader (``EventAccumulator``).

A *run* is a folder that directly holds ``events.out.tfevents.*`` files; a LOGDIR may be one run
or a tree of them (as ``tensorboard --logdir`` sees it). Scalars are read both as PyTorch's
``SummaryWriter`` writes them (simple values) and as TF2 / Keras write them (rank-0 tensors of
the ``scalars`` plugin). TensorBoard is imported lazily.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["Run", "find_runs", "read_run"]


@dataclass
class Run:
    """The scalar curves of one run: ``{tag: [(step, value), ...]}`` plus where they came from."""

    name: str
    path: str
    event_files: int
    scalars: dict[str, list[tuple[int, float]]] = field(default_factory=dict)
    readable: bool = True  # False: no event could be read (an empty or corrupt file)

    def summary(self) -> dict[str, object]:
        steps = [st for s in self.scalars.values() for st, _ in s]
        return {
            "run": self.name,
            "path": self.path,
            "event_files": self.event_files,
            "readable": self.readable,
            "tags": len(self.scalars),
            "points": sum(len(s) for s in self.scalars.values()),
            "steps": [min(steps), max(steps)] if steps else None,
        }


def find_runs(logdir: str | Path) -> list[tuple[str, Path, int]]:
    """``(name, folder, number of event files)`` of every run under ``logdir`` (sorted)."""
    root = Path(logdir)
    folders: dict[Path, int] = {}
    for f in root.rglob("events.out.tfevents.*"):
        if f.is_file():
            folders[f.parent] = folders.get(f.parent, 0) + 1
    out = []
    for folder in sorted(folders):
        name = folder.relative_to(root).as_posix()
        out.append(("." if name == "." else name, folder, folders[folder]))
    return out


def read_run(name: str, folder: Path, n_files: int) -> Run:
    """Every scalar point of one run (all of them: no reservoir sampling)."""
    from tensorboard.backend.event_processing.event_accumulator import (  # heavy: lazily
        SCALARS,
        TENSORS,
        EventAccumulator,
    )

    # 0 = keep every event (the reader's default samples 10 tensors per tag, 10000 scalars)
    acc = EventAccumulator(str(folder), size_guidance={SCALARS: 0, TENSORS: 0})
    acc.Reload()
    # every event file starts with a file-version event: none read means nothing was readable
    readable = getattr(acc, "file_version", None) is not None or bool(acc.Tags().get("scalars"))
    run = Run(name=name, path=str(folder), event_files=n_files, readable=readable)
    for tag in acc.Tags().get("scalars", []):
        pts: dict[int, float] = {}
        for e in acc.Scalars(tag):
            pts[int(e.step)] = float(e.value)  # a rewritten step keeps its last value
        run.scalars[tag] = sorted(pts.items())
    # TF2 / Keras write a scalar as a rank-0 tensor of the "scalars" plugin, not a simple value
    tensor_tags = [t for t in acc.Tags().get("tensors", []) if t not in run.scalars]
    if tensor_tags:
        from tensorboard.util import tensor_util

        for tag in tensor_tags:
            if acc.SummaryMetadata(tag).plugin_data.plugin_name != "scalars":
                continue
            pts = {}
            for e in acc.Tensors(tag):
                value = tensor_util.make_ndarray(e.tensor_proto)
                if value.size == 1:
                    pts[int(e.step)] = float(value.reshape(-1)[0])
            if pts:
                run.scalars[tag] = sorted(pts.items())
    return run
