"""Measure two model configurations against each other in one run (claims -> figures).

Parameter counts by submodule and their delta, forward latency ratio (median of interleaved
repeats), peak-memory delta of one forward, and a zero-ablation of the added global context.
Targets the AudioSR-style model (``models.audiosr``); a model is given as a checkpoint
(``.pt``), a JSON config, or a preset with overrides (``default,use_global_encoder=true``).
"""

from __future__ import annotations

import json
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from contracts import TorchdxError

__all__ = ["CompareError", "ModelComparison", "build_model", "compare_models"]


class CompareError(TorchdxError, ValueError):
    """A model spec that cannot be built (bad preset, key, value or file)."""

    __module__ = "diagnostics"


PRESETS = ("tiny", "default")


def _parse_value(raw: str) -> Any:
    low = raw.lower()
    if low in ("true", "false"):
        return low == "true"
    try:
        return json.loads(raw)
    except json.JSONDecodeError:
        return raw


def build_model(spec: str) -> tuple[Any, str]:
    """``spec`` -> (AudioSR model, description). Checkpoint ``.pt``, ``.json`` config, or preset.

    Example:
        >>> model, desc = build_model("tiny,use_global_encoder=true")
    """
    from models.audiosr import AudioSR, AudioSRConfig, load_checkpoint

    path = Path(spec)
    if spec.endswith(".pt"):
        if not path.is_file():
            raise CompareError(f"compare_models: checkpoint {spec!r} does not exist")
        model, report = load_checkpoint(path)
        return model, f"checkpoint {spec} ({report.loaded} tensors)"
    if spec.endswith(".json"):
        if not path.is_file():
            raise CompareError(f"compare_models: config {spec!r} does not exist")
        try:
            return AudioSR(AudioSRConfig.from_dict(json.loads(path.read_text()))), f"config {spec}"
        except (TypeError, ValueError) as e:
            raise CompareError(f"compare_models: config {spec!r}: {e}") from None
    preset, *pairs = spec.split(",")
    if preset not in PRESETS:
        raise CompareError(
            f"compare_models: unknown model spec {spec!r}; give a .pt checkpoint, a .json config "
            f"or a preset {PRESETS} with key=value overrides"
        )
    overrides = {}
    for pair in pairs:
        key, eq, val = pair.partition("=")
        if not eq:
            raise CompareError(f"compare_models: override {pair!r} in {spec!r} is not key=value")
        overrides[key.strip()] = _parse_value(val.strip())
    make = AudioSRConfig.tiny if preset == "tiny" else AudioSRConfig
    try:
        cfg = make(**overrides)
    except TypeError as e:
        raise CompareError(f"compare_models: bad override in {spec!r}: {e}") from None
    except ValueError as e:
        raise CompareError(f"compare_models: {e}") from None
    return AudioSR(cfg), f"preset {spec}"


def param_groups(model: torch.nn.Module) -> dict[str, int]:
    """Parameter counts by submodule: ``mel``, ``global_encoder``, ``unet.<part>``, and the
    global path inside the U-Net (``unet[global path]``, the ``global_*`` layers)."""
    out: dict[str, int] = {}
    for name, p in model.named_parameters():
        parts = name.split(".")
        if parts[0] == "unet":
            key = (
                "unet[global path]"
                if any(s.startswith("global_") for s in parts)
                else ("unet." + parts[1])
            )
        else:
            key = parts[0]
        out[key] = out.get(key, 0) + p.numel()
    return out


def _inputs(model: Any, batch: int, seconds: float, seed: int) -> dict[str, torch.Tensor]:
    cfg = model.cfg
    g = torch.Generator().manual_seed(seed)
    n = int(seconds * cfg.sample_rate)
    wave = (torch.rand(batch, n, generator=g) - 0.5) * 1.8
    with torch.no_grad():
        hi, lo = model.mels(wave)
        x0 = model.to_latent(model._pad_frames(hi))
        cond = model.to_latent(model._pad_frames(lo))
    t = torch.full((batch,), cfg.n_timesteps // 2, dtype=torch.long)
    noise = torch.randn(x0.shape, generator=g)
    a, s = model.sqrt_ab[t][:, None, None, None], model.sqrt_1mab[t][:, None, None, None]
    return {"lo": lo, "x_t": a * x0 + s * noise, "t": t, "cond": cond}


def _forward(model: Any, inp: dict[str, torch.Tensor], zero_context: bool = False) -> torch.Tensor:
    g = model.global_context(inp["lo"])  # the encoder runs inside the timed forward
    if g is not None and zero_context:
        g = torch.zeros_like(g)
    return model.unet(inp["x_t"], inp["t"], inp["cond"], g)


def _peak_bytes(fn: Any) -> int:
    if torch.cuda.is_available():  # pragma: no cover - CPU machine
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        fn()
        return torch.cuda.max_memory_allocated() - base
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
                lines.append(f"zero-ablation of the global context ({name}): n/a (no encoder)")
            elif self.output_norms.get(name, 1.0) == 0.0:
                lines.append(
                    f"zero-ablation of the global context ({name}): uninformative -- the output is "
                    "identically zero (zero-initialized output layer of an untrained model); "
                    "compare trained checkpoints"
                )
            else:
                verdict = "CHANGES the output" if eff > 1e-6 else "does NOT change the output"
                lines.append(
                    f"zero-ablation of the global context ({name}): ||f(g)-f(0)||/||f(g)|| = "
                    f"{eff:.3g} -> {verdict}"
                )
        return "\n".join(lines)


def compare_models(
    spec_a: str,
    spec_b: str,
    *,
    batch: int = 1,
    seconds: float = 1.0,
    repeats: int = 7,
    seed: int = 0,
    threads: int = 1,
) -> ModelComparison:
    """Build both models and measure them in this process.

    Example:
        >>> rep = compare_models("tiny", "tiny,use_global_encoder=true", repeats=3)
        >>> print(rep.to_text())
    """
    if repeats < 1 or batch < 1 or seconds <= 0:
        raise CompareError(
            f"compare_models: repeats={repeats}, batch={batch} must be >= 1 and "
            f"seconds={seconds} > 0"
        )
    old_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        torch.manual_seed(seed)
        ma, da = build_model(spec_a)
        mb, db = build_model(spec_b)
        ma.eval(), mb.eval()
        ia, ib = _inputs(ma, batch, seconds, seed), _inputs(mb, batch, seconds, seed)
        times: dict[str, list[float]] = {"a": [], "b": []}
        with torch.no_grad():
            _forward(ma, ia), _forward(mb, ib)  # warm-up
            for _ in range(repeats):  # interleaved, so drift hits both
                for key, m, inp in (("a", ma, ia), ("b", mb, ib)):
                    t0 = time.perf_counter()
                    _forward(m, inp)
                    times[key].append(time.perf_counter() - t0)
            peak_a = _peak_bytes(lambda: _forward(ma, ia))
            peak_b = _peak_bytes(lambda: _forward(mb, ib))
            ablation: dict[str, float | None] = {}
            norms: dict[str, float] = {}
            for name, m, inp in (("A", ma, ia), ("B", mb, ib)):
                norms[name] = _forward(m, inp).norm().item()
                if m.global_encoder is None:
                    ablation[name] = None
                    continue
                full, zero = _forward(m, inp), _forward(m, inp, zero_context=True)
                ablation[name] = ((full - zero).norm() / full.norm().clamp(min=1e-12)).item()
        method = (
            "torch.cuda.max_memory_allocated"
            if torch.cuda.is_available()
            else "CPU: torch.profiler allocation/free events, peak of the running sum"
        )
        return ModelComparison(
            da, db, param_groups(ma), param_groups(mb),
            1e3 * statistics.median(times["a"]), 1e3 * statistics.median(times["b"]),
            peak_a, peak_b, method, ablation, norms,
        )  # fmt: skip
    finally:
        torch.set_num_threads(old_threads)
