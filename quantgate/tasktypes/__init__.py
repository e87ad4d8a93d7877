"""Task types: the seam between "what kind of model is this" and the pipeline.

base.py holds the `TaskType` protocol and the registry; resampled.py the `reference` / `score_champion` /
`evaluate` every task type shares; results.py what they produce; serving.py how they are benchmarked.
Each task type is one module under quantgate/families/ (sentence_embedding.py, text_classification.py,
token_classification.py, tabular.py, image_classification.py, retrieval.py), found through `BUILTIN`.
The names below are those the rest of quantgate imports from here.
"""

from typing import Any

from quantgate.tasktypes.base import (
    BUILTIN,
    TASK_TYPES,
    Column,
    PlotAxis,
    TaskMetric,
    TaskType,
    detect_task_type,
    get_task_type,
    hf_architectures,
    register_task_type,
    task_types,
)
from quantgate.tasktypes.resampled import Comparison, ResampledTaskType
from quantgate.tasktypes.results import (
    MAX_EXAMPLES,
    MIN_SLICE_ROWS,
    Evaluation,
    Example,
    Interval,
    Reference,
    SliceResult,
    paired_intervals,
    shorten,
    speed_metrics,
)
from quantgate.tasktypes.serving import (
    DEFAULT_MAX_POSITIONS,
    DEFAULT_SERVING,
    benchmark_with_torch,
    check_profile,
    engines_for,
    serving_settings,
)

__all__ = [
    "BUILTIN",
    "DEFAULT_MAX_POSITIONS",
    "DEFAULT_SERVING",
    "MAX_EXAMPLES",
    "MIN_SLICE_ROWS",
    "TASK_TYPES",
    "Column",
    "Comparison",
    "Evaluation",
    "Example",
    "Interval",
    "PlotAxis",
    "Reference",
    "ResampledTaskType",
    "SliceResult",
    "TaskMetric",
    "TaskType",
    "benchmark_with_torch",
    "check_profile",
    "detect_task_type",
    "engines_for",
    "get_task_type",
    "hf_architectures",
    "paired_intervals",
    "register_task_type",
    "serving_settings",
    "shorten",
    "speed_metrics",
    "task_types",
]

# The first task type's names, importable from here as before. Loaded on first use: the package does not
# depend on a task type's module (each depends on it).
_SENTENCE_EMBEDDING = {
    "COSINE_TAIL",
    "COSINE_TAIL_LIMITS",
    "SentenceEmbedding",
    "cosine_tail",
    "slice_results",
}


def __getattr__(name: str) -> Any:
    if name in _SENTENCE_EMBEDDING:
        import importlib

        return getattr(importlib.import_module("quantgate.families.sentence_embedding"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
