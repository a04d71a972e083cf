"""The measurement engine: wall time, peak memory and per-module figures at each size.

First, per size in increasing order, ``warmup`` untimed calls and the memory calls (below); a
size that raises (out of memory, a length limit) ends the sweep and is reported. Then
``repeats`` rounds, each visiting every size (interleaved, so a burst of load on a shared
machine hits all sizes alike), of

1. one timed call with **no hooks at all** (the total wall time; on CUDA bracketed by
   ``torch.cuda.synchronize``), then
2. one call with process-global forward hooks that time each submodule (CPU: ``perf_counter``;
   CUDA: CUDA events, read after the call — no host sync inside the hooks).

Memory: ``memory_repeats`` profiled calls (``torch.profiler`` with ``profile_memory=True``) in
which the same global hooks open and close a ``record_function`` range per module call. The profiler
records every allocation and free of torch's allocator with a timestamp; the running sum of
those gives the total peak, and its maximum inside a module's range minus its value at the
range start gives that module's peak. On CUDA the total peak is the caching allocator's
``max_memory_allocated`` (after ``reset_peak_memory_stats``) from a further plain call.

The hooks are *global* module hooks (``register_module_forward_pre_hook``) filtered to the
target's submodules, not hooks on the submodules themselves: per-module hooks switch off
fast paths such as ``nn.TransformerEncoderLayer``'s fused kernel, so the hooked model would
run different code than the one timed. Modules that a fused path skips get no figures.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils._pytree import tree_map

from diagnostics._hooks import HookSet, tensors_in

from ._types import ScalingConfig, ScalingError, ScalingTarget

__all__ = ["SizeResult", "Sweep", "measure", "module_keys"]

_RANGE = "scaling::"
_MODE_LAYERS = (
    nn.modules.dropout._DropoutNd,
    nn.modules.batchnorm._BatchNorm,
    nn.modules.instancenorm._InstanceNorm,
)


def module_keys(model: nn.Module) -> dict[str, str]:
    """Report key of every submodule: indices of a container become ``*`` when every module
    the pattern covers has the same class (``blocks.*.attn``); a container of different
    modules keeps its indices (``parts.0``, ``parts.1``) so each is named on its own."""
    mods = [(n, m) for n, m in model.named_modules() if n]
    keys: dict[str, str] = {}
    for depth in sorted({n.count(".") for n, _ in mods}):
        level = [(n, m) for n, m in mods if n.count(".") == depth]
        cand: dict[str, tuple[str, str]] = {}
        types: dict[str, set[type]] = {}
        for n, m in level:
            parent, _, last = n.rpartition(".")
            pk = keys[parent] if parent else ""
            concrete = f"{pk}.{last}" if pk else last
            grouped = f"{pk}.*" if pk and last.isdigit() else ("*" if last.isdigit() else concrete)
            cand[n] = (grouped, concrete)
            types.setdefault(grouped, set()).add(type(m))
        for n, _ in level:
            grouped, concrete = cand[n]
            keys[n] = grouped if len(types[grouped]) == 1 else concrete
    return keys


@dataclass
class SizeResult:
    """Figures at one size. Memory in bytes; times in seconds (one entry per repeat)."""

    size: int
    seconds: list[float]
    peak_bytes: list[int]  # input bytes + peak allocated during the call, per memory repeat
    input_bytes: int
    module_seconds: dict[str, list[float]] = field(default_factory=dict)  # inclusive, per repeat
    module_peak_bytes: dict[str, list[int]] = field(default_factory=dict)
    module_retained_bytes: dict[str, list[int]] = field(default_factory=dict)
    module_calls: dict[str, int] = field(default_factory=dict)


@dataclass
class Sweep:
    """All sizes of one axis, plus how they were measured."""

    target: str
    axis: str
    results: list[SizeResult]
    device: str
    backward: bool
    memory_method: str
    model_bytes: int
    threads: int
    failed: dict[str, Any] | None = None  # {"size", "error"} when a size raised
    instances: dict[str, int] = field(default_factory=dict)  # pattern -> module count
    seconds_total: float = 0.0
    training: list[str] = field(default_factory=list)  # mode-dependent layers in train mode

    @property
    def sizes(self) -> list[int]:
        return [r.size for r in self.results]


def _to_device(batch: Any, device: torch.device) -> Any:
    return tree_map(lambda x: x.to(device) if isinstance(x, Tensor) else x, batch)


def _nbytes(obj: Any) -> int:
    seen: set[int] = set()
    total = 0
    for t in tensors_in(obj):
        st = t.untyped_storage()
        if st.data_ptr() not in seen:
            seen.add(st.data_ptr())
            total += st.nbytes()
    return total


def _scalar(out: Any) -> Tensor:
    if isinstance(out, Tensor) and out.dim() == 0 and out.requires_grad:
        return out
    leaves = [t for t in tensors_in(out) if t.is_floating_point() and t.requires_grad]
    if not leaves:
        raise ScalingError(
            "--backward: the target's output holds no floating tensor that requires grad; "
            "return a loss from ScalingTarget.forward or drop --backward"
        )
    total = leaves[0].float().sum()
    for t in leaves[1:]:
        total = total + t.float().sum()
    return total


class _ModuleHooks:
    """Global forward hooks restricted to one model's submodules (timing or profiler ranges)."""

    def __init__(self, model: nn.Module, mode: str, cuda: bool) -> None:
        keys = module_keys(model)
        self.names = {id(m): keys[n] for n, m in model.named_modules() if n}
        self.mode, self.cuda = mode, cuda
        self.stack: dict[int, list[Any]] = {}
        self.seconds: dict[str, float] = {}
        self.events: list[tuple[str, Any, Any]] = []
        self.calls: dict[str, int] = {}
        self.ranges: list[str] = []  # record_function index -> module name

    def _pre(self, module: nn.Module, args: Any) -> None:
        name = self.names.get(id(module))
        if name is None:
            return
        if self.mode == "time":
            if self.cuda:
                ev = torch.cuda.Event(enable_timing=True)
                ev.record()
                self.stack.setdefault(id(module), []).append(ev)
            else:
                self.stack.setdefault(id(module), []).append(time.perf_counter())
        else:
            rf = torch.autograd.profiler.record_function(f"{_RANGE}{len(self.ranges)}")
            self.ranges.append(name)
            rf.__enter__()
            self.stack.setdefault(id(module), []).append(rf)

    def _post(self, module: nn.Module, args: Any, output: Any) -> None:
        name = self.names.get(id(module))
        if name is None or not self.stack.get(id(module)):
            return
        start = self.stack[id(module)].pop()
        self.calls[name] = self.calls.get(name, 0) + 1
        if self.mode == "time":
            if self.cuda:
                ev = torch.cuda.Event(enable_timing=True)
                ev.record()
                self.events.append((name, start, ev))
            else:
                self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - start
        else:
            start.__exit__(None, None, None)

    def install(self, hooks: HookSet) -> None:
        from torch.nn.modules.module import (
            register_module_forward_hook,
            register_module_forward_pre_hook,
        )

        hooks.add(register_module_forward_pre_hook(self._pre), "global-pre")
        hooks.add(register_module_forward_hook(self._post, always_call=True), "global-fwd")

    def collect_seconds(self) -> dict[str, float]:
        if self.cuda:
            for name, a, b in self.events:  # the caller synchronized after the call
                self.seconds[name] = self.seconds.get(name, 0.0) + a.elapsed_time(b) / 1e3
            self.events = []
        return self.seconds


def _profile_memory(
    step: Callable[[], None], model: nn.Module, device: torch.device
) -> tuple[int, dict[str, int], dict[str, int], dict[str, int]]:
    """(total peak, module peak, module retained, module calls) from one profiled call."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    hooks_obj = _ModuleHooks(model, "memory", cuda=False)
    with HookSet() as hooks:
        hooks_obj.install(hooks)
        with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
            step()
    try:
        events = list(prof.profiler.kineto_results.events())
    except AttributeError as e:  # pragma: no cover - a torch without kineto results
        raise ScalingError(
            f"scaling: this torch ({torch.__version__}) gives no profiler memory events ({e}); "
            "CPU memory cannot be measured"
        ) from None
    want = DeviceType.CUDA if device.type == "cuda" else DeviceType.CPU
    mem = sorted(
        ((e.start_ns(), e.nbytes()) for e in events if e.name() == "[memory]"
         and e.device_type() == want),
        key=lambda x: x[0],
    )  # fmt: skip
    times = np.array([m[0] for m in mem], dtype=np.int64)
    cums = np.cumsum(np.array([m[1] for m in mem], dtype=np.int64))
    total = int(max(0, cums.max())) if len(cums) else 0
    peak: dict[str, int] = {}
    retained: dict[str, int] = {}
    for e in events:
        nm = e.name()
        if not nm.startswith(_RANGE):
            continue
        name = hooks_obj.ranges[int(nm[len(_RANGE) :])]
        s, t = e.start_ns(), e.start_ns() + e.duration_ns()
        i0 = int(np.searchsorted(times, s, "left"))
        i1 = int(np.searchsorted(times, t, "right"))
        base = int(cums[i0 - 1]) if i0 > 0 else 0
        p = int(cums[i0:i1].max()) - base if i1 > i0 else 0
        r = int(cums[i1 - 1]) - base if i1 > i0 else 0
        peak[name] = max(peak.get(name, 0), p, 0)
        retained[name] = retained.get(name, 0) + r
    return total, peak, retained, hooks_obj.calls


def measure(
    target: ScalingTarget,
    axis: str,
    sizes: list[int],
    cfg: ScalingConfig,
) -> Sweep:
    """Measure ``target`` along ``axis`` at ``sizes``; a failing size ends the sweep.

    Raises:
        ScalingError: unknown axis, a ``make_batch`` that raises, or fewer than 3 sizes done.
    """
    if axis not in target.axes:
        raise ScalingError(
            f"--axis {axis!r}: target {target.name!r} has no such axis; its axes are "
            f"{', '.join(target.axes)}"
        )
    try:
        device = torch.device(cfg.device)
    except RuntimeError as e:
        raise ScalingError(f"--device {cfg.device!r}: {e}") from None
    cuda = device.type == "cuda"
    if device.type not in ("cpu", "cuda"):
        raise ScalingError(
            f"--device {cfg.device!r}: only cpu and cuda[:N] are measured (time and peak "
            f"memory are read from their allocators), not {device.type!r}"
        )
    if cuda and not torch.cuda.is_available():
        raise ScalingError(f"--device {cfg.device!r}: CUDA is not available on this machine")
    if cuda and device.index is not None and device.index >= torch.cuda.device_count():
        raise ScalingError(
            f"--device {cfg.device!r}: this machine has {torch.cuda.device_count()} CUDA "
            f"device(s) (cuda:0..cuda:{torch.cuda.device_count() - 1})"
        )
    model = target.model
    params = list(model.parameters())
    tensors = params + list(model.buffers())
    home = tensors[0].device if tensors else device
    moved = any(t.device != device for t in tensors)
    if moved:  # moved back at the end: the user's model stays where it was
        model.to(device)
    model_bytes = _nbytes(params) + _nbytes(list(model.buffers()))
    saved_grads = {p: p.grad for p in params}  # restored at the end
    # the calls write buffers in training mode (batch-norm running statistics, counters) and
    # draw from the global RNG (dropout): both are put back as they were at the end
    saved_buffers = {n: b.detach().clone() for n, b in model.named_buffers()}
    rng_devices = (
        [device.index if device.index is not None else torch.cuda.current_device()] if cuda else []
    )
    rng = torch.random.fork_rng(devices=rng_devices)
    # mode-dependent layers left in training mode (what a forward-only measurement should not
    # include); a fresh nn.Module is in training mode, which matters only through such layers
    training = sorted(
        {type(m).__name__ for m in model.modules() if m.training and isinstance(m, _MODE_LAYERS)}
    )
    if cfg.backward:
        for p in params:
            p.grad = None
    make = target.axes[axis]
    instances: dict[str, int] = {}
    for key in module_keys(model).values():
        instances[key] = instances.get(key, 0) + 1

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize(device)

    from tqdm.auto import tqdm

    per_size = cfg.warmup + 2 * cfg.repeats + cfg.memory_repeats + (1 if cuda else 0)
    bar = tqdm(
        total=per_size * len(sizes),
        desc=f"scaling {target.name} over {axis}",
        disable=not cfg.progress,
        leave=False,
    )
    results: list[SizeResult] = []
    steps: list[Callable[[], None]] = []
    failed: dict[str, Any] | None = None
    t_start = time.perf_counter()

    def make_step(batch: Any) -> Callable[[], None]:
        def step() -> None:
            if cfg.backward:
                _scalar(target.call(batch)).backward()
                for p in params:  # every call starts without grads (same allocations)
                    p.grad = None
            else:
                with torch.no_grad():
                    target.call(batch)

        return step

    def fail(size: int, e: Exception) -> dict[str, Any]:
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        return {"size": size, "error": f"{type(e).__name__}: {msg}"}

    rng.__enter__()
    try:
        # phase 1, per size in order: batch, warm-up, memory (a size that raises ends the sweep)
        for size in sizes:
            gen = torch.Generator().manual_seed(cfg.seed)
            try:
                batch = _to_device(make(size, gen), device)
            except Exception as e:
                raise ScalingError(
                    f"axis {axis!r}: make_batch({size}, generator) raised "
                    f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
                ) from None
            step = make_step(batch)
            try:
                res = _memory_size(step, model, size, batch, cfg, device, sync, bar)
            except ScalingError:
                raise
            except Exception as e:  # OOM or a shape limit: keep what was measured
                failed = fail(size, e)
                break
            results.append(res)
            steps.append(step)
        # phase 2: timing rounds interleaved over the sizes, so load changes on a shared
        # machine hit every size alike instead of biasing the slope
        for _ in range(cfg.repeats):
            for i, (res, step) in enumerate(zip(results, steps)):
                try:
                    _time_once(step, model, res, cuda, sync)
                except Exception as e:
                    failed = fail(res.size, e)
                    del results[i:], steps[i:]
                    break
                bar.update(2)
    finally:
        bar.close()
        if moved:
            model.to(home)
        for p, g in saved_grads.items():
            p.grad = g
        with torch.no_grad():
            for n, b in model.named_buffers():
                if n in saved_buffers:
                    b.copy_(saved_buffers[n])
        rng.__exit__(None, None, None)
    if len(results) < 3:
        why = f"; size {failed['size']} raised {failed['error']}" if failed else ""
        raise ScalingError(
            f"axis {axis!r}: only {len(results)} size(s) measured{why}; need at least 3"
        )
    return Sweep(
        target=target.name,
        axis=axis,
        results=results,
        device=str(device),
        backward=cfg.backward,
        memory_method=(
            "CUDA: torch.cuda.max_memory_allocated (caching allocator peak) for the total; "
            "torch.profiler memory events for modules"
            if cuda
            else "CPU: torch.profiler(profile_memory=True) allocation/free events, peak of the "
            "running sum (total and per module)"
        ),
        model_bytes=model_bytes,
        threads=torch.get_num_threads(),
        failed=failed,
        instances=instances,
        seconds_total=time.perf_counter() - t_start,
        training=training,
    )


def _time_once(
    step: Callable[[], None],
    model: nn.Module,
    res: SizeResult,
    cuda: bool,
    sync: Callable[[], None],
) -> None:
    """One timed call (no hooks), then one call with the module-timing hooks."""
    sync()
    t0 = time.perf_counter()
    step()  # the timed call: no hooks
    sync()
    res.seconds.append(time.perf_counter() - t0)
    rec = _ModuleHooks(model, "time", cuda)
    with HookSet() as hooks:
        rec.install(hooks)
        step()
        sync()
    for key, v in rec.collect_seconds().items():
        res.module_seconds.setdefault(key, []).append(v)
    res.module_calls = dict(rec.calls)


def _memory_size(
    step: Callable[[], None],
    model: nn.Module,
    size: int,
    batch: Any,
    cfg: ScalingConfig,
    device: torch.device,
    sync: Callable[[], None],
    bar: Any,
) -> SizeResult:
    """Warm-up calls, then the profiled memory calls (and the CUDA allocator peak)."""
    cuda = device.type == "cuda"
    for _ in range(cfg.warmup):
        step()
        bar.update(1)
    sync()
    input_bytes = _nbytes(batch)
    peaks: list[int] = []
    mod_peak: dict[str, list[int]] = {}
    mod_ret: dict[str, list[int]] = {}
    for _ in range(cfg.memory_repeats):
        total, peak, retained, _ = _profile_memory(step, model, device)
        for key, v in peak.items():
            mod_peak.setdefault(key, []).append(int(v))
        for key, v in retained.items():
            mod_ret.setdefault(key, []).append(int(v))
        if not cuda:
            peaks.append(input_bytes + total)
        bar.update(1)
    if cuda:
        sync()
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        step()
        sync()
        peaks.append(input_bytes + torch.cuda.max_memory_allocated(device) - base)
        bar.update(1)
    return SizeResult(
        size=size,
        seconds=[],
        peak_bytes=peaks,
        input_bytes=input_bytes,
        module_peak_bytes=mod_peak,
        module_retained_bytes=mod_ret,
    )
