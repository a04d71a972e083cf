"""What a planted fault builds: a *case* the tools run on, and the fault's registry entry.

A fault is a function ``build(faulty: bool) -> Case``: with ``faulty=False`` it returns the
healthy twin (same model, same data, no fault). Every tool gets a fresh build (same seed), so
no tool sees another tool's side effects.

Case kinds (the kind decides which tools apply):

* :class:`StepCase` -- a training step (forward + backward) run ``steps`` times; shapes, masks
  and non-finite faults. Tools: contracts, NanWatch (+ GradFlow when ``watch_grads``), and the
  anchors detect_anomaly, jaxtyping+beartype, isfinite hooks, a loss check.
* :class:`GradCase` -- one forward + backward whose gradients GradFlow reads.
* :class:`AblationCase` -- an :class:`diagnostics.AblationTarget` and the condition sites.
* :class:`ProbeCase` -- a torchdx check that raises a ``TorchdxError`` when it finds the fault
  (CFG dropout monitor, training-hygiene checks, decoding checks).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from torch import Tensor, nn

__all__ = [
    "CATEGORIES",
    "FAMILIES",
    "FAULTS",
    "AblationCase",
    "Annot",
    "Case",
    "Fault",
    "GradCase",
    "ProbeCase",
    "StepCase",
    "fault",
]

CATEGORIES = ("shapes", "nonfinite", "gradflow", "conditioning", "hygiene")
FAMILIES = ("torchdx", "torch", "transformers")


@dataclass
class Annot:
    """Shape annotations for ``owner.attribute`` (what the user writes once, from the docs).

    The same annotations feed ``contracts.attach`` and the jaxtyping+beartype anchor. With
    ``own=True`` the code already carries torchdx contracts (the reference models): nothing is
    attached for contracts, and the jaxtyping anchor gets ``params`` as written here.
    """

    owner: Any
    attribute: str
    params: dict[str, Any]
    returns: Any = None
    own: bool = False


@dataclass
class StepCase:
    """A training step run ``steps`` times.

    ``step(i)`` does forward + backward and returns the loss; ``after(i)`` (optional) is the
    optimizer step between steps. ``context`` is NanWatch's context (masks, diffusion times).
    """

    model: nn.Module
    step: Callable[[int], Tensor]
    annotations: list[Annot] = field(default_factory=list)
    steps: int = 1
    after: Callable[[int], None] | None = None
    context: dict[str, Any] | None = None
    watch_grads: bool = False  # GradFlow beside NanWatch (faults that unfold over steps)


@dataclass
class GradCase:
    """One forward + backward (``step()``) on ``model``; GradFlow records afterwards."""

    model: nn.Module
    step: Callable[[], Any]


@dataclass
class AblationCase:
    """A conditioned model for ``diagnostics.run_ablation``.

    ``sites``: where the user says the condition enters (all of them, faulty or not).
    ``embedding_site``: the condition encoder's output, for the embedding analysis.
    """

    target: Any  # diagnostics.AblationTarget
    sites: list[str]
    embedding_site: str | None = None


@dataclass
class ProbeCase:
    """``probe()`` runs the torchdx check a user would run and raises a ``TorchdxError`` when
    it finds something; it returns normally otherwise. ``tool`` names the check."""

    probe: Callable[[], Any]
    tool: str


Case = StepCase | GradCase | AblationCase | ProbeCase


@dataclass
class Fault:
    """A planted fault with its ground truth.

    Attributes:
        id: unique name (``shapes.paraformer_bft``).
        category: one of :data:`CATEGORIES`.
        family: one of :data:`FAMILIES` (whose model the fault is planted in).
        title: one line saying what is wrong.
        expected: where the right answer points: ``argument``/``axis`` (shapes), ``module``
            (dotted path, ``None`` = the step function's own code) and ``phase`` (non-finite),
            ``params`` (gradient flow: parameter prefix), ``site`` (conditioning), ``flag`` or
            ``names`` (probes), ``items`` (batch items), ``step`` (faults over steps).
        build: ``build(faulty) -> Case``.
        quick: part of the ``--quick`` subset.
        seed: ``torch.manual_seed`` before every build.
        note: why a tool is expected to miss it (shown in docs/FAULT_ZOO.md only when the
            measured run does miss it).
    """

    id: str
    category: str
    family: str
    title: str
    expected: dict[str, Any]
    build: Callable[[bool], Any]
    quick: bool = False
    seed: int = 0
    note: str = ""

    def __post_init__(self) -> None:
        assert self.category in CATEGORIES, f"Fault {self.id}: unknown category {self.category!r}"
        assert self.family in FAMILIES, f"Fault {self.id}: unknown family {self.family!r}"


FAULTS: list[Fault] = []


def fault(
    id: str,
    category: str,
    family: str,
    title: str,
    expected: dict[str, Any],
    *,
    quick: bool = False,
    seed: int = 0,
    note: str = "",
) -> Callable[[Callable[[bool], Any]], Callable[[bool], Any]]:
    """Register ``build(faulty) -> Case`` as a fault of the zoo.

    Example:
        >>> @fault("shapes.x", "shapes", "torch", "x transposed", {"argument": "x", "axis": 1})
        ... def _x(faulty): ...
    """

    def deco(build: Callable[[bool], Any]) -> Callable[[bool], Any]:
        assert all(f.id != id for f in FAULTS), f"fault id {id!r} registered twice"
        FAULTS.append(Fault(id, category, family, title, expected, build, quick, seed, note))
        return build

    return deco
