"""Gates are declarative data decided by one pure function (after Olive's MetricGoal).

`GateThresholds` is what a person sets (flow parameters, CLI flags); `to_gates()` turns it into a list of
`Gate(metric, op, limit)`; `evaluate_gates(metrics, gates)` returns a `GateReport`. Promotion happens only
on `report.passed`, and a metric a gate needs but the run did not measure fails that gate.

A gate may judge a bound instead of the value (`judge="upper"` / `"lower"`): then `<metric>_lo` and
`<metric>_hi` hold the 95 % interval (quantgate/stats.py) and the unfavourable end must be inside the
limit. Evidence gates (`kind="evidence"`) say whether the held-out set can support a decision at all: the
FP32 model beats a trivial baseline with confidence, and the intervals are narrow enough to judge.
"""

from __future__ import annotations

import math
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

Op = Literal[">=", "<="]


class Gate(BaseModel):
    model_config = ConfigDict(frozen=True)

    name: str
    metric: str
    op: Op
    limit: float
    description: str = ""
    kind: Literal["accuracy", "speed", "evidence"] = "accuracy"
    judge: Literal["value", "upper", "lower"] = "value"

    @field_validator("limit")
    @classmethod
    def _finite(cls, v: float) -> float:
        if not math.isfinite(v):
            raise ValueError(f"gate limit must be a finite number, got {v}")
        return v


class GateResult(BaseModel):
    gate: Gate
    value: float | None
    passed: bool
    margin: float | None = Field(
        description="how far inside (+) or outside (-) the limit the judged value is"
    )
    interval: tuple[float, float] | None = Field(
        None, description="the value's 95 % interval, when judged by it"
    )


class GateReport(BaseModel):
    results: list[GateResult]

    @property
    def passed(self) -> bool:
        return bool(self.results) and all(r.passed for r in self.results)

    @property
    def failed(self) -> list[GateResult]:
        return [r for r in self.results if not r.passed]

    def passed_kind(self, kind: str) -> bool:
        return all(r.passed for r in self.results if r.gate.kind == kind)

    def failure_brief(self) -> str:
        """'mean cosine -0.0167, min cosine -0.0282': each failed gate and how far outside its limit."""
        return ", ".join(
            r.gate.name if r.margin is None else f"{r.gate.name} {r.margin:+.3g}" for r in self.failed
        )

    def failure_summary(self) -> str:
        """'mean cosine 0.9633 (< 0.98 by 0.0167)'; '' when every gate passed."""
        parts = []
        for r in self.failed:
            if r.value is None or r.margin is None:
                parts.append(f"{r.gate.name}: not measured")
            else:
                limit = f"{r.gate.op} {r.gate.limit:g}"
                parts.append(f"{r.gate.name} {r.value:.4g} (limit {limit}, off by {-r.margin:.4g})")
        return "; ".join(parts)


class GateThresholds(BaseModel):
    """Every limit a run is judged by. Defaults come from measurements on all-MiniLM-L6-v2 / STS-B dev:
    plain per-tensor dynamic INT8 keeps Spearman within 0.4 points but moves embeddings (mean cosine
    0.963, neighbour agreement 88%); per-channel reaches 0.993 / 94%. The cosine and neighbour gates are
    what catch the first kind of damage, the task-metric gate the second."""

    model_config = ConfigDict(extra="forbid")

    max_task_metric_drop: float = Field(
        0.01, ge=0, le=1, description="FP32 minus INT8 task metric (0.01 = 1 point)"
    )
    min_mean_cosine: float = Field(0.98, ge=-1, le=1, description="mean cosine of INT8 vs FP32 embeddings")
    min_min_cosine: float = Field(0.90, ge=-1, le=1, description="worst single-example cosine")
    min_neighbour_agreement: float = Field(
        0.90, ge=0, le=1, description="share of examples whose nearest neighbour is unchanged"
    )
    abs_tol: float = Field(0.1, gt=0, description="max |INT8 - FP32| over every output element")
    mean_tol: float = Field(0.01, gt=0, description="mean |INT8 - FP32|")
    min_p95_speedup: float = Field(
        1.0, ge=0, description="ORT FP32 p95 / INT8 p95; 1.0 = INT8 must be faster"
    )
    export_atol: float = Field(1e-4, gt=0, description="max |ONNX FP32 - PyTorch| at export")
    min_baseline_metric: float = Field(
        0.1,
        ge=-1,
        le=1,
        description="the FP32 task metric's lower 95 % bound must exceed this trivial baseline (STS: "
        "Spearman 0.1): a drop measured on a model that measures nothing means nothing",
    )
    max_slice_drop: float = Field(
        0.02,
        ge=0,
        le=1,
        description="worst task-metric drop on any slice of at least 50 rows (slice columns, length buckets)",
    )
    max_champion_drop: float = Field(
        0.01,
        ge=0,
        le=1,
        description="a new version may score at most this much below the serving version (the champion) "
        "on its held-out rows (upper 95 % bound; 0.01 = 1 point)",
    )
    max_champion_slowdown: float = Field(
        0.10, ge=0, description="a new version's p50 may be at most this much slower than the champion's"
    )
    expect_metric: float | None = Field(
        None, description="the FP32 task metric expected at registration (set from the registration)"
    )
    expect_tolerance: float | None = Field(None, gt=0, description="how far FP32 may be from it")
    max_baseline_half_width: float = Field(
        0.1,
        gt=0,
        le=1,
        description="the FP32 task metric's 95 % interval may be at most this wide on each side; wider: the "
        "held-out set is too small to judge anything (heldout-too-small)",
    )

    @field_validator("*")
    @classmethod
    def _finite(cls, v: float) -> float:
        if isinstance(v, float) and not math.isfinite(v):
            raise ValueError("thresholds must be finite numbers")
        return v

    def to_gates(self, champion: bool = False) -> list[Gate]:
        """Every gate; with `champion`, also the two that compare a new version with the serving one."""
        return self._gates() + self._expectation_gates() + (self._champion_gates() if champion else [])

    def _expectation_gates(self) -> list[Gate]:
        """The registering team's own measurement: an FP32 model far from it is not the model they
        trained, or not on this data (a wrong file, shuffled labels)."""
        if self.expect_metric is None or self.expect_tolerance is None:
            return []
        expected = f"registered expectation {self.expect_metric:g}±{self.expect_tolerance:g}"
        return [
            Gate(
                name="FP32 as registered (low)",
                metric="task_metric_fp32",
                op=">=",
                limit=self.expect_metric - self.expect_tolerance,
                kind="evidence",
                description=expected,
            ),
            Gate(
                name="FP32 as registered (high)",
                metric="task_metric_fp32",
                op="<=",
                limit=self.expect_metric + self.expect_tolerance,
                kind="evidence",
                description=expected,
            ),
        ]

    def _champion_gates(self) -> list[Gate]:
        return [
            Gate(
                name="vs champion",
                metric="champion_drop",
                op="<=",
                limit=self.max_champion_drop,
                judge="upper",
                description="champion minus candidate task metric on the same rows (upper 95 % bound)",
            ),
            Gate(
                name="p50 vs champion",
                metric="p50_ratio_vs_champion",
                op="<=",
                limit=1 + self.max_champion_slowdown,
                kind="speed",
                description="candidate p50 / champion p50 in the same interleaved benchmark",
            ),
        ]

    def _gates(self) -> list[Gate]:
        return [
            Gate(
                name="held-out size",
                metric="task_metric_fp32_half_width",
                op="<=",
                limit=self.max_baseline_half_width,
                kind="evidence",
                description="half-width of the FP32 task metric's 95 % interval",
            ),
            Gate(
                name="FP32 baseline",
                metric="task_metric_fp32",
                op=">=",
                limit=self.min_baseline_metric,
                kind="evidence",
                judge="lower",
                description="the FP32 task metric beats a trivial baseline (lower 95 % bound)",
            ),
            Gate(
                name="drop interval width",
                metric="task_metric_drop_half_width",
                op="<=",
                limit=self.max_task_metric_drop,
                kind="evidence",
                description="half-width of the paired bootstrap interval of the drop: wider than the limit, "
                "the held-out set cannot show the drop is within it",
            ),
            Gate(
                name="task metric drop",
                metric="task_metric_drop",
                op="<=",
                limit=self.max_task_metric_drop,
                judge="upper",
                description="FP32 ONNX minus INT8 on the held-out task metric (upper 95 % bound)",
            ),
            Gate(
                name="max slice drop",
                metric="max_slice_drop",
                op="<=",
                limit=self.max_slice_drop,
                description="worst task-metric drop on one slice (genre, length bucket) of >= 50 rows",
            ),
            Gate(name="mean cosine", metric="mean_cosine", op=">=", limit=self.min_mean_cosine),
            Gate(name="min cosine", metric="min_cosine", op=">=", limit=self.min_min_cosine),
            Gate(
                name="neighbour agreement",
                metric="neighbour_agreement",
                op=">=",
                limit=self.min_neighbour_agreement,
                judge="lower",
            ),
            Gate(name="parity max abs diff", metric="max_abs_diff", op="<=", limit=self.abs_tol),
            Gate(name="parity mean abs diff", metric="mean_abs_diff", op="<=", limit=self.mean_tol),
            Gate(
                name="p95 speed-up vs ORT FP32",
                metric="p95_speedup_vs_onnx_fp32",
                op=">=",
                limit=self.min_p95_speedup,
                kind="speed",
            ),
        ]


def evaluate_gates(metrics: dict[str, float], gates: list[Gate]) -> GateReport:
    results = []
    for gate in gates:
        value = metrics.get(gate.metric)
        interval = None
        judged = value
        if gate.judge != "value":
            lo, hi = metrics.get(f"{gate.metric}_lo"), metrics.get(f"{gate.metric}_hi")
            interval = (lo, hi) if lo is not None and hi is not None else None
            judged = hi if gate.judge == "upper" else lo
        if value is None or judged is None or not math.isfinite(value) or not math.isfinite(judged):
            # A metric (or its interval) that was not measured, or is NaN, can never pass: no evidence,
            # no promotion.
            results.append(GateResult(gate=gate, value=value, passed=False, margin=None, interval=interval))
            continue
        margin = judged - gate.limit if gate.op == ">=" else gate.limit - judged
        results.append(
            GateResult(gate=gate, value=value, passed=margin >= 0, margin=margin, interval=interval)
        )
    return GateReport(results=results)
