"""The default ``python -m diagnostics.scaling`` run: its wall time and the seeds' claims.

Runs the CLI with no ``--target`` (Paraformer encoder over T; global encoder over duration and
batch) as a subprocess, timing the whole command (start-up included), with
``--memory-budget 24GiB --update-docs`` so the generated blocks of ``docs/CLAIMS.md`` and
``docs/PARAFORMER.md`` come from the same run, and writes ``docs/results/scaling.json``.

Run: ``python benchmarks/bench_scaling.py`` (about a minute on a loaded 2-core machine).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks._results import write_results  # noqa: E402

COMMAND = ["-m", "diagnostics.scaling", "--memory-budget", "24GiB", "--update-docs", "--quiet"]


def _summary(r: dict) -> dict:
    tot = r["total"]
    out = {
        "sizes": r["sizes"],
        "seconds": tot["seconds"],
        "peak_bytes": tot["peak_bytes"],
        "peak_mib_at_max": round(tot["peak_bytes"][-1] / 2**20, 2),
        "class": tot["class"],
        "max_size_within_24GiB": r["max_size_within_budget"],
    }
    for metric in ("time", "memory"):
        fit = tot["exponent"][metric]
        out[f"{metric}_exponent"] = fit["exponent"]
        out[f"{metric}_ci95"] = fit["ci95"]
        out[f"{metric}_status"] = fit["status"]
    resp = [f for f in r["findings"] if f["kind"] == "responsible" and f["metric"] == "memory"]
    if resp:
        out["memory_responsible"] = resp[0]["module"]
        out["memory_responsible_share"] = resp[0]["share"]
    below = [f for f in r["findings"] if f["kind"] == "linear-below" and f["metric"] == "memory"]
    if below:
        out["memory_linear_below"] = below[0]["size"]
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--out", default=str(ROOT / "runs" / "scaling" / "bench"))
    a = p.parse_args()
    cmd = [sys.executable, *COMMAND, "--out", a.out]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    print(proc.stdout)
    if proc.returncode != 0:
        sys.stderr.write(proc.stderr)
        raise SystemExit(f"bench_scaling: the default run exited {proc.returncode}")
    data = json.loads((Path(a.out) / "report.json").read_text())
    threads = data["reports"][0]["threads"]
    from diagnostics._scaling._docs import claim_verdicts

    figures = {
        "claims": claim_verdicts(data["reports"]),
        "default_run_seconds": round(wall, 1),
        "measuring_seconds": round(sum(r["seconds_measuring"] for r in data["reports"]), 1),
        "threads": threads,
        "runs": {f"{r['target']}-{r['axis']}": _summary(r) for r in data["reports"]},
    }
    path = write_results(
        "scaling",
        figures,
        command="python benchmarks/bench_scaling.py",
        notes="wall time of `python " + " ".join(COMMAND) + "` including start-up; CPU, "
        "torch.profiler memory events; no GPU run",
    )
    print(f"default run: {wall:.1f} s (threads {threads}); wrote {path}")


if __name__ == "__main__":
    main()
