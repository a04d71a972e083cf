"""``python -m benchmarks.fault_zoo``: run the fault zoo (see ``benchmarks/fault_zoo``)."""

from __future__ import annotations

import json
import os
import shlex
import sys
from pathlib import Path
from typing import Any

from contracts.cli import ArgumentParser, fail

_DOC = Path(__file__).resolve().parents[2] / "docs" / "FAULT_ZOO.md"


def _bad(msg: str) -> int:
    return fail("fault_zoo", msg)


def _writable(path: Path) -> str | None:
    """Why ``path`` cannot be written (None when it can)."""
    if path.is_dir():
        return f"--json {str(path)!r} is a directory"
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        return f"--json {str(path)!r}: directory {str(parent)!r} does not exist"
    if not os.access(parent, os.W_OK) or (path.exists() and not os.access(path, os.W_OK)):
        return f"--json {str(path)!r} is not writable"
    return None


def main(argv: list[str] | None = None) -> int:
    p = ArgumentParser(
        prog="python -m benchmarks.fault_zoo",
        description=(
            "Run every planted fault and its healthy twin through torchdx (contracts, NanWatch, "
            "GradFlow, run_ablation, CFGDropoutMonitor, hygiene checks) and the anchors "
            "(detect_anomaly, jaxtyping+beartype, isfinite hooks, an isfinite(loss) check). "
            "A full run writes docs/results/fault_zoo.json and docs/FAULT_ZOO.md."
        ),
    )
    p.add_argument("--quick", action="store_true", help="only the quick subset (~1 per kind)")
    p.add_argument(
        "--only",
        metavar="PATTERN",
        help="comma-separated globs/substrings of fault ids, or category names "
        "(e.g. 'shapes', 'nonfinite.*', 'whisper')",
    )
    p.add_argument("--json", metavar="FILE", help="also write the results JSON here")
    p.add_argument(
        "--no-docs",
        action="store_true",
        help="do not write docs/results/fault_zoo.json and docs/FAULT_ZOO.md (a subset run "
        "never writes them)",
    )
    p.add_argument("--list", action="store_true", help="list the selected faults and exit")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    args = p.parse_args(argv)

    from ._runner import load_faults, run_zoo, select

    faults = select(load_faults(), only=args.only, quick=args.quick)
    if not faults:
        return _bad(
            f"--only {args.only!r} matches no fault"
            + (" in the --quick subset" if args.quick else "")
            + "; see --list for the ids"
        )
    json_path = Path(args.json) if args.json else None
    if json_path is not None and (why := _writable(json_path)):
        return _bad(why)
    if args.list:
        for f in faults:
            print(f"{f.id:50} {f.category:13} {f.family:13} {f.title}")
        return 0

    from tqdm.auto import tqdm

    bar = tqdm(total=len(faults), disable=args.quiet, unit="fault", file=sys.stderr)

    def progress(fid: str) -> None:
        bar.set_postfix_str(fid, refresh=False)
        bar.update(1)

    try:
        res = run_zoo(faults, progress=progress)
    finally:
        bar.close()
    command = "python -m benchmarks.fault_zoo " + " ".join(
        shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:])
    )
    command = command.strip()
    full = not args.quick and not args.only
    if json_path is not None:
        from benchmarks._results import machine_facts

        payload = {**res, "command": command, "machine": machine_facts()}
        json_path.write_text(json.dumps(payload, indent=1) + "\n")
    if full and not args.no_docs:
        _write_docs(res, command, faults)
    _print_summary(res)
    return 0


def _write_docs(res: dict[str, Any], command: str, faults: list[Any]) -> None:
    from benchmarks._results import load_results, write_results

    from ._markdown import render

    try:
        import transformers

        tv = transformers.__version__
    except ImportError:  # pragma: no cover - the bench extra is not installed
        tv = "not installed"
    write_results("fault_zoo", {**res, "transformers": tv}, command=command)
    meta = load_results("fault_zoo")
    meta["transformers"] = tv
    notes = {f.id: f.note for f in faults if f.note}
    _DOC.write_text(render(res, meta, notes))


def _print_summary(res: dict[str, Any]) -> None:
    print(f"fault zoo: {len(res['faults'])} faults in {res['seconds']:.1f} s")
    print(f"{'tool':16} {'detected':>10} {'localized':>10} {'false alarms':>13}")
    for t, s in res["summary"].items():
        fa = f"{s['false_alarm_count']}/{s['healthy']}"
        print(
            f"{t:16} {s['detected']:>4}/{s['faults']:<5} {s['localized']:>4}/{s['faults']:<5} "
            f"{fa:>13}"
        )
    for f in res["faults"]:
        r = f["tools"]["torchdx"]
        if not r["localized"]:
            state = "MISSED" if not r["detected"] else "NOT LOCALIZED"
            print(f"  torchdx {state}: {f['id']}: {r['message'][:120]}")


if __name__ == "__main__":
    raise SystemExit(main())
