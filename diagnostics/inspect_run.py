"""``python -m diagnostics.inspect_run LOGDIR [--json FILE] [--strict]``: what went wrong in a run.

Reads the TensorBoard event files under LOGDIR with TensorBoard's own reader and reports, per
run, findings with the step where each begins: non-finite values; loss spikes (robust z-score
against a rolling median); divergence; plateau; a growing train/validation gap; per-module
gradients vanishing, exploding or dead; update ratios far from the usual range; CFG drop rate
off its configured value; learning-rate oscillation. Runs written by
``diagnostics.TrainingMonitor`` carry every tag the rules read.

Output: a table on stdout; ``--json FILE``:
``{"findings": [{"kind", "tag", "step", "value", "detail", "run"}], "runs": [...]}``. A run
whose event files hold no scalar (nothing logged yet, or an empty or corrupt file) is listed
as such: nothing in it was inspected. Interrupted (Ctrl-C), it reports and writes the runs
read so far and exits 130.
Exit status: 0 when the inspection completed (whatever it found); 1 with ``--strict`` when
anything was found; 2 for bad arguments or a folder without event files (one line on stderr);
130 when interrupted.

Example:
    python -m diagnostics.inspect_run runs/exp1 --json runs/exp1/findings.json --strict
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from contracts import TorchdxError
from contracts.cli import ArgumentParser, fail

from ._inspect_read import find_runs, read_run
from ._inspect_rules import RuleConfig, inspect_scalars

__all__ = ["InspectRunError", "inspect_logdir", "main"]


class InspectRunError(TorchdxError, ValueError):
    """LOGDIR is missing or holds no TensorBoard event files."""

    __module__ = "diagnostics"


def inspect_logdir(
    logdir: str | Path, config: RuleConfig | None = None, progress: bool = False
) -> dict[str, Any]:
    """Findings of every run under ``logdir`` (the JSON layout of the CLI).

    Raises:
        InspectRunError: ``logdir`` does not exist or holds no event files.

    Example:
        >>> report = inspect_logdir("runs/exp1")  # doctest: +SKIP
        >>> [(f["kind"], f["step"]) for f in report["findings"]]  # doctest: +SKIP
        [('loss_spike', 120), ('cfg_drop_rate', 400)]
    """
    report: dict[str, Any] = {"findings": [], "runs": []}
    _inspect_into(report, logdir, config, progress)
    return report


def _inspect_into(
    report: dict[str, Any], logdir: str | Path, config: RuleConfig | None, progress: bool
) -> None:
    """Fill ``report`` run by run (so an interrupted inspection keeps the runs read so far)."""
    if str(logdir).strip() == "":
        raise InspectRunError("inspect_run: LOGDIR is empty; give a run folder or a tree of runs")
    root = Path(logdir)
    if not root.is_dir():
        why = "it is a file" if root.exists() else "it does not exist"
        raise InspectRunError(f"inspect_run: LOGDIR {str(root)!r} is not a directory ({why})")
    runs = find_runs(root)
    if not runs:
        raise InspectRunError(
            f"inspect_run: no TensorBoard event files (events.out.tfevents.*) under {str(root)!r}"
        )
    from tqdm import tqdm

    report["runs_found"] = len(runs)
    for name, folder, n in tqdm(runs, desc="inspect_run", disable=not progress, unit="run"):
        run = read_run(name, folder, n)
        found = inspect_scalars(run.scalars, config, run=name)
        report["findings"] += [f.to_dict() for f in found]
        report["runs"].append({**run.summary(), "findings": len(found)})
    del report["runs_found"]


def format_table(report: dict[str, Any]) -> str:
    """The findings as a plain-text table (one line each), with a one-line summary per run."""
    lines = []
    for r in report["runs"]:
        if r["steps"]:
            span = f"steps {r['steps'][0]} to {r['steps'][1]}"
            lines.append(f"run {r['run']}: {r['tags']} tags, {span}, {r['findings']} findings")
        elif not r.get("readable", True):
            lines.append(
                f"run {r['run']}: NOT INSPECTED: no readable event in its {r['event_files']} "
                "event file(s) (empty, or not a TensorBoard file)"
            )
        else:
            lines.append(
                f"run {r['run']}: NOT INSPECTED: no scalar logged (nothing written yet, or "
                "only other data)"
            )
    rows = report["findings"]
    if not rows:
        inspected = sum(1 for r in report["runs"] if r["steps"])
        if report["runs"] and not inspected:
            lines.append("no findings: no run holds scalars, so nothing was inspected")
        else:
            lines.append("no findings")
        return "\n".join(lines)
    head = ("run", "step", "kind", "tag", "value")
    table = [
        (
            f["run"],
            str(f["step"]),
            f["kind"],
            f["tag"],
            "n/a" if f["value"] is None else f"{f['value']:.4g}",
        )
        for f in rows
    ]
    widths = [max(len(h), *(len(t[i]) for t in table)) for i, h in enumerate(head)]
    lines.append("  ".join(h.ljust(w) for h, w in zip(head, widths, strict=True)) + "  detail")
    for t, f in zip(table, rows, strict=True):
        cells = "  ".join(c.ljust(w) for c, w in zip(t, widths, strict=True))
        lines.append(f"{cells}  {f['detail']}")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parts = __doc__.split("\n\n")
    p = ArgumentParser(
        prog="python -m diagnostics.inspect_run",
        description=parts[1],
        epilog="\n\n".join(parts[2:]),
    )
    p.add_argument("logdir", metavar="LOGDIR", help="a run folder or a tree of runs")
    p.add_argument("--json", metavar="FILE", help="also write the findings as JSON here")
    p.add_argument("--strict", action="store_true", help="exit 1 when anything was found")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def main(argv: list[str] | None = None) -> int:
    """CLI entry point; returns the exit status."""
    args = build_parser().parse_args(argv)
    report: dict[str, Any] = {"findings": [], "runs": []}
    interrupted = False
    try:
        _inspect_into(report, args.logdir, None, progress=not args.no_progress)
    except InspectRunError as err:
        return fail("inspect_run", str(err).removeprefix("inspect_run: "))
    except KeyboardInterrupt:
        interrupted = True
        total = report.pop("runs_found", None)
        report["interrupted"] = (
            "while looking for event files"
            if total is None
            else f"after {len(report['runs'])} of {total} runs"
        )
    if args.json:
        out = Path(args.json)
        try:
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(json.dumps(report, indent=2, allow_nan=False) + "\n")
        except OSError as err:
            return fail("inspect_run", f"cannot write --json {str(out)!r}: {err.strerror}")
    print(format_table(report), flush=True)
    if interrupted:
        where = f"; wrote them to {args.json}" if args.json else ""
        sys.stderr.write(
            f"inspect_run: interrupted (Ctrl-C) {report['interrupted']}: reported the runs read "
            f"so far{where}\n"
        )
        return 130
    return 1 if args.strict and report["findings"] else 0


if __name__ == "__main__":
    sys.exit(main())
