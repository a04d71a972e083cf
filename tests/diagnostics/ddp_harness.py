"""Start N CPU/gloo worker processes for the ddp tests, each under a HARD timeout.

``launch(scenario, world=2, timeout=60)`` runs ``python tests/diagnostics/ddp_worker.py SCENARIO
RANK WORLD INIT_FILE OUT_DIR`` once per rank (FileStore rendezvous in a temporary file: no ports),
waits at most ``timeout`` seconds, kills whatever is still running, and returns per rank
``(returncode, stdout+stderr, result dict or None)``; a worker writes its result as JSON to
``OUT_DIR/rank<R>.json``.
"""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

WORKER = Path(__file__).with_name("ddp_worker.py")
ROOT = Path(__file__).resolve().parents[2]


def launch(scenario: str, world: int = 2, timeout: float = 60.0, env: dict | None = None):
    with tempfile.TemporaryDirectory(prefix="torchdx-ddp-") as tmp:
        init = os.path.join(tmp, "store")
        base = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), **(env or {})}
        for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
            base.pop(k, None)
        procs = [
            subprocess.Popen(
                [sys.executable, str(WORKER), scenario, str(r), str(world), init, tmp],
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                env=base,
                cwd=str(ROOT),
            )
            for r in range(world)
        ]
        deadline = time.monotonic() + timeout
        outs = []
        for p in procs:
            try:
                out, _ = p.communicate(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                for q in procs:
                    q.kill()
                out, _ = p.communicate()
                out += f"\n[harness] killed after {timeout} s"
            outs.append(out)
        res = []
        for r, (p, out) in enumerate(zip(procs, outs)):
            f = Path(tmp) / f"rank{r}.json"
            res.append((p.returncode, out, json.loads(f.read_text()) if f.exists() else None))
        return res


@functools.lru_cache(maxsize=1)
def shared_run() -> tuple[dict, ...]:
    """The ``all`` scenario (NanWatch, GradFlow, replicas, CFG monitor, a raising rank), launched
    once per test session and shared by the test modules."""
    res = launch("all", timeout=90, env={"TORCHDX_DIST_GRACE": "1"})
    for rc, out, r in res:
        assert rc == 0 and r is not None and "crash" not in r, (rc, out[-3000:], r)
    return tuple(r for _, _, r in res)
