"""Measure two variants of a model against each other in one run (claims -> figures).

Any two variants from one *factory*: ``factory(spec) -> Variant`` builds a model from a spec
string and says how to make its inputs, run its forward, and (optionally) run it with the added
path ablated. Figures: parameter counts by submodule and their delta, forward latency ratio
(median of interleaved repeats), peak-memory delta of one forward, and the zero-ablation of the
added path (``||f - f_ablated|| / ||f||``). The default factory is the AudioSR global-encoder
toggle (:mod:`diagnostics._compare_audiosr`); ``--factory MODULE:FUNCTION`` names another.

Example:
    >>> rep = compare_models("tiny", "tiny,use_global_encoder=true", repeats=3)
    >>> print(rep.to_text())  # doctest: +SKIP
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from contracts import TorchdxError

__all__ = [
    "CompareError",
    "ModelComparison",
    "Variant",
    "build_model",
    "compare_models",
    "module_groups",
    "param_groups",
]


class CompareError(TorchdxError, ValueError):
    """A model spec that cannot be built (bad preset, key, value or file)."""

    __module__ = "diagnostics"


@dataclass
class Variant:
    """One side of a comparison, as a factory builds it from a spec string.

    Attributes:
        model: the model (put in eval mode for the measurement).
        description: what was built, for the report.
        inputs: ``inputs(batch, seconds, seed) -> inputs`` of one forward.
        forward: ``forward(model, inputs) -> Tensor``: what is timed and compared.
        ablate: ``ablate(model, inputs) -> Tensor``: the forward with the added path zeroed, or
            ``None`` when this variant has no such path.
        ablated: the added path in words ("the global context").
        groups: ``groups(model) -> {name: parameter count}`` (default: top-level submodules).
    """

    model: torch.nn.Module
    description: str
    inputs: Callable[[int, float, int], Any]
    forward: Callable[[torch.nn.Module, Any], torch.Tensor]
    ablate: Callable[[torch.nn.Module, Any], torch.Tensor] | None = None
    ablated: str = "the added path"
    groups: Callable[[torch.nn.Module], dict[str, int]] | None = None


def module_groups(model: torch.nn.Module) -> dict[str, int]:
    """Parameter counts by top-level submodule."""
    out: dict[str, int] = {}
    for name, p in model.named_parameters():
        key = name.split(".")[0]
        out[key] = out.get(key, 0) + p.numel()
    return out


def param_groups(model: torch.nn.Module) -> dict[str, int]:
    """AudioSR parameter groups (see :func:`diagnostics._compare_audiosr.param_groups`)."""
    from diagnostics._compare_audiosr import param_groups as groups

    return groups(model)


def build_model(spec: str) -> tuple[Any, str]:
    """An AudioSR model from a spec (see :func:`diagnostics._compare_audiosr.build_model`)."""
    from diagnostics._compare_audiosr import build_model as build

    return build(spec)


def _device(model: torch.nn.Module) -> torch.device:
    """Where the model's parameters (or buffers) live; CPU for a model without tensors."""
    for t in (*model.parameters(), *model.buffers()):
        return t.device
    return torch.device("cpu")


def _peak_bytes(fn: Any, device: torch.device | None = None) -> int:
    """Peak memory of ``fn()`` on ``device``: the CUDA allocator's peak for a model on a GPU,
    the profiler's CPU allocation events otherwise (a GPU in the machine does not matter)."""
    if device is not None and device.type == "cuda":  # pragma: no cover - CPU machine
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        fn()
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) - base
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = sorted(
        (e for e in prof.events() if e.self_cpu_memory_usage),
        key=lambda e: e.time_range.start,
    )
    cur = peak = 0
    for e in events:
        cur += e.self_cpu_memory_usage
        peak = max(peak, cur)
    return peak


@dataclass
class ModelComparison:
    """The figures of one comparison (A = baseline, B = candidate)."""

    desc_a: str
    desc_b: str
    params_a: dict[str, int]
    params_b: dict[str, int]
    latency_a_ms: float
    latency_b_ms: float
    peak_a_bytes: int
    peak_b_bytes: int
    memory_method: str
    ablation: dict[str, float | None] = field(default_factory=dict)
    output_norms: dict[str, float] = field(default_factory=dict)
    ablated: str = "the global context"

    @property
    def total_a(self) -> int:
        return sum(self.params_a.values())

    @property
    def total_b(self) -> int:
        return sum(self.params_b.values())

    def to_text(self) -> str:
        """The printed report."""
        keys = sorted(set(self.params_a) | set(self.params_b))
        w = max(len(k) for k in [*keys, "total"])
        lines = [f"A: {self.desc_a}", f"B: {self.desc_b}", "",
                 f"{'parameters':<{w}} {'A':>12} {'B':>12} {'delta':>12}"]  # fmt: skip
        for k in keys:
            a, b = self.params_a.get(k, 0), self.params_b.get(k, 0)
            lines.append(f"{k:<{w}} {a:>12,} {b:>12,} {b - a:>+12,}")
        da = self.total_b - self.total_a
        lines.append(f"{'total':<{w}} {self.total_a:>12,} {self.total_b:>12,} {da:>+12,} "
                     f"({da / max(self.total_a, 1):+.2%})")  # fmt: skip
        lines += [
            "",
            f"forward latency (median): A {self.latency_a_ms:.2f} ms, B {self.latency_b_ms:.2f} ms,"
            f" ratio B/A {self.latency_b_ms / self.latency_a_ms:.3f}"
            f" ({self.latency_b_ms / self.latency_a_ms - 1:+.1%})",
            f"peak memory of one forward ({self.memory_method}): A {self.peak_a_bytes / 2**20:.2f}"
            f" MiB, B {self.peak_b_bytes / 2**20:.2f} MiB, delta "
            f"{(self.peak_b_bytes - self.peak_a_bytes) / 2**20:+.2f} MiB",
        ]
        for name, eff in self.ablation.items():
            if eff is None:
                lines.append(f"zero-ablation of {self.ablated} ({name}): n/a (no such path)")
            elif self.output_norms.get(name, 1.0) == 0.0:
                lines.append(
                    f"zero-ablation of {self.ablated} ({name}): uninformative -- the output is "
                    "identically zero (zero-initialized output layer of an untrained model); "
                    "compare trained checkpoints"
                )
            else:
                verdict = "CHANGES the output" if eff > 1e-6 else "does NOT change the output"
                lines.append(
                    f"zero-ablation of {self.ablated} ({name}): ||f(g)-f(0)||/||f(g)|| = "
                    f"{eff:.3g} -> {verdict}"
                )
        return "\n".join(lines)


def compare_models(
    spec_a: str,
    spec_b: str,
    *,
    factory: Callable[[str], Variant] | None = None,
    batch: int = 1,
    seconds: float = 1.0,
    repeats: int = 7,
    seed: int = 0,
    threads: int = 1,
) -> ModelComparison:
    """Build both variants with ``factory`` (default: the AudioSR one) and measure them in this
    process, interleaved.

    Example:
        >>> rep = compare_models("tiny", "tiny,use_global_encoder=true", repeats=3)
        >>> print(rep.to_text())  # doctest: +SKIP
    """
    for name, value, ok, need in (
        ("repeats", repeats, repeats >= 1, "an integer >= 1"),
        ("batch", batch, batch >= 1, "an integer >= 1"),
        ("threads", threads, threads >= 1, "an integer >= 1"),
        ("seconds", seconds, math.isfinite(seconds) and seconds > 0, "a finite number > 0"),
    ):
        if not ok:
            raise CompareError(f"compare_models: {name}={value!r}: expected {need}")
    if factory is None:
        from diagnostics._compare_audiosr import audiosr_variant as factory
    old_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    # the models are built and run under torch.manual_seed(seed) in a fork of the RNG: the
    # caller's RNG state is the same after the comparison as before it
    try:
        with torch.random.fork_rng(devices=_cuda_devices()):
            return _compare(spec_a, spec_b, factory, batch, seconds, repeats, seed)
    finally:
        torch.set_num_threads(old_threads)


def _cuda_devices() -> list[int]:
    if torch.cuda.is_available() and torch.cuda.is_initialized():  # pragma: no cover - CPU
        return list(range(torch.cuda.device_count()))
    return []


def _user(what: str, fn: Callable[..., Any], *args: Any) -> Any:
    """Call the factory's code; an exception becomes a one-line CompareError naming it."""
    try:
        return fn(*args)
    except CompareError:
        raise
    except Exception as e:
        msg = str(e).splitlines()[0] if str(e) else ""
        raise CompareError(f"compare_models: {what} raised {type(e).__name__}: {msg}") from e


def _compare(
    spec_a: str,
    spec_b: str,
    factory: Callable[[str], Variant],
    batch: int,
    seconds: float,
    repeats: int,
    seed: int,
) -> ModelComparison:
    torch.manual_seed(seed)
    va = _user(f"the factory on spec {spec_a!r}", factory, spec_a)
    vb = _user(f"the factory on spec {spec_b!r}", factory, spec_b)
    for v in (va, vb):
        if not isinstance(v, Variant):
            raise CompareError(
                f"compare_models: the factory returned {type(v).__name__}, not a Variant"
            )
        v.model.eval()
    ia = _user("inputs() of A", va.inputs, batch, seconds, seed)
    ib = _user("inputs() of B", vb.inputs, batch, seconds, seed)

    def run(name: str, v: Variant, inp: Any, fn: Any = None) -> torch.Tensor:
        out = _user(f"{'ablate' if fn else 'forward'}() of {name}", fn or v.forward, v.model, inp)
        if not isinstance(out, torch.Tensor):
            raise CompareError(
                f"compare_models: {'ablate' if fn else 'forward'}() of {name} returned "
                f"{type(out).__name__}, not a Tensor; return the output to compare"
            )
        return out

    times: dict[str, list[float]] = {"a": [], "b": []}
    dev_a, dev_b = _device(va.model), _device(vb.model)

    def sync(d: torch.device) -> None:  # a GPU forward returns before its kernels finish
        if d.type == "cuda":  # pragma: no cover - CPU machine
            torch.cuda.synchronize(d)

    with torch.no_grad():
        run("A", va, ia), run("B", vb, ib)  # warm-up
        for _ in range(repeats):  # interleaved, so drift hits both
            for key, v, inp, d in (("a", va, ia, dev_a), ("b", vb, ib, dev_b)):
                sync(d)
                t0 = time.perf_counter()
                v.forward(v.model, inp)
                sync(d)
                times[key].append(time.perf_counter() - t0)
        peak_a = _peak_bytes(lambda: va.forward(va.model, ia), dev_a)
        peak_b = _peak_bytes(lambda: vb.forward(vb.model, ib), dev_b)
        ablation: dict[str, float | None] = {}
        norms: dict[str, float] = {}
        for name, v, inp in (("A", va, ia), ("B", vb, ib)):
            full = run(name, v, inp)
            norms[name] = full.norm().item()
            if v.ablate is None:
                ablation[name] = None
                continue
            zero = run(name, v, inp, v.ablate)
            ablation[name] = ((full - zero).norm() / full.norm().clamp(min=1e-12)).item()
    methods = {
        "cuda": "CUDA: torch.cuda.max_memory_allocated",
        "cpu": "CPU: torch.profiler allocation/free events, peak of the running sum",
    }
    kinds = {d.type if d.type == "cuda" else "cpu" for d in (dev_a, dev_b)}
    method = " / ".join(methods[k] for k in sorted(kinds))
    if len(kinds) > 1:
        method += f" (A on {dev_a}, B on {dev_b}: not comparable)"
    groups_a, groups_b = (v.groups or module_groups for v in (va, vb))
    return ModelComparison(
        va.description, vb.description, groups_a(va.model), groups_b(vb.model),
        1e3 * statistics.median(times["a"]), 1e3 * statistics.median(times["b"]),
        peak_a, peak_b, method, ablation, norms, vb.ablated,
    )  # fmt: skip
