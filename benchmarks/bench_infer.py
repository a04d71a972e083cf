"""Cost of contract inference, as a ratio against plain forwards in the same process.

For every model of the inference tests (tiny reference models, a TransformerEncoder, a tiny
Wav2Vec2) plus the Paraformer at its default size: one pass of plain forwards over the sample
batches (``torch.no_grad()``, as inference runs them) vs one ``contracts.infer.infer`` over the
same batches, interleaved, repeated; the figure is the median of the paired ratios.

- ``record``: the hooked forwards with their value statistics (the "≤ 3× one forward per batch"
  budget of the issue).
- ``total``: recording plus unification (pure Python; independent of tensor sizes).
- ``us_per_hooked_call``: the recording's extra time per hooked module call.
- ``noop_hooks``: the forwards with do-nothing hooks on every module (hooking alone), and
  ``record_vs_noop_hooks``: the recording against that.

Sub-millisecond forwards pay mostly the fixed cost per hooked call; a TransformerEncoderLayer
also leaves torch's fused fast path when any of its modules has a hook.

Run: python -m benchmarks.bench_infer [--repeats N]  ->  docs/results/infer.json
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import statistics
import time
from collections.abc import Callable, Iterator
from typing import Any

import torch

from benchmarks._results import write_results
from contracts import InferTarget
from contracts._infer_record import default_forward, record
from contracts._infer_unify import unify
from tests.contracts import test_infer_targets as tg


def paraformer_default() -> InferTarget:
    """The Paraformer at its default config (not tiny), batches of 8 x ~200 frames."""
    from models.paraformer import Paraformer, ParaformerConfig

    torch.manual_seed(0)
    m = Paraformer(ParaformerConfig()).eval()
    sizes = [(8, 200, 20), (6, 240, 28), (10, 170, 24)]
    return InferTarget(m, [tg.paraformer_batch(m, *s) for s in sizes])


TARGETS: dict[str, Callable[[], InferTarget]] = {
    "paraformer_tiny": tg.paraformer_target,
    "paraformer_default": paraformer_default,
    "sgmse_tiny": tg.sgmse_target,
    "diffusion_buffer_tiny": tg.diffusion_buffer_target,
    "audiosr_tiny": tg.audiosr_target,
    "transformer_encoder": tg.transformer_target,
    "wav2vec2_tiny": tg.wav2vec2_target,
}


@contextlib.contextmanager
def _clean() -> Iterator[None]:
    """Each timed arm starts with no garbage left by the one before (the collector stays on)."""
    gc.collect()
    yield


def measure(target: InferTarget, repeats: int) -> dict[str, Any]:
    def plain() -> float:
        t0 = time.perf_counter()
        with torch.no_grad():
            for b in target.batches:
                default_forward(target.model, b)
        return time.perf_counter() - t0

    def noop_hooks() -> float:
        # the same forwards with do-nothing hooks on every module: what hooking alone costs
        # (torch's hook dispatch, and fused fast paths such as TransformerEncoderLayer's that
        # any hook turns off)
        def pre(m: Any, a: Any, k: Any) -> None:
            return None

        def post(m: Any, a: Any, k: Any, o: Any) -> None:
            return None

        hs = []
        for m in target.model.modules():
            hs.append(m.register_forward_pre_hook(pre, with_kwargs=True))
            hs.append(m.register_forward_hook(post, with_kwargs=True))
        try:
            return plain()
        finally:
            for h in hs:
                h.remove()

    plain()
    noop_hooks()
    unify(record(target))  # warm-up all three
    base, noop, rec_t, tot_t = [], [], [], []
    for _ in range(repeats):  # interleaved
        with _clean():
            base.append(plain())
        with _clean():
            noop.append(noop_hooks())
        with _clean():
            t0 = time.perf_counter()
            rec = record(target)
            t1 = time.perf_counter()
            unify(rec)
            t2 = time.perf_counter()
        rec_t.append(t1 - t0)
        tot_t.append(t2 - t0)

    # each run of the tool is compared with the baseline run just before it (the load of a
    # shared machine drifts slowly), and the median of those paired ratios is the figure
    def ratio(xs: list[float], ys: list[float]) -> float:
        return statistics.median(x / y for x, y in zip(xs, ys, strict=True))

    return {
        "record": ratio(rec_t, base),
        "total": ratio(tot_t, base),
        "noop_hooks": ratio(noop, base),
        "record_vs_noop_hooks": ratio(rec_t, noop),
        "forward_ms_per_batch": 1e3 * statistics.median(base) / len(target.batches),
        "us_per_hooked_call": 1e6
        * statistics.median(r - b for r, b in zip(rec_t, base, strict=True))
        / sum(len(c) for c in rec.calls),
        "modules_hooked": len(rec.hooked),
        "batches": len(target.batches),
    }


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m benchmarks.bench_infer", description=__doc__)
    p.add_argument("--repeats", type=int, default=7, help="interleaved repetitions per model")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    rows = {}
    for name, make in TARGETS.items():
        rows[name] = measure(make(), args.repeats)
        r = rows[name]
        print(
            f"{name:22s} forward {r['forward_ms_per_batch']:8.2f} ms/batch  "
            f"record {r['record']:5.2f}x  total {r['total']:5.2f}x  "
            f"no-op hooks {r['noop_hooks']:5.2f}x  record/no-op {r['record_vs_noop_hooks']:5.2f}x  "
            f"{r['us_per_hooked_call']:5.1f} us/call ({r['modules_hooked']} modules)"
        )
    figures = {
        "models": rows,
        "max_record_ratio": max(r["record"] for r in rows.values()),
        "max_total_ratio": max(r["total"] for r in rows.values()),
        "repeats": args.repeats,
    }
    write_results(
        "infer", figures, command=f"python -m benchmarks.bench_infer --repeats {args.repeats}"
    )


if __name__ == "__main__":
    main()
