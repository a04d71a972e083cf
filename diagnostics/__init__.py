"""torchdx diagnostics: tensor summaries, NaN/Inf localization, gradient flow, conditioning
ablations, embedding analysis and TensorBoard output.

Every tool observes without changing what it observes: outputs, gradients and RNG consumption
are bit-identical with a tool on or off, and hooks are removed even when the step raises.

Names are imported lazily (on first attribute access), so ``import diagnostics`` stays light and
heavy dependencies (tensorboard, umap, matplotlib) load only when a tool that needs them runs.

Example:
    >>> import torch, diagnostics
    >>> print(diagnostics.summarize(torch.tensor([1.0, float("nan")])))  # doctest: +SKIP
    tensor[2] f32 cpu x∈[1.000, 1.000] μ=1.000 σ=nan NaN!1
"""

from __future__ import annotations

import importlib
from typing import Any

# public name -> private module that defines it (one private module per tool)
_LAZY: dict[str, str] = {
    "summarize": "diagnostics._summary",
    "NanWatch": "diagnostics._nanwatch",
    "NonFiniteError": "diagnostics._nanwatch",
    "NonFiniteReport": "diagnostics._nanwatch",
    "NanWatchError": "diagnostics._nanwatch",
    "GradFlow": "diagnostics._gradflow",
    "GradFlowReport": "diagnostics._gradflow",
    "GradFlowError": "diagnostics._gradflow",
    "TensorBoardLogger": "diagnostics._tensorboard",
    "AblationTarget": "diagnostics._ablation",
    "AblationError": "diagnostics._ablation",
    "AblationReport": "diagnostics._ablation",
    "TargetLoadError": "diagnostics._ablation",
    "run_ablation": "diagnostics._ablation",
    "write_report": "diagnostics._ablation",
    "analyze_embeddings": "diagnostics._embeddings",
    "EmbeddingReport": "diagnostics._embeddings",
    "CFGDropoutMonitor": "diagnostics._cfg_monitor",
    "CFGDropoutRanksReport": "diagnostics._cfg_monitor",
    "DistributedError": "diagnostics._distributed",
    "RankInfo": "diagnostics._distributed",
    "ReplicaReport": "diagnostics._distributed",
    "rank_info": "diagnostics._distributed",
    "check_launch": "diagnostics._distributed",
    "replica_divergence": "diagnostics._distributed",
    "unused_parameters": "diagnostics._distributed",
    "compare_models": "diagnostics._compare",
    # errors, reports and helpers that callers need by name
    "SummaryError": "diagnostics._summary",
    "CFGDropoutError": "diagnostics._cfg_monitor",
    "CFGDropoutReport": "diagnostics._cfg_monitor",
    "CompareError": "diagnostics._compare",
    "ModelComparison": "diagnostics._compare",
    "HookSet": "diagnostics._hooks",
    "count_host_syncs": "diagnostics._syncs",
    "LossWatch": "diagnostics._training_checks",
    "TrainingCheckError": "diagnostics._training_checks",
    "check_no_retained_graph": "diagnostics._training_checks",
    "check_padding_leak": "diagnostics._training_checks",
    "TrainingMonitor": "diagnostics._monitor",
    "TrainingMonitorError": "diagnostics._monitor",
    "ScalingTarget": "diagnostics._scaling",
    "ScalingError": "diagnostics._scaling",
    "ScalingConfig": "diagnostics._scaling",
    "run_scaling": "diagnostics._scaling",
    "EvalTarget": "diagnostics._eval_audit",
    "EvalAuditError": "diagnostics._eval_audit",
    "check_null_condition": "diagnostics._null_check",
    "NullConditionError": "diagnostics._null_check",
    "NullConditionReport": "diagnostics._null_check",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'diagnostics' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # cache: later look-ups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
