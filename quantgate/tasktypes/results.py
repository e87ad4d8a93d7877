"""What a task type's evaluation produces, in the core shape every shared module reads: the FP32
`Reference` computed once per run, a candidate's `Evaluation` (core metrics, the task type's own in
`extra`, slices and examples), and the speed metrics against the same benchmark's baselines."""

from __future__ import annotations

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from quantgate.bench import CHAMPION_ENGINE, ONNX_FP32, TORCH_FP32, BenchReport
from quantgate.evaluate import ParityReport
from quantgate.stats import percentile_interval

Interval = tuple[float, float]


def _half_width(interval: Interval | None) -> float:
    return (interval[1] - interval[0]) / 2 if interval else float("nan")


MIN_SLICE_ROWS = 50  # a smaller slice's drop is noise: it is shown, not gated


class SliceResult(BaseModel):
    """The task metric on one subgroup of the evaluation rows (a slice column's value, a length bucket)."""

    name: str
    rows: int
    task_metric_fp32: float
    task_metric_candidate: float
    drop: float
    drop_interval: Interval | None = None
    gated: bool = Field(description=f"counted by the max-slice-drop gate (at least {MIN_SLICE_ROWS} rows)")


class Example(BaseModel):
    """One held-out example where the candidate moved most (a flipped label, an outlier): what a person
    reads to see *what* changed, not only by how much."""

    row: int = Field(description="the row's index in the evaluation split")
    text: str = Field(description="the input, shortened to 200 characters")
    fp32: str = Field(description="what the FP32 model said")
    candidate: str = Field(description="what the candidate said")
    gold: str = ""
    change: float = Field(description="how far it moved (the task type's measure; larger = worse)")


MAX_EXAMPLES = 10


def shorten(text: str, limit: int = 200) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


class Evaluation(BaseModel):
    """A candidate scored on the evaluation rows: the core metrics every task type reports, plus the task
    type's own (`extra`, with 95 % intervals in `extra_intervals`)."""

    task_metric: str
    higher_is_better: bool = True
    task_metric_fp32: float
    task_metric_candidate: float
    parity: ParityReport
    seconds: float
    rows: int = 0
    task_metric_fp32_interval: Interval | None = None
    task_metric_drop_interval: Interval | None = None
    extra: dict[str, float] = Field(default_factory=dict)
    extra_intervals: dict[str, Interval] = Field(default_factory=dict)
    slices: list[SliceResult] = Field(default_factory=list)
    examples: list[Example] = Field(
        default_factory=list, description=f"the {MAX_EXAMPLES} examples that moved most, worst first"
    )
    champion_version: str | None = None
    task_metric_champion: float | None = None
    champion_drop_interval: Interval | None = Field(
        None, description="champion minus candidate on the same resamples: > 0 means worse than the champion"
    )

    def degradation(self, before: float, after: float) -> float:
        """How much worse `after` is than `before` in the metric's own direction (> 0 = worse)."""
        return before - after if self.higher_is_better else after - before

    def max_slice_drop(self) -> float:
        """The worst drop among slices large enough to judge; the overall drop when none is."""
        gated = [s.drop for s in self.slices if s.gated]
        return max(gated) if gated else self.degradation(self.task_metric_fp32, self.task_metric_candidate)

    def metrics(self) -> dict[str, float]:
        """The flat metric dict the gates read (intervals as `<metric>_lo` / `_hi`)."""
        out = {
            **fp32_metrics(self.task_metric_fp32, self.task_metric_fp32_interval),
            "task_metric_candidate": self.task_metric_candidate,
            "task_metric_drop": self.degradation(self.task_metric_fp32, self.task_metric_candidate),
            "max_abs_diff": self.parity.max_abs_diff,
            "mean_abs_diff": self.parity.mean_abs_diff,
            **self.extra,
            "task_metric_drop_half_width": _half_width(self.task_metric_drop_interval),
            "max_slice_drop": self.max_slice_drop(),
        }
        if self.task_metric_champion is not None:
            out["champion_drop"] = self.degradation(self.task_metric_champion, self.task_metric_candidate)
        for name, interval in (
            ("task_metric_drop", self.task_metric_drop_interval),
            *self.extra_intervals.items(),
            ("champion_drop", self.champion_drop_interval),
        ):
            if interval is not None:
                out[f"{name}_lo"], out[f"{name}_hi"] = interval
        return out


def fp32_metrics(value: float, interval: Interval | None) -> dict[str, float]:
    """The FP32 model's own metrics, the same in every candidate's `Evaluation.metrics()` and in the
    reference's (`Reference.metrics()`): so the evidence gates on them give one answer before any
    candidate is built and with each candidate."""
    out = {"task_metric_fp32": value, "task_metric_fp32_half_width": _half_width(interval)}
    if interval is not None:
        out["task_metric_fp32_lo"], out["task_metric_fp32_hi"] = interval
    return out


def speed_metrics(bench: BenchReport, engine: str) -> dict[str, float]:
    """Speed of one candidate against the baselines (and the champion) of the same interleaved benchmark."""
    onnx_fp32, candidate = bench.by_engine(ONNX_FP32), bench.by_engine(engine)
    out = {
        "p95_speedup_vs_onnx_fp32": onnx_fp32.p95_ms / candidate.p95_ms,
        "p50_speedup_vs_onnx_fp32": onnx_fp32.p50_ms / candidate.p50_ms,
        "size_ratio_vs_onnx_fp32": onnx_fp32.size_mb / candidate.size_mb,
        # on the serving profile's objective (p50 per request, or time per item for throughput)
        "objective_speedup_vs_onnx_fp32": onnx_fp32.speed / candidate.speed,
    }
    torch_fp32 = next((r for r in bench.results if r.engine == TORCH_FP32), None)
    if torch_fp32 is not None:
        out["p50_speedup_vs_torch_fp32"] = torch_fp32.p50_ms / candidate.p50_ms
    champion = next((r for r in bench.results if r.engine.startswith(CHAMPION_ENGINE)), None)
    if champion is not None:
        out["p50_ratio_vs_champion"] = candidate.speed / champion.speed  # the objective's ratio
    return out


class Reference(BaseModel):
    """The FP32 ONNX model's outputs on the evaluation split: computed once, compared with every candidate."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    outputs: np.ndarray
    task_metric: float
    seconds: float
    interval: Interval | None = None  # the FP32 task metric's 95 % bootstrap interval
    resampled: np.ndarray | None = None  # the FP32 task metric on each bootstrap resample
    source_outputs: np.ndarray | None = None  # the original framework's outputs (scikit-learn's), if any
    champion_version: str | None = None  # the serving version, scored on the same rows
    champion_metric: float | None = None
    champion_resampled: np.ndarray | None = None

    def metrics(self) -> dict[str, float]:
        """What the FP32 reference alone measures, under the names a candidate's metrics give them."""
        return fp32_metrics(self.task_metric, self.interval)


def paired_intervals(
    reference: Reference, candidate_resampled: np.ndarray, higher_is_better: bool = True
) -> tuple[Interval | None, Interval | None]:
    """The drop's and the champion comparison's 95 % intervals, paired: the candidate's metric on the same
    resamples (same seed, same n) as the FP32 reference's and the champion's."""
    if reference.resampled is None:
        return None, None
    sign = 1.0 if higher_is_better else -1.0
    drop = percentile_interval(sign * (reference.resampled - candidate_resampled))
    champion = None
    if reference.champion_resampled is not None:
        champion = percentile_interval(sign * (reference.champion_resampled - candidate_resampled))
    return drop, champion
