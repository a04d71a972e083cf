"""The command-line conventions every torchdx entry point shares.

Exit status 0 when the job completed (whatever it found), 2 for bad arguments or input, with one
line on stderr naming what was wrong — never argparse's usage block, never a traceback.

Example:
    >>> from contracts.cli import ArgumentParser, fail
    >>> p = ArgumentParser(prog="python -m diagnostics.scaling", description="...")
    >>> _ = p.add_argument("--sizes")
    >>> def main(argv=None):
    ...     args = p.parse_args(argv)          # bad flags: one line, SystemExit(2)
    ...     if not args.sizes:
    ...         return fail(p, "--sizes: give at least 3 sizes")
    ...     return 0
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

from ._errors import TorchdxError

__all__ = [
    "ArgumentParser",
    "TargetSpecError",
    "fail",
    "import_factory",
    "load_target",
    "pick_threads",
    "short_name",
]


def short_name(prog: str) -> str:
    """``"python -m diagnostics.scaling"`` -> ``"scaling"``: the name error lines start with."""
    return prog.rsplit(" ", 1)[-1].rsplit(".", 1)[-1]


def fail(parser_or_prog: argparse.ArgumentParser | str, message: str) -> int:
    """Write ``NAME: error: MESSAGE`` as one line on stderr and return exit status 2."""
    prog = parser_or_prog if isinstance(parser_or_prog, str) else parser_or_prog.prog
    first = " ".join(str(message).split("\n", 1)[0].split()) or "bad input"
    sys.stderr.write(f"{short_name(prog)}: error: {first}\n")
    sys.stderr.flush()
    return 2


class ArgumentParser(argparse.ArgumentParser):
    """``argparse.ArgumentParser`` whose errors are one line on stderr and exit status 2.

    ``--help`` keeps the description's line breaks (RawDescriptionHelpFormatter by default).
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", argparse.RawDescriptionHelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        fail(self, f"{message} (see --help)")
        raise SystemExit(2)


class TargetSpecError(TorchdxError, ValueError):
    """A ``--target MODULE:FACTORY`` spec that names nothing usable (the message is one line)."""

    __module__ = "contracts.cli"


def import_factory(spec: str, *, flag: str = "--target") -> Callable[..., Any]:
    """The callable that ``MODULE:FACTORY`` or ``path/to/file.py:FACTORY`` names.

    A file below the current directory whose folders are packages is imported under its dotted
    name (so code generated from it can import what it defines); any other file is loaded by
    path with its folder on ``sys.path`` while it runs.

    Raises:
        TargetSpecError: malformed spec, missing file, failed import, no such callable.
    """
    where, _, name = spec.rpartition(":")
    if not where or not name:
        raise TargetSpecError(
            f"{flag} {spec!r}: expected MODULE:FACTORY or path/to/file.py:FACTORY"
        )
    try:
        if where.endswith(".py") or "/" in where or os.sep in where:
            module = _import_file(spec, Path(where), flag)
        else:
            module = importlib.import_module(where)
    except TargetSpecError:
        raise
    except Exception as e:
        raise TargetSpecError(
            f"{flag} {spec!r}: importing {where!r} failed: {type(e).__name__}: {e}"
        ) from None
    factory = getattr(module, name, None)
    if not callable(factory):
        options = sorted(k for k, v in vars(module).items() if callable(v) and k[:1] != "_")
        raise TargetSpecError(
            f"{flag} {spec!r}: {where!r} has no callable {name!r} "
            f"(callables there: {', '.join(options[:8]) or 'none'})"
        )
    return factory


def load_target(
    spec: str,
    expected: type | tuple[type, ...],
    *,
    seed: int | None = None,
    flag: str = "--target",
) -> Any:
    """Import ``spec``'s factory, call it with no arguments, check what it returned.

    ``seed`` seeds torch's global generator first (a factory that builds a model then builds
    the same one every time).

    Raises:
        TargetSpecError: as :func:`import_factory`; the factory raised; it returned something
            that is not an ``expected``.

    Example:
        >>> from diagnostics import ScalingTarget
        >>> target = load_target("mypkg.targets:make", ScalingTarget)  # doctest: +SKIP
    """
    factory = import_factory(spec, flag=flag)
    if seed is not None:
        import torch

        torch.manual_seed(seed)
    try:
        target = factory()
    except TorchdxError as e:
        raise TargetSpecError(f"{flag} {spec!r}: {str(e).splitlines()[0]}") from None
    except Exception as e:
        raise TargetSpecError(
            f"{flag} {spec!r}: the factory raised {type(e).__name__}: {e}"
        ) from None
    if not isinstance(target, expected):
        kinds = expected if isinstance(expected, tuple) else (expected,)
        names = " or ".join(f"{k.__module__.split('.')[0]}.{k.__name__}" for k in kinds)
        raise TargetSpecError(
            f"{flag} {spec!r}: the factory returned {type(target).__name__}, not a {names}"
        )
    return target


def _import_file(spec: str, path: Path, flag: str) -> Any:
    if not path.is_file():
        raise TargetSpecError(f"{flag} {spec!r}: file {str(path)!r} not found")
    full = path.resolve()
    cwd = Path.cwd().resolve()
    if full.is_relative_to(cwd):
        rel = full.relative_to(cwd).with_suffix("")
        pkg_ok = all(
            (cwd.joinpath(*rel.parts[:i]) / "__init__.py").is_file()
            for i in range(1, len(rel.parts))
        )
        if pkg_ok and all(p.isidentifier() for p in rel.parts):
            if str(cwd) not in sys.path:
                sys.path.insert(0, str(cwd))
            return importlib.import_module(".".join(rel.parts))
    mod_name = f"_torchdx_target_{path.stem}"
    mspec = importlib.util.spec_from_file_location(mod_name, full)
    assert mspec is not None and mspec.loader is not None, f"cannot load {full}"
    module = importlib.util.module_from_spec(mspec)
    sys.modules[mod_name] = module
    sys.path.insert(0, str(full.parent))
    try:
        mspec.loader.exec_module(module)
    finally:
        sys.path.pop(0)
    return module


def unwritable(flag: str, path: str | Path, *, file: bool = False) -> str | None:
    """Why a CLI cannot write ``path`` (a folder, or with ``file`` a file), in one line naming
    ``flag``; None when it can. Checked before a long run, not after it: an existing path of
    the other kind, a file where a folder above it should be, or no permission to write in the
    nearest existing folder above it.

    Example:
        >>> unwritable("--out", "/etc/passwd")
        "--out '/etc/passwd': exists and is a file; expected a folder"
    """
    p = Path(path)
    if p.exists() and (p.is_dir() if file else not p.is_dir()):
        kind, want = ("a folder", "file") if file else ("a file", "folder")
        return f"{flag} {str(p)!r}: exists and is {kind}; expected a {want}"
    above = p.parent if file else p
    while not above.exists() and above != above.parent:
        above = above.parent
    if not above.is_dir():
        return f"{flag} {str(p)!r}: {str(above)!r} is a file, not a folder"
    if not os.access(above, os.W_OK | os.X_OK):
        return f"{flag} {str(p)!r}: no permission to write in {str(above)!r}"
    return None


def pick_threads(n: int | None) -> str:
    """Set torch's intra-op threads for a CLI run and say why, in words for the report.

    ``n`` given: use it. Otherwise keep torch's default unless the machine is already loaded
    (load average above the core count), where one thread is faster than contending ones.
    """
    import torch

    if n is not None:
        torch.set_num_threads(max(1, n))
        return f"{torch.get_num_threads()} (--threads)"
    try:
        load = os.getloadavg()[0]
    except OSError:
        load = 0.0
    cores = os.cpu_count() or 1
    if load > cores and torch.get_num_threads() > 1:
        torch.set_num_threads(1)
        return f"1 (load average {load:.1f} > {cores} cores)"
    return str(torch.get_num_threads())
