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

__all__ = [
    "Site",
    "Source",
    "caller_site",
    "from_node",
    "from_stack",
    "recording_node_stacks",
    "source_of",
]

Source = dict[str, Any]  # {"file": str, "line": int, "function": str, "code": str}
Site = tuple[str, int, str]  # (file, line, function): a Source before its code line is read


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
_USER: dict[str, bool] = {}  # filename -> is_user_file (module call sites are looked up often)


def is_user_file(filename: str) -> bool:
    """Whether ``filename`` is user code: not torch, not torchdx's tooling, not the stdlib."""
    global _SKIP
    hit = _USER.get(filename)
    if hit is not None:
        return hit
    if _SKIP is None:
        _SKIP = _skip_dirs()
    if not filename or filename.startswith("<"):
        user = False
    else:
        user = not os.path.abspath(filename).startswith(_SKIP)
    if len(_USER) < 4096:
        _USER[filename] = user
    return user


def _source(filename: str, line: int, function: str) -> Source:
    code = linecache.getline(filename, line).strip()
    return {"file": filename, "line": line, "function": function, "code": code}


def source_of(site: Site | None) -> Source | None:
    """A :data:`Site` as a :data:`Source` (with its line of code)."""
    return None if site is None else _source(*site)


def caller_site() -> Site | None:
    """The innermost user frame of the caller's stack, without reading its code line: called
    from a module's forward pre-hook during a replay, it is the line of user code that called
    the module (torch's own modules such as ``nn.Sequential`` are skipped up to it)."""
    frame = sys._getframe(1)
    while frame is not None:
        co = frame.f_code
        if is_user_file(co.co_filename):
            return (co.co_filename, frame.f_lineno, co.co_name)
        frame = frame.f_back
    return None


def from_stack(stop: Any = None) -> Source | None:
    """The innermost user frame of the current Python stack; with ``stop`` (a code object),
    only the frames inside the innermost call of that code are looked at (None when none of
    them is user code, e.g. for an op of a torch built-in module re-run by the op pass)."""
    frame = sys._getframe(1)
    while frame is not None:
        co = frame.f_code
        if co is stop:
            return None
        if is_user_file(co.co_filename):
            return _source(co.co_filename, frame.f_lineno, co.co_name)
        frame = frame.f_back
    return None


_FRAME = re.compile(r'File "(?P<file>[^"]+)", line (?P<line>\d+), in (?P<fn>[^\n]+)')


def from_node(node: Any, stop: Any = None) -> Source | None:
    """The innermost user frame of the forward call that created autograd ``node`` (recorded by
    anomaly mode); None when no stack was recorded. With ``stop`` (a code object), only the
    frames inside its innermost call are looked at, as in :func:`from_stack`."""
    try:
        tb = node.metadata.get("traceback_")
    except Exception:  # nodes without metadata
        return None
    if not tb:
        return None
    text = "".join(tb) if isinstance(tb, (list, tuple)) else str(tb)
    frames = [(m["file"], int(m["line"]), m["fn"].strip()) for m in _FRAME.finditer(text)]
    for filename, line, fn in reversed(frames):  # innermost last
        if stop is not None and _is_frame_of(stop, filename, fn):
            return None
        if is_user_file(filename):
            return _source(filename, line, fn)
    return None


def _is_frame_of(code: Any, filename: str, fn: str) -> bool:
    """Whether a formatted frame (``filename``, function ``fn``) runs ``code``."""
    if fn not in (code.co_name, getattr(code, "co_qualname", code.co_name)):
        return False
    return filename == code.co_filename or os.path.abspath(filename) == os.path.abspath(
        code.co_filename
    )


@contextlib.contextmanager
def recording_node_stacks():
    """Anomaly mode without its NaN check: every autograd node created inside records the
    Python stack of its forward call (read back by :func:`from_node`)."""
    with torch.autograd.set_detect_anomaly(True, check_nan=False):
        yield
