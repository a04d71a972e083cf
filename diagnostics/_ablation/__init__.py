"""Conditioning ablations: does a model actually use its condition?

One private package, one room per responsibility:

* ``_types``: the target, the errors and the report records (what writers and the CLI use);
* ``_runner``: site parsing (elements of tuple/dict values), the batch axis of a site's value
  and the scoped hooks that replace it (every forward on a copy of the batch, RNGs seeded);
* ``_run``: the state of one run and the streamed batches;
* ``_site``: one site's pass (statistics, per-batch plan, variants incl. the floor, calls);
* ``_spread``: do the conditions differ over the run, what can a batch's shuffle swap;
* ``_outcome``: a site's per-example numbers -> verdict, effects, interaction, labels;
* ``_engine``: :func:`run_ablation` (sites, embeddings, sampler);
* ``_stats``: per-example effects, bootstrap CIs, site statistics;
* ``_verdict``: the rule (floor, channel, content -> verdict and reason);
* ``_guidance``: quality-level deltas and the paired guidance sweep;
* ``_writers``: one renderer per output format (JSON, Markdown, table, TensorBoard, PNG);
* ``_default_target``: the embedded SGMSE+ target of ``python -m diagnostics.cond_ablation``.

The public names are exported from :mod:`diagnostics`.
"""

from diagnostics._ablation._engine import run_ablation as run_ablation
from diagnostics._ablation._types import ABLATIONS as ABLATIONS
from diagnostics._ablation._types import AblationError as AblationError
from diagnostics._ablation._types import AblationReport as AblationReport
from diagnostics._ablation._types import AblationTarget as AblationTarget
from diagnostics._ablation._types import TargetLoadError as TargetLoadError
from diagnostics._ablation._writers import render_markdown as render_markdown
from diagnostics._ablation._writers import write_report as write_report

__all__ = [
    "ABLATIONS",
    "AblationError",
    "AblationReport",
    "AblationTarget",
    "TargetLoadError",
    "render_markdown",
    "run_ablation",
    "write_report",
]
