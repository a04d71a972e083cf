"""One GPU check, ready to run where a CUDA device is lent: ``make gpu-check``.

In at most a few minutes on one GPU it

1. runs the ``gpu``-marked tests (``pytest -m gpu``);
2. prints, per tool, host syncs per step (counted with ``torch.cuda.set_sync_debug_mode``)
   and the overhead ratio against a bare step measured in the same process, for NanWatch,
   contracts (eager and compiled), GradFlow and the training monitor (when present);
3. plants a real fp16 overflow under CUDA autocast and checks that NanWatch localizes it;

and writes everything to ``docs/results/gpu_check.json``. Without a CUDA device it says so in
one line and exits 2 (nothing to measure).

Run: ``python -m benchmarks.gpu_check [--repeats 20] [--skip-tests]``
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Annotated, Any

import torch
from torch import Tensor, nn

from benchmarks._results import write_results
from contracts.cli import ArgumentParser, fail
from diagnostics import count_host_syncs


def _median_ratio(base: Callable[[], Any], tool: Callable[[], Any], repeats: int) -> float:
    """Median of per-repeat ratios tool/base, interleaved, CUDA-synchronized."""
    for fn in (base, tool):
        fn()
    ratios = []
    for _ in range(repeats):
        times = []
        for fn in (base, tool):
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            fn()
            torch.cuda.synchronize()
            times.append(time.perf_counter() - t0)
        ratios.append(times[1] / times[0])
    return statistics.median(ratios)


def _encoder(D: int = 256, layers: int = 4) -> nn.Module:
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(D, nhead=4, dim_feedforward=4 * D, batch_first=True)
    return nn.TransformerEncoder(layer, num_layers=layers, enable_nested_tensor=False).cuda()


def _tools(repeats: int) -> dict[str, Any]:
    from jaxtyping import Float

    import contracts
    from contracts import Finite, contract
    from diagnostics import GradFlow, NanWatch

    out: dict[str, Any] = {}
    model = _encoder()
    x = torch.randn(8, 200, 256, device="cuda")
    y = torch.randn(8, 200, 256, device="cuda")

    def step(x: Tensor = x, y: Tensor = y) -> Tensor:
        model.zero_grad(set_to_none=True)
        loss = (model(x) - y).pow(2).mean()
        loss.backward()
        return loss

    watch = NanWatch(model)
    out["nanwatch"] = {
        "syncs_per_step": count_host_syncs(lambda: watch.run(step)),
        "ratio": _median_ratio(step, lambda: watch.run(step), repeats),
    }
    flow = GradFlow(model)

    def flow_step() -> None:
        step()
        flow.record()

    out["gradflow"] = {
        "syncs_per_step": count_host_syncs(flow_step),
        "ratio": _median_ratio(step, flow_step, repeats),
    }

    monitor_cls = getattr(__import__("diagnostics"), "TrainingMonitor", None)
    if monitor_cls is not None:
        import tempfile

        with tempfile.TemporaryDirectory() as d:
            mon = monitor_cls(model, d, every=1)
            counter = iter(range(10**9))

            def mon_step() -> None:
                loss = step()
                mon.step(next(counter), loss=loss)

            out["monitor"] = {
                "syncs_per_step": count_host_syncs(mon_step),
                "ratio": _median_ratio(step, mon_step, repeats),
            }
            mon.close()

    def plain(a: Tensor) -> Tensor:
        return model(a)

    @contract
    def checked(a: Annotated[Float[Tensor, "B T 256"], Finite()]) -> Float[Tensor, "B T 256"]:
        return model(a)

    for mode in ("shapes", "full"):
        with torch.no_grad(), contracts.mode(mode):
            out[f"contracts_{mode}"] = {
                "syncs_per_call": count_host_syncs(lambda: checked(x)),
                "ratio": _median_ratio(lambda: plain(x), lambda: checked(x), repeats),
            }
    try:
        compiled_plain = torch.compile(plain, fullgraph=True)
        compiled_checked = torch.compile(checked, fullgraph=True)
        with torch.no_grad(), contracts.mode("shapes"):
            out["contracts_compiled"] = {
                "syncs_per_call": count_host_syncs(lambda: compiled_checked(x)),
                "ratio": _median_ratio(
                    lambda: compiled_plain(x), lambda: compiled_checked(x), repeats
                ),
            }
    except Exception as e:  # report, don't hide: a compile failure is itself a finding
        out["contracts_compiled"] = {"error": f"{type(e).__name__}: {e}".splitlines()[0]}
    return out


def _fp16_overflow() -> dict[str, Any]:
    """A real fp16 overflow under CUDA autocast, localized by NanWatch."""
    from diagnostics import NanWatch, NonFiniteError

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 64), nn.Linear(64, 64)).cuda()
    with torch.no_grad():
        model[1].weight.mul_(4000.0)  # the second Linear's fp16 output exceeds 65504
    x = torch.randn(16, 64, device="cuda") * 30

    def step() -> Tensor:
        with torch.autocast("cuda", dtype=torch.float16):
            out = model(x)
        loss = out.float().pow(2).mean()
        loss.backward()
        return loss

    try:
        NanWatch(model).run(step)
    except NonFiniteError as e:
        r = e.report
        return {
            "detected": True,
            "module": r.module,
            "phase": r.phase,
            "op": str(r.op),
            "localized": r.module == "1",
            "first_line": str(e).splitlines()[0],
        }
    return {"detected": False}


def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(
        prog="python -m benchmarks.gpu_check",
        description=__doc__,
    )
    parser.add_argument("--repeats", type=int, default=20, help="timed repeats per ratio")
    parser.add_argument("--skip-tests", action="store_true", help="don't run pytest -m gpu")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        return fail(parser, "no CUDA device on this machine; nothing to measure")
    figures: dict[str, Any] = {"device": torch.cuda.get_device_name(0)}
    if not args.skip_tests:
        t0 = time.perf_counter()
        proc = subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "-m", "gpu", "-p", "no:cacheprovider"],
            capture_output=True,
            text=True,
        )
        tail = proc.stdout.strip().splitlines()[-1:] or [""]
        figures["gpu_tests"] = {
            "exit": proc.returncode,
            "summary": tail[0],
            "seconds": time.perf_counter() - t0,
        }
        print(f"pytest -m gpu: exit {proc.returncode}: {tail[0]}")
    figures["tools"] = _tools(args.repeats)
    figures["fp16_overflow"] = _fp16_overflow()
    for name, row in figures["tools"].items():
        print(f"{name:20s} {row}")
    print(f"fp16 overflow under autocast: {figures['fp16_overflow']}")
    path = write_results("gpu_check", figures, command="make gpu-check")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
