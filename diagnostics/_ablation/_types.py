"""Data types of a conditioning ablation: the target, the errors, and the report records.

Writers and the CLI depend on these types only, never on the engine.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from torch import Tensor, nn

from contracts import TorchdxError

__all__ = [
    "ABLATIONS",
    "AblationError",
    "AblationReport",
    "AblationTarget",
    "Curve",
    "Effect",
    "Interaction",
    "LabelResult",
    "MetricDelta",
    "SiteResult",
    "TargetLoadError",
    "Test",
]

ABLATIONS: tuple[str, ...] = ("zero", "mean", "random", "shuffle", "null")


class AblationError(TorchdxError, ValueError):
    """Bad input to an ablation run (unknown site, non-tensor output, empty batches, ...).

    Attributes:
        site: the site being run when the error happened (or ``None``).
        report: an :class:`AblationReport` with the sites completed before the error (or
            ``None`` when nothing completed).
    """

    __module__ = "diagnostics"

    def __init__(self, message: str, *, site: str | None = None) -> None:
        super().__init__(message)
        self.site = site
        self.report: AblationReport | None = None


class TargetLoadError(AblationError):
    """A ``--target`` spec that cannot produce an AblationTarget (the message is the stderr
    line): a bad ``MODULE:FACTORY``, an import that fails, a factory that raises or returns the
    wrong type."""

    __module__ = "diagnostics"


@dataclass
class AblationTarget:
    """What an ablation runs on; ``--target`` factories return one.

    Attributes:
        model: the model (its ``forward`` is what the ablation observes).
        batches: the inputs: a list, or any re-iterable of batches (a
            ``torch.utils.data.DataLoader``); each batch a dict (called as ``model(**batch)``),
            a tuple/list (``model(*batch)``), or anything ``forward`` understands. For a
            diffusion target, the clean-data batches that ``at_time`` turns into model inputs.
        forward: optional ``forward(model, batch) -> Tensor [B, ...]``; the compared output.
        sites: default sites (module paths or ``arg:NAME``) when the caller names none.
        labels: optional labels per batch item: one sequence of ``B`` labels per batch (or one
            flat list over all examples); used to colour and score the embeddings.
        null: the model's own unconditional input for the ``null`` ablation: a tensor
            (broadcast to the site's value), a callable ``null(value) -> replacement`` (for an
            ``arg:`` site it may return ``None`` to pass ``None``), or a dict ``{site: either}``.
        times: optional diffusion times (>= 8 recommended); with ``at_time`` every effect
            becomes a curve over these times.
        at_time: ``at_time(batch, t, generator) -> batch`` draws the model input at time
            ``t`` (e.g. ``x_t`` from the SDE marginal) using only ``generator`` for noise.
        sample: optional ``sample(model, batch, guidance_scale, seed) -> {metric: Tensor[B]}``
            that runs the sampler and scores it against the clean reference (a metric value
            may be NaN where the metric failed; it is counted, not dropped silently). With it,
            the ``null`` and ``shuffle`` ablations (and any other) get quality-level deltas
            (the sampler at scale 1 with the ablated condition vs the intact one, same
            examples and noise), and the guidance-scale sweep runs.
        sample_batches: the batches ``sample`` runs on (default: ``batches``).
        unprocessed: optional ``unprocessed(batch) -> {metric: Tensor[B]}``: the metrics of
            the unprocessed input (the sweep's baseline row).
        guidance_scales: scales of the sweep (deltas are paired against the first one).
        guidance_batches: how many batches the sweep and the quality deltas use (the sampler
            is slow).
        embedding_site: the module path whose output is the condition embedding (for the
            embedding analysis); default: the first module site.
        embedding_batches: batches for the embedding analysis only (it stops each forward at
            the embedding, so it can afford more examples than the ablation); default:
            ``batches``. Labels for them: ``embedding_labels`` (same format as ``labels``).
        batch_variants: run the intact and ablated variants as one tiled forward (checked for
            batch independence once per batch signature: size, shapes, dtypes). Set False for models whose throughput
            drops with larger batches (a conv net on one CPU thread; see the benchmark).
        name: a name for the report.
    """

    model: nn.Module
    batches: Iterable[Any]
    forward: Callable[[nn.Module, Any], Tensor] | None = None
    sites: list[str] | None = None
    labels: list[Any] | None = None
    null: Any = None
    times: Sequence[float] | None = None
    at_time: Callable[[Any, float, Any], Any] | None = None
    sample: Callable[[nn.Module, Any, float, int], Mapping[str, Any]] | None = None
    sample_batches: Iterable[Any] | None = None
    unprocessed: Callable[[Any], Mapping[str, Any]] | None = None
    guidance_scales: Sequence[float] = (0.0, 1.0, 2.0)
    guidance_batches: int = 1
    embedding_site: str | None = None
    embedding_batches: Iterable[Any] | None = None
    embedding_labels: list[Any] | None = None
    batch_variants: bool = True
    name: str = ""


@dataclass
class Curve:
    """An effect over the diffusion times (one point per time)."""

    t: list[float]
    effect: list[float]
    ci95: list[list[float]]
    cosine: list[float]
    abs_change: list[float]


@dataclass
class Effect:
    """One ablation at one site: the mean relative change over examples with its CI.

    Attributes:
        effect: mean over examples of ``||f(c) - f(a)|| / ||f(c)||``.
        ci95: paired bootstrap 95% CI of ``effect``.
        cosine, cosine_ci95: mean cosine between ``f(c)`` and ``f(a)``, with its CI.
        abs_change: mean ``||f(c) - f(a)||``.
        n: examples.
        curve: the same over the diffusion times (diffusion targets only).
        metrics: quality-level deltas (where the target samples): metric -> MetricDelta.
    """

    effect: float
    ci95: list[float]
    cosine: float
    cosine_ci95: list[float]
    abs_change: float
    n: int
    curve: Curve | None = None
    metrics: dict[str, MetricDelta] = field(default_factory=dict)


@dataclass
class MetricDelta:
    """Paired change of a task metric (ablated minus intact) with its bootstrap CI.

    ``n`` counts the examples where both runs produced a value; ``failures`` the others."""

    delta: float | None
    ci95: list[float | None]
    n: int
    failures: int = 0


@dataclass
class Test:
    """The channel or content test of a site: the deciding ablation's effect and its excess
    over the floor (paired per example), each with a 95% CI."""

    effect: float
    ci95: list[float]
    ablation: str
    excess: float
    excess_ci95: list[float]
    above_floor: bool


@dataclass
class Interaction:
    """Does the change a shuffled condition causes depend on the input?

    For each example ``j`` the swap ``c_j -> c_pi(j)`` (the shuffle) changes the output by
    ``d_j = f(x_j, c_pi(j)) - f(x_j, c_j)``; the same swap applied to another input ``x_m``
    (one more tiled copy: the shuffle applied twice) changes it by ``d'_j``. A condition that
    only adds a bias ``b(c)`` to the output gives ``d_j = d'_j``. That needs ``x_j != x_m`` as
    the model sees them: examples whose partner's output with the same condition is the same
    as their own are left out (identical inputs would give ``d_j = d'_j`` for any model), and
    a site where too few remain has no interaction (``None``, a note says why).

    Attributes:
        effect, ci95: mean over examples of ``||d_j - d'_j|| / ||f(x_j, c_j)||`` (same units
            as an ablation's effect) with its CI.
        relative, relative_ci95: mean of ``||d_j - d'_j|| / ||d_j||``: the share of the change
            that depends on the input.
        excess, excess_ci95: paired excess of ``effect`` over the floor scaled by sqrt(2)
            (the interaction combines four outputs, the floor two).
        above_floor: ``excess_ci95[0]`` above the verdict's floor margin.
        additive: the content is used (verdict used/weak, shuffle above the floor) and the
            interaction is not above the floor: the condition acts only as an additive bias.
        n: examples.
    """

    effect: float
    ci95: list[float]
    relative: float
    relative_ci95: list[float]
    excess: float
    excess_ci95: list[float]
    above_floor: bool
    additive: bool
    n: int


@dataclass
class LabelResult:
    """The verdict on the examples of one label."""

    n: int
    verdict: str
    reason: str
    floor: list[float]  # [effect, ci low, ci high]
    channel: Test | None
    content: Test | None


@dataclass
class SiteResult:
    """The result at one site.

    Attributes:
        site, kind: the site and ``"module"`` or ``"arg"``.
        verdict: ``used | weak | constant | ignored | inconclusive`` (see
            ``docs/COND_ABLATION.md``); ``reason``: one sentence saying why.
        floor: the identity replacement's :class:`Effect` (round-off and the model's own
            randomness).
        channel, content: the two :class:`Test` s (``None`` when no ablation of that kind ran).
        ablations: ablation name -> :class:`Effect`.
        by_label: label -> :class:`LabelResult` (where the target has labels).
        batched: the variants ran as one tiled forward.
        notes: what the engine skipped or changed, in words.
        interaction: the :class:`Interaction` of the shuffle (``None`` without shuffle, or
            where it cannot be measured: the notes say why).
        additive: the condition acts only as an additive bias (``interaction.additive``).
    """

    site: str
    kind: str
    verdict: str
    reason: str
    floor: Effect
    channel: Test | None
    content: Test | None
    ablations: dict[str, Effect]
    by_label: dict[str, LabelResult] = field(default_factory=dict)
    batched: bool = False
    notes: list[str] = field(default_factory=list)
    interaction: Interaction | None = None
    additive: bool = False

    def to_dict(self) -> dict[str, Any]:
        """This site as it appears in ``report.json``."""
        from diagnostics._ablation._writers import site_json

        return site_json(self)

    def __getitem__(self, key: str) -> Any:
        """``site["verdict"]``, ``site["ablations"]["shuffle"]["ci95"]``: the JSON view, for
        scripts written against the report's dictionaries."""
        return self.to_dict()[key]

    def get(self, key: str, default: Any = None) -> Any:
        """``dict.get`` on the JSON view."""
        return self.to_dict().get(key, default)


@dataclass
class AblationReport:
    """Result of :func:`~diagnostics.run_ablation`.

    Attributes:
        target: the target's name.
        seed: the run's seed.
        min_effect: the content effect at or above which a site is ``used``.
        times: the diffusion times (or ``None``).
        ablations: the ablations asked for.
        n_boot: bootstrap resamples.
        n_examples: examples per site.
        sites: one :class:`SiteResult` per completed site.
        errors: ``{"site", "message"}`` of a site that failed.
        guidance_sweep: the sampler sweep (or ``None``).
        embedding: the :class:`~diagnostics.EmbeddingReport` (or ``None``) and
            ``embedding_site``, the site it was taken at.
        timing: wall-clock seconds per phase (kept out of the JSON, so that the same seed
            gives the same file).
    """

    target: str
    seed: int
    min_effect: float
    times: list[float] | None
    ablations: list[str]
    n_boot: int
    n_examples: int | None = None
    sites: list[SiteResult] = field(default_factory=list)
    errors: list[dict[str, Any]] = field(default_factory=list)
    guidance_sweep: dict[str, Any] | None = None
    embedding: Any = None
    embedding_site: str | None = None
    figures: list[str] = field(default_factory=list)
    timing: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """The JSON layout of ``report.json`` (built by the JSON writer)."""
        from diagnostics._ablation._writers import report_json

        return report_json(self)

    @property
    def data(self) -> dict[str, Any]:
        """Same as :meth:`to_dict`."""
        return self.to_dict()

    def verdict_table(self) -> str:
        """Plain-text table: site, verdict, effect [CI] per ablation."""
        from diagnostics._ablation._writers import render_table

        return render_table(self)
