"""The fault zoo: planted faults with known ground truth, each with a healthy twin, run through
torchdx and through the tools people use today, side by side (issue 14).

``python -m benchmarks.fault_zoo [--quick] [--only PATTERN] [--json FILE]``.

How each tool is run (``_tools.py``) and scored:

* **torchdx**, by case kind -- shapes: the reference models' own contracts, or
  ``contracts.attach`` with the annotations a user writes from the docs (detected: a
  ``TorchdxError``; localized: it names the ground-truth argument, and axis where one is given);
  non-finite: ``diagnostics.NanWatch`` per step (+ ``GradFlow`` over steps) (localized: the
  report's module, phase, bad items / padding match); gradient flow: ``GradFlow.record()``
  (detected: any unused / zero / non-finite gradient; localized: all flagged parameters lie
  under the ground-truth prefix); conditioning: ``run_ablation`` over every site the user names
  (detected: a site not ``used``, a ``used`` site flagged ``additive`` or a collapsed embedding;
  localized: only condition-path sites flagged), ``CFGDropoutMonitor`` (``.report_ranks()``
  under DDP) or ``check_null_condition`` (localized: it names the null's argument); hygiene:
  ``diagnostics.check_padding_leak`` / ``check_no_retained_graph`` /
  ``greedy_decode(check="raise")`` (localized: the message names the culprit).
* **detect_anomaly**: ``torch.autograd.detect_anomaly(check_nan=True)`` around the steps;
  localized when the forward traceback it prints passes through the ground-truth module's
  source (or the step function's, for faults in loss code).
* **jaxtyping**: ``@jaxtyped(typechecker=beartype)`` with the same annotations; localized when
  it names the ground-truth parameter.
* **isfinite_hooks**: forward hooks raising on the first module output that is not all finite.
* **loss_check**: ``torch.isfinite(loss)`` after each step (localized only for faults in the loss
  code: it can only say "the loss").
* **plain**: no tool -- whether the faulty code fails by itself.

A tool that cannot see a kind of fault is reported as "—", never guessed. Every tool gets a
fresh build of the case (same seed); anchors run with torchdx contracts off, so each column
measures one tool alone. Healthy twins go through the same tools: any detection is a false alarm.

Rates: detection and localization over all faults (a tool that cannot see a kind of fault
misses it), "where applicable" over the faults the tool can see; false alarms over the healthy
twins the tool applies to; median seconds over the detections (the tool's own run, not building
the case; one-time imports and set-up are done before timing starts).
"""

from ._cases import CATEGORIES, FAMILIES, FAULTS, Fault, fault
from ._runner import load_faults, run_zoo, select, summarize
from ._tools import TOOLS

__all__ = [
    "CATEGORIES",
    "FAMILIES",
    "FAULTS",
    "TOOLS",
    "Fault",
    "fault",
    "load_faults",
    "run_zoo",
    "select",
    "summarize",
]
