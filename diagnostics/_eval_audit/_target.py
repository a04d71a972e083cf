"""What ``python -m diagnostics.eval_audit`` evaluates: :class:`EvalTarget` and its checks.

A target bundles a model, examples (noisy input, clean reference, anything else the sampler needs),
a sampler that takes the protocol's settings as keyword arguments, the alternative weights
(``{"ema": state_dict, "raw": state_dict}``) and the metric functions.

Example:
    >>> target = EvalTarget(model=net, batches=[{"noisy": y, "clean": x}], sample=my_sampler,
    ...                     weights={"ema": ema_sd, "raw": raw_sd}, evaluated="ema")
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from torch import Tensor, nn

from contracts import TorchdxError

__all__ = [
    "DEFAULT_REFERENCE",
    "PROTOCOL_KEYS",
    "SAMPLER_KEYS",
    "EvalAuditError",
    "EvalTarget",
    "check_protocol",
]

# keys of a protocol; all but "weights" are passed to ``target.sample`` as keyword arguments
PROTOCOL_KEYS: tuple[str, ...] = ("steps", "corrector_steps", "snr", "guidance", "weights")
SAMPLER_KEYS: tuple[str, ...] = PROTOCOL_KEYS[:-1]
# the reference protocol of a diffusion enhancement model (SGMSE+'s evaluation defaults)
DEFAULT_REFERENCE: dict[str, Any] = {
    "steps": 30,
    "corrector_steps": 1,
    "snr": 0.5,
    "guidance": 1.0,
    "weights": "ema",
}


class EvalAuditError(TorchdxError, ValueError):
    """Bad input to an evaluation audit: a target without a sampler, an unknown metric, a step
    count <= 0, a sampler that does not accept a varied setting, an estimate of the wrong shape."""

    __module__ = "diagnostics"


SampleFn = Callable[..., Tensor]
MetricFn = Callable[[Tensor, Tensor], Any]


@dataclass
class EvalTarget:
    """What an evaluation audit runs on (returned by ``--target MODULE:FACTORY`` factories).

    Attributes:
        model: the model handed to ``sample`` (its state is restored after the audit).
        batches: a list of dicts, each with ``"noisy"`` ``[B, L]`` (the unprocessed input) and
            ``"clean"`` ``[B, L]`` (the reference), plus anything the sampler needs (e.g.
            ``"noise_ref"``).
        sample: ``sample(model, batch, generator, **protocol) -> estimate [B, L]``; ``protocol``
            holds the keys of :data:`SAMPLER_KEYS` that the target's ``reference`` has
            (``steps``, ``corrector_steps``, ``snr``, ``guidance``). All randomness of the
            sampler must come from ``generator`` (a ``torch.Generator``, seeded identically for
            every protocol, so variants see the same sampler noise).
        weights: alternative state dicts by name, at least ``"raw"`` and ``"ema"`` for a model
            trained with an EMA; ``{"ema": None}`` says the checkpoint has no EMA weights.
        evaluated: which entry of ``weights`` the model is supposed to hold as given (``"ema"``
            for a loader that swaps EMA in); ``None`` when unknown.
        metrics: ``{name: fn(estimate [B, L], clean [B, L]) -> [B] values}``, higher is better;
            ``None`` for the built-ins (``si_sdr``, ``pesq``, ``estoi``) at ``sample_rate``.
        reference: the reference protocol (:data:`DEFAULT_REFERENCE` by default); a key left out
            is a setting the sampler does not have.
        sample_rate: of the waveforms, for PESQ/ESTOI and their reference implementations.
        labels: optional label per example (e.g. the noise type), one list per batch.
        name: shown in reports.

    Example:
        >>> def sample(model, batch, generator, steps=30, **_):
        ...     return my_sampler(model, batch["noisy"], n=steps, generator=generator)
        >>> EvalTarget(model, [{"noisy": y, "clean": x}], sample, reference={"steps": 30})
    """

    model: nn.Module
    batches: list[dict[str, Any]]
    sample: SampleFn | None = None
    weights: dict[str, Mapping[str, Tensor] | None] = field(default_factory=dict)
    evaluated: str | None = None
    metrics: dict[str, MetricFn] | None = None
    reference: dict[str, Any] = field(default_factory=lambda: dict(DEFAULT_REFERENCE))
    sample_rate: int = 16000
    labels: list[list[str]] | None = None
    name: str = "target"

    def validate(self) -> None:
        """Raise :class:`EvalAuditError` naming what is wrong with the target."""
        if self.sample is None or not callable(self.sample):
            raise EvalAuditError(
                f"EvalTarget {self.name!r}: 'sample' is {type(self.sample).__name__}, not a "
                "sampler; give sample(model, batch, generator, **protocol) -> estimate"
            )
        if not self.batches:
            raise EvalAuditError(f"EvalTarget {self.name!r}: 'batches' is empty")
        for i, b in enumerate(self.batches):
            for key in ("noisy", "clean"):
                v = b.get(key) if isinstance(b, Mapping) else None
                if not isinstance(v, Tensor) or v.ndim != 2:
                    got = tuple(v.shape) if isinstance(v, Tensor) else type(v).__name__
                    raise EvalAuditError(
                        f"EvalTarget {self.name!r}: batches[{i}][{key!r}] is {got}; expected a "
                        "tensor [B, L]"
                    )
            if b["noisy"].shape != b["clean"].shape:
                raise EvalAuditError(
                    f"EvalTarget {self.name!r}: batches[{i}] 'noisy' {tuple(b['noisy'].shape)} "
                    f"and 'clean' {tuple(b['clean'].shape)} differ; expected the same [B, L]"
                )
        unknown = sorted(set(self.reference) - set(PROTOCOL_KEYS))
        if unknown:
            raise EvalAuditError(
                f"EvalTarget {self.name!r}: reference has unknown key(s) {unknown}; valid: "
                f"{', '.join(PROTOCOL_KEYS)}"
            )
        check_protocol(self.reference, "the reference protocol")

    def accepts(self, key: str) -> bool:
        """Whether ``sample`` takes keyword ``key`` (named, or through ``**kwargs``)."""
        assert self.sample is not None, "EvalTarget.accepts: no sampler"
        try:
            params = inspect.signature(self.sample).parameters.values()
        except (TypeError, ValueError):
            return True
        return any(
            p.kind is inspect.Parameter.VAR_KEYWORD
            or (p.name == key and p.kind is not inspect.Parameter.POSITIONAL_ONLY)
            for p in params
        )

    @property
    def n_examples(self) -> int:
        return sum(int(b["noisy"].shape[0]) for b in self.batches)


def check_protocol(protocol: Mapping[str, Any], where: str) -> None:
    """Validate the values of a protocol (steps >= 1, corrector steps >= 0, snr > 0, ...)."""
    steps = protocol.get("steps")
    if steps is not None and (isinstance(steps, bool) or int(steps) != steps or steps <= 0):
        raise EvalAuditError(f"{where}: steps {steps!r}; expected an integer >= 1")
    cs = protocol.get("corrector_steps")
    if cs is not None and (isinstance(cs, bool) or int(cs) != cs or cs < 0):
        raise EvalAuditError(f"{where}: corrector_steps {cs!r}; expected an integer >= 0")
    snr = protocol.get("snr")
    if snr is not None and not float(snr) > 0:
        raise EvalAuditError(f"{where}: snr {snr!r}; expected a number > 0")
    w = protocol.get("weights")
    if w is not None and not isinstance(w, str):
        raise EvalAuditError(f"{where}: weights {w!r}; expected a name such as 'ema' or 'raw'")
