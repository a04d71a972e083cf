"""``diagnostics.scaling``'s engine: cost versus input size, measured (private package).

``_types`` (target, settings, parsers), ``_measure`` (time, memory, per module), ``_fit``
(exponents, bootstrap CIs, budget), ``_analyze`` (report and findings), ``_write`` (report.json/md, PNG, TensorBoard),
``_default`` (the seeds' models), ``_docs`` (generated blocks in docs/). Public names are
re-exported by ``diagnostics``.
"""

from ._run import run_scaling as run_scaling
from ._types import (
    ScalingConfig as ScalingConfig,
)
from ._types import (
    ScalingError as ScalingError,
)
from ._types import (
    ScalingTarget as ScalingTarget,
)
from ._types import (
    parse_bytes as parse_bytes,
)
from ._types import (
    parse_sizes as parse_sizes,
)

__all__ = [
    "ScalingConfig",
    "ScalingError",
    "ScalingTarget",
    "parse_bytes",
    "parse_sizes",
    "run_scaling",
]
