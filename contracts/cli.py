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
import sys
from typing import Any, NoReturn

__all__ = ["ArgumentParser", "fail", "short_name"]


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
