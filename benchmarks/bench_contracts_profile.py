"""Where the contracts' cost in the Paraformer training step goes, contract by contract.

``bench_contracts`` gives the whole step's ratio (contracts ``full`` vs ``off``). This profile
splits that cost by contract: each contract wrapper's *own* time in the step (the wrapper's time
minus the time of the function it wraps, so nested contracts are not counted twice), in modes
``off``, ``shapes`` and ``full``, interleaved step by step in one process. A contract's added
cost is its own time in a mode minus its own time in ``off`` (which removes the timing shims'
own cost). ``contracts.check`` calls inside the model are timed the same way.

It also times the ``shapes`` checks of one step's calls warm: each call made again back to back
with the function it wraps replaced by one returning that call's output, so nothing but the
wrapper runs between two checks. ``shapes`` does the same work at every call (no value memory),
so the two figures differ by where the checks run: between the step's kernels, or in a loop
that keeps their code and data in the caches. Their quotient is how much slower the same checks
run inside the step.

Last, it bounds what the value checks' own work costs: the step's ``full`` vs ``off`` ratio
measured in fresh processes (as ``bench_contracts`` does) with the checks as they are, with
every mask check's body replaced by one returning True, and with every value check's body
replaced so. The checks are still built and called (their Python call stays); only what they do
inside is gone. The gap between two bounds is what that part of the checks costs in the step,
and the last bound is the least ``full`` can cost with these wrappers, however fast its
reductions and lookups become.

Writes docs/results/contracts_profile.json.

Run: python -m benchmarks.bench_contracts_profile [--steps 60] [--repeats 100] [--bound-processes 2] [--no-write]
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch

import contracts
from benchmarks._results import write_results
from benchmarks.bench_contracts import (
    paraformer_setup,
    paraformer_step,
    rounded,
    step_in_fresh_process,
)
from contracts.cli import ArgumentParser, fail

MODES = ("off", "shapes", "full")
# the parts of the value checks stubbed out in a bound, by name (see stubbed_value_checks)
BOUNDS = ("as_is", "mask_bodies_free", "value_bodies_free")
CHECK = "contracts.check"


class _Clock:
    """Own time per contract: a shim around each wrapper, one around the function it wraps."""

    def __init__(self) -> None:
        self.own: dict[str, float] = defaultdict(float)
        self.calls: dict[str, int] = defaultdict(int)
        self.inner: list[float] = []  # time spent in wrapped functions, per open wrapper
        # (name, wrapper, args, kwargs, [output]) of each call, while capturing
        self.captured: list[tuple[str, Callable, tuple, dict, list]] | None = None

    def outer(self, name: str, wrapper: Callable) -> Callable:
        clock = time.perf_counter
        inner, own, calls = self.inner, self.own, self.calls

        def timed(*args: Any, **kwargs: Any) -> Any:
            box: list = []
            if self.captured is not None:
                self.captured.append((name, wrapper, args, kwargs, box))
            inner.append(0.0)
            t0 = clock()
            try:
                out = wrapper(*args, **kwargs)
                box.append(out)
                return out
            finally:
                own[name] += clock() - t0 - inner.pop()
                calls[name] += 1

        return timed

    def fn(self, fn: Callable) -> Callable:
        clock = time.perf_counter
        inner = self.inner

        def timed(*args: Any, **kwargs: Any) -> Any:
            t0 = clock()
            try:
                return fn(*args, **kwargs)
            finally:
                inner[-1] += clock() - t0

        return timed

    def check(self, check: Callable) -> Callable:
        clock = time.perf_counter
        own, calls = self.own, self.calls

        def timed(*args: Any, **kwargs: Any) -> Any:
            t0 = clock()
            try:
                return check(*args, **kwargs)
            finally:
                own[CHECK] += clock() - t0
                calls[CHECK] += 1

        return timed

    def reset(self) -> None:
        self.own.clear()
        self.calls.clear()


def _wrapped_fn_holders(wrapper: Callable) -> Iterator[tuple[Any, str]]:
    """Where a contract wrapper keeps the function it wraps: the generated wrapper's globals
    (``fn``) and the generic wrapper's closure cell."""
    for w in (wrapper, getattr(wrapper, "__wrapped_generic__", None)):
        if w is None:
            continue
        code = w.__code__
        if "fn" in code.co_freevars:
            yield w.__closure__[code.co_freevars.index("fn")], "cell_contents"
        elif "fn" in w.__globals__ and w.__globals__ is not globals():
            yield w.__globals__, "fn"


@contextmanager
def timed_contracts(prefix: str, clock: _Clock) -> Iterator[list[str]]:
    """Shims on every contract wrapper of the modules under ``prefix`` (module functions and
    class methods alike, wherever a module holds them) and on ``contracts.check``; all removed
    on exit. Yields the names of the contracts found."""
    undo: list[Callable[[], None]] = []
    outer: dict[int, Callable] = {}  # id(wrapper) -> its shim (one per wrapper)
    found: list[str] = []

    def shim(wrapper: Callable) -> Callable:
        if id(wrapper) not in outer:
            plan = wrapper.__contract__
            outer[id(wrapper)] = clock.outer(plan.qualname, wrapper)
            found.append(plan.qualname)
            for holder, key in _wrapped_fn_holders(wrapper):
                old = _get(holder, key)
                _set(holder, key, clock.fn(old))
                undo.append(lambda h=holder, k=key, o=old: _set(h, k, o))
        return outer[id(wrapper)]

    try:
        for mod_name, mod in sorted(sys.modules.items()):
            if not (mod_name == prefix or mod_name.startswith(prefix + ".")) or mod is None:
                continue
            for name, obj in list(vars(mod).items()):
                if callable(obj) and hasattr(obj, "__contract__"):
                    _swap(mod, name, shim(obj), undo)
                elif isinstance(obj, type) and obj.__module__ == mod_name:
                    for attr, member in list(vars(obj).items()):
                        if callable(member) and hasattr(member, "__contract__"):
                            _swap(obj, attr, shim(member), undo)
        _swap(contracts, "check", clock.check(contracts.check), undo)
        yield found
    finally:
        for u in reversed(undo):
            u()


def _swap(owner: Any, name: str, value: Any, undo: list[Callable[[], None]]) -> None:
    old = vars(owner)[name]
    setattr(owner, name, value)
    undo.append(lambda: setattr(owner, name, old))


def profile(steps: int, repeats: int) -> dict[str, Any]:
    """Own time per contract in the step (per mode, interleaved), and the shapes checks of one
    step's calls repeated warm."""
    _model, _batch, step = paraformer_setup()
    clock = _Clock()
    with timed_contracts("models.paraformer", clock):
        for mode in MODES:  # warm-up: every signature cached
            with contracts.mode(mode):
                step()
        per_mode: dict[str, dict[str, list[float]]] = {m: defaultdict(list) for m in MODES}
        calls: dict[str, int] = {}
        order = list(MODES)
        shuffle = random.Random(0).shuffle
        for _ in range(steps):
            shuffle(order)
            for mode in order:
                clock.reset()
                with contracts.mode(mode):
                    step()
                calls = dict(clock.calls)
                for name, t in clock.own.items():
                    per_mode[mode][name].append(t)
        clock.captured = []
        with contracts.mode("off"):
            step()  # the calls of one step, with their arguments
        captured, clock.captured = clock.captured, None
        warm = _warm_shapes(captured, repeats)
    rows = []
    for name in sorted(calls, key=lambda n: -statistics.median(per_mode["full"][n])):
        off = statistics.median(per_mode["off"][name])
        row: dict[str, Any] = {"name": name, "calls": calls[name]}
        for mode in ("shapes", "full"):
            row[f"us_{mode}"] = (statistics.median(per_mode[mode][name]) - off) * 1e6
        if name in warm:
            row["us_shapes_warm"] = warm[name]
        rows.append(row)
    total = {m: sum(r[f"us_{m}"] for r in rows) for m in ("shapes", "full")}
    warm_total = sum(r.get("us_shapes_warm", 0.0) for r in rows)
    shapes_in_step = sum(r["us_shapes"] for r in rows if "us_shapes_warm" in r)
    return {
        "steps": steps,
        "calls_per_step": sum(r["calls"] for r in rows),
        "contracts": rows,  # the costliest in full first
        "us_per_step": total,
        "us_shapes_warm_per_step": warm_total,
        "us_shapes_in_step_of_those": shapes_in_step,
        "shapes_in_step_vs_warm": shapes_in_step / warm_total if warm_total > 0 else None,
    }


def _warm_shapes(captured: list, repeats: int) -> dict[str, float]:
    """Added ``shapes`` µs per step of each contract, warm: every call of one step made again
    ``repeats`` times back to back with the wrapped function replaced by one returning that
    call's output (so nothing but the wrapper runs between two checks), in ``shapes`` minus in
    ``off``, summed over the step's calls. A ``contracts.check`` inside the function does not
    run there: its time is not in any wrapper's own time anyway."""
    got: dict[str, float] = defaultdict(float)
    clock = time.perf_counter
    for name, wrapper, args, kwargs, box in captured:
        out = box[0]
        holders = list(_wrapped_fn_holders(wrapper))
        saved = [_get(h, k) for h, k in holders]
        for h, k in holders:
            _set(h, k, lambda *a, _out=out, **kw: _out)
        try:
            per: dict[str, float] = {}
            for mode in ("off", "shapes", "off", "shapes"):  # the second pair is kept
                with contracts.mode(mode):
                    samples = []
                    for _ in range(5):
                        t0 = clock()
                        for _ in range(repeats):
                            wrapper(*args, **kwargs)
                        samples.append((clock() - t0) / repeats)
                per[mode] = statistics.median(samples)
        finally:
            for (h, k), old in zip(holders, saved, strict=True):
                _set(h, k, old)
        got[name] += (per["shapes"] - per["off"]) * 1e6
    return dict(got)


def _get(holder: Any, key: str) -> Any:
    return holder[key] if isinstance(holder, dict) else holder.cell_contents


def _set(holder: Any, key: str, value: Any) -> None:
    if isinstance(holder, dict):
        holder[key] = value
    else:
        holder.cell_contents = value


@contextmanager
def stubbed_value_checks(bound: str) -> Iterator[None]:
    """Value checks built inside return True without looking at the tensor: mask checks only
    (``mask_bodies_free``), all of them (``value_bodies_free``) or none (``as_is``). A stub
    keeps the check's call and its ``gate``; it has no ``inline``, so a generated wrapper calls
    it like any other check. Checks built before, and a signature's first call (which the
    reference judges), are untouched. For a bound's process only: what it stubs checks nothing.
    """
    import contracts._fast as fast

    real = fast.cpu_value_check

    def stubbed(spec: Any) -> Callable:
        if bound == "as_is" or (bound == "mask_bodies_free" and spec.mask_axis is None):
            return real(spec)

        def ok(x: Any, b: dict, self_obj: Any) -> bool:
            return True

        ok.gate = [0, 0, 0]  # type: ignore[attr-defined]
        return ok

    fast.cpu_value_check = stubbed
    try:
        yield
    finally:
        fast.cpu_value_check = real


@contextmanager
def timed_value_checks(log: list) -> Iterator[None]:
    """Value checks built inside are timed at each call and appended to ``log`` as ``(read,
    us_in_step, us_warm)``: ``read`` is False for a lookup that found the tensor already
    checked; a check that read the tensor (a reduction and its host read, or a small mask read
    whole) is made twice more right after, its lookup skipped, and the second of those is its
    warm time (None for a lookup). A timed check has no ``inline``, so a generated wrapper calls
    it (as it does a stub, see :func:`stubbed_value_checks`)."""
    import contracts._fast as fast

    real = fast.cpu_value_check
    clock = time.perf_counter

    def timed(spec: Any) -> Callable:
        ok = real(spec)
        gate = ok.gate

        def check(x: Any, b: dict, self_obj: Any) -> bool:
            hits = gate[1]
            t0 = clock()
            good = ok(x, b, self_obj)
            t = clock() - t0
            if gate[1] > hits:  # a lookup hit: nothing read
                log.append((False, t * 1e6, None))
                return good
            closed = gate[0]
            gate[0] = 2  # the next two calls read the tensor without a lookup
            ok(x, b, self_obj)
            t1 = clock()
            ok(x, b, self_obj)
            warm = clock() - t1
            gate[0] = closed
            log.append((True, t * 1e6, warm * 1e6))
            return good

        check.gate = gate  # type: ignore[attr-defined]
        return check

    fast.cpu_value_check = timed
    try:
        yield
    finally:
        fast.cpu_value_check = real


def value_reads(steps: int) -> dict[str, Any]:
    """The value checks of the step in ``full`` (in this process; their wrappers must be built
    here, see :func:`timed_value_checks`): per step, how many read their tensor and how many
    found it already checked, and what the reads cost inside the step vs the same reads made
    again right away (warm). Medians over ``steps`` steps."""
    log: list = []
    with timed_value_checks(log):
        _model, _batch, step = paraformer_setup()
        with contracts.mode("full"):
            for _ in range(3):  # warm-up: every signature cached, the reference judge done
                step()
            per_step = []
            for _ in range(steps):
                log.clear()
                step()
                reads = [(t, w) for read, t, w in log if read]
                lookups = [t for read, t, _ in log if not read]
                per_step.append(
                    (
                        len(reads),
                        len(lookups),
                        sum(t for t, _ in reads),
                        sum(w for _, w in reads),
                        sum(lookups),
                    )
                )
    med = [statistics.median(col) for col in zip(*per_step, strict=True)]
    return {
        "steps": steps,
        "reads_per_step": med[0],
        "lookups_per_step": med[1],
        "us_reads_in_step": med[2],
        "us_reads_warm": med[3],
        "reads_in_step_vs_warm": med[2] / med[3] if med[3] > 0 else None,
        "us_lookups_in_step": med[4],
    }


def bounds(processes: int, rounds: int) -> dict[str, Any]:
    """The step's ``full`` vs ``off`` ratio per bound: the median of ``processes`` fresh
    processes each, the bounds' processes alternated (so a slow spell of the machine touches
    them alike)."""
    per: dict[str, list[float]] = {b: [] for b in BOUNDS}
    module = "benchmarks.bench_contracts_profile"
    for i in range(processes):
        for bound in BOUNDS:
            got = step_in_fresh_process(rounds, 3, module, "--bound", bound)
            per[bound].append(got["ratio_full_vs_off"])
            print(f"  bound {bound} {i + 1}/{processes}: {per[bound][-1]:.4f}x", flush=True)
    ratio = {b: statistics.median(v) for b, v in per.items()}
    return {
        "processes": processes,
        "rounds": rounds,
        "ratio_full_vs_off": ratio,
        "per_process": per,
        "masks_pct": (ratio["as_is"] - ratio["mask_bodies_free"]) * 100,
        "values_pct": (ratio["as_is"] - ratio["value_bodies_free"]) * 100,
    }


def _value_reads_in_fresh_process(steps: int) -> dict[str, Any]:
    """:func:`value_reads` in a fresh process (this one's wrappers are built already)."""
    cmd = [sys.executable, "-m", "benchmarks.bench_contracts_profile", "--value-reads-only"]
    cmd += ["--steps", str(steps)]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[2:])} failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    p = ArgumentParser(
        prog="python -m benchmarks.bench_contracts_profile",
        description="Split the contracts' cost in the Paraformer training step by contract: each "
        "wrapper's own time (minus the function it wraps) in modes off/shapes/full, interleaved "
        "step by step, and the shapes checks of one step repeated warm. Writes "
        "docs/results/contracts_profile.json.",
    )
    p.add_argument("--steps", type=int, default=60, help="steps per mode (median taken)")
    p.add_argument("--repeats", type=int, default=100, help="warm repeats of each call")
    p.add_argument(
        "--bound-processes",
        type=int,
        default=2,
        help="fresh processes per bound of the value checks' cost (0: skip the bounds)",
    )
    p.add_argument(
        "--bound-rounds", type=int, default=100, help="training steps per mode in a bound process"
    )
    # one bound's process (what --bound-processes starts): the step's JSON, nothing else
    p.add_argument("--step-only", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--step-rounds", type=int, default=100, help=argparse.SUPPRESS)
    p.add_argument("--blocks", type=int, default=3, help=argparse.SUPPRESS)
    p.add_argument("--bound", choices=BOUNDS, default="as_is", help=argparse.SUPPRESS)
    p.add_argument("--value-reads-only", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--no-write", action="store_true", help="print only, do not write results")
    args = p.parse_args(argv)
    if args.steps < 1 or args.repeats < 1 or args.bound_rounds < 1 or args.bound_processes < 0:
        return fail(p, "--steps, --repeats and --bound-rounds must be >= 1, --bound-processes >= 0")
    torch.set_num_threads(1)
    if args.step_only:
        with stubbed_value_checks(args.bound):
            print(json.dumps(paraformer_step(args.step_rounds, args.blocks)))
        return 0
    if args.value_reads_only:
        print(json.dumps(value_reads(args.steps)))
        return 0
    got = rounded(profile(args.steps, args.repeats), 3)
    print(f"{'contract':34s} {'calls':>5s} {'shapes µs':>10s} {'full µs':>9s} {'warm':>7s}")
    for r in got["contracts"]:
        warm = r.get("us_shapes_warm")
        print(
            f"{r['name']:34s} {r['calls']:5d} {r['us_shapes']:10.1f} {r['us_full']:9.1f} "
            f"{'' if warm is None else f'{warm:7.1f}'}"
        )
    t = got["us_per_step"]
    print(
        f"per step: shapes {t['shapes']:.0f} µs, full {t['full']:.0f} µs over "
        f"{got['calls_per_step']} calls; shapes warm {got['us_shapes_warm_per_step']:.0f} µs "
        f"(in the step {got['shapes_in_step_vs_warm']:.2f}x slower)"
    )
    got["value_reads"] = rounded(_value_reads_in_fresh_process(args.steps), 3)
    v = got["value_reads"]
    print(
        f"value checks per step: {v['reads_per_step']:.0f} reads, {v['us_reads_in_step']:.0f} µs "
        f"in the step vs {v['us_reads_warm']:.0f} µs warm ({v['reads_in_step_vs_warm']:.1f}x); "
        f"{v['lookups_per_step']:.0f} lookups, {v['us_lookups_in_step']:.0f} µs"
    )
    if args.bound_processes:
        got["bounds"] = rounded(bounds(args.bound_processes, args.bound_rounds), 4)
        r = got["bounds"]["ratio_full_vs_off"]
        print(
            "step full vs off: as is {as_is:.4f}x, mask bodies free {mask_bodies_free:.4f}x, "
            "value bodies free {value_bodies_free:.4f}x".format(**r)
        )
    if not args.no_write:
        path = write_results(
            "contracts_profile", got, command="python -m benchmarks.bench_contracts_profile"
        )
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
