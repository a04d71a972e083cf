"""Where in the user's code: the innermost frame outside torch and torchdx's own tooling.

Forward producer: the Python stack at the moment the producing op runs (walked only once, when
the op finder has found its op). Backward producer: the stack of the *forward* call that created
the autograd node, which autograd records in ``node.metadata["traceback_"]`` while anomaly mode
is on; NanWatch turns it on (``check_nan=False``) only around the op pass of a failing step.
"""

from __future__ import annotations

import contextlib
import linecache
import os
import re
import sys
import sysconfig
from typing import Any

import torch

__all__ = ["Source", "from_node", "from_stack", "recording_node_stacks"]

Source = dict[str, Any]  # {"file": str, "line": int, "function": str, "code": str}


def _pkg_dir(module: Any) -> str:
    return os.path.dirname(os.path.abspath(module.__file__)) + os.sep


def _skip_dirs() -> tuple[str, ...]:
    import contracts
    import diagnostics

    dirs = [_pkg_dir(torch), _pkg_dir(diagnostics), _pkg_dir(contracts)]
    for key in ("stdlib", "platstdlib"):
        path = sysconfig.get_paths().get(key)
        if path:
            dirs.append(os.path.abspath(path) + os.sep)
    return tuple(dict.fromkeys(dirs))


_SKIP: tuple[str, ...] | None = None


def is_user_file(filename: str) -> bool:
    """Whether ``filename`` is user code: not torch, not torchdx's tooling, not the stdlib."""
    global _SKIP
    if _SKIP is None:
        _SKIP = _skip_dirs()
    if not filename or filename.startswith("<"):
        return False
    return not os.path.abspath(filename).startswith(_SKIP)


def _source(filename: str, line: int, function: str) -> Source:
    code = linecache.getline(filename, line).strip()
    return {"file": filename, "line": line, "function": function, "code": code}


def from_stack() -> Source | None:
    """The innermost user frame of the current Python stack."""
    frame = sys._getframe(1)
    while frame is not None:
        co = frame.f_code
        if is_user_file(co.co_filename):
            return _source(co.co_filename, frame.f_lineno, co.co_name)
        frame = frame.f_back
    return None


_FRAME = re.compile(r'File "(?P<file>[^"]+)", line (?P<line>\d+), in (?P<fn>[^\n]+)')


def from_node(node: Any) -> Source | None:
    """The innermost user frame of the forward call that created autograd ``node`` (recorded by
    anomaly mode); None when no stack was recorded."""
    try:
        tb = node.metadata.get("traceback_")
    except Exception:  # nodes without metadata
        return None
    if not tb:
        return None
    text = "".join(tb) if isinstance(tb, (list, tuple)) else str(tb)
    frames = [(m["file"], int(m["line"]), m["fn"].strip()) for m in _FRAME.finditer(text)]
    for filename, line, fn in reversed(frames):  # innermost last
        if is_user_file(filename):
            return _source(filename, line, fn)
    return None


@contextlib.contextmanager
def recording_node_stacks():
    """Anomaly mode without its NaN check: every autograd node created inside records the
    Python stack of its forward call (read back by :func:`from_node`)."""
    with torch.autograd.set_detect_anomaly(True, check_nan=False):
        yield
