"""Wall time of the default ``python -m diagnostics.eval_audit`` (issue 17: <= 3 minutes on the
shared 2-core machine), and where the time goes (sampler vs metrics, checks and writing).

Runs the CLI as a user would (a fresh process, no arguments but ``--out``), then reads its
report.json and timing.json. Writes ``docs/results/eval_audit.json``.

    python -m benchmarks.bench_eval_audit [--args "--examples 12"]
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks._results import write_results

BUDGET_S = 180.0  # issue 17: the default run finishes in <= 3 minutes on this machine


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--args", default="", help="extra CLI arguments (default: none)")
    args = p.parse_args(argv)
    root = Path(__file__).resolve().parents[1]
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "audit"
        cmd = [sys.executable, "-m", "diagnostics.eval_audit", "--out", str(out), "--quiet"]
        cmd += shlex.split(args.args)
        load = os.getloadavg()[0]
        t0 = time.perf_counter()
        r = subprocess.run(cmd, cwd=root, capture_output=True, text=True)
        wall = time.perf_counter() - t0
        if r.returncode != 0:
            sys.stderr.write(r.stderr[-2000:])
            return 1
        rep = json.loads((out / "report.json").read_text())
        timing = json.loads((out / "timing.json").read_text())
    protos = [rep["reference"], *[v for v in rep["variants"] if not v.get("skipped")]]
    n = rep["n_examples"]
    sampling_s = sum(v["seconds_per_example"] * n for v in protos)
    figures = {
        "default_run": {
            "wall_s": round(wall, 1),
            "budget_s": BUDGET_S,
            "within_budget": wall <= BUDGET_S,
            "load_average_at_start": round(load, 1),
            "torch_threads": timing["threads"],
            "n_examples": n,
            "protocols": len(protos),
            "model_calls": sum(v["model_calls"] for v in protos),
            "network_evals": sum(v.get("network_evals", 0) for v in protos),
            "load_s": timing["load_s"],
            "audit_s": timing["audit_s"],
            "write_s": timing["write_s"],
            # the sampler's share of the audit (the rest: metrics, checks, bootstrap)
            "sampler_share_of_audit": round(sampling_s / timing["audit_s"], 3),
            "seconds_per_example": {v["label"]: round(v["seconds_per_example"], 2) for v in protos},
        },
        "findings": [f["kind"] for f in rep["findings"]],
    }
    path = write_results(
        "eval_audit",
        figures,
        command="python -m benchmarks.bench_eval_audit"
        + (f" --args {args.args!r}" if args.args else ""),
        notes="wall time of a fresh `python -m diagnostics.eval_audit` process on the shared "
        "machine (other engineers' jobs running: see load_average_at_start)",
    )
    print(json.dumps(figures, indent=2))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
