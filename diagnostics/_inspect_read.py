"""Read TensorBoard runs with TensorBoard's own reader (``EventAccumulator``).

A *run* is a folder that directly holds ``events.out.tfevents.*`` files; a LOGDIR may be one run
or a tree of them (as ``tensorboard --logdir`` sees it). TensorBoard is imported lazily.
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

    def summary(self) -> dict[str, object]:
        steps = [st for s in self.scalars.values() for st, _ in s]
        return {
            "run": self.name,
            "path": self.path,
            "event_files": self.event_files,
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
        EventAccumulator,
    )

    acc = EventAccumulator(str(folder), size_guidance={SCALARS: 0})
    acc.Reload()
    run = Run(name=name, path=str(folder), event_files=n_files)
    for tag in acc.Tags().get("scalars", []):
        pts: dict[int, float] = {}
        for e in acc.Scalars(tag):
            pts[int(e.step)] = float(e.value)  # a rewritten step keeps its last value
        run.scalars[tag] = sorted(pts.items())
    return run
