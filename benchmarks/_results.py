"""Results files: every published figure is written here by the script that measured it.

A results file is ``docs/results/NAME.json``::

    {"name": ..., "figures": {...}, "command": ..., "date": ..., "machine": {...}}

``figures`` is any JSON tree; docs quote a leaf by its dotted path (``NAME:a.b.c``) between
``<!-- fig NAME:a.b.c -->`` and ``<!-- /fig -->`` markers, and
``python -m benchmarks.render_figures`` fills them in.

Example:
    >>> from benchmarks._results import write_results
    >>> write_results("demo", {"ratio": {"small": 1.02}}, command="python x.py")  # doctest: +SKIP
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import shlex
import sys
from pathlib import Path
from typing import Any

__all__ = ["RESULTS_DIR", "load_results", "machine_facts", "write_results"]

RESULTS_DIR = Path(__file__).resolve().parents[1] / "docs" / "results"


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_facts(device: str | None = None) -> dict[str, Any]:
    """What the figures were measured on: versions, CPU, threads, device."""
    import torch

    if device is None:
        device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    return {
        "torch": torch.__version__,
        "python": platform.python_version(),
        "cpu": _cpu_name(),
        "cpu_count": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "device": device,
        "platform": platform.platform(),
    }


def write_results(
    name: str,
    figures: dict[str, Any],
    *,
    command: str | None = None,
    notes: str | None = None,
    device: str | None = None,
    directory: Path | str | None = None,
) -> Path:
    """Write ``docs/results/NAME.json`` and return its path.

    ``command`` defaults to the command line of this process. Values must be JSON-serialisable
    (floats, ints, strings, bools, lists, dicts).
    """
    if not name or "/" in name or name.startswith("."):
        raise ValueError(f"write_results(): bad results name {name!r}")
    out_dir = Path(directory) if directory is not None else RESULTS_DIR
    out_dir.mkdir(parents=True, exist_ok=True)
    payload = {
        "name": name,
        "figures": figures,
        "command": command
        or " ".join(shlex.quote(a) for a in [Path(sys.executable).name, *sys.argv]),
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine_facts(device),
    }
    if notes:
        payload["notes"] = notes
    path = out_dir / f"{name}.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(payload, indent=2, sort_keys=False) + "\n")
    tmp.replace(path)
    return path


def load_results(name: str, directory: Path | str | None = None) -> dict[str, Any]:
    """Read ``docs/results/NAME.json``."""
    path = (Path(directory) if directory is not None else RESULTS_DIR) / f"{name}.json"
    return json.loads(path.read_text())


def device_parser(prog: str, description: str | None, *, repeats: int) -> Any:
    """The arguments every overhead benchmark takes: --repeats, --device, --threads, --no-write.

    Returns a ``contracts.cli.ArgumentParser``; add more arguments, then call
    :func:`parse_device_args`.
    """
    import torch

    from contracts.cli import ArgumentParser

    ap = ArgumentParser(prog=prog, description=description)
    ap.add_argument("--repeats", type=int, default=repeats)
    ap.add_argument(
        "--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=["cpu", "cuda"]
    )
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--no-write", action="store_true", help="print only; no results file")
    return ap


def parse_device_args(ap: Any, argv: list[str] | None = None) -> Any:
    """Parse, refuse ``--device cuda`` without a device (one line, exit 2), set the threads."""
    import torch

    from contracts.cli import fail

    a = ap.parse_args(argv)
    if a.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit(fail(ap, "--device cuda: no CUDA device is available"))
    torch.set_num_threads(a.threads)
    return a
