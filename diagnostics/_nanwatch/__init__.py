"""NanWatch: cheap non-finite detection per step, replay-based localization on failure.

The fairseq pattern as a library: watch cheaply, and when a step breaks, replay the *same* step
(same RNG state, same buffers, fresh gradients) with hooks on every module to find the module
that *produced* the first NaN/Inf from finite inputs, then re-run that module alone under a
``TorchDispatchMode`` to name the aten operation.

Producer rule (forward and backward alike): a module (or op) is a producer when its output has
NaN while its inputs have none, or its output has ±Inf while its inputs are all finite. So the
``-inf`` of an attention mask is not a fault, but the NaN that softmax makes of a fully masked
row is; and the Inf of an fp16 overflow is, not the NaN the next layer makes of it. Ops that
merely *write a constant* ``-inf``/NaN given as an argument (``masked_fill(m, -inf)``) are masks,
not producers; nor are ops that allocate uninitialised memory (``empty``: the op reading it is
named, with the allocation). A value that was not produced by the step at all is named as such
(``report.origin``): NaN/Inf already in a parameter before the step, or in a ``.grad`` left
non-finite by an earlier step without ``zero_grad()`` (a stale gradient).

Layout: ``_types`` (report and errors: what writers depend on), ``_numerics`` (pure helpers),
``_recorder`` (module hooks), ``_opfinder`` (dispatch mode), ``_localize`` (replays and the
report), ``_state`` (one step's state), ``_watch`` (the public class).
"""

from ._types import NanWatchError, NonFiniteError, NonFiniteReport
from ._watch import NanWatch

__all__ = ["NanWatch", "NanWatchError", "NonFiniteError", "NonFiniteReport"]
