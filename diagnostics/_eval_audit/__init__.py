"""Evaluation-protocol audit (``python -m diagnostics.eval_audit``), private implementation.

- :class:`EvalTarget` (public as ``diagnostics.EvalTarget``): model, examples, sampler taking the
  protocol's settings, alternative weights, metric functions.
- :func:`run_audit`, :func:`make_variants`: reference protocol + one-factor variants on the same
  examples and sampler noise; paired deltas; evaluation checks; findings.
- :func:`write_report`, :func:`write_doc_block`: report.json / report.md / pareto.png /
  TensorBoard, and the generated block of a Markdown file.
- :func:`sgmse_eval_target`: the embedded default (a shipped SGMSE+ checkpoint).
"""

from ._runner import AuditReport as AuditReport
from ._runner import make_variants as make_variants
from ._runner import protocol_label as protocol_label
from ._runner import run_audit as run_audit
from ._sgmse import default_eval_target as default_eval_target
from ._sgmse import sgmse_eval_target as sgmse_eval_target
from ._target import DEFAULT_REFERENCE as DEFAULT_REFERENCE
from ._target import PROTOCOL_KEYS as PROTOCOL_KEYS
from ._target import EvalAuditError as EvalAuditError
from ._target import EvalTarget as EvalTarget
from ._writers import write_doc_block as write_doc_block
from ._writers import write_report as write_report

__all__ = [
    "DEFAULT_REFERENCE",
    "PROTOCOL_KEYS",
    "AuditReport",
    "EvalAuditError",
    "EvalTarget",
    "default_eval_target",
    "make_variants",
    "protocol_label",
    "run_audit",
    "sgmse_eval_target",
    "write_doc_block",
    "write_report",
]
